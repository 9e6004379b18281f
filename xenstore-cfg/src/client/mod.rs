//! The xenstore client: a sans-I/O core and a blocking shell over the xenstored socket or
//! `/dev/xen/xenbus`, pollable from an event loop through its fd and [`Xs::pump`].

mod core;
mod ops;

pub use self::core::{ClientCore, ProtocolError, WatchEvent};
pub use self::ops::{Transaction, XsOps};

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};

use crate::wire::{BadReply, DomId, Reply, Request, XsErrno};

/// Default xenstored socket (`XEN_RUN_STORED/socket`).
pub const DEFAULT_SOCKET: &str = "/var/run/xenstored/socket";
/// The xenbus device of a guest or driver domain.
pub const XENBUS_DEVICE: &str = "/dev/xen/xenbus";

/// How many times [`Xs::transaction`] retries on `EAGAIN` before giving up.
pub const TRANSACTION_RETRIES: usize = 1000;

/// Why a xenstore operation failed.
#[derive(Debug, thiserror::Error)]
pub enum XsError {
    /// xenstored answered with an error.
    #[error("xenstore: {0}")]
    Xs(XsErrno),
    /// Reading or writing the connection failed.
    #[error("xenstore connection: {0}")]
    Io(#[from] io::Error),
    /// The request does not fit in `XENSTORE_PAYLOAD_MAX`.
    #[error("request payload of {0} bytes exceeds XENSTORE_PAYLOAD_MAX")]
    TooLong(usize),
    /// The reply does not fit the request.
    #[error("bad reply: {0}")]
    BadReply(#[from] BadReply),
    /// The reply is well-formed but of another kind than the request needs.
    #[error("unexpected reply {0:?}")]
    Unexpected(Box<Reply>),
    /// The server broke the framing.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// xenstored closed the connection.
    #[error("xenstored closed the connection")]
    Closed,
    /// A wait ran out of time.
    #[error("timed out")]
    Timeout,
    /// A value that should be a number or state is not.
    #[error("{path}: unexpected value {value:?}")]
    BadValue {
        /// Node read.
        path: String,
        /// What it held.
        value: String,
    },
}

impl XsError {
    /// The xenstore errno, if xenstored reported one.
    pub fn errno(&self) -> Option<XsErrno> {
        match self {
            Self::Xs(e) => Some(*e),
            _ => None,
        }
    }
}

/// A blocking xenstore connection.
///
/// Watch events that arrive while waiting for a reply are queued; collect them with
/// [`Xs::poll_event`] / [`Xs::wait_event`]. For an event loop, register [`Xs::as_fd`] for
/// readability and call [`Xs::pump`] when it fires: it never blocks.
#[derive(Debug)]
pub struct Xs {
    fd: OwnedFd,
    core: ClientCore,
    path: PathBuf,
}

fn timespec(d: Duration) -> Timespec {
    Timespec {
        tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(d.subsec_nanos()),
    }
}

impl Xs {
    /// Opens xenstore as libxenstore does: `$XENSTORED_PATH`, else
    /// `$XENSTORED_RUNDIR/socket`, else [`DEFAULT_SOCKET`]; if that socket does not exist,
    /// [`XENBUS_DEVICE`].
    pub fn open() -> Result<Self, XsError> {
        let socket = std::env::var_os("XENSTORED_PATH")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("XENSTORED_RUNDIR").map(|d| PathBuf::from(d).join("socket"))
            })
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
        if socket.starts_with("/dev/") {
            return Self::open_xenbus(&socket);
        }
        match Self::connect(&socket) {
            Err(XsError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
                Self::open_xenbus(XENBUS_DEVICE)
            }
            other => other,
        }
    }

    /// Connects to a xenstored unix socket.
    pub fn connect(path: impl AsRef<Path>) -> Result<Self, XsError> {
        let stream = UnixStream::connect(path.as_ref())?;
        Ok(Self::from_fd(stream.into(), path.as_ref()))
    }

    /// Opens the xenbus character device (same framing; whole messages per write).
    pub fn open_xenbus(path: impl AsRef<Path>) -> Result<Self, XsError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path.as_ref())?;
        Ok(Self::from_fd(file.into(), path.as_ref()))
    }

    /// Wraps an already-connected stream or device fd.
    pub fn from_fd(fd: OwnedFd, path: &Path) -> Self {
        Self {
            fd,
            core: ClientCore::new(),
            path: path.to_owned(),
        }
    }

    /// Where this connection was opened.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_all(&mut self, mut buf: &[u8]) -> Result<(), XsError> {
        while !buf.is_empty() {
            match rustix::io::write(&self.fd, buf) {
                Ok(0) => return Err(XsError::Closed),
                Ok(n) => buf = buf.get(n..).unwrap_or_default(),
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => {
                    let mut fds = [PollFd::new(&self.fd, PollFlags::OUT)];
                    poll(&mut fds, None).map_err(io::Error::from)?;
                }
                Err(e) => return Err(io::Error::from(e).into()),
            }
        }
        Ok(())
    }

    /// Waits up to `timeout` (forever if `None`) for input, then reads once.
    /// Returns false on timeout.
    fn read_some(&mut self, timeout: Option<Duration>) -> Result<bool, XsError> {
        let ts = timeout.map(timespec);
        let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
        match poll(&mut fds, ts.as_ref()) {
            Ok(0) => return Ok(false),
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(true),
            Err(e) => return Err(io::Error::from(e).into()),
        }
        let mut buf = [0u8; 8192];
        match rustix::io::read(&self.fd, &mut buf) {
            Ok(0) => Err(XsError::Closed),
            Ok(n) => {
                self.core.receive(buf.get(..n).unwrap_or_default())?;
                Ok(true)
            }
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => Ok(true),
            Err(e) => Err(io::Error::from(e).into()),
        }
    }

    /// Sends `req` in transaction `tx_id` and blocks for its reply (an `XS_ERROR` reply
    /// becomes [`XsError::Xs`]).
    pub fn request(&mut self, tx_id: u32, req: &Request) -> Result<Reply, XsError> {
        let mut out = Vec::new();
        let id = self
            .core
            .send(tx_id, req, &mut out)
            .map_err(XsError::TooLong)?;
        self.write_all(&out)?;
        loop {
            if let Some(reply) = self.core.take_reply(id) {
                return match reply? {
                    Reply::Error(e) => Err(XsError::Xs(e)),
                    r => Ok(r),
                };
            }
            self.read_some(None)?;
        }
    }

    /// Reads whatever the server has sent, without blocking. Returns whether any watch
    /// events are queued.
    pub fn pump(&mut self) -> Result<bool, XsError> {
        while self.read_some(Some(Duration::ZERO))? {
            let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
            if poll(&mut fds, Some(&timespec(Duration::ZERO))).map_err(io::Error::from)? == 0 {
                break;
            }
        }
        Ok(self.core.queued_events() > 0)
    }

    /// The oldest queued watch event, without blocking or reading.
    pub fn poll_event(&mut self) -> Option<WatchEvent> {
        self.core.poll_event()
    }

    /// Blocks until a watch event arrives or `timeout` passes (`Ok(None)`).
    pub fn wait_event(&mut self, timeout: Option<Duration>) -> Result<Option<WatchEvent>, XsError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(ev) = self.core.poll_event() {
                return Ok(Some(ev));
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                return Ok(None);
            }
            self.read_some(left)?;
        }
    }

    /// Blocks until an event for `token` arrives (others stay queued) or `deadline` passes.
    pub fn wait_event_for(
        &mut self,
        token: &str,
        deadline: Option<Instant>,
    ) -> Result<Option<WatchEvent>, XsError> {
        loop {
            if let Some(ev) = self.core.take_event_for(token) {
                return Ok(Some(ev));
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                return Ok(None);
            }
            self.read_some(left)?;
        }
    }

    fn expect_ok(&mut self, req: &Request) -> Result<(), XsError> {
        match self.request(0, req)? {
            Reply::Ok => Ok(()),
            other => Err(XsError::Unexpected(Box::new(other))),
        }
    }

    /// Registers a watch on `path` (absolute, relative or `@introduceDomain` /
    /// `@releaseDomain`). xenstored fires it once straight away.
    pub fn watch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        self.expect_ok(&Request::Watch {
            path: path.into(),
            token: token.into(),
        })
    }

    /// Removes a watch and drops its queued events.
    pub fn unwatch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        self.expect_ok(&Request::Unwatch {
            path: path.into(),
            token: token.into(),
        })?;
        self.core.discard_events_for(token);
        Ok(())
    }

    /// Removes every watch and transaction of this connection.
    pub fn reset_watches(&mut self) -> Result<(), XsError> {
        self.expect_ok(&Request::ResetWatches)
    }

    /// `/local/domain/<domid>`, as xenstored names it.
    pub fn get_domain_path(&mut self, domid: DomId) -> Result<String, XsError> {
        match self.request(0, &Request::GetDomainPath { domid })? {
            Reply::DomainPath(p) => Ok(p),
            other => Err(XsError::Unexpected(Box::new(other))),
        }
    }

    /// Introduces a domain (control domain only); fires `@introduceDomain`.
    pub fn introduce(&mut self, domid: DomId, mfn: u64, port: u32) -> Result<(), XsError> {
        self.expect_ok(&Request::Introduce { domid, mfn, port })
    }

    /// Releases a domain (control domain only); fires `@releaseDomain`.
    pub fn release(&mut self, domid: DomId) -> Result<(), XsError> {
        self.expect_ok(&Request::Release { domid })
    }

    /// Whether `domid` is introduced.
    pub fn is_domain_introduced(&mut self, domid: DomId) -> Result<bool, XsError> {
        match self.request(0, &Request::IsDomainIntroduced { domid })? {
            Reply::IsIntroduced(b) => Ok(b),
            other => Err(XsError::Unexpected(Box::new(other))),
        }
    }

    /// Starts a transaction; it aborts when dropped unless committed.
    pub fn begin(&mut self) -> Result<Transaction<'_>, XsError> {
        match self.request(0, &Request::TransactionStart)? {
            Reply::TransactionStarted(id) => Ok(Transaction::new(self, id)),
            other => Err(XsError::Unexpected(Box::new(other))),
        }
    }

    /// Runs `f` in a transaction and commits it, retrying the whole closure on `EAGAIN`
    /// (from any operation or from the commit) up to [`TRANSACTION_RETRIES`] times.
    pub fn transaction<T>(
        &mut self,
        mut f: impl FnMut(&mut Transaction<'_>) -> Result<T, XsError>,
    ) -> Result<T, XsError> {
        let mut tries = 0;
        loop {
            tries += 1;
            let mut tx = self.begin()?;
            let result = f(&mut tx).and_then(|v| tx.commit().map(|()| v));
            match result {
                Err(XsError::Xs(XsErrno::EAGAIN)) if tries < TRANSACTION_RETRIES => continue,
                other => return other,
            }
        }
    }
}

impl XsOps for Xs {
    fn call(&mut self, req: &Request) -> Result<Reply, XsError> {
        self.request(0, req)
    }
}

impl AsFd for Xs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Xs {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
