//! Grant copy on the simulated platform: local memory is a sealed memfd registered with the
//! broker once (LOCAL_REGISTER); each [`GrantCopier::copy`] call runs on our own CPU
//! ([`super::direct`], the default) or is one COPY round trip ([`super::CopyVia::Broker`]).

use std::os::fd::AsFd;
use std::sync::{Arc, Mutex, MutexGuard};

use rustix::fs::{MemfdFlags, SealFlags};

use super::{Conn, SimPlatform};
use crate::copy::{check_pages, CopyError, CopySeg, Forget, GrantCopier, LocalPages, SegError};
use crate::error::BrokerError;
use crate::mem::Region;
use crate::sim::wire::{Reply, Request, Status, WireSeg, MAX_LOCAL_PAGES};
use crate::{Access, AllocError, DomId};

/// Copies of at most this many bytes wait for the broker spinning, like other calls (a
/// small transfer's latency); larger ones sleep at once: the broker is busy copying on
/// another CPU for longer than a spin lasts.
const SPIN_BYTES: usize = 16 * 1024;

/// Tells the broker, after the munmap, that a local memory is gone (one-way, like an unmap).
#[derive(Debug)]
struct SimForget {
    conn: Arc<Conn>,
    id: u32,
}

impl Forget for SimForget {
    fn forget(self: Box<Self>) {
        lock(&self.conn.locals).remove(&self.id);
        if let Err(e) = self.conn.send_oneway(&Request::LocalForget { id: self.id }) {
            // The broker also forgets it when our connection closes.
            tracing::debug!(id = self.id, error = %e, "local forget report failed");
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn os(op: &'static str) -> impl FnOnce(rustix::io::Errno) -> AllocError {
    move |errno| AllocError::Os { op, errno }
}

impl GrantCopier for SimPlatform {
    fn alloc_local(&self, pages: usize) -> Result<LocalPages, AllocError> {
        let len = check_pages(pages)?;
        let wire_pages = u32::try_from(pages)
            .ok()
            .filter(|_| pages <= MAX_LOCAL_PAGES)
            .ok_or(AllocError::BadCount(pages))?;
        let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
        let memfd = rustix::fs::memfd_create("pvusb-local", flags).map_err(os("memfd_create"))?;
        rustix::fs::ftruncate(&memfd, len as u64).map_err(os("ftruncate of local pages"))?;
        // The broker maps it too: sealed, so nobody can make either mapping fault.
        let seals = SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL;
        rustix::fs::fcntl_add_seals(&memfd, seals).map_err(os("sealing local pages"))?;
        let region = Region::map_shared(memfd.as_fd(), 0, len, Access::Writable)
            .map_err(os("mmap of local pages"))?;
        let req = Request::LocalRegister { pages: wire_pages };
        let id = match self.conn.call_with(&req, &[memfd.as_fd()], 0)? {
            (Reply::Registered { id }, _) => id,
            (Reply::Error { status, .. }, _) => return Err(BrokerError::Refused(status).into()),
            _ => return Err(BrokerError::BadReply("unexpected reply").into()),
        };
        lock(&self.conn.locals).insert(id);
        let forget = Box::new(SimForget {
            conn: self.conn.clone(),
            id,
        });
        // Our memfd closes here; the mapping (ours and the broker's) keeps the memory.
        Ok(LocalPages::registered(region, id, forget))
    }

    fn copy(
        &self,
        domid: DomId,
        local: &LocalPages,
        segs: &[CopySeg],
    ) -> Result<Vec<Result<(), SegError>>, CopyError> {
        crate::copy::check_count(segs)?;
        let id = local.sim_id.ok_or(CopyError::ForeignLocal)?;
        if !lock(&self.conn.locals).contains(&id) {
            return Err(CopyError::ForeignLocal);
        }
        if segs.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(direct) = &self.conn.direct {
            return Ok(lock(direct).copy(&self.conn, domid, local.region(), segs)?);
        }
        // Bounds are the broker's to check, as Xen checks them: an offset beyond 32 bits is
        // sent as one that is out of range anyway (local memory is at most 64 MiB).
        let wire = segs
            .iter()
            .map(|s| WireSeg {
                gref: s.gref,
                offset: s.offset,
                len: s.len,
                local: u32::try_from(s.local).unwrap_or(u32::MAX),
                dir: s.dir,
            })
            .collect();
        let req = Request::Copy {
            domid,
            local: id,
            segs: wire,
        };
        let bytes: usize = segs.iter().map(|s| usize::from(s.len)).sum();
        let spin = bytes <= SPIN_BYTES;
        match self.conn.call_long(&req, spin).map_err(CopyError::Broker)? {
            Reply::Copied { statuses } if statuses.len() == segs.len() => {
                Ok(statuses.into_iter().map(SegError::from_gntst).collect())
            }
            Reply::Copied { .. } => Err(BrokerError::BadReply("status count").into()),
            Reply::Error {
                status: Status::NoSuchObject,
                ..
            } => Err(CopyError::ForeignLocal),
            Reply::Error { status, .. } => Err(BrokerError::Refused(status).into()),
            _ => Err(BrokerError::BadReply("unexpected reply").into()),
        }
    }
}
