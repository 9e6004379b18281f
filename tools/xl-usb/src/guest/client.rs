//! A USB/IP client (the guest side of `--usbip-listen`): OP_REQ_DEVLIST, OP_REQ_IMPORT,
//! then pipelined CMD_SUBMITs whose RET_SUBMITs are matched by seqnum, each URB timed.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use pvusb_frontend::usbip::op::{self, OpError, OpStatus};
use pvusb_frontend::usbip::{
    CmdSubmit, DecodeError, Direction, ExportedDevice, Limits, Reply, ReplyShape, RetDecoder,
    RetSubmit, TransferFlags,
};

/// How long a reply may take before the client gives up.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(20);

/// Why the client failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Socket trouble.
    #[error("USB/IP connection to {addr}: {source}")]
    Io {
        /// Server.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The server closed the connection (e.g. the device went away).
    #[error("USB/IP server {0} closed the connection")]
    Closed(SocketAddr),
    /// A management reply we cannot use.
    #[error("USB/IP handshake: {0}")]
    Op(#[from] OpError),
    /// The server refused the import.
    #[error("import of {busid} refused: {status:?}")]
    Refused {
        /// Bus id asked for.
        busid: String,
        /// Server status.
        status: OpStatus,
    },
    /// A URB-phase reply we cannot decode.
    #[error("USB/IP reply: {0}")]
    Decode(#[from] DecodeError),
    /// No reply in time.
    #[error("no reply to seqnum {0} within {1:?}")]
    Timeout(u32, Duration),
    /// A reply for a request that was never sent (or already answered).
    #[error("reply for seqnum {0}, which is not outstanding")]
    Unexpected(u32),
}

fn connect(addr: SocketAddr) -> Result<TcpStream, ClientError> {
    let io = |source| ClientError::Io { addr, source };
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(io)?;
    s.set_nodelay(true).map_err(io)?;
    s.set_read_timeout(Some(REPLY_TIMEOUT)).map_err(io)?;
    Ok(s)
}

fn read_more(s: &mut TcpStream, addr: SocketAddr, buf: &mut Vec<u8>) -> Result<(), ClientError> {
    let mut chunk = [0u8; 64 * 1024];
    match s.read(&mut chunk) {
        Ok(0) => Err(ClientError::Closed(addr)),
        Ok(n) => {
            buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
            Ok(())
        }
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Err(ClientError::Timeout(0, REPLY_TIMEOUT))
        }
        Err(source) => Err(ClientError::Io { addr, source }),
    }
}

/// The devices a server exports (OP_REQ_DEVLIST; the server closes afterwards).
pub fn devlist(addr: SocketAddr) -> Result<Vec<ExportedDevice>, ClientError> {
    let mut s = connect(addr)?;
    let mut out = Vec::new();
    op::encode_req_devlist(&mut out);
    s.write_all(&out)
        .map_err(|source| ClientError::Io { addr, source })?;
    let mut buf = Vec::new();
    loop {
        if let Some((devs, _)) = op::decode_rep_devlist(&buf)? {
            return Ok(devs);
        }
        read_more(&mut s, addr, &mut buf)?;
    }
}

/// A finished URB.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Done {
    /// The reply.
    pub ret: RetSubmit,
    /// Submit-to-reply time.
    pub latency: Duration,
}

/// An imported device: submit URBs, collect their replies in any order.
#[derive(Debug)]
pub struct Client {
    addr: SocketAddr,
    sock: TcpStream,
    device: ExportedDevice,
    next_seq: u32,
    outstanding: HashMap<u32, (ReplyShape, Instant)>,
    done: HashMap<u32, Done>,
    decoder: RetDecoder,
    out: Vec<u8>,
    /// Every URB latency so far.
    pub latencies: Vec<Duration>,
}

impl Client {
    /// Connects and imports `busid` (OP_REQ_IMPORT).
    pub fn import(addr: SocketAddr, busid: &str) -> Result<Self, ClientError> {
        let mut sock = connect(addr)?;
        let mut out = Vec::new();
        op::encode_req_import(busid, &mut out);
        sock.write_all(&out)
            .map_err(|source| ClientError::Io { addr, source })?;
        let mut buf = Vec::new();
        let (device, used) = loop {
            if let Some((r, used)) = op::decode_rep_import(&buf)? {
                match r {
                    Ok(d) => break (d, used),
                    Err(status) => {
                        return Err(ClientError::Refused {
                            busid: busid.to_owned(),
                            status,
                        })
                    }
                }
            }
            read_more(&mut sock, addr, &mut buf)?;
        };
        let mut decoder = RetDecoder::new(Limits::default());
        decoder.push(buf.get(used..).unwrap_or_default());
        Ok(Client {
            addr,
            sock,
            device,
            next_seq: 1,
            outstanding: HashMap::new(),
            done: HashMap::new(),
            decoder,
            out: Vec::new(),
            latencies: Vec::new(),
        })
    }

    /// What the server said about the device.
    pub fn device(&self) -> &ExportedDevice {
        &self.device
    }

    /// URBs submitted and not yet collected.
    pub fn in_flight(&self) -> usize {
        self.outstanding.len() + self.done.len()
    }

    /// Sends one CMD_SUBMIT: for OUT, `data` is sent; for IN, `len` bytes are asked for.
    /// Returns its seqnum.
    pub fn submit(
        &mut self,
        ep: u8,
        dir: Direction,
        setup: [u8; 8],
        data: Vec<u8>,
        len: u32,
    ) -> Result<u32, ClientError> {
        let seqnum = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1).max(1);
        let length = match dir {
            Direction::Out => u32::try_from(data.len()).unwrap_or(u32::MAX),
            Direction::In => len,
        };
        let cmd = CmdSubmit {
            seqnum,
            devid: self.device.devid(),
            dir,
            ep,
            flags: if dir == Direction::In {
                TransferFlags::DIR_IN
            } else {
                TransferFlags::empty()
            },
            length,
            start_frame: 0,
            interval: 0,
            setup,
            data,
            iso: Vec::new(),
        };
        self.out.clear();
        cmd.encode(&mut self.out);
        self.sock
            .write_all(&self.out)
            .map_err(|source| ClientError::Io {
                addr: self.addr,
                source,
            })?;
        let shape = ReplyShape {
            dir,
            length,
            iso_packets: 0,
        };
        self.outstanding.insert(seqnum, (shape, Instant::now()));
        Ok(seqnum)
    }

    fn pump(&mut self) -> Result<(), ClientError> {
        let mut buf = Vec::new();
        read_more(&mut self.sock, self.addr, &mut buf)?;
        self.decoder.push(&buf);
        loop {
            let outstanding = &self.outstanding;
            let reply = self
                .decoder
                .next_reply(|seq| outstanding.get(&seq).map(|(shape, _)| *shape))?;
            match reply {
                None => return Ok(()),
                Some(Reply::Submit(ret)) => {
                    let (_, t0) = self
                        .outstanding
                        .remove(&ret.seqnum)
                        .ok_or(ClientError::Unexpected(ret.seqnum))?;
                    let latency = t0.elapsed();
                    self.latencies.push(latency);
                    self.done.insert(ret.seqnum, Done { ret, latency });
                }
                Some(Reply::Unlink(u)) => return Err(ClientError::Unexpected(u.seqnum)),
            }
        }
    }

    /// Blocks until the reply to `seqnum` arrives (others are kept for later).
    pub fn wait(&mut self, seqnum: u32) -> Result<Done, ClientError> {
        loop {
            if let Some(d) = self.done.remove(&seqnum) {
                return Ok(d);
            }
            if !self.outstanding.contains_key(&seqnum) {
                return Err(ClientError::Unexpected(seqnum));
            }
            self.pump().map_err(|e| match e {
                ClientError::Timeout(_, t) => ClientError::Timeout(seqnum, t),
                e => e,
            })?;
        }
    }

    /// A control transfer with an IN data stage; returns the data.
    pub fn control_in(&mut self, setup: [u8; 8]) -> Result<(i32, Vec<u8>), ClientError> {
        let len = u32::from(u16::from_le_bytes([setup[6], setup[7]]));
        let seq = self.submit(0, Direction::In, setup, Vec::new(), len)?;
        let d = self.wait(seq)?;
        Ok((d.ret.status, d.ret.data))
    }

    /// A control transfer without data (or with OUT data); returns the status.
    pub fn control_out(&mut self, setup: [u8; 8], data: Vec<u8>) -> Result<i32, ClientError> {
        let seq = self.submit(0, Direction::Out, setup, data, 0)?;
        Ok(self.wait(seq)?.ret.status)
    }
}
