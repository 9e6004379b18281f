//! Grant copy's tables: local memories registered by connections (LOCAL_REGISTER/FORGET)
//! and COPY itself, checked like a map and done between the broker's own long-lived
//! mappings of the grant files and of the local memfds (no mmap per copy).

use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::SealFlags;

use super::{next_id, ConnId, Outcome, State};
use crate::copy::{SegError, GNTST_BAD_DOMAIN, GNTST_GENERAL_ERROR, GNTST_OKAY};
use crate::mem::Region;
use crate::sim::wire::{Reply, Status, WireSeg};
use crate::{Access, CopyDir, CopySeg, DomId, PAGE_SIZE};

/// Registered local memories per connection (a backend needs one or two).
pub(super) const MAX_LOCALS_PER_CONN: usize = 64;

/// A connection's registered local memory, mapped here for as long as it is registered.
#[derive(Debug)]
pub(super) struct Local {
    pub(super) owner: ConnId,
    region: Region,
}

impl State {
    /// LOCAL_REGISTER: maps `memfd` (`pages` pages, sealed against shrinking so the client
    /// cannot make our mapping fault) and returns its id.
    pub fn register_local(
        &mut self,
        conn: ConnId,
        pages: u32,
        memfd: OwnedFd,
    ) -> Result<Outcome, Status> {
        if !self.conns.contains_key(&conn) {
            return Err(Status::NoSuchDomain);
        }
        if self.locals.values().filter(|l| l.owner == conn).count() >= MAX_LOCALS_PER_CONN {
            return Err(Status::Resource);
        }
        let len = usize::try_from(pages)
            .ok()
            .and_then(|p| p.checked_mul(PAGE_SIZE))
            .ok_or(Status::BadRequest)?;
        let seals = rustix::fs::fcntl_get_seals(&memfd).map_err(|_| Status::BadRequest)?;
        let size = rustix::fs::fstat(&memfd)
            .map_err(|_| Status::BadRequest)?
            .st_size;
        if !seals.contains(SealFlags::SHRINK) || u64::try_from(size).ok() < u64::try_from(len).ok()
        {
            return Err(Status::BadRequest);
        }
        // A read-only description (or a write seal) makes this fail: refused, not faulting.
        let region = Region::map_shared(memfd.as_fd(), 0, len, Access::Writable)
            .map_err(|_| Status::BadRequest)?;
        let id = next_id(&mut self.next_local, |i| self.locals.contains_key(&i))?;
        self.locals.insert(
            id,
            Local {
                owner: conn,
                region,
            },
        );
        Ok((Reply::Registered { id }, Vec::new()))
    }

    /// LOCAL_FORGET (and a closed connection): unmaps the local memory.
    pub(super) fn forget_local(&mut self, conn: ConnId, id: u32) -> Result<(), Status> {
        match self.locals.get(&id) {
            Some(l) if l.owner == conn => {
                self.locals.remove(&id);
                Ok(())
            }
            _ => Err(Status::NoSuchObject),
        }
    }

    /// Drops every local memory `conn` registered.
    pub(super) fn forget_locals_of(&mut self, conn: ConnId) {
        self.locals.retain(|_, l| l.owner != conn);
    }

    /// COPY: one `GNTST_*` status per segment; refused as a whole only when `local` is not
    /// a local memory of `conn`.
    pub(super) fn copy(
        &mut self,
        conn: ConnId,
        me: DomId,
        domid: DomId,
        local: u32,
        segs: &[WireSeg],
    ) -> Result<Outcome, Status> {
        if self.locals.get(&local).is_none_or(|l| l.owner != conn) {
            return Err(Status::NoSuchObject);
        }
        let live = self.is_live(domid);
        let statuses = segs
            .iter()
            .map(|seg| {
                if !live {
                    return GNTST_BAD_DOMAIN;
                }
                match self.copy_one(me, domid, local, seg) {
                    Ok(()) => GNTST_OKAY,
                    Err(e) => e.to_gntst(),
                }
            })
            .collect();
        Ok((Reply::Copied { statuses }, Vec::new()))
    }

    /// One segment, checked in Xen's order: the arguments, then the grant, then its access.
    fn copy_one(
        &mut self,
        me: DomId,
        domid: DomId,
        local: u32,
        seg: &WireSeg,
    ) -> Result<(), SegError> {
        let State {
            locals,
            allocs,
            grants,
            ..
        } = self;
        let local = locals.get(&local).ok_or(SegError::BadGref)?;
        let bounds = CopySeg {
            gref: seg.gref,
            offset: seg.offset,
            len: seg.len,
            local: usize::try_from(seg.local).map_err(|_| SegError::OutOfRange)?,
            dir: seg.dir,
        };
        bounds.check_bounds(local.region.len())?;
        let &(handle, page) = grants.get(&(domid, seg.gref.0)).ok_or(SegError::BadGref)?;
        let alloc = allocs.get_mut(&handle).ok_or(SegError::BadGref)?;
        if alloc.grantee != me || alloc.revoking {
            return Err(SegError::BadGref);
        }
        if seg.dir == CopyDir::ToGrant && alloc.access == Access::ReadOnly {
            return Err(SegError::ReadOnly);
        }
        let general = SegError::Status(GNTST_GENERAL_ERROR);
        if alloc.view.is_none() {
            // Mapped once, on the allocation's first copy, until it is freed.
            let len = alloc.grefs.len() * PAGE_SIZE;
            let r = Region::map_shared(alloc.memfd.as_fd(), 0, len, Access::Writable)
                .map_err(|_| general)?;
            alloc.view = Some(r);
        }
        let view = alloc.view.as_ref().ok_or(general)?;
        let granted = usize::try_from(page)
            .ok()
            .and_then(|p| p.checked_mul(PAGE_SIZE))
            .and_then(|p| p.checked_add(usize::from(seg.offset)))
            .ok_or(general)?;
        let (len, local_off) = (usize::from(seg.len), bounds.local);
        match seg.dir {
            CopyDir::FromGrant => local.region.copy_from(local_off, view, granted, len),
            CopyDir::ToGrant => view.copy_from(granted, &local.region, local_off, len),
        }
        .map_err(|_| general)
    }
}
