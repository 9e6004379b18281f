//! The simulated hypervisor broker: one seqpacket socket per domain, an epoll loop, and the
//! [`State`] tables behind a lock.
//!
//! Every client is treated as hostile: a datagram that does not parse gets an error reply
//! (or, without a readable header, its connection is closed); a client that does not read
//! its replies is disconnected instead of blocking the broker.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use rustix::event::{epoll, EventfdFlags};
use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags};
use tracing::{debug, info, warn};

use super::fdpass;
use super::state::{ConnId, Effect, State};
use super::wire::{Counters, Reply, Request, Status, MAX_MESSAGE};
use crate::DomId;

/// Called with each domain that died or was destroyed (the binary sends XS_RELEASE).
pub type ReleaseHook = Box<dyn FnMut(DomId) + Send>;

/// `domid`'s directory under the simulation directory.
fn domain_dir(dir: &Path, domid: DomId) -> PathBuf {
    dir.join("domains").join(domid.0.to_string())
}

/// The path of `domid`'s broker socket under the simulation directory.
pub fn socket_path(dir: &Path, domid: DomId) -> PathBuf {
    domain_dir(dir, domid).join("hyp")
}

/// The file standing for a domain's `/sys/module/xen_gntalloc/parameters/limit`: absent, the
/// domain has Linux's default (1024 pages); an admin raises it by writing a number there. It
/// is read at each of the domain's grant allocations, as the kernel reads its parameter.
pub fn gntalloc_limit_path(dir: &Path, domid: DomId) -> PathBuf {
    domain_dir(dir, domid).join("gntalloc-limit")
}

/// Reads `conn`'s domain's gntalloc limit file into the tables.
fn refresh_gntalloc_limit(inner: &mut Inner, conn: ConnId) {
    let Some(domid) = inner.state.domid_of(conn) else {
        return;
    };
    let path = gntalloc_limit_path(&inner.dir, domid);
    let limit = match std::fs::read_to_string(&path) {
        Ok(text) => match text.trim().parse::<usize>() {
            Ok(n) => Some(n),
            Err(_) => {
                warn!(path = %path.display(), "not a number of pages; the default limit applies");
                None
            }
        },
        Err(_) => None,
    };
    inner.state.set_gntalloc_limit(domid, limit);
}

/// Starting the broker failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A system call failed.
    #[error("{what}: {errno}")]
    Os {
        /// What was being done.
        what: String,
        /// Why.
        errno: Errno,
    },
    /// Creating the socket directory failed.
    #[error("creating {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

mod side;

const WAKER: u64 = 0;
const LISTENER: u64 = 1 << 32;

struct Inner {
    dir: PathBuf,
    state: State,
    listeners: HashMap<DomId, OwnedFd>,
    conns: HashMap<ConnId, OwnedFd>,
    /// The broker's ends of the connections' side channels (not polled; see [`side`]).
    side: HashMap<ConnId, OwnedFd>,
    /// When the side channels were last all read.
    side_read: Instant,
}

struct Shared {
    inner: Mutex<Inner>,
    epoll: OwnedFd,
    waker: OwnedFd,
    stop: AtomicBool,
    hook: Mutex<Option<ReleaseHook>>,
}

/// A running broker (its epoll loop runs on its own thread). Dropping it stops the broker and
/// removes its sockets.
pub struct Broker {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("counters", &lock(&self.shared).state.counters())
            .finish()
    }
}

fn os(what: impl Into<String>) -> impl FnOnce(Errno) -> StartError {
    let what = what.into();
    move |errno| StartError::Os { what, errno }
}

impl Broker {
    /// Starts a broker serving `<dir>/domains/0/hyp`, with no release hook.
    pub fn start(dir: &Path) -> Result<Broker, StartError> {
        Self::start_with_hook(dir, None)
    }

    /// Starts a broker; `hook` is called (on the broker thread, without locks held) with each
    /// domain that is released.
    pub fn start_with_hook(dir: &Path, hook: Option<ReleaseHook>) -> Result<Broker, StartError> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC).map_err(os("epoll_create"))?;
        let waker = rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map_err(os("eventfd"))?;
        epoll::add(
            &epoll,
            &waker,
            epoll::EventData::new_u64(WAKER),
            epoll::EventFlags::IN,
        )
        .map_err(os("epoll_ctl"))?;
        let inner = Inner {
            dir: dir.to_path_buf(),
            state: State::new(),
            listeners: HashMap::new(),
            conns: HashMap::new(),
            side: HashMap::new(),
            side_read: Instant::now(),
        };
        let shared = Arc::new(Shared {
            inner: Mutex::new(inner),
            epoll,
            waker,
            stop: AtomicBool::new(false),
            hook: Mutex::new(hook),
        });
        listen(&shared, &mut lock(&shared), DomId::DOM0)?;
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("pvusb-simhyp".into())
            .spawn(move || run(&s))
            .map_err(|e| StartError::Dir {
                path: dir.to_path_buf(),
                source: e,
            })?;
        info!(dir = %dir.display(), "simulated hypervisor broker started");
        Ok(Broker {
            shared,
            thread: Some(thread),
        })
    }

    /// The live-object counters, after handling every message already queued on any
    /// connection (so a one-way unmap sent before this call is counted).
    pub fn counters(&self) -> Counters {
        let mut released = Vec::new();
        let counters = {
            let mut inner = lock(&self.shared);
            let conns: Vec<ConnId> = inner.conns.keys().copied().collect();
            for c in conns {
                drain(&self.shared, &mut inner, c, &mut released);
            }
            inner.state.counters()
        };
        fire(&self.shared, released);
        counters
    }

    /// Creates domain `domid` and its socket (what dom0's DOMAIN_CREATE does).
    pub fn create_domain(&self, domid: DomId) -> Result<(), Status> {
        let released = {
            let mut inner = lock(&self.shared);
            let fx = inner.state.create_domain(domid)?;
            apply(&self.shared, &mut inner, fx)?
        };
        fire(&self.shared, released);
        Ok(())
    }

    /// Destroys domain `domid`: closes its connections, revokes its grants once unmapped,
    /// closes its ports and releases it.
    pub fn destroy_domain(&self, domid: DomId) -> Result<(), Status> {
        let released = {
            let mut inner = lock(&self.shared);
            let fx = inner.state.destroy_domain(domid)?;
            apply(&self.shared, &mut inner, fx)?
        };
        fire(&self.shared, released);
        Ok(())
    }

    /// Blocks until the broker thread ends (it only ends when stopped).
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            t.join().ok();
        }
    }

    /// A handle that stops the broker from another thread (e.g. a signal handler thread).
    pub fn stopper(&self) -> Stopper {
        Stopper(self.shared.clone())
    }
}

/// Stops a [`Broker`] from another thread.
pub struct Stopper(Arc<Shared>);

impl std::fmt::Debug for Stopper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stopper")
    }
}

impl Stopper {
    /// Asks the broker loop to exit.
    pub fn stop(&self) {
        self.0.stop.store(true, Ordering::SeqCst);
        rustix::io::write(&self.0.waker, &1u64.to_ne_bytes()).ok();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stopper().stop();
        if let Some(t) = self.thread.take() {
            t.join().ok();
        }
        let mut inner = lock(&self.shared);
        let domids: Vec<DomId> = inner.listeners.keys().copied().collect();
        for d in domids {
            std::fs::remove_file(socket_path(&inner.dir, d)).ok();
        }
        inner.listeners.clear();
        inner.conns.clear();
        inner.side.clear();
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, Inner> {
    // A panic while holding the lock would be a broker bug; keep serving the tables anyway.
    shared.inner.lock().unwrap_or_else(|p| p.into_inner())
}

fn listen(shared: &Shared, inner: &mut Inner, domid: DomId) -> Result<(), StartError> {
    let path = socket_path(&inner.dir, domid);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| StartError::Dir {
            path: parent.into(),
            source,
        })?;
    }
    // A socket left by a broker that was killed would make bind fail.
    std::fs::remove_file(&path).ok();
    let what = || format!("listening on {}", path.display());
    let fd = fdpass::socket(true).map_err(os(what()))?;
    rustix::net::bind(&fd, &fdpass::addr(&path).map_err(os(what()))?).map_err(os(what()))?;
    rustix::net::listen(&fd, 64).map_err(os(what()))?;
    let token = epoll::EventData::new_u64(LISTENER | u64::from(domid.0));
    epoll::add(&shared.epoll, &fd, token, epoll::EventFlags::IN).map_err(os(what()))?;
    inner.listeners.insert(domid, fd);
    Ok(())
}

/// Performs effects; returns the released domains (their hooks run after the lock is dropped).
fn apply(shared: &Shared, inner: &mut Inner, effects: Vec<Effect>) -> Result<Vec<DomId>, Status> {
    let mut released = Vec::new();
    let mut queue = effects;
    while let Some(fx) = queue.pop() {
        match fx {
            Effect::CreateSocket(d) => {
                if let Err(e) = listen(shared, inner, d) {
                    warn!(domid = d.0, error = %e, "cannot create the domain's socket");
                    // Nobody can have connected: forget the domain without releasing it.
                    inner.state.destroy_domain(d).ok();
                    return Err(Status::Resource);
                }
                info!(domid = d.0, "domain created");
            }
            Effect::CloseConn(c) => {
                if let Some(fd) = inner.conns.remove(&c) {
                    epoll::delete(&shared.epoll, &fd).ok();
                }
                inner.side.remove(&c);
                queue.extend(inner.state.disconnect(c));
            }
            Effect::Released(d) => {
                if let Some(fd) = inner.listeners.remove(&d) {
                    epoll::delete(&shared.epoll, &fd).ok();
                }
                std::fs::remove_file(socket_path(&inner.dir, d)).ok();
                info!(domid = d.0, "domain released");
                released.push(d);
            }
        }
    }
    Ok(released)
}

fn fire(shared: &Shared, released: Vec<DomId>) {
    if released.is_empty() {
        return;
    }
    let mut hook = shared.hook.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(h) = hook.as_mut() {
        for d in released {
            h(d);
        }
    }
}

fn run(shared: &Shared) {
    let mut events = Vec::with_capacity(64);
    while !shared.stop.load(Ordering::SeqCst) {
        events.clear();
        let timeout = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: side::PERIOD_NS,
        };
        match epoll::wait(
            &shared.epoll,
            rustix::buffer::spare_capacity(&mut events),
            Some(&timeout),
        ) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => {
                tracing::error!(error = %e, "epoll_wait failed; broker stops");
                return;
            }
        }
        for ev in &events {
            let token = ev.data.u64();
            if token == WAKER {
                continue;
            }
            if token & LISTENER != 0 {
                let domid = DomId(u16::try_from(token & 0xffff).unwrap_or(u16::MAX));
                accept(shared, &mut lock(shared), domid);
                continue;
            }
            let Served { released, reply } = serve(shared, &mut lock(shared), token);
            // Release hooks run before the reply: when dom0's destroy returns, xenstored has
            // already been told.
            fire(shared, released);
            if let Some(reply) = reply {
                let released = send_reply(shared, &mut lock(shared), token, reply);
                fire(shared, released);
            }
        }
        let released = side::read_all_if_due(shared, &mut lock(shared));
        fire(shared, released);
    }
}

fn accept(shared: &Shared, inner: &mut Inner, domid: DomId) {
    let Some(listener) = inner.listeners.get(&domid) else {
        return;
    };
    let fd = match rustix::net::accept_with(
        listener,
        rustix::net::SocketFlags::CLOEXEC | rustix::net::SocketFlags::NONBLOCK,
    ) {
        Ok(fd) => fd,
        Err(Errno::AGAIN) => return,
        Err(e) => {
            warn!(domid = domid.0, error = %e, "accept failed");
            return;
        }
    };
    let Some(conn) = inner.state.connect(domid) else {
        return;
    };
    if epoll::add(
        &shared.epoll,
        &fd,
        epoll::EventData::new_u64(conn),
        epoll::EventFlags::IN,
    )
    .is_err()
    {
        inner.state.disconnect(conn);
        return;
    }
    debug!(domid = domid.0, conn, "connected");
    inner.conns.insert(conn, fd);
}

/// What serving messages produced: domains released (their hooks run without the lock),
/// and the reply owed to the connection being served.
#[derive(Default)]
struct Served {
    released: Vec<DomId>,
    reply: Option<PendingReply>,
}

/// The most queued messages one drain handles: a connection's queue is bounded by its
/// sender's socket buffer (a few hundred small datagrams); this only stops a client that
/// keeps sending while we drain.
const MAX_DRAIN: usize = 1024;

/// Reads and answers one request of `conn`, closing the connection on any misbehaviour.
/// Effects are applied before the reply is sent: a client told "domain created" can connect
/// at once.
fn serve(shared: &Shared, inner: &mut Inner, conn: ConnId) -> Served {
    let mut out = Served::default();
    serve_one(shared, inner, conn, &mut out, true);
    out
}

/// Handles every message queued on `conn` (its side channel first), answering each at once
/// (see [`State::drain_before`] for why). Only a client that pipelines requests can have
/// any queued that want a reply; such a reply may go out before the release hooks of the
/// request it answers have run.
fn drain(shared: &Shared, inner: &mut Inner, conn: ConnId, released: &mut Vec<DomId>) {
    side::read(shared, inner, conn, released);
    for _ in 0..MAX_DRAIN {
        let mut out = Served::default();
        let handled = serve_one(shared, inner, conn, &mut out, false);
        released.append(&mut out.released);
        if let Some(reply) = out.reply {
            released.extend(send_reply(shared, inner, conn, reply));
        }
        if !handled {
            return;
        }
    }
}

/// Handles one queued message of `conn`; false when there was none (or the connection was
/// closed). `may_drain`: first drain the connections [`State::drain_before`] names.
fn serve_one(
    shared: &Shared,
    inner: &mut Inner,
    conn: ConnId,
    out: &mut Served,
    may_drain: bool,
) -> bool {
    let close = |inner: &mut Inner, out: &mut Served| {
        out.released
            .extend(apply(shared, inner, vec![Effect::CloseConn(conn)]).unwrap_or_default());
        false
    };
    let Some(fd) = inner.conns.get(&conn) else {
        return false;
    };
    let mut buf = [0u8; MAX_MESSAGE];
    // Room for one fd, so that a client passing fds is detected (and the fds closed).
    let got = match fdpass::recv(fd.as_fd(), &mut buf, 1, RecvFlags::DONTWAIT) {
        Ok(got) => got,
        Err(Errno::AGAIN) | Err(Errno::INTR) => return false,
        Err(_) => return close(inner, out),
    };
    // Zero bytes is the peer's close (a zero-length datagram is refused the same way).
    let Some(bytes) = buf.get(..got.len).filter(|b| !b.is_empty()) else {
        return close(inner, out);
    };
    let Ok((header, body)) = Request::parse_header(bytes) else {
        return close(inner, out);
    };
    let parsed = if got.truncated || got.fds_truncated {
        Err(Status::BadRequest)
    } else {
        Request::parse_body(header.op, body).map_err(|_| Status::BadRequest)
    };
    // Only LOCAL_REGISTER carries an fd (exactly one); any other fd is closed unused.
    let mut fds = got.fds;
    let parsed = match parsed {
        Ok(Request::LocalRegister { .. }) if fds.len() != 1 => Err(Status::BadRequest),
        Ok(Request::LocalRegister { .. }) => parsed,
        _ if !fds.is_empty() => Err(Status::BadRequest),
        p => p,
    };
    // A message that does not parse is answered even if its op is a one-way one.
    let wants_reply = parsed.as_ref().map_or(true, Request::wants_reply);
    // One-way messages the client sent on its side channel before this one come first.
    side::read(shared, inner, conn, &mut out.released);
    if !inner.conns.contains_key(&conn) {
        // A bad side channel closed the connection.
        return false;
    }
    if let Ok(Request::SideOpen) = parsed {
        out.reply = Some(side::open(inner, conn, header.seq));
        return true;
    }
    if let (Ok(req), true) = (&parsed, may_drain) {
        for other in inner.state.drain_before(conn, req) {
            drain(shared, inner, other, &mut out.released);
        }
    }
    let (result, effects) = match (parsed, fds.pop()) {
        (Ok(Request::LocalRegister { pages }), Some(fd)) => {
            (inner.state.register_local(conn, pages, fd), Vec::new())
        }
        (Ok(req), _) => {
            if matches!(req, Request::GrantAlloc { .. }) {
                refresh_gntalloc_limit(inner, conn);
            }
            inner.state.handle(conn, req)
        }
        (Err(s), _) => (Err(s), Vec::new()),
    };
    let applied = match apply(shared, inner, effects) {
        Ok(released) => {
            out.released.extend(released);
            Ok(())
        }
        Err(status) => Err(status),
    };
    let (reply, fds) = match result.and_then(|ok| applied.map(|()| ok)) {
        Ok(ok) => ok,
        Err(status) if !wants_reply => {
            debug!(conn, op = header.op, %status, "one-way request failed");
            return true;
        }
        Err(status) => (
            Reply::Error {
                op: header.op,
                status,
            },
            Vec::new(),
        ),
    };
    if wants_reply {
        out.reply = Some((reply.emit(header.seq), fds));
    }
    true
}

/// A reply's bytes and the fds to pass with it.
type PendingReply = (Vec<u8>, Vec<Arc<OwnedFd>>);

/// Sends a reply; a client that does not take it is disconnected.
fn send_reply(
    shared: &Shared,
    inner: &mut Inner,
    conn: ConnId,
    (bytes, fds): PendingReply,
) -> Vec<DomId> {
    let Some(fd) = inner.conns.get(&conn) else {
        return Vec::new();
    };
    match fdpass::send(
        fd.as_fd(),
        &bytes,
        &fdpass::borrow_all(&fds),
        SendFlags::DONTWAIT,
    ) {
        Ok(()) => Vec::new(),
        Err(e) => {
            debug!(conn, error = %e, "reply not accepted; closing the connection");
            apply(shared, inner, vec![Effect::CloseConn(conn)]).unwrap_or_default()
        }
    }
}
