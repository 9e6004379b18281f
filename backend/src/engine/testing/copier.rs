//! An in-process hypervisor for grant copy over a [`FakeMemory`]: grant ref `n` is page `n`
//! of its arena, some references can be made read-only or revoked, and every call is
//! counted, so tests can check what [`crate::engine::copy::Copied`] asks of Xen.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use pvusb_ring::wire::PAGE_SIZE;
use pvusb_xen::{
    AllocError, CopyDir, CopyError, CopySeg, DomId, GrantCopier, LocalPages, SegError,
};

use super::FakeMemory;

/// Grant copy against a [`FakeMemory`].
#[derive(Debug, Clone)]
pub struct FakeCopier {
    mem: FakeMemory,
    read_only: Arc<Mutex<HashSet<u32>>>,
    revoked: Arc<Mutex<HashSet<u32>>>,
    /// Copy calls made.
    pub calls: Arc<AtomicUsize>,
}

impl FakeCopier {
    /// Copies to and from `mem`'s pages; every page granted writable.
    pub fn new(mem: FakeMemory) -> Self {
        FakeCopier {
            mem,
            read_only: Arc::default(),
            revoked: Arc::default(),
            calls: Arc::default(),
        }
    }

    /// Grants page `gref` read-only from now on.
    pub fn set_read_only(&self, gref: u32) {
        self.read_only
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(gref);
    }

    /// Ends access to page `gref` (copies of it fail from now on).
    pub fn revoke(&self, gref: u32) {
        self.revoked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(gref);
    }

    /// Copy calls made so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn one(&self, local: &LocalPages, s: &CopySeg) -> Result<(), SegError> {
        let gref = s.gref.0;
        let granted = (gref as usize) * PAGE_SIZE < self.mem.arena().len()
            && !self
                .revoked
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&gref);
        if !granted {
            return Err(SegError::BadGref);
        }
        let ro = self
            .read_only
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&gref);
        if ro && s.dir == CopyDir::ToGrant {
            return Err(SegError::ReadOnly);
        }
        let len = usize::from(s.len);
        let in_page = usize::from(s.offset);
        if in_page + len > PAGE_SIZE || s.local.checked_add(len).is_none_or(|e| e > local.len()) {
            return Err(SegError::OutOfRange);
        }
        let at = gref as usize * PAGE_SIZE + in_page;
        let mut buf = vec![0u8; len];
        let ok = match s.dir {
            CopyDir::FromGrant => {
                self.mem.arena().read(at, &mut buf).is_ok() && local.write_at(s.local, &buf).is_ok()
            }
            CopyDir::ToGrant => {
                local.read_at(s.local, &mut buf).is_ok() && self.mem.arena().write(at, &buf).is_ok()
            }
        };
        if ok {
            Ok(())
        } else {
            Err(SegError::OutOfRange)
        }
    }
}

impl GrantCopier for FakeCopier {
    fn alloc_local(&self, pages: usize) -> Result<LocalPages, AllocError> {
        LocalPages::anonymous(pages)
    }

    fn copy(
        &self,
        _domid: DomId,
        local: &LocalPages,
        segs: &[CopySeg],
    ) -> Result<Vec<Result<(), SegError>>, CopyError> {
        if segs.len() > pvusb_xen::copy::MAX_COPY_SEGS {
            return Err(CopyError::TooMany(segs.len()));
        }
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(segs.iter().map(|s| self.one(local, s)).collect())
    }
}
