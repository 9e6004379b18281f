//! The daemon shell: one mio loop over the listening sockets and every client connection.
//!
//! Non-blocking everywhere. Each connection is read at most [`READ_BUDGET`] bytes per loop
//! turn and only while the engine wants input (its output is draining), so a client that
//! floods, sends half a message or never reads its replies cannot block or starve others.

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use mio::net::{UnixListener, UnixStream};
use mio::{Events, Interest, Poll, Token, Waker};

use super::{control_socket, domain_socket, Action, ConnId, Quotas, Xenstored};
use crate::wire::DomId;

/// Bytes read from one connection per loop turn.
pub const READ_BUDGET: usize = 64 * 1024;

const WAKER: Token = Token(0);
const SIGNALS: Token = Token(1);
const FIRST_TOKEN: usize = 2;

/// Daemon settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// The simulated platform directory (`<dir>/socket`, `<dir>/domains/...`).
    pub dir: PathBuf,
    /// Quotas for unprivileged domains.
    pub quotas: Quotas,
    /// Stop on SIGTERM/SIGINT (the binary); tests use a [`Stopper`] instead.
    pub handle_signals: bool,
}

impl Config {
    /// Defaults for `dir`: xenstored's quotas, no signal handling.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            quotas: Quotas::default(),
            handle_signals: false,
        }
    }
}

/// Why the daemon could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Another daemon answers on the socket.
    #[error("a xenstored is already listening on {0}")]
    AlreadyRunning(PathBuf),
    /// A socket could not be created.
    #[error("binding {path}: {source}")]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// Polling or signal registration failed.
    #[error("event loop: {0}")]
    Io(#[from] io::Error),
    /// The daemon thread panicked.
    #[error("daemon thread panicked")]
    Panicked,
}

/// Stops a running [`Daemon`] from another thread.
#[derive(Clone, Debug)]
pub struct Stopper {
    flag: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl Stopper {
    /// Asks the loop to exit; it removes its sockets on the way out.
    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        if let Err(e) = self.waker.wake() {
            tracing::warn!(error = %e, "waking xenstored");
        }
    }
}

enum Entry {
    Listener(DomId, UnixListener, PathBuf),
    Conn(ConnId, UnixStream),
}

/// The xenstored event loop.
#[derive(Debug)]
pub struct Daemon {
    core: Xenstored,
    poll: Poll,
    dir: PathBuf,
    entries: HashMap<Token, Entry>,
    by_conn: HashMap<ConnId, Token>,
    by_domain: HashMap<DomId, Token>,
    /// Connections that may have unread input left (budget exhausted or held back).
    maybe_readable: Vec<Token>,
    next_token: usize,
    stopper: Stopper,
    signals: Option<(StdUnixStream, Vec<signal_hook::SigId>)>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Entry::Listener(d, _, p) => write!(f, "Listener(dom{d}, {})", p.display()),
            Entry::Conn(c, _) => write!(f, "Conn({c:?})"),
        }
    }
}

fn bind(path: &Path) -> Result<UnixListener, DaemonError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| DaemonError::Bind {
            path: path.to_owned(),
            source,
        })?;
    }
    if path.exists() {
        if StdUnixStream::connect(path).is_ok() {
            return Err(DaemonError::AlreadyRunning(path.to_owned()));
        }
        // A stale socket from a daemon that died: nobody answers on it.
        let _ = std::fs::remove_file(path);
    }
    // Bound and listening under a temporary name, then renamed into place: whoever sees
    // the path can connect at once (binding the path itself leaves a moment between bind
    // and listen in which a client that found the file is refused).
    let err = |source| DaemonError::Bind {
        path: path.to_owned(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.new", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let Ok(listener) = UnixListener::bind(&tmp) else {
        // The longer name may not fit a socket address: bind the path itself.
        return UnixListener::bind(path).map_err(err);
    };
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    Ok(listener)
}

impl Daemon {
    /// Binds `<dir>/socket` and prepares the loop (nothing is served until [`Daemon::run`]).
    pub fn bind(config: Config) -> Result<Self, DaemonError> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let mut d = Self {
            core: Xenstored::new(config.quotas),
            poll,
            dir: config.dir.clone(),
            entries: HashMap::new(),
            by_conn: HashMap::new(),
            by_domain: HashMap::new(),
            maybe_readable: Vec::new(),
            next_token: FIRST_TOKEN,
            stopper: Stopper {
                flag: Arc::new(AtomicBool::new(false)),
                waker,
            },
            signals: None,
        };
        if config.handle_signals {
            let (rx, tx) = StdUnixStream::pair()?;
            rx.set_nonblocking(true)?;
            let mut ids = Vec::new();
            for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
                ids.push(signal_hook::low_level::pipe::register(
                    sig,
                    tx.try_clone()?,
                )?);
            }
            d.poll.registry().register(
                &mut mio::unix::SourceFd(&std::os::fd::AsRawFd::as_raw_fd(&rx)),
                SIGNALS,
                Interest::READABLE,
            )?;
            d.signals = Some((rx, ids));
        }
        d.listen(0, control_socket(&config.dir))?;
        Ok(d)
    }

    /// A handle that stops [`Daemon::run`] from another thread.
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// The engine (for inspection between runs, e.g. in tests).
    pub fn engine(&self) -> &Xenstored {
        &self.core
    }

    fn token(&mut self) -> Token {
        let t = Token(self.next_token);
        self.next_token += 1;
        t
    }

    fn listen(&mut self, domid: DomId, path: PathBuf) -> Result<(), DaemonError> {
        let mut l = bind(&path)?;
        let t = self.token();
        self.poll
            .registry()
            .register(&mut l, t, Interest::READABLE)?;
        self.entries.insert(t, Entry::Listener(domid, l, path));
        self.by_domain.insert(domid, t);
        Ok(())
    }

    fn unlisten(&mut self, domid: DomId) {
        if let Some(t) = self.by_domain.remove(&domid) {
            if let Some(Entry::Listener(_, mut l, path)) = self.entries.remove(&t) {
                let _ = self.poll.registry().deregister(&mut l);
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    /// Serves until stopped (or SIGTERM/SIGINT with `handle_signals`), then removes every
    /// socket it created.
    pub fn run(mut self) -> Result<(), DaemonError> {
        tracing::info!(dir = %self.dir.display(), "xenstored serving");
        let result = self.serve();
        tracing::info!("xenstored stopped");
        result
    }

    fn serve(&mut self) -> Result<(), DaemonError> {
        let mut events = Events::with_capacity(256);
        loop {
            let timeout = (!self.maybe_readable.is_empty()).then_some(Duration::ZERO);
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
            let mut ready: Vec<Token> = std::mem::take(&mut self.maybe_readable);
            for ev in events.iter() {
                match ev.token() {
                    WAKER => {}
                    SIGNALS => {
                        if let Some((rx, _)) = &mut self.signals {
                            let mut buf = [0u8; 64];
                            while matches!(rx.read(&mut buf), Ok(n) if n > 0) {}
                        }
                        tracing::info!("signal received, shutting down");
                        return Ok(());
                    }
                    t => ready.push(t),
                }
            }
            if self.stopper.flag.load(Ordering::SeqCst) {
                return Ok(());
            }
            ready.sort();
            ready.dedup();
            for t in ready {
                self.service(t);
                self.perform_actions()?;
            }
            self.flush_all();
            self.perform_actions()?;
        }
    }

    fn service(&mut self, t: Token) {
        match self.entries.get(&t) {
            Some(Entry::Listener(..)) => self.accept(t),
            Some(Entry::Conn(..)) => self.read_conn(t),
            None => {}
        }
    }

    fn accept(&mut self, t: Token) {
        loop {
            let Some(Entry::Listener(domid, l, _)) = self.entries.get(&t) else {
                return;
            };
            let domid = *domid;
            match l.accept() {
                Ok((mut stream, _)) => {
                    let Some(conn) = self.core.connect(domid) else {
                        continue;
                    };
                    let ct = self.token();
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    if let Err(e) = self.poll.registry().register(&mut stream, ct, interest) {
                        tracing::warn!(error = %e, "registering a client");
                        self.core.disconnect(conn);
                        continue;
                    }
                    tracing::debug!(domid, ?conn, "client connected");
                    self.entries.insert(ct, Entry::Conn(conn, stream));
                    self.by_conn.insert(conn, ct);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!(error = %e, domid, "accept failed");
                    return;
                }
            }
        }
    }

    fn read_conn(&mut self, t: Token) {
        let mut budget = READ_BUDGET;
        let mut buf = [0u8; 16 * 1024];
        loop {
            let Some(Entry::Conn(conn, stream)) = self.entries.get_mut(&t) else {
                return;
            };
            let conn = *conn;
            if !self.core.wants_input(conn) {
                // Resumed when its output drains (see flush_all).
                return;
            }
            if budget == 0 {
                self.maybe_readable.push(t);
                return;
            }
            match stream.read(&mut buf) {
                Ok(0) => return self.drop_conn(conn),
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    self.core.receive(conn, buf.get(..n).unwrap_or_default());
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return self.drop_conn(conn),
            }
        }
    }

    fn flush_all(&mut self) {
        let tokens: Vec<(Token, ConnId)> = self
            .entries
            .iter()
            .filter_map(|(t, e)| match e {
                Entry::Conn(c, _) => Some((*t, *c)),
                Entry::Listener(..) => None,
            })
            .collect();
        for (t, conn) in tokens {
            let was_held = !self.core.wants_input(conn);
            loop {
                let out = self.core.output(conn);
                if out.is_empty() {
                    break;
                }
                let Some(Entry::Conn(_, stream)) = self.entries.get_mut(&t) else {
                    break;
                };
                match stream.write(out) {
                    Ok(0) => break,
                    Ok(n) => self.core.consume_output(conn, n),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => {
                        self.drop_conn(conn);
                        break;
                    }
                }
            }
            if was_held && self.core.wants_input(conn) {
                self.maybe_readable.push(t);
            }
        }
    }

    fn drop_conn(&mut self, conn: ConnId) {
        self.core.disconnect(conn);
        self.forget_conn(conn);
    }

    fn forget_conn(&mut self, conn: ConnId) {
        if let Some(t) = self.by_conn.remove(&conn) {
            if let Some(Entry::Conn(_, mut s)) = self.entries.remove(&t) {
                let _ = self.poll.registry().deregister(&mut s);
                tracing::debug!(?conn, "client gone");
            }
        }
    }

    fn perform_actions(&mut self) -> Result<(), DaemonError> {
        while let Some(a) = self.core.poll_action() {
            match a {
                Action::Close(conn) => {
                    // Deliver what was queued (e.g. the reply before a release) best-effort.
                    self.forget_conn(conn);
                }
                Action::DomainIntroduced(domid) => {
                    let path = domain_socket(&self.dir, domid);
                    if let Err(e) = self.listen(domid, path) {
                        tracing::error!(domid, error = %e, "cannot create domain socket");
                    }
                }
                Action::DomainReleased(domid) => self.unlisten(domid),
            }
        }
        Ok(())
    }
}

impl Drop for Daemon {
    /// Removes every socket this daemon created, whether or not it ever ran.
    fn drop(&mut self) {
        for domid in self.by_domain.keys().copied().collect::<Vec<_>>() {
            self.unlisten(domid);
        }
        if let Some((_, ids)) = self.signals.take() {
            for id in ids {
                signal_hook::low_level::unregister(id);
            }
        }
    }
}

/// A daemon running on its own thread (for tests and embedding).
#[derive(Debug)]
pub struct DaemonHandle {
    stopper: Stopper,
    thread: Option<JoinHandle<Result<(), DaemonError>>>,
    dir: PathBuf,
}

impl DaemonHandle {
    /// `<dir>/socket`.
    pub fn socket(&self) -> PathBuf {
        control_socket(&self.dir)
    }

    /// `<dir>/domains/<domid>/xenstore`.
    pub fn domain_socket(&self, domid: DomId) -> PathBuf {
        domain_socket(&self.dir, domid)
    }

    /// Stops the daemon and waits for it to remove its sockets.
    pub fn stop(mut self) -> Result<(), DaemonError> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<(), DaemonError> {
        self.stopper.stop();
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| DaemonError::Panicked)?,
            None => Ok(()),
        }
    }
}

impl Drop for DaemonHandle {
    fn drop(&mut self) {
        if let Err(e) = self.stop_inner() {
            tracing::warn!(error = %e, "stopping xenstored");
        }
    }
}

/// Binds `<dir>/socket` and serves on a new thread; the socket accepts connections as soon
/// as this returns.
pub fn spawn(dir: impl Into<PathBuf>) -> Result<DaemonHandle, DaemonError> {
    let dir = dir.into();
    let daemon = Daemon::bind(Config::new(dir.clone()))?;
    let stopper = daemon.stopper();
    let thread = std::thread::Builder::new()
        .name("xenstored".into())
        .spawn(move || daemon.run())?;
    Ok(DaemonHandle {
        stopper,
        thread: Some(thread),
        dir,
    })
}
