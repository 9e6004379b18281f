//! The guest side's transport: a USB/IP client over the frontend's `--usbip-listen` socket
//! (the frontend crate's strict, pipelining [`ClientConn`]) with a [`Ledger`] that checks
//! every URB is answered exactly once.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{IoSlice, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use pvusb_frontend::usbip::{
    read_some, write_some, ClientConn, ClientEvent, CmdSubmit, Direction, ExportedDevice, Limits,
    ReadStatus, RetSubmit,
};

/// `-ECONNRESET`: what an unlinked URB completes with.
pub const ECONNRESET: i32 = -104;

/// A set of seqnums, one bit each: [`ClientConn`] hands them out in order from 1, so this
/// stays a few KiB where a hash set of every answered URB grew by a rehash at a time.
#[derive(Debug, Default)]
struct SeqSet(Vec<u64>);

impl SeqSet {
    fn slot(seq: u32) -> (usize, u64) {
        (
            usize::try_from(seq / 64).unwrap_or(usize::MAX),
            1 << (seq % 64),
        )
    }

    fn contains(&self, seq: u32) -> bool {
        let (i, bit) = SeqSet::slot(seq);
        self.0.get(i).is_some_and(|w| w & bit != 0)
    }

    /// Adds `seq`; false if it was there.
    fn insert(&mut self, seq: u32) -> bool {
        let (i, bit) = SeqSet::slot(seq);
        if i >= self.0.len() {
            self.0.resize(i + 1, 0);
        }
        let w = &mut self.0[i];
        let new = *w & bit == 0;
        *w |= bit;
        new
    }
}

/// Client-side URB ledger: each submitted seqnum is answered exactly once (a RET_SUBMIT, or a
/// RET_UNLINK -ECONNRESET), never twice, never one that was not submitted.
#[derive(Debug, Default)]
pub struct Ledger {
    outstanding: HashMap<u32, u8>,
    answered: SeqSet,
    /// URBs submitted.
    pub submitted: u64,
    /// Answered with status 0.
    pub ok: u64,
    /// Answered with an error status (including -ECONNRESET by RET_SUBMIT).
    pub failed: u64,
    /// Given back by RET_UNLINK -ECONNRESET.
    pub cancelled: u64,
    /// CMD_UNLINKs sent.
    pub unlinks: u64,
    /// Still unanswered when the server closed the connection (vhci gives these back
    /// itself: they may not even have been read by the server).
    pub dropped: u64,
    unlinked: HashSet<u32>,
}

impl Ledger {
    fn submit(&mut self, seq: u32, ep: u8) {
        assert!(
            self.outstanding.insert(seq, ep).is_none() && !self.answered.contains(seq),
            "seqnum {seq} reused"
        );
        self.submitted += 1;
    }

    fn answer(&mut self, seq: u32, status: Option<i32>) {
        assert!(
            self.answered.insert(seq),
            "URB {seq} answered twice (contract 1/4)"
        );
        assert!(
            self.outstanding.remove(&seq).is_some(),
            "answer for URB {seq}, which was never submitted"
        );
        match status {
            Some(0) => self.ok += 1,
            Some(_) => self.failed += 1,
            None => self.cancelled += 1,
        }
    }

    /// Whether `seq` was submitted and not answered yet.
    pub fn is_outstanding(&self, seq: u32) -> bool {
        self.outstanding.contains_key(&seq)
    }

    /// URBs not answered yet.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// The connection closed: whatever is unanswered will never be.
    fn close(&mut self) {
        self.dropped += self.outstanding.len() as u64;
        self.outstanding.clear();
    }

    /// Every submitted URB was answered exactly once (or the connection closed first).
    pub fn assert_settled(&self) {
        assert!(
            self.outstanding.is_empty(),
            "{} URBs never answered: {:?}",
            self.outstanding.len(),
            self.outstanding.keys().take(10).collect::<Vec<_>>()
        );
        assert_eq!(
            self.submitted,
            self.ok + self.failed + self.cancelled + self.dropped,
            "answers do not add up"
        );
    }
}

/// One URB's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// RET_SUBMIT.
    Done(RetSubmit),
    /// RET_UNLINK -ECONNRESET: cancelled, no RET_SUBMIT will come.
    Cancelled(u32),
}

impl Answer {
    /// The URB's seqnum.
    pub fn seqnum(&self) -> u32 {
        match self {
            Answer::Done(r) => r.seqnum,
            Answer::Cancelled(s) => *s,
        }
    }

    /// The status: the RET_SUBMIT's, or -ECONNRESET.
    pub fn status(&self) -> i32 {
        match self {
            Answer::Done(r) => r.status,
            Answer::Cancelled(_) => ECONNRESET,
        }
    }
}

/// Why the transport stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gone {
    /// The server closed the connection (the device went away).
    Closed,
    /// Nothing arrived in time.
    Timeout(Duration),
}

/// The connection: TCP to `--usbip-listen`, or the AF_UNIX socket vhci_hcd would hold.
#[derive(Debug)]
enum Sock {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Read for Sock {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.read(buf),
            Sock::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Sock {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.write(buf),
            Sock::Unix(s) => s.write(buf),
        }
    }
    /// One `writev` for headers and data buffers (the default would write only the first
    /// slice: a syscall per header and per buffer).
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.write_vectored(bufs),
            Sock::Unix(s) => s.write_vectored(bufs),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl AsFd for Sock {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Sock::Tcp(s) => s.as_fd(),
            Sock::Unix(s) => s.as_fd(),
        }
    }
}

/// Scratch space for reads: headers and small payloads. A payload that does not fit is read
/// straight into its transfer's buffer (`read_some`), as vhci_hcd receives into the URB's:
/// a large scratch would copy each one twice more (scratch, decoder queue, buffer).
const SCRATCH: usize = 4 << 10;

/// An imported device: pipelined submits and unlinks, answers in any order.
#[derive(Debug)]
pub struct UsbipClient {
    sock: Sock,
    conn: ClientConn,
    answers: VecDeque<Answer>,
    buf: Vec<u8>,
    closed: bool,
    /// The exactly-once ledger.
    pub ledger: Ledger,
    /// The device as the server described it.
    pub device: ExportedDevice,
}

fn connect(addr: SocketAddr, conn: ClientConn) -> (TcpStream, ClientConn) {
    let sock = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connecting to USB/IP {addr}: {e}"));
    sock.set_nodelay(true).expect("nodelay");
    sock.set_nonblocking(true).expect("nonblocking");
    (sock, conn)
}

/// The devices exported at `addr` (empty if the server closes early).
pub fn devlist(addr: SocketAddr) -> Vec<ExportedDevice> {
    let (sock, conn) = connect(addr, ClientConn::devlist(Limits::default()));
    let mut c = UsbipClient::raw(sock, conn);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(ClientEvent::Devlist(d)) = c.conn.poll_event() {
            return d;
        }
        if c.pump(Duration::from_millis(50)).is_err() {
            return Vec::new();
        }
    }
    panic!("no devlist reply from {addr}");
}

impl UsbipClient {
    fn raw(sock: TcpStream, conn: ClientConn) -> UsbipClient {
        UsbipClient::over(Sock::Tcp(sock), conn)
    }

    fn over(sock: Sock, conn: ClientConn) -> UsbipClient {
        UsbipClient {
            sock,
            conn,
            answers: VecDeque::new(),
            buf: vec![0; SCRATCH],
            closed: false,
            ledger: Ledger::default(),
            device: ExportedDevice::default(),
        }
    }

    /// The device `busid` vhci_hcd was given on `sock` as `devid` (see [`crate::vhci`]):
    /// no import handshake, URBs straight away.
    pub fn attached(sock: UnixStream, devid: u32, busid: &str) -> UsbipClient {
        sock.set_nonblocking(true).expect("nonblocking");
        let mut c = UsbipClient::over(
            Sock::Unix(sock),
            ClientConn::attached(devid, Limits::default()),
        );
        c.device.busid = busid.to_string();
        c.device.busnum = devid >> 16;
        c.device.devnum = devid & 0xffff;
        c
    }

    /// Imports `busid` from the server at `addr`; `None` if refused or closed.
    pub fn import(addr: SocketAddr, busid: &str) -> Option<UsbipClient> {
        let (sock, conn) = connect(addr, ClientConn::import(busid, Limits::default()));
        let mut c = UsbipClient::raw(sock, conn);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match c.conn.poll_event() {
                Some(ClientEvent::Imported(d)) => {
                    c.device = d;
                    return Some(c);
                }
                Some(_) => return None,
                None => {}
            }
            if c.pump(Duration::from_millis(50)).is_err() {
                return None;
            }
        }
        None
    }

    /// Waits until `busid` is exported at `addr` and imports it.
    pub fn import_when_ready(
        addr: SocketAddr,
        busid: &str,
        timeout: Duration,
        logs: impl Fn() -> String,
    ) -> UsbipClient {
        crate::wait::until(timeout, &format!("{busid} to be importable"), logs, || {
            if !devlist(addr).iter().any(|d| d.busid == busid) {
                std::thread::sleep(Duration::from_millis(50));
                return None;
            }
            UsbipClient::import(addr, busid)
        })
    }

    /// One round of I/O: waits up to `timeout` for the socket, writes what it can, reads
    /// what is there. With several URBs in flight the next replies are often there already:
    /// it reads first then, and waits only if that brought no answer. `Err(Closed)` once
    /// the server closed.
    fn pump(&mut self, timeout: Duration) -> Result<(), Gone> {
        if self.closed {
            return Err(Gone::Closed);
        }
        if self.ledger.outstanding() > 1 {
            let before = self.answers.len();
            self.io()?;
            if self.answers.len() > before {
                return Ok(());
            }
        }
        let mut flags = rustix::event::PollFlags::IN;
        if !self.conn.pending_tx().is_empty() {
            flags |= rustix::event::PollFlags::OUT;
        }
        let fd = self.sock.as_fd();
        let mut fds = [rustix::event::PollFd::new(&fd, flags)];
        let ts = rustix::time::Timespec::try_from(timeout).unwrap_or(rustix::time::Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        });
        let _ = rustix::event::poll(&mut fds, Some(&ts));
        self.io()
    }

    /// Writes what it can, reads what is there, collects the answers.
    fn io(&mut self) -> Result<(), Gone> {
        if write_some(&mut self.sock, &mut self.conn).is_err() {
            // The server is gone; read what it answered before closing.
            let _ = read_some(&mut self.sock, &mut self.conn, &mut self.buf, 4 << 20);
            self.collect();
            self.closed = true;
            self.ledger.close();
            return Err(Gone::Closed);
        }
        match read_some(&mut self.sock, &mut self.conn, &mut self.buf, 4 << 20) {
            Ok(ReadStatus::Eof) => {
                self.closed = true;
                self.collect();
                self.ledger.close();
                return Err(Gone::Closed);
            }
            Ok(_) => {}
            Err(pvusb_frontend::usbip::PumpError::Io(_)) => {
                self.closed = true;
                self.ledger.close();
                return Err(Gone::Closed);
            }
            Err(e) => panic!("USB/IP server broke the protocol: {e}"),
        }
        self.collect();
        Ok(())
    }

    fn collect(&mut self) {
        if self.device.busid.is_empty() {
            return; // Still in the handshake: its events are read by devlist/import.
        }
        while let Some(ev) = self.conn.poll_event() {
            match ev {
                ClientEvent::Completed(r) => {
                    self.ledger.answer(r.seqnum, Some(r.status));
                    self.answers.push_back(Answer::Done(r));
                }
                ClientEvent::Unlinked { victim, status, .. } => {
                    if status == ECONNRESET {
                        self.ledger.answer(victim, None);
                        self.answers.push_back(Answer::Cancelled(victim));
                    }
                }
                other => panic!("unexpected USB/IP event in the URB phase: {other:?}"),
            }
        }
    }

    /// Queues a CMD_SUBMIT; returns its seqnum.
    pub fn submit(&mut self, cmd: CmdSubmit) -> u32 {
        let ep = cmd.ep | if cmd.dir == Direction::In { 0x80 } else { 0 };
        let seq = self.conn.submit(cmd).expect("submit in the URB phase");
        self.ledger.submit(seq, ep);
        let _ = write_some(&mut self.sock, &mut self.conn);
        seq
    }

    /// Queues a CMD_UNLINK of `victim` unless it was answered or unlinked already.
    pub fn unlink(&mut self, victim: u32) {
        if !self.ledger.is_outstanding(victim) || !self.ledger.unlinked.insert(victim) {
            return;
        }
        self.conn.unlink(victim).expect("unlink in the URB phase");
        self.ledger.unlinks += 1;
        let _ = write_some(&mut self.sock, &mut self.conn);
    }

    /// An OUT buffer the client has finished writing, holding what it carried, for the
    /// next OUT transfer (as vhci_hcd's URBs keep their buffers): no allocation or copy per
    /// URB. Only buffers of 2 KiB and more come back (smaller ones are copied inline).
    pub fn spent_out_buffer(&mut self) -> Option<Vec<u8>> {
        self.conn.take_spent()
    }

    /// The next answer, waiting up to `timeout`.
    pub fn next(&mut self, timeout: Duration) -> Result<Answer, Gone> {
        if let Some(a) = self.answers.pop_front() {
            return Ok(a);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(a) = self.answers.pop_front() {
                return Ok(a);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Gone::Timeout(timeout));
            }
            self.pump(left.min(Duration::from_millis(100)))?;
        }
    }

    /// True once the server closed the connection (waits up to `timeout`).
    pub fn wait_closed(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.pump(Duration::from_millis(50)) == Err(Gone::Closed) {
                return true;
            }
        }
        false
    }

    /// Submits and waits for that URB's answer (others are kept).
    pub fn transfer(&mut self, cmd: CmdSubmit, timeout: Duration) -> Result<Answer, Gone> {
        let seq = self.submit(cmd);
        self.wait_for(seq, timeout)
    }

    /// Waits for the answer to `seq`, keeping the others queued.
    pub fn wait_for(&mut self, seq: u32, timeout: Duration) -> Result<Answer, Gone> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.answers.iter().position(|a| a.seqnum() == seq) {
                if let Some(a) = self.answers.remove(i) {
                    return Ok(a);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Gone::Timeout(timeout));
            }
            self.pump(left.min(Duration::from_millis(100)))?;
        }
    }

    /// Takes an already-arrived answer to `seq`, if any.
    pub fn take(&mut self, seq: u32) -> Option<Answer> {
        let i = self.answers.iter().position(|a| a.seqnum() == seq)?;
        self.answers.remove(i)
    }
}

/// A bulk OUT CMD_SUBMIT on endpoint number `ep`.
pub fn bulk_out(ep: u8, data: Vec<u8>) -> CmdSubmit {
    CmdSubmit {
        ep,
        dir: Direction::Out,
        length: u32::try_from(data.len()).unwrap_or(u32::MAX),
        data,
        ..CmdSubmit::default()
    }
}

/// A bulk IN CMD_SUBMIT of `len` bytes on endpoint number `ep`.
pub fn bulk_in(ep: u8, len: u32) -> CmdSubmit {
    CmdSubmit {
        ep,
        dir: Direction::In,
        length: len,
        flags: pvusb_frontend::usbip::TransferFlags::DIR_IN,
        ..CmdSubmit::default()
    }
}

/// A control CMD_SUBMIT: `setup`, and IN data of wLength or OUT `data`.
pub fn control(setup: [u8; 8], data: Vec<u8>) -> CmdSubmit {
    let dir_in = setup[0] & 0x80 != 0;
    let len = u32::from(u16::from_le_bytes([setup[6], setup[7]]));
    CmdSubmit {
        ep: 0,
        dir: if dir_in {
            Direction::In
        } else {
            Direction::Out
        },
        length: if dir_in {
            len
        } else {
            u32::try_from(data.len()).unwrap_or(0)
        },
        data,
        setup,
        flags: if dir_in {
            pvusb_frontend::usbip::TransferFlags::DIR_IN
        } else {
            pvusb_frontend::usbip::TransferFlags::empty()
        },
        ..CmdSubmit::default()
    }
}
