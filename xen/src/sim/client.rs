//! [`SimPlatform`]: a domain's connection to the broker, implementing the four traits.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags};

use super::broker::socket_path;
use super::fdpass;
use super::files::FileCache;
use super::wire::{
    Counters, EndMode, Reply, Request, Status, MAX_BATCH, MAX_BATCH_PAGES, MAX_MESSAGE,
};
use crate::error::{BrokerError, RevokeError};
use crate::mem::{GrantOwner, Region};
use crate::{
    Access, AllocError, DomId, EndAccessError, EventChannel, EventChannels, EvtchnError,
    EvtchnPort, GrantAllocator, GrantMapper, GrantMapping, GrantRef, GrantedPages, MapError,
    MapRequest, MAX_PAGES_PER_CALL, PAGE_SIZE,
};

mod channel;
mod copier;
mod direct;
mod mapper;

use channel::{End, PortGuard, SimChannel};

/// The connection's socket and everything that must change in step with the messages on it.
#[derive(Debug)]
struct Wire {
    sock: OwnedFd,
    /// The side channel for one-way messages (the broker does not poll it: sending wakes
    /// nobody); the main socket if the broker gave none or it is full.
    side: Option<OwnedFd>,
    /// The last sequence number used; one call is in flight at a time.
    seq: u32,
    /// Grant files the broker handed over on this connection.
    files: FileCache,
    buf: Box<[u8]>,
}

fn send_error(e: Errno) -> BrokerError {
    match e {
        Errno::PIPE | Errno::CONNRESET => BrokerError::Closed,
        e => BrokerError::Io(e),
    }
}

impl Wire {
    /// Sends a request with the next sequence number. One-way requests take one too, so a
    /// reply can never be mistaken for another's.
    fn send(&mut self, req: &Request) -> Result<u32, BrokerError> {
        self.send_with(req, &[])
    }

    /// [`Wire::send`] with fds attached (LOCAL_REGISTER's memfd).
    fn send_with(&mut self, req: &Request, fds: &[BorrowedFd<'_>]) -> Result<u32, BrokerError> {
        self.seq = self.seq.wrapping_add(1);
        fdpass::send(
            self.sock.as_fd(),
            &req.emit(self.seq),
            fds,
            SendFlags::empty(),
        )
        .map_err(send_error)?;
        Ok(self.seq)
    }

    /// Sends a one-way request, on the side channel when it has room. Both sockets are
    /// read by the broker in an order that keeps every one-way message ahead of what we
    /// send after it.
    fn send_oneway(&mut self, req: &Request) -> Result<(), BrokerError> {
        let Some(side) = &self.side else {
            return self.send(req).map(|_| ());
        };
        self.seq = self.seq.wrapping_add(1);
        match fdpass::send(side.as_fd(), &req.emit(self.seq), &[], SendFlags::DONTWAIT) {
            Ok(()) => Ok(()),
            // Full: the main socket wakes the broker, which reads the side channel first.
            Err(Errno::AGAIN) => self.send(req).map(|_| ()),
            Err(e) => Err(send_error(e)),
        }
    }

    /// Waits for the reply to request `seq` (of operation `op`), looking without sleeping
    /// for the first [`REPLY_SPIN`].
    fn reply(
        &mut self,
        seq: u32,
        op: u32,
        max_fds: usize,
    ) -> Result<(Reply, Vec<OwnedFd>), BrokerError> {
        self.reply_spinning(seq, op, max_fds, REPLY_SPIN)
    }

    /// [`Wire::reply`], looking for the reply without sleeping for `spin`.
    fn reply_spinning(
        &mut self,
        seq: u32,
        op: u32,
        max_fds: usize,
        spin: std::time::Duration,
    ) -> Result<(Reply, Vec<OwnedFd>), BrokerError> {
        let spin_until = std::time::Instant::now() + spin;
        loop {
            let spinning = std::time::Instant::now() < spin_until;
            let flags = if spinning {
                RecvFlags::DONTWAIT
            } else {
                RecvFlags::empty()
            };
            let got = match fdpass::recv(self.sock.as_fd(), &mut self.buf, max_fds, flags) {
                Ok(got) => got,
                Err(Errno::AGAIN) if spinning => {
                    std::thread::yield_now();
                    continue;
                }
                Err(Errno::INTR) => continue,
                Err(Errno::CONNRESET) => return Err(BrokerError::Closed),
                Err(e) => return Err(BrokerError::Io(e)),
            };
            if got.len == 0 {
                return Err(BrokerError::Closed);
            }
            if got.truncated || got.fds_truncated {
                return Err(BrokerError::BadReply("reply or its fds truncated"));
            }
            let bytes = self
                .buf
                .get(..got.len)
                .ok_or(BrokerError::BadReply("length"))?;
            let (rseq, reply) =
                Reply::parse(bytes).map_err(|_| BrokerError::BadReply("unparsable"))?;
            if rseq != seq {
                // A reply to an earlier request whose caller gave up: not ours.
                continue;
            }
            if let Reply::Error { op: rop, .. }
            | Reply::Port { op: rop, .. }
            | Reply::Done { op: rop } = reply
            {
                if rop != op {
                    return Err(BrokerError::BadReply("reply to another operation"));
                }
            }
            return Ok((reply, got.fds));
        }
    }
}

/// How long a caller looks for the broker's reply before it sleeps: a hypercall runs on the
/// calling vCPU, which does not sleep while Xen works, and the broker usually answers well
/// within this.
const REPLY_SPIN: std::time::Duration = std::time::Duration::from_micros(50);

#[derive(Debug)]
struct Conn {
    domid: DomId,
    wire: Mutex<Wire>,
    /// Grant copy on our own CPU ([`CopyVia::Caller`]); one copy at a time per connection,
    /// as the connection has one hazard word.
    direct: Option<Mutex<direct::Direct>>,
    /// Local memories registered on this connection (a copy from another's is refused).
    locals: Mutex<std::collections::HashSet<u32>>,
}

/// Environment variable choosing [`CopyVia`] for [`SimPlatform::connect`]: `broker` for
/// [`CopyVia::Broker`], otherwise [`CopyVia::Caller`] (the benchmark compares both).
pub const COPY_VIA_ENV: &str = "PVUSB_SIM_COPY";

/// Where a simulated grant copy runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyVia {
    /// On the caller's CPU, against the granter's table in shared memory, as a hypercall
    /// runs on the calling vCPU (see [`crate::sim::gnttab`]); the default.
    Caller,
    /// As one COPY round trip to the broker process, which checks and copies.
    Broker,
}

impl CopyVia {
    /// What [`COPY_VIA_ENV`] asks for.
    pub fn from_env() -> CopyVia {
        match std::env::var(COPY_VIA_ENV).as_deref() {
            Ok("broker") => CopyVia::Broker,
            _ => CopyVia::Caller,
        }
    }
}

impl Conn {
    fn lock(&self) -> MutexGuard<'_, Wire> {
        self.wire.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends a one-way request (no reply comes).
    fn send_oneway(&self, req: &Request) -> Result<(), BrokerError> {
        self.lock().send_oneway(req)
    }

    fn call(&self, req: &Request, max_fds: usize) -> Result<(Reply, Vec<OwnedFd>), BrokerError> {
        self.call_with(req, &[], max_fds)
    }

    /// [`Conn::call`] for a request the broker takes a while over: the caller sleeps at once
    /// unless `spin`. (Xen copies on the calling vCPU; the broker is another process, and
    /// on a busy machine a caller spinning through a long copy only takes the CPU the
    /// broker needs.)
    fn call_long(&self, req: &Request, spin: bool) -> Result<Reply, BrokerError> {
        let mut wire = self.lock();
        let seq = wire.send_with(req, &[])?;
        let spin = if spin {
            REPLY_SPIN
        } else {
            std::time::Duration::ZERO
        };
        wire.reply_spinning(seq, req.op(), 0, spin).map(|(r, _)| r)
    }

    /// [`Conn::call`] passing `fds` with the request.
    fn call_with(
        &self,
        req: &Request,
        fds: &[BorrowedFd<'_>],
        max_fds: usize,
    ) -> Result<(Reply, Vec<OwnedFd>), BrokerError> {
        let mut wire = self.lock();
        let seq = wire.send_with(req, fds)?;
        wire.reply(seq, req.op(), max_fds)
    }

    /// A request whose only successful reply is `Done`.
    fn call_done(&self, req: &Request) -> Result<(), BrokerError> {
        match self.call(req, 0)? {
            (Reply::Done { .. }, _) => Ok(()),
            (Reply::Error { status, .. }, _) => Err(BrokerError::Refused(status)),
            _ => Err(BrokerError::BadReply("unexpected reply")),
        }
    }
}

/// One domain's view of the simulated hypervisor: grant mapping, granting and event
/// channels through `<dir>/domains/<domid>/hyp`. Clones share the connection; the domain
/// dies when all connections of all its processes are closed.
#[derive(Debug, Clone)]
pub struct SimPlatform {
    conn: Arc<Conn>,
}

impl SimPlatform {
    /// Connects as `domid` (the socket is the identity), copying as [`CopyVia::from_env`]
    /// says.
    pub fn connect(dir: &Path, domid: DomId) -> Result<SimPlatform, BrokerError> {
        Self::connect_with(dir, domid, CopyVia::from_env())
    }

    /// Connects as `domid`, grant copies running as `via` says.
    pub fn connect_with(
        dir: &Path,
        domid: DomId,
        via: CopyVia,
    ) -> Result<SimPlatform, BrokerError> {
        let path = socket_path(dir, domid);
        let sock = fdpass::connect(&path).map_err(|errno| BrokerError::Connect {
            path: path.display().to_string(),
            errno,
        })?;
        let conn = Conn {
            domid,
            wire: Mutex::new(Wire {
                sock,
                side: None,
                seq: 0,
                files: FileCache::default(),
                buf: vec![0; MAX_MESSAGE].into_boxed_slice(),
            }),
            direct: (via == CopyVia::Caller).then(|| Mutex::new(direct::Direct::default())),
            locals: Mutex::default(),
        };
        // Without a side channel one-way messages go on the main socket: slower, same
        // meaning. A refused connection shows at the first real call.
        match conn.call(&Request::SideOpen, 1) {
            Ok((Reply::Done { .. }, fds)) if fds.len() == 1 => {
                conn.lock().side = fds.into_iter().next();
            }
            Ok(_) => tracing::debug!("the broker gave no side channel"),
            Err(e) => tracing::debug!(error = %e, "no side channel"),
        }
        Ok(SimPlatform {
            conn: Arc::new(conn),
        })
    }

    /// How many grant files (memfds the broker handed over) this connection keeps open;
    /// at most [`super::files::FD_CACHE_MAX`].
    pub fn cached_files(&self) -> usize {
        self.conn.lock().files.len()
    }

    /// The domain this connection speaks for.
    pub fn domid(&self) -> DomId {
        self.conn.domid
    }

    /// Creates a domain and its broker socket (dom0 only).
    pub fn create_domain(&self, domid: DomId) -> Result<(), BrokerError> {
        self.conn.call_done(&Request::DomainCreate { domid })
    }

    /// Destroys a domain (dom0 only): its connections are closed, its grants revoked once
    /// unmapped, its ports closed, and `@releaseDomain` fired.
    pub fn destroy_domain(&self, domid: DomId) -> Result<(), BrokerError> {
        self.conn.call_done(&Request::DomainDestroy { domid })
    }

    /// The broker's live-object counters (dom0 only).
    pub fn counters(&self) -> Result<Counters, BrokerError> {
        match self.conn.call(&Request::Counters, 0)? {
            (Reply::Counters(c), _) => Ok(c),
            (Reply::Error { status, .. }, _) => Err(BrokerError::Refused(status)),
            _ => Err(BrokerError::BadReply("unexpected reply")),
        }
    }
}

fn check_count(n: usize) -> bool {
    n > 0 && n <= MAX_PAGES_PER_CALL
}

impl GrantMapper for SimPlatform {
    fn map(
        &self,
        domid: DomId,
        refs: &[GrantRef],
        access: Access,
    ) -> Result<GrantMapping, MapError> {
        self.map_batch(domid, &[MapRequest { refs, access }])
            .pop()
            .unwrap_or(Err(BrokerError::BadReply("no outcome").into()))
    }

    /// One MAP round trip per [`MAX_BATCH`] requests (or [`MAX_BATCH_PAGES`] pages).
    fn map_batch(
        &self,
        domid: DomId,
        reqs: &[MapRequest<'_>],
    ) -> Vec<Result<GrantMapping, MapError>> {
        let mut out = Vec::with_capacity(reqs.len());
        let mut chunk: Vec<MapRequest<'_>> = Vec::new();
        let mut pages = 0;
        for r in reqs {
            let n = r.refs.len();
            if !check_count(n) {
                // Keep the order: what was queued is sent first.
                out.extend(mapper::map_chunk(&self.conn, domid, &chunk));
                chunk.clear();
                pages = 0;
                out.push(Err(MapError::BadCount(n)));
                continue;
            }
            if chunk.len() == MAX_BATCH || pages + n > MAX_BATCH_PAGES {
                out.extend(mapper::map_chunk(&self.conn, domid, &chunk));
                chunk.clear();
                pages = 0;
            }
            chunk.push(*r);
            pages += n;
        }
        out.extend(mapper::map_chunk(&self.conn, domid, &chunk));
        out
    }
}

#[derive(Debug)]
struct SimGrant {
    conn: Arc<Conn>,
    handle: u32,
    ended: bool,
}

impl GrantOwner for SimGrant {
    fn try_revoke(&mut self) -> Result<(), RevokeError> {
        match self.conn.call_done(&Request::GrantEnd {
            handle: self.handle,
            mode: EndMode::Refuse,
        }) {
            Ok(()) => {
                self.ended = true;
                Ok(())
            }
            Err(BrokerError::Refused(Status::StillMapped)) => Err(RevokeError::StillMapped),
            Err(e) => Err(RevokeError::Other(EndAccessError::Broker(e))),
        }
    }

    fn release(self: Box<Self>) {
        if self.ended {
            return;
        }
        if let Err(e) = self.conn.call_done(&Request::GrantEnd {
            handle: self.handle,
            mode: EndMode::Defer,
        }) {
            tracing::debug!(handle = self.handle, error = %e, "deferred end of access failed");
        }
    }
}

impl GrantAllocator for SimPlatform {
    fn alloc(
        &self,
        domid: DomId,
        count: usize,
        access: Access,
    ) -> Result<GrantedPages, AllocError> {
        let n = u32::try_from(count)
            .ok()
            .filter(|_| check_count(count))
            .ok_or(AllocError::BadCount(count))?;
        let (reply, fds) = self.conn.call(
            &Request::GrantAlloc {
                grantee: domid,
                count: n,
                access,
            },
            1,
        )?;
        let (handle, grefs) = match reply {
            Reply::Granted { handle, grefs } => (handle, grefs),
            Reply::Error {
                status: Status::NoSuchDomain,
                ..
            } => return Err(AllocError::NoSuchDomain(domid)),
            Reply::Error {
                status: Status::GrantLimit,
                ..
            } => return Err(AllocError::Limit { count }),
            Reply::Error { status, .. } => return Err(BrokerError::Refused(status).into()),
            _ => return Err(BrokerError::BadReply("unexpected reply").into()),
        };
        let owner = Box::new(SimGrant {
            conn: self.conn.clone(),
            handle,
            ended: false,
        });
        let region = match (fds.first(), grefs.len() == count) {
            (Some(memfd), true) => {
                Region::map_shared(memfd.as_fd(), 0, count * PAGE_SIZE, Access::Writable).map_err(
                    |errno| AllocError::Os {
                        op: "mmap granted pages",
                        errno,
                    },
                )
            }
            _ => Err(BrokerError::BadReply("grant reply without memfd or with wrong count").into()),
        };
        match region {
            Ok(region) => Ok(GrantedPages::new(region, domid, grefs, access, owner)),
            Err(e) => {
                owner.release();
                Err(e)
            }
        }
    }
}

impl EventChannels for SimPlatform {
    fn alloc_unbound(&self, remote: DomId) -> Result<Box<dyn EventChannel>, EvtchnError> {
        self.open_port(
            &Request::EvtchnAllocUnbound { remote },
            remote,
            EvtchnPort(0),
        )
    }

    fn bind_interdomain(
        &self,
        remote: DomId,
        remote_port: EvtchnPort,
    ) -> Result<Box<dyn EventChannel>, EvtchnError> {
        self.open_port(
            &Request::EvtchnBind {
                remote,
                remote_port,
            },
            remote,
            remote_port,
        )
    }
}

impl SimPlatform {
    fn open_port(
        &self,
        req: &Request,
        remote: DomId,
        rport: EvtchnPort,
    ) -> Result<Box<dyn EventChannel>, EvtchnError> {
        let (reply, fds) = self.conn.call(req, 3)?;
        let port = match reply {
            Reply::Port { port, .. } => port,
            Reply::Error {
                status: Status::NoSuchDomain,
                ..
            } => return Err(EvtchnError::NoSuchDomain(remote)),
            Reply::Error {
                status: Status::NotBindable,
                ..
            } => {
                return Err(EvtchnError::NotBindable {
                    remote,
                    port: rport,
                })
            }
            Reply::Error { status, .. } => return Err(BrokerError::Refused(status).into()),
            _ => return Err(BrokerError::BadReply("unexpected reply").into()),
        };
        let guard = PortGuard {
            conn: self.conn.clone(),
            port,
        };
        let end = match req {
            Request::EvtchnBind { .. } => End::Binder,
            _ => End::Allocator,
        };
        Ok(Box::new(SimChannel::new(fds, end, guard)?))
    }
}
