//! Guest memory as the engine sees it: grant mappings behind a small trait, so the same
//! engine runs over Xen's gntdev, the simulated broker, or (fuzzing) an in-process fake.

use std::collections::VecDeque;
use std::fmt;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use pvusb_ring::shm::{Access as ShmAccess, Shm};
use pvusb_xen::{Access, DomId, GrantMapper, GrantMapping, GrantRef, MapError, MapRequest};

/// Pages of the guest mapped into this process, as one contiguous range. Dropping it
/// unmaps them. Only copies go in and out: the guest may write the pages at any time.
pub trait Mapped: Send + Sync + fmt::Debug {
    /// The mapping as a [`Shm`] a ring can work on (a writable one-page ring mapping);
    /// every view of the `Shm` keeps the mapping alive.
    fn into_shm(self: Box<Self>) -> Option<Shm>;
    /// The whole mapping as a data [`Shm`] (read-only when mapped read-only): the engine
    /// copies through it and hands slices of it to the host as URB buffers. The mapping is
    /// unmapped when the last view is dropped.
    fn into_data(self: Box<Self>) -> Option<Shm>;
    /// Length in bytes (pages × 4096).
    fn len(&self) -> usize;
    /// Never true for a real mapping (at least one page).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// How bytes written into the data view reach the guest when the view is a copy of its
    /// pages (grant copy); `None` (the default) when the view *is* the guest's pages.
    fn write_back(&self) -> Option<Arc<dyn WriteBack>> {
        None
    }
}

/// Carries bytes written into a copied data view back to the guest's pages.
pub trait WriteBack: Send + Sync + fmt::Debug {
    /// Queues mapping bytes `off..off+len` for the guest; they reach it in the next
    /// [`GuestMemory::flush`], which the engine calls before publishing any response.
    fn queue(&self, off: usize, len: usize);
    /// True once a flush could not deliver some queued bytes (the guest revoked or never
    /// granted the pages writable): the request must not be answered as a success.
    fn failed(&self) -> bool;
}

/// Maps one frontend domain's grants.
pub trait GuestMemory: Send + fmt::Debug {
    /// Maps `refs` as one contiguous range, writable or read-only.
    fn map(&self, refs: &[u32], writable: bool) -> Result<Box<dyn Mapped>, MapError>;

    /// Announces the maps the next requests will ask for (`(refs, writable)` in order), so
    /// an implementation can make them in one hypervisor call; [`GuestMemory::map`] then
    /// hands out the matching mapping. A hint only: the default ignores it.
    fn prefetch(&self, _maps: &[(Vec<u32>, bool)]) {}

    /// Drops prefetched mappings nobody asked for (call once the batch is served).
    fn end_prefetch(&self) {}

    /// Maps `refs` writable for a buffer the engine reads *and* writes (isochronous frame
    /// descriptors). Differs from `map(refs, true)` only for a copying implementation, which
    /// must then fetch the guest's bytes first.
    fn map_update(&self, refs: &[u32]) -> Result<Box<dyn Mapped>, MapError> {
        self.map(refs, true)
    }

    /// Delivers queued [`WriteBack`] bytes to the guest. Returns how many pieces could not
    /// be delivered (the guest revoked or never granted the pages), for the caller to warn.
    fn flush(&self) -> usize {
        0
    }
}

impl Mapped for GrantMapping {
    fn into_shm(self: Box<Self>) -> Option<Shm> {
        let base = NonNull::new(GrantMapping::as_ptr(&self))?;
        let len = GrantMapping::len(&self);
        let access = match self.access() {
            Access::Writable => ShmAccess::ReadWrite,
            Access::ReadOnly => ShmAccess::ReadOnly,
        };
        let owner: Arc<dyn Send + Sync> = Arc::new(*self);
        // SAFETY: `base..base+len` is this grant mapping, readable (and writable when
        // mapped writable), and stays mapped for as long as `owner` lives; `with_owner`
        // makes every view of the Shm hold `owner`. Nothing in this crate makes a Rust
        // reference into the pages: rings touch them only through Shm's volatile copies
        // and atomics.
        let shm = unsafe { Shm::from_raw_parts(base, len, access) };
        Some(shm.with_owner(owner))
    }
    fn into_data(self: Box<Self>) -> Option<Shm> {
        self.into_shm()
    }
    fn len(&self) -> usize {
        GrantMapping::len(self)
    }
}

/// A frontend domain's grants through a real or simulated [`GrantMapper`].
#[derive(Debug)]
pub struct Grants {
    /// The hypervisor interface.
    pub mapper: Arc<dyn GrantMapper>,
    /// The granting (frontend) domain.
    pub domid: DomId,
    /// Mappings made ahead by [`GuestMemory::prefetch`], in request order, not yet taken.
    prefetched: Mutex<VecDeque<(Vec<u32>, bool, GrantMapping)>>,
}

impl Grants {
    /// `domid`'s grants through `mapper`.
    pub fn new(mapper: Arc<dyn GrantMapper>, domid: DomId) -> Self {
        Grants {
            mapper,
            domid,
            prefetched: Mutex::new(VecDeque::new()),
        }
    }

    fn prefetched(&self) -> std::sync::MutexGuard<'_, VecDeque<(Vec<u32>, bool, GrantMapping)>> {
        // Each update is a single push or remove: a panic cannot leave it half-done.
        self.prefetched.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn access(writable: bool) -> Access {
    if writable {
        Access::Writable
    } else {
        Access::ReadOnly
    }
}

impl GuestMemory for Grants {
    fn map(&self, refs: &[u32], writable: bool) -> Result<Box<dyn Mapped>, MapError> {
        {
            let mut ahead = self.prefetched();
            if let Some(i) = ahead
                .iter()
                .position(|(r, w, _)| *w == writable && r.as_slice() == refs)
            {
                if let Some((_, _, m)) = ahead.remove(i) {
                    return Ok(Box::new(m));
                }
            }
        }
        let refs: Vec<GrantRef> = refs.iter().copied().map(GrantRef).collect();
        Ok(Box::new(self.mapper.map(
            self.domid,
            &refs,
            access(writable),
        )?))
    }

    fn prefetch(&self, maps: &[(Vec<u32>, bool)]) {
        // One map alone gains nothing over mapping it when asked.
        if maps.len() < 2 {
            return;
        }
        let refs: Vec<Vec<GrantRef>> = maps
            .iter()
            .map(|(r, _)| r.iter().copied().map(GrantRef).collect())
            .collect();
        let reqs: Vec<MapRequest<'_>> = refs
            .iter()
            .zip(maps)
            .map(|(refs, (_, w))| MapRequest {
                refs,
                access: access(*w),
            })
            .collect();
        let results = self.mapper.map_batch(self.domid, &reqs);
        let mut ahead = self.prefetched();
        // A failed map is not kept: `map` tries it again and reports the error then.
        for ((r, w), m) in maps.iter().zip(results) {
            if let Ok(m) = m {
                ahead.push_back((r.clone(), *w, m));
            }
        }
    }

    fn end_prefetch(&self) {
        self.prefetched().clear();
    }
}

/// What the engine needs of an event channel: a way to kick the frontend.
pub trait Notify: Send + fmt::Debug {
    /// Sends an event to the frontend.
    fn notify(&self);
}

impl Notify for Arc<dyn pvusb_xen::EventChannel> {
    fn notify(&self) {
        if let Err(e) = pvusb_xen::EventChannel::notify(self.as_ref()) {
            tracing::debug!(error = %e, "event channel notify failed");
        }
    }
}
