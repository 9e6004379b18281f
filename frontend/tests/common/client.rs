//! A blocking USB/IP client for tests, over this crate's strict [`ClientConn`].

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use pvusb_frontend::usbip::{
    ClientConn, ClientEvent, CmdSubmit, Direction, ExportedDevice, Limits, RetSubmit,
};

/// A byte stream the client can run over.
pub trait Rw: Read + Write {}
impl<T: Read + Write> Rw for T {}

pub struct Client {
    sock: Box<dyn Rw>,
    pub conn: ClientConn,
    buf: Vec<u8>,
}

impl Client {
    fn open(port: u16, conn: ClientConn) -> Client {
        let sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
        sock.set_nodelay(true).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        Client::over(Box::new(sock), conn)
    }

    /// A client over any stream whose reads time out after a short while.
    pub fn over(sock: Box<dyn Rw>, conn: ClientConn) -> Client {
        Client {
            sock,
            conn,
            buf: vec![0; 256 * 1024],
        }
    }

    fn flush(&mut self) {
        while !self.conn.pending_tx().is_empty() {
            let n = self.sock.write(self.conn.pending_tx()).unwrap();
            self.conn.consume_tx(n);
        }
    }

    /// The next event, or `None` once `timeout` passed (or the server closed).
    pub fn event(&mut self, timeout: Duration) -> Option<ClientEvent> {
        self.flush();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(ev) = self.conn.poll_event() {
                return Some(ev);
            }
            if Instant::now() > deadline {
                return None;
            }
            match self.sock.read(&mut self.buf) {
                Ok(0) => return None,
                Ok(n) => self
                    .conn
                    .feed(&self.buf[..n])
                    .expect("server broke the protocol"),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return None,
            }
        }
    }

    /// True once the server closed the connection.
    pub fn closed(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            match self.sock.read(&mut self.buf) {
                Ok(0) => return true,
                Ok(n) => {
                    let _ = self.conn.feed(&self.buf[..n]);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return true,
            }
        }
        false
    }

    pub fn devlist(port: u16) -> Vec<ExportedDevice> {
        let mut c = Client::open(port, ClientConn::devlist(Limits::default()));
        match c.event(Duration::from_secs(10)) {
            Some(ClientEvent::Devlist(d)) => d,
            other => panic!("devlist: {other:?}"),
        }
    }

    pub fn import(port: u16, busid: &str) -> Result<(Client, ExportedDevice), String> {
        let mut c = Client::open(port, ClientConn::import(busid, Limits::default()));
        match c.event(Duration::from_secs(10)) {
            Some(ClientEvent::Imported(d)) => Ok((c, d)),
            other => Err(format!("import {busid}: {other:?}")),
        }
    }

    pub fn submit(&mut self, cmd: CmdSubmit) -> u32 {
        let s = self.conn.submit(cmd).unwrap();
        self.flush();
        s
    }

    pub fn unlink(&mut self, victim: u32) -> u32 {
        let s = self.conn.unlink(victim).unwrap();
        self.flush();
        s
    }

    /// Submits and waits for the RET_SUBMIT.
    pub fn transfer(&mut self, cmd: CmdSubmit) -> RetSubmit {
        let seq = self.submit(cmd);
        match self.event(Duration::from_secs(10)) {
            Some(ClientEvent::Completed(r)) if r.seqnum == seq => r,
            other => panic!("transfer {seq}: {other:?}"),
        }
    }

    pub fn control_in(&mut self, setup: [u8; 8]) -> RetSubmit {
        let len = u32::from(u16::from_le_bytes([setup[6], setup[7]]));
        self.transfer(CmdSubmit {
            ep: 0,
            dir: Direction::In,
            length: len,
            setup,
            ..CmdSubmit::default()
        })
    }

    pub fn bulk_out(&mut self, ep: u8, data: Vec<u8>) -> RetSubmit {
        self.transfer(bulk_out(ep, data))
    }

    pub fn bulk_in(&mut self, ep: u8, len: u32) -> RetSubmit {
        self.transfer(bulk_in(ep, len))
    }
}

pub fn bulk_out(ep: u8, data: Vec<u8>) -> CmdSubmit {
    CmdSubmit {
        ep,
        dir: Direction::Out,
        length: data.len() as u32,
        data,
        ..CmdSubmit::default()
    }
}

pub fn bulk_in(ep: u8, len: u32) -> CmdSubmit {
    CmdSubmit {
        ep,
        dir: Direction::In,
        length: len,
        ..CmdSubmit::default()
    }
}

pub fn get_descriptor(ty: u8, len: u16) -> [u8; 8] {
    let [l0, l1] = len.to_le_bytes();
    [0x80, 6, 0, ty, 0, 0, l0, l1]
}
