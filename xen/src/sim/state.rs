//! The simulated hypervisor's tables: domains, grants, mappings and event channel ports.
//!
//! No sockets here: the broker shell feeds parsed requests and connection events in, and
//! performs the returned [`Effect`]s. Every object is owned by one connection; closing the
//! connection releases everything it owned, as closing /dev/xen/{gntalloc,gntdev,evtchn}
//! does on real Xen.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::sync::Arc;

use rustix::event::EventfdFlags;
use rustix::fs::{MemfdFlags, SealFlags};

use super::wire::{Counters, EndMode, FileKey, Reply, Request, Status};
use crate::{Access, DomId, EvtchnPort, PAGE_SIZE};

mod copiers;
mod grants;
mod locals;

pub use copiers::HAZARD_WAIT;

/// Identifies one client connection.
pub type ConnId = u64;

/// Per-domain limits, so one hostile domain cannot exhaust the broker.
const MAX_GRANTED_PAGES: usize = 16 * 1024;
const MAX_PORTS: usize = 4096;
const MAX_MAPPINGS_PER_CONN: usize = 16 * 1024;
/// Files a connection holds plus dead serials not yet reported to it (a well-behaved
/// client keeps a few hundred at most; see `client::FD_CACHE_MAX`).
const MAX_HELD_PER_CONN: usize = 4096;
/// Linux gntalloc's default `limit` module parameter: the most pages a domain's user space
/// may have granted at once, all processes together (pages ended but still mapped by the
/// grantee count until unmapped).
pub const GNTALLOC_DEFAULT_LIMIT: usize = 1024;
/// Xen reserves the first grant entries for the toolstack (console, xenstore).
const FIRST_GREF: u32 = 8;

/// Something the broker shell must do after a state change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Listen on `<dir>/domains/<domid>/hyp`.
    CreateSocket(DomId),
    /// Close this connection, then call [`State::disconnect`] for it.
    CloseConn(ConnId),
    /// The domain is gone: remove its socket and fire `@releaseDomain`.
    Released(DomId),
}

#[derive(Debug, Default)]
struct Domain {
    conns: BTreeSet<ConnId>,
    ever_connected: bool,
    dying: bool,
    next_gref: u32,
    granted_pages: usize,
    /// The domain's gntalloc `limit`; `None` is [`GNTALLOC_DEFAULT_LIMIT`].
    gntalloc_limit: Option<usize>,
    /// Its grant table in shared memory, made at its first grant or copier (see `copiers`).
    table: Option<copiers::SharedTable>,
}

#[derive(Debug)]
struct Alloc {
    /// Names this allocation's files to clients; never reused.
    serial: u64,
    /// Connections that were sent one of its files (some may have forgotten it since).
    holders: HashSet<ConnId>,
    owner: ConnId,
    granter: DomId,
    grantee: DomId,
    access: Access,
    memfd: Arc<OwnedFd>,
    ro_fd: Option<Arc<OwnedFd>>,
    grefs: Vec<u32>,
    /// Number of live mappings using any page of this allocation.
    mapped_by: u32,
    /// Access ended (no new mappings); freed once `mapped_by` drops to zero.
    revoking: bool,
    /// The broker's own mapping of the memfd, made by the first COPY (see `locals`).
    view: Option<crate::mem::Region>,
}

/// One client connection: its domain, the mappings it owns (for O(1) limits and O(own)
/// cleanup), the files it holds and the dead serials it has not been told about.
#[derive(Debug)]
struct Client {
    domid: DomId,
    mappings: HashSet<u32>,
    held: HashSet<FileKey>,
    dead: Vec<u64>,
    /// Its hazard word, once it copies on its own CPU (COPY_ATTACH).
    hazard: Option<copiers::Copier>,
}

#[derive(Debug)]
struct Mapping {
    owner: ConnId,
    allocs: Vec<u32>,
}

#[derive(Debug)]
enum Remote {
    /// Waiting for `remote` to bind; `peer_rx` is the eventfd the binder will read.
    Unbound {
        remote: DomId,
        peer_rx: Arc<OwnedFd>,
    },
    Bound {
        remote: DomId,
        port: u32,
    },
}

#[derive(Debug)]
struct Port {
    owner: ConnId,
    rx: Arc<OwnedFd>,
    /// The channel's shared page (both ends' mask and pending bits), one per channel.
    words: Arc<OwnedFd>,
    remote: Remote,
}

/// The broker's tables.
#[derive(Debug, Default)]
pub struct State {
    domains: HashMap<DomId, Domain>,
    conns: HashMap<ConnId, Client>,
    next_conn: ConnId,
    allocs: HashMap<u32, Alloc>,
    next_handle: u32,
    /// (granter, gref) → (allocation handle, page index).
    grants: HashMap<(DomId, u32), (u32, u32)>,
    mappings: HashMap<u32, Mapping>,
    next_map: u32,
    next_serial: u64,
    ports: HashMap<(DomId, u32), Port>,
    /// Registered local memories (grant copy), by id.
    locals: HashMap<u32, locals::Local>,
    next_local: u32,
}

/// A successful request's reply and the fds to pass with it.
pub type Outcome = (Reply, Vec<Arc<OwnedFd>>);

fn os(_: rustix::io::Errno) -> Status {
    Status::Resource
}

fn eventfd() -> Result<Arc<OwnedFd>, Status> {
    rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
        .map(Arc::new)
        .map_err(os)
}

/// One page, sealed at that size, holding the two ends' event channel state words (the
/// simulated counterpart of the mask and pending bits in `shared_info`).
fn channel_page() -> Result<Arc<OwnedFd>, Status> {
    let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
    let memfd = rustix::fs::memfd_create("pvusb-evtchn", flags).map_err(os)?;
    rustix::fs::ftruncate(&memfd, PAGE_SIZE as u64).map_err(os)?;
    // As for grant files: a peer holding the fd must not shrink the page under the other.
    let seals = SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL;
    rustix::fs::fcntl_add_seals(&memfd, seals).map_err(os)?;
    Ok(Arc::new(memfd))
}

/// Throws away events sent to a port nobody was bound to (Xen drops them too).
fn drain(fd: &OwnedFd) {
    let mut buf = [0u8; 8];
    while rustix::io::read(fd, &mut buf).is_ok() {}
}

fn next_id(counter: &mut u32, taken: impl Fn(u32) -> bool) -> Result<u32, Status> {
    for _ in 0..1024 {
        *counter = counter.wrapping_add(1).max(1);
        if !taken(*counter) {
            return Ok(*counter);
        }
    }
    Err(Status::Resource)
}

impl State {
    /// A broker with dom0 only.
    pub fn new() -> State {
        let mut s = State::default();
        s.domains.insert(
            DomId::DOM0,
            Domain {
                next_gref: FIRST_GREF,
                ..Domain::default()
            },
        );
        s
    }

    /// Sets `domid`'s gntalloc limit (the guest admin's write to
    /// `/sys/module/xen_gntalloc/parameters/limit`); `None` restores the default. Takes
    /// effect at the domain's next allocation; what is granted already stays.
    pub fn set_gntalloc_limit(&mut self, domid: DomId, limit: Option<usize>) {
        if let Some(d) = self.domains.get_mut(&domid) {
            d.gntalloc_limit = limit;
        }
    }

    /// The domain a connection belongs to.
    pub fn domid_of(&self, conn: ConnId) -> Option<DomId> {
        self.conns.get(&conn).map(|c| c.domid)
    }

    /// The live-object counters.
    pub fn counters(&self) -> Counters {
        let n = |x: usize| u32::try_from(x).unwrap_or(u32::MAX);
        Counters {
            grants: n(self.allocs.values().map(|a| a.grefs.len()).sum()),
            mappings: n(self.mappings.len()),
            channels: n(self.ports.len()),
            domains: n(self.domains.len()),
            connections: n(self.conns.len()),
            locals: n(self.locals.len()),
        }
    }

    /// Whether `domid` exists and is not dying.
    pub fn is_live(&self, domid: DomId) -> bool {
        self.domains.get(&domid).is_some_and(|d| !d.dying)
    }

    /// Registers a new connection through `domid`'s socket; `None` if the domain is gone.
    pub fn connect(&mut self, domid: DomId) -> Option<ConnId> {
        let dom = self.domains.get_mut(&domid).filter(|d| !d.dying)?;
        self.next_conn += 1;
        let conn = self.next_conn;
        dom.conns.insert(conn);
        dom.ever_connected = true;
        self.conns.insert(
            conn,
            Client {
                domid,
                mappings: HashSet::new(),
                held: HashSet::new(),
                dead: Vec::new(),
                hazard: None,
            },
        );
        Some(conn)
    }

    /// Creates a domain (the control-domain operation).
    pub fn create_domain(&mut self, domid: DomId) -> Result<Vec<Effect>, Status> {
        if domid == DomId::DOM0 || self.domains.contains_key(&domid) {
            return Err(Status::DomainExists);
        }
        self.domains.insert(
            domid,
            Domain {
                next_gref: FIRST_GREF,
                ..Domain::default()
            },
        );
        Ok(vec![Effect::CreateSocket(domid)])
    }

    /// Destroys a domain: closes its connections, which releases what it owned.
    pub fn destroy_domain(&mut self, domid: DomId) -> Result<Vec<Effect>, Status> {
        if domid == DomId::DOM0 {
            return Err(Status::NotPermitted);
        }
        let dom = self
            .domains
            .get_mut(&domid)
            .filter(|d| !d.dying)
            .ok_or(Status::NoSuchDomain)?;
        dom.dying = true;
        if dom.conns.is_empty() {
            self.domains.remove(&domid);
            return Ok(vec![Effect::Released(domid)]);
        }
        Ok(dom.conns.iter().map(|&c| Effect::CloseConn(c)).collect())
    }

    /// A connection closed (or was closed): release everything it owned. The domain dies
    /// with its last connection (dom0 never dies).
    pub fn disconnect(&mut self, conn: ConnId) -> Vec<Effect> {
        let Some(client) = self.conns.remove(&conn) else {
            return Vec::new();
        };
        let domid = client.domid;
        self.forget_locals_of(conn);
        for id in client.mappings {
            self.unmap(id);
        }
        let handles: Vec<u32> = self
            .allocs
            .iter()
            .filter(|(_, a)| a.owner == conn)
            .map(|(&h, _)| h)
            .collect();
        for h in handles {
            self.end_grant(h, EndMode::Defer).ok();
        }
        let ports: Vec<(DomId, u32)> = self
            .ports
            .iter()
            .filter(|(_, p)| p.owner == conn)
            .map(|(&k, _)| k)
            .collect();
        for key in ports {
            self.close_port(key);
        }
        let Some(dom) = self.domains.get_mut(&domid) else {
            return Vec::new();
        };
        dom.conns.remove(&conn);
        if domid != DomId::DOM0 && dom.conns.is_empty() && (dom.dying || dom.ever_connected) {
            self.domains.remove(&domid);
            return vec![Effect::Released(domid)];
        }
        Vec::new()
    }

    /// The connections whose queued messages the broker must handle before `req` from
    /// `conn`, so that `req` sees every one-way message sent before it was (causally) sent.
    ///
    /// A mapper reports unmaps one-way and may answer its peer (push a ring response) right
    /// after; a GRANT_END(refuse) from the granter that follows must not report StillMapped
    /// for a mapping that is already gone. So when it would, the grantee's connections are
    /// drained first; COUNTERS drains everyone. Both are rare, so the O(connections) is fine.
    pub fn drain_before(&self, conn: ConnId, req: &Request) -> Vec<ConnId> {
        match req {
            Request::Counters => self.conns.keys().copied().filter(|&c| c != conn).collect(),
            Request::GrantEnd {
                handle,
                mode: EndMode::Refuse,
            } => match self.allocs.get(handle) {
                Some(a) if a.owner == conn && a.mapped_by > 0 => self
                    .domains
                    .get(&a.grantee)
                    .map(|d| d.conns.iter().copied().filter(|&c| c != conn).collect())
                    .unwrap_or_default(),
                _ => Vec::new(),
            },
            _ => Vec::new(),
        }
    }

    /// Handles one request from `conn`.
    pub fn handle(&mut self, conn: ConnId, req: Request) -> (Result<Outcome, Status>, Vec<Effect>) {
        let Some(me) = self.conns.get(&conn).map(|c| c.domid) else {
            return (Err(Status::NoSuchDomain), Vec::new());
        };
        let op = req.op();
        let done = |r: Result<(), Status>| r.map(|()| (Reply::Done { op }, Vec::new()));
        match req {
            Request::DomainCreate { domid } if me == DomId::DOM0 => match self.create_domain(domid)
            {
                Ok(fx) => (Ok((Reply::Done { op }, Vec::new())), fx),
                Err(s) => (Err(s), Vec::new()),
            },
            Request::DomainDestroy { domid } if me == DomId::DOM0 => {
                match self.destroy_domain(domid) {
                    Ok(fx) => (Ok((Reply::Done { op }, Vec::new())), fx),
                    Err(s) => (Err(s), Vec::new()),
                }
            }
            Request::Counters if me == DomId::DOM0 => (
                Ok((Reply::Counters(self.counters()), Vec::new())),
                Vec::new(),
            ),
            Request::DomainCreate { .. } | Request::DomainDestroy { .. } | Request::Counters => {
                (Err(Status::NotPermitted), Vec::new())
            }
            // The side channel is a socket: the broker shell opens it, the tables know nothing.
            // LOCAL_REGISTER carries an fd: the shell calls `register_local` with it.
            Request::SideOpen | Request::LocalRegister { .. } => {
                (Err(Status::BadRequest), Vec::new())
            }
            Request::LocalForget { id } => (done(self.forget_local(conn, id)), Vec::new()),
            Request::Copy { domid, local, segs } => {
                (self.copy(conn, me, domid, local, &segs), Vec::new())
            }
            Request::GrantAlloc {
                grantee,
                count,
                access,
            } => (self.grant(conn, me, grantee, count, access), Vec::new()),
            Request::GrantEnd { handle, mode } => {
                let r = match self.allocs.get(&handle) {
                    Some(a) if a.owner == conn => self.end_grant(handle, mode),
                    _ => Err(Status::NoSuchObject),
                };
                (done(r), Vec::new())
            }
            Request::Map { domid, maps } => {
                (self.map_batch(conn, me, domid, &maps, false), Vec::new())
            }
            Request::Files { domid, maps } => {
                (self.map_batch(conn, me, domid, &maps, true), Vec::new())
            }
            Request::CopyAttach { domid } => (self.attach_copier(conn, domid), Vec::new()),
            Request::Forget { files } => {
                self.forget(conn, &files);
                (Ok((Reply::Done { op }, Vec::new())), Vec::new())
            }
            Request::Unmap { map_id } | Request::UnmapOneway { map_id } => {
                let r = match self.mappings.get(&map_id) {
                    Some(m) if m.owner == conn => {
                        self.unmap(map_id);
                        Ok(())
                    }
                    _ => Err(Status::NoSuchObject),
                };
                (done(r), Vec::new())
            }
            Request::EvtchnAllocUnbound { remote } => {
                (self.alloc_unbound(conn, me, remote), Vec::new())
            }
            Request::EvtchnBind {
                remote,
                remote_port,
            } => (self.bind(conn, me, remote, remote_port.0), Vec::new()),
            Request::EvtchnUnbind { port } => {
                let r = match self.ports.get(&(me, port.0)) {
                    Some(p) if p.owner == conn => {
                        self.close_port((me, port.0));
                        Ok(())
                    }
                    _ => Err(Status::NoSuchObject),
                };
                (done(r), Vec::new())
            }
        }
    }

    fn new_port(&self, me: DomId) -> Result<u32, Status> {
        if self.ports.keys().filter(|(d, _)| *d == me).count() >= MAX_PORTS {
            return Err(Status::Resource);
        }
        // Port 0 is never valid in Xen.
        (1..=u32::try_from(MAX_PORTS).unwrap_or(u32::MAX))
            .find(|p| !self.ports.contains_key(&(me, *p)))
            .ok_or(Status::Resource)
    }

    fn alloc_unbound(&mut self, conn: ConnId, me: DomId, remote: DomId) -> Result<Outcome, Status> {
        if !self.is_live(remote) {
            return Err(Status::NoSuchDomain);
        }
        let port = self.new_port(me)?;
        let (rx, peer_rx, words) = (eventfd()?, eventfd()?, channel_page()?);
        let fds = vec![rx.clone(), peer_rx.clone(), words.clone()];
        self.ports.insert(
            (me, port),
            Port {
                owner: conn,
                rx,
                words,
                remote: Remote::Unbound { remote, peer_rx },
            },
        );
        Ok((
            Reply::Port {
                op: Request::EvtchnAllocUnbound { remote }.op(),
                port: EvtchnPort(port),
            },
            fds,
        ))
    }

    fn bind(
        &mut self,
        conn: ConnId,
        me: DomId,
        remote: DomId,
        rport: u32,
    ) -> Result<Outcome, Status> {
        if !self.is_live(remote) {
            return Err(Status::NoSuchDomain);
        }
        let port = self.new_port(me)?;
        let theirs = self
            .ports
            .get_mut(&(remote, rport))
            .ok_or(Status::NotBindable)?;
        let peer_rx = match &theirs.remote {
            Remote::Unbound {
                remote: allowed,
                peer_rx,
            } if *allowed == me => peer_rx.clone(),
            _ => return Err(Status::NotBindable),
        };
        theirs.remote = Remote::Bound { remote: me, port };
        let tx = theirs.rx.clone();
        let words = theirs.words.clone();
        drain(&peer_rx);
        let fds = vec![peer_rx.clone(), tx, words.clone()];
        self.ports.insert(
            (me, port),
            Port {
                owner: conn,
                rx: peer_rx,
                words,
                remote: Remote::Bound {
                    remote,
                    port: rport,
                },
            },
        );
        let op = Request::EvtchnBind {
            remote,
            remote_port: EvtchnPort(rport),
        }
        .op();
        Ok((
            Reply::Port {
                op,
                port: EvtchnPort(port),
            },
            fds,
        ))
    }

    /// Closes a port; a bound peer reverts to unbound (offered to us again), as in Xen.
    fn close_port(&mut self, key: (DomId, u32)) {
        let Some(p) = self.ports.remove(&key) else {
            return;
        };
        if let Remote::Bound { remote, port } = p.remote {
            if let Some(peer) = self.ports.get_mut(&(remote, port)) {
                peer.remote = Remote::Unbound {
                    remote: key.0,
                    peer_rx: p.rx,
                };
            }
        }
    }
}

#[cfg(test)]
mod tests;
