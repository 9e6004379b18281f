//! The "socket floor" of the issue-8 benchmark: only the guest's transport, measured. A real
//! guest's vhci_hcd speaks USB/IP over an AF_UNIX stream socket to the frontend, and that
//! hop cannot be avoided; here the bench process and a separate echo process (the bench
//! binary re-executed, see [`echo_if_asked`]) pass USB/IP-sized messages over such a socket
//! and nothing else: a 48-byte header (as USB/IP's) carrying the payload length, then the
//! payload, echoed back whole. An echoed byte crosses the socket once each way, as a byte
//! of a bulk OUT then IN URB does between vhci_hcd and the frontend.
//!
//! The socket is an AF_UNIX `SOCK_STREAM` with the kernel's default buffer sizes, as the
//! frontend's `socketpair` for vhci_hcd (it sets no `SO_SNDBUF`/`SO_RCVBUF`). The client
//! side is what vhci_hcd does at best: headers and payload gathered in one `writev` from
//! the caller's buffer, each reply's header then its payload read straight into a reused
//! buffer, nothing allocated or copied per message.

use std::io::{self, ErrorKind, IoSlice, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cpu::cpu_time;

/// Set (to the listening socket's path) in the environment of the re-executed bench binary
/// that serves as the echo process.
pub const ECHO_ENV: &str = "PVUSB_BENCH_ECHO";
/// The echo process's busy polling after each message, µs (0: it blocks in `read`).
const POLL_ENV: &str = "PVUSB_BENCH_ECHO_POLL_US";
/// Every message's header: USB/IP's 48 bytes.
pub const HEADER: usize = 48;
/// Where the payload length sits (big-endian u32): CMD_SUBMIT's `transfer_buffer_length`.
const LEN_AT: usize = 24;
/// Largest payload the echo process accepts.
const MAX_PAYLOAD: usize = 16 << 20;
/// Longest the client waits for the echo process before giving up.
const STALL: Duration = Duration::from_secs(20);

/// When this process was started as the echo peer ([`ECHO_ENV`] set): serves the socket
/// until the bench closes it, then exits. Call first thing in `main`.
pub fn echo_if_asked() {
    let Some(path) = std::env::var_os(ECHO_ENV) else {
        return;
    };
    let poll_us = std::env::var(POLL_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0u64);
    let code = match echo(Path::new(&path), Duration::from_micros(poll_us)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("bench echo process: {e}");
            1
        }
    };
    std::process::exit(code);
}

/// How the echo side waits: blocking (`poll` zero), or like the daemons' `poll-us`:
/// nonblocking attempts with `sched_yield` for `poll` after the last message, then `poll(2)`.
struct Waiter {
    poll: Duration,
    last: Instant,
}

impl Waiter {
    fn wait(&self, sock: &UnixStream, flags: rustix::event::PollFlags) -> io::Result<()> {
        if self.last.elapsed() < self.poll {
            std::thread::yield_now();
            return Ok(());
        }
        let fd = sock.as_fd();
        let mut fds = [rustix::event::PollFd::new(&fd, flags)];
        match rustix::event::poll(&mut fds, None) {
            Ok(_) | Err(rustix::io::Errno::INTR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Fills `buf` from `sock`; `Ok(false)` at end of stream before its first byte.
fn fill(sock: &mut UnixStream, buf: &mut [u8], w: &Waiter) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match sock.read(buf.get_mut(got..).unwrap_or_default()) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                w.wait(sock, rustix::event::PollFlags::IN)?;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

fn send(sock: &mut UnixStream, mut buf: &[u8], w: &Waiter) -> io::Result<()> {
    while !buf.is_empty() {
        match sock.write(buf) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => buf = buf.get(n..).unwrap_or_default(),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                w.wait(sock, rustix::event::PollFlags::OUT)?;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The echo process: each message read whole (header, then payload), written back whole.
fn echo(path: &Path, poll: Duration) -> io::Result<()> {
    let mut sock = UnixStream::connect(path)?;
    sock.set_nonblocking(!poll.is_zero())?;
    let mut w = Waiter {
        poll,
        last: Instant::now(),
    };
    let mut buf = vec![0u8; HEADER + MAX_PAYLOAD];
    loop {
        if !fill(&mut sock, buf.get_mut(..HEADER).unwrap_or_default(), &w)? {
            return Ok(());
        }
        let len = buf
            .get(LEN_AT..LEN_AT + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_be_bytes)
            .and_then(|l| usize::try_from(l).ok())
            .filter(|&l| l <= MAX_PAYLOAD)
            .ok_or_else(|| io::Error::new(ErrorKind::InvalidData, "bad payload length"))?;
        let total = HEADER + len;
        if !fill(
            &mut sock,
            buf.get_mut(HEADER..total).unwrap_or_default(),
            &w,
        )? && len > 0
        {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        send(&mut sock, buf.get(..total).unwrap_or_default(), &w)?;
        w.last = Instant::now();
    }
}

/// What one throughput run measured (the warm-up left out).
#[derive(Clone, Copy, Debug, Default)]
pub struct Echoed {
    /// Payload bytes read back.
    pub bytes: u64,
    /// Messages read back.
    pub messages: u64,
    /// Wall time.
    pub secs: f64,
    /// CPU time of this (the client) process.
    pub cpu_client: Duration,
    /// CPU time of the echo process.
    pub cpu_echo: Duration,
}

/// The bench's end of the socket, with its echo process (killed and reaped on drop).
#[derive(Debug)]
pub struct Floor {
    child: Child,
    pipe: Pipe,
    _dir: tempfile::TempDir,
}

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Floor {
    /// Starts the echo process (busy polling `poll_us` after each message, 0: blocking
    /// reads) and connects to it.
    pub fn spawn(poll_us: u32) -> Floor {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("echo.sock");
        let listener = UnixListener::bind(&path).expect("binding the echo socket");
        listener.set_nonblocking(true).expect("nonblocking");
        let exe = std::env::current_exe().expect("the bench binary's path");
        let mut child = Command::new(exe)
            .env(ECHO_ENV, &path)
            .env(POLL_ENV, poll_us.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("starting the echo process");
        let deadline = Instant::now() + STALL;
        let sock = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if let Ok(Some(st)) = child.try_wait() {
                        panic!("the echo process exited before connecting: {st}");
                    }
                    assert!(
                        Instant::now() < deadline,
                        "the echo process never connected"
                    );
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => panic!("accepting the echo process: {e}"),
            }
        };
        sock.set_nonblocking(true).expect("nonblocking");
        Floor {
            child,
            pipe: Pipe {
                sock,
                hdr: [0; HEADER],
                payload: Vec::new(),
                rx: Vec::new(),
            },
            _dir: dir,
        }
    }

    /// The echo process's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `qd` messages of `size` in flight for `dur` (after a fifth of it as warm-up).
    pub fn echo(&mut self, size: usize, qd: usize, dur: Duration) -> Echoed {
        let pid = self.pid().to_string();
        let cpu = || (cpu_time("self"), cpu_time(&pid));
        let warm = Instant::now() + dur / 5;
        let mut start: Option<(Instant, (Duration, Duration))> = None;
        let mut end = None;
        let mut messages = 0u64;
        self.pipe.prepare(size);
        self.pipe.run(qd, || {
            let Some((t0, _)) = start else {
                if Instant::now() >= warm {
                    start = Some((Instant::now(), cpu()));
                }
                return true;
            };
            messages += 1;
            if t0.elapsed() < dur {
                return true;
            }
            end = Some((Instant::now(), cpu()));
            false
        });
        let (Some((t0, (c0, e0))), Some((t1, (c1, e1)))) = (start, end) else {
            unreachable!("run returns after the stopping reply only")
        };
        Echoed {
            bytes: messages * size as u64,
            messages,
            secs: (t1 - t0).as_secs_f64(),
            cpu_client: c1.saturating_sub(c0),
            cpu_echo: e1.saturating_sub(e0),
        }
    }

    /// `n` round trips of one `size`-byte message (after 200 unrecorded ones), each timed.
    pub fn ping(&mut self, n: usize, size: usize) -> Vec<Duration> {
        self.pipe.prepare(size);
        let mut left = 200;
        self.pipe.run(1, || {
            left -= 1;
            left > 0
        });
        let mut v = Vec::with_capacity(n);
        let mut t0 = Instant::now();
        self.pipe.run(1, || {
            v.push(t0.elapsed());
            t0 = Instant::now();
            v.len() < n
        });
        v
    }
}

/// The client's end of the socket and its buffers.
#[derive(Debug)]
struct Pipe {
    sock: UnixStream,
    /// The header sent with every message.
    hdr: [u8; HEADER],
    /// The payload, sent from here every time.
    payload: Vec<u8>,
    /// Where replies' payloads are read to.
    rx: Vec<u8>,
}

/// Most messages gathered into one `writev`.
const GATHER: usize = 16;

impl Pipe {
    fn prepare(&mut self, size: usize) {
        let len = u32::try_from(size).expect("payload size");
        self.hdr[LEN_AT..LEN_AT + 4].copy_from_slice(&len.to_be_bytes());
        self.payload.resize(size, 0x5a);
        self.rx.resize(size, 0);
    }

    /// Keeps `qd` messages in flight while `on_reply` (called at each reply read back
    /// whole) says so, then waits for the rest: returns with nothing in flight.
    fn run(&mut self, qd: usize, mut on_reply: impl FnMut() -> bool) {
        let size = self.payload.len();
        let total = HEADER + size;
        let (mut to_send, mut in_flight, mut sent) = (qd, qd, 0usize);
        let (mut rx_hdr, mut hdr_got, mut got) = ([0u8; HEADER], 0usize, 0usize);
        let mut more = true;
        while in_flight > 0 {
            let mut progressed = false;
            while to_send > 0 {
                let mut iov = [IoSlice::new(&[]); 2 * GATHER];
                let k = to_send.min(GATHER);
                for (i, pair) in iov.chunks_exact_mut(2).take(k).enumerate() {
                    let off = if i == 0 { sent } else { 0 };
                    pair[0] = IoSlice::new(self.hdr.get(off..).unwrap_or_default());
                    let p = off.saturating_sub(HEADER);
                    pair[1] = IoSlice::new(self.payload.get(p..).unwrap_or_default());
                }
                match (&self.sock).write_vectored(&iov[..2 * k]) {
                    Ok(n) => {
                        progressed = true;
                        sent += n;
                        while sent >= total && to_send > 0 {
                            sent -= total;
                            to_send -= 1;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => panic!("writing to the echo process: {e}"),
                }
            }
            loop {
                if hdr_got == HEADER && got == size {
                    (hdr_got, got) = (0, 0);
                    in_flight -= 1;
                    progressed = true;
                    more = more && on_reply();
                    if more {
                        (to_send, in_flight) = (to_send + 1, in_flight + 1);
                    }
                    // Send the next one before looking for more replies.
                    break;
                }
                let buf = if hdr_got < HEADER {
                    &mut rx_hdr[hdr_got..]
                } else {
                    &mut self.rx[got..]
                };
                match (&self.sock).read(buf) {
                    Ok(0) => panic!("the echo process closed the socket"),
                    Ok(n) if hdr_got < HEADER => {
                        hdr_got += n;
                        if hdr_got == HEADER {
                            assert_eq!(rx_hdr, self.hdr, "the echo process garbled a header");
                        }
                    }
                    Ok(n) => got += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => panic!("reading from the echo process: {e}"),
                }
                progressed = true;
            }
            if !progressed {
                self.wait(to_send > 0);
            }
        }
    }

    fn wait(&self, writable: bool) {
        let mut flags = rustix::event::PollFlags::IN;
        if writable {
            flags |= rustix::event::PollFlags::OUT;
        }
        let fd = self.sock.as_fd();
        let mut fds = [rustix::event::PollFd::new(&fd, flags)];
        let ts = rustix::time::Timespec::try_from(STALL).unwrap_or(rustix::time::Timespec {
            tv_sec: 20,
            tv_nsec: 0,
        });
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(0) => panic!("the echo process went silent for {STALL:?}"),
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => panic!("polling the echo socket: {e}"),
        }
    }
}
