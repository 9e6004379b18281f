//! [`SimPlatform`]: a domain's connection to the broker, implementing the three traits.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rustix::event::epoll;
use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags};

use super::broker::socket_path;
use super::fdpass;
use super::wire::{Counters, EndMode, Reply, Request, Status, MAX_MESSAGE};
use crate::error::{BrokerError, RevokeError};
use crate::mem::{GrantOwner, Region, Unmap};
use crate::{
    Access, AllocError, DomId, EndAccessError, EventChannel, EventChannels, EvtchnError,
    EvtchnPort, GrantAllocator, GrantMapper, GrantMapping, GrantRef, GrantedPages, MapError,
    MAX_PAGES_PER_CALL, PAGE_SIZE,
};

#[derive(Debug)]
struct Conn {
    domid: DomId,
    /// The socket and the last sequence number; one request is in flight at a time.
    sock: Mutex<(OwnedFd, u32)>,
}

fn send_error(e: Errno) -> BrokerError {
    match e {
        Errno::PIPE | Errno::CONNRESET => BrokerError::Closed,
        e => BrokerError::Io(e),
    }
}

impl Conn {
    /// Sends a one-way request (no reply comes). It takes a sequence number like any call,
    /// so a reply can never be mistaken for another's.
    fn send_oneway(&self, req: &Request) -> Result<(), BrokerError> {
        let mut guard = self.sock.lock().unwrap_or_else(|p| p.into_inner());
        let (sock, seq) = &mut *guard;
        *seq = seq.wrapping_add(1);
        fdpass::send(sock.as_fd(), &req.emit(*seq), &[], SendFlags::empty()).map_err(send_error)
    }

    fn call(&self, req: &Request, max_fds: usize) -> Result<(Reply, Vec<OwnedFd>), BrokerError> {
        let mut guard = self.sock.lock().unwrap_or_else(|p| p.into_inner());
        let (sock, seq) = &mut *guard;
        *seq = seq.wrapping_add(1);
        let seq = *seq;
        fdpass::send(sock.as_fd(), &req.emit(seq), &[], SendFlags::empty()).map_err(send_error)?;
        let mut buf = [0u8; MAX_MESSAGE];
        loop {
            let got = match fdpass::recv(sock.as_fd(), &mut buf, max_fds, RecvFlags::empty()) {
                Ok(got) => got,
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
            let bytes = buf.get(..got.len).ok_or(BrokerError::BadReply("length"))?;
            let (rseq, reply) =
                Reply::parse(bytes).map_err(|_| BrokerError::BadReply("unparsable"))?;
            if rseq != seq {
                // A reply to an earlier request whose caller gave up: not ours.
                continue;
            }
            if let Reply::Error { op, .. } | Reply::Port { op, .. } | Reply::Done { op } = reply {
                if op != req.op() {
                    return Err(BrokerError::BadReply("reply to another operation"));
                }
            }
            return Ok((reply, got.fds));
        }
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
    /// Connects as `domid` (the socket is the identity).
    pub fn connect(dir: &Path, domid: DomId) -> Result<SimPlatform, BrokerError> {
        let path = socket_path(dir, domid);
        let sock = fdpass::connect(&path).map_err(|errno| BrokerError::Connect {
            path: path.display().to_string(),
            errno,
        })?;
        Ok(SimPlatform {
            conn: Arc::new(Conn {
                domid,
                sock: Mutex::new((sock, 0)),
            }),
        })
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

#[derive(Debug)]
struct SimUnmap {
    conn: Arc<Conn>,
    map_id: u32,
}

impl Unmap for SimUnmap {
    /// Runs after the munmap: nothing here can touch the pages any more, so the broker is
    /// told without waiting for an answer. The broker handles our connection's messages in
    /// order, and drains them before refusing an end of access or reporting counters, so
    /// whoever learns (through us) that the pages are unmapped sees the broker agree.
    fn unmap(self: Box<Self>) {
        if let Err(e) = self.conn.send_oneway(&Request::UnmapOneway {
            map_id: self.map_id,
        }) {
            // The broker also counts our connection's close as the unmap.
            tracing::debug!(map_id = self.map_id, error = %e, "unmap report failed");
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
        if !check_count(refs.len()) {
            return Err(MapError::BadCount(refs.len()));
        }
        let req = Request::Map {
            domid,
            access,
            refs: refs.to_vec(),
        };
        let (reply, fds) = self.conn.call(&req, fdpass::MAX_FDS)?;
        let (map_id, nfds, pages) = match reply {
            Reply::Mapped {
                map_id,
                nfds,
                pages,
            } => (map_id, nfds, pages),
            Reply::Error { status, .. } => {
                return Err(match status {
                    Status::NotGranted => MapError::NotGranted {
                        domid,
                        refs: refs.to_vec(),
                    },
                    Status::ReadOnlyGrant => MapError::ReadOnlyGrant {
                        domid,
                        refs: refs.to_vec(),
                    },
                    Status::NoSuchDomain => MapError::NoSuchDomain(domid),
                    s => MapError::Broker(BrokerError::Refused(s)),
                })
            }
            _ => return Err(BrokerError::BadReply("unexpected reply").into()),
        };
        // From here the broker counts the mapping: release it on every failure path.
        let unmap = Box::new(SimUnmap {
            conn: self.conn.clone(),
            map_id,
        });
        let built = build_mapping(&fds, nfds, &pages, refs.len(), access);
        match built {
            Ok(region) => Ok(GrantMapping::new(region, domid, refs, unmap)),
            Err(e) => {
                unmap.unmap();
                Err(e)
            }
        }
    }
}

fn build_mapping(
    fds: &[OwnedFd],
    nfds: u32,
    pages: &[super::wire::PageLoc],
    count: usize,
    access: Access,
) -> Result<Region, MapError> {
    if usize::try_from(nfds).ok() != Some(fds.len()) || pages.len() != count {
        return Err(BrokerError::BadReply("page list or fds do not match").into());
    }
    // The usual case (a request's pages granted together): one run of one memfd.
    if let Some(first) = pages.first() {
        let one_run = pages.iter().enumerate().all(|(i, p)| {
            p.fd_index == first.fd_index
                && u64::from(p.file_page) == u64::from(first.file_page) + i as u64
        });
        if one_run {
            let fd = usize::try_from(first.fd_index)
                .ok()
                .and_then(|k| fds.get(k))
                .ok_or(BrokerError::BadReply("fd index out of range"))?;
            let offset = u64::from(first.file_page)
                .checked_mul(PAGE_SIZE as u64)
                .ok_or(BrokerError::BadReply("page offset"))?;
            let len = count
                .checked_mul(PAGE_SIZE)
                .ok_or(BrokerError::BadReply("page count"))?;
            return Region::map_shared_populated(fd.as_fd(), offset, len, access).map_err(
                |errno| MapError::Os {
                    op: "mmap grant",
                    errno,
                },
            );
        }
    }
    let mut region = Region::reserve(count, access).map_err(|errno| MapError::Os {
        op: "mmap reserve",
        errno,
    })?;
    // Map runs of consecutive pages of one memfd with one mmap.
    let mut i = 0;
    while let Some(first) = pages.get(i) {
        let mut run = 1;
        while pages.get(i + run).is_some_and(|p| {
            p.fd_index == first.fd_index
                && u64::from(p.file_page) == u64::from(first.file_page) + run as u64
        }) {
            run += 1;
        }
        let fd = usize::try_from(first.fd_index)
            .ok()
            .and_then(|k| fds.get(k))
            .ok_or(BrokerError::BadReply("fd index out of range"))?;
        region
            .map_fixed(i, fd.as_fd(), u64::from(first.file_page), run)
            .map_err(|errno| MapError::Os {
                op: "mmap grant",
                errno,
            })?;
        i += run;
    }
    Ok(region)
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
        let (reply, fds) = self.conn.call(req, 2)?;
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
        let unbind = PortGuard {
            conn: self.conn.clone(),
            port,
        };
        let mut fds = fds.into_iter();
        let (Some(rx), Some(tx), None) = (fds.next(), fds.next(), fds.next()) else {
            return Err(BrokerError::BadReply("a port needs exactly two eventfds").into());
        };
        let os = |op| move |errno| EvtchnError::Os { op, errno };
        let poll = epoll::create(epoll::CreateFlags::CLOEXEC).map_err(os("epoll_create"))?;
        epoll::add(
            &poll,
            &rx,
            epoll::EventData::new_u64(0),
            epoll::EventFlags::IN,
        )
        .map_err(os("epoll_ctl"))?;
        Ok(Box::new(SimChannel {
            rx,
            tx,
            poll,
            masked: AtomicBool::new(false),
            guard: unbind,
        }))
    }
}

/// Unbinds the port at the broker when dropped.
#[derive(Debug)]
struct PortGuard {
    conn: Arc<Conn>,
    port: EvtchnPort,
}

impl Drop for PortGuard {
    fn drop(&mut self) {
        if let Err(e) = self
            .conn
            .call_done(&Request::EvtchnUnbind { port: self.port })
        {
            tracing::debug!(port = self.port.0, error = %e, "unbind failed");
        }
    }
}

/// A simulated port: `rx` is this end's eventfd, `tx` the peer's. The pollable fd is an
/// epoll set holding `rx`; masking removes `rx` from it, so an event sent while masked
/// stays in the eventfd and wakes the poller on unmask — /dev/xen/evtchn's behaviour.
#[derive(Debug)]
struct SimChannel {
    rx: OwnedFd,
    tx: OwnedFd,
    poll: OwnedFd,
    masked: AtomicBool,
    guard: PortGuard,
}

impl AsFd for SimChannel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.poll.as_fd()
    }
}

impl EventChannel for SimChannel {
    fn port(&self) -> EvtchnPort {
        self.guard.port
    }

    fn notify(&self) -> Result<(), EvtchnError> {
        match rustix::io::write(&self.tx, &1u64.to_ne_bytes()) {
            // A saturated counter means an event is pending already.
            Ok(_) | Err(Errno::AGAIN) => Ok(()),
            Err(errno) => Err(EvtchnError::Os {
                op: "eventfd write",
                errno,
            }),
        }
    }

    fn take_pending(&self) -> Result<bool, EvtchnError> {
        if self.masked.load(Ordering::Acquire) {
            return Ok(false);
        }
        let mut buf = [0u8; 8];
        match rustix::io::read(&self.rx, &mut buf) {
            Ok(_) => {
                self.masked.store(true, Ordering::Release);
                // Removing (not just disarming) the eventfd also drops it from the epoll ready
                // list, so the re-add on unmask is a fresh edge for an edge-triggered poller.
                epoll::delete(&self.poll, &self.rx).map_err(|errno| EvtchnError::Os {
                    op: "epoll_ctl mask",
                    errno,
                })?;
                Ok(true)
            }
            Err(Errno::AGAIN) => Ok(false),
            Err(errno) => Err(EvtchnError::Os {
                op: "eventfd read",
                errno,
            }),
        }
    }

    fn unmask(&self) -> Result<(), EvtchnError> {
        if self.masked.swap(false, Ordering::AcqRel) {
            epoll::add(
                &self.poll,
                &self.rx,
                epoll::EventData::new_u64(0),
                epoll::EventFlags::IN,
            )
            .map_err(|errno| EvtchnError::Os {
                op: "epoll_ctl unmask",
                errno,
            })?;
        }
        Ok(())
    }
}
