//! Guest memory as the engine sees it: grant mappings behind a small trait, so the same
//! engine runs over Xen's gntdev, the simulated broker, or (fuzzing) an in-process fake.

use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;

use pvusb_ring::shm::{Access as ShmAccess, Shm};
use pvusb_xen::{Access, DomId, GrantMapper, GrantMapping, GrantRef, MapError};

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
}

/// Maps one frontend domain's grants.
pub trait GuestMemory: Send + fmt::Debug {
    /// Maps `refs` as one contiguous range, writable or read-only.
    fn map(&self, refs: &[u32], writable: bool) -> Result<Box<dyn Mapped>, MapError>;
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
#[derive(Debug, Clone)]
pub struct Grants {
    /// The hypervisor interface.
    pub mapper: Arc<dyn GrantMapper>,
    /// The granting (frontend) domain.
    pub domid: DomId,
}

impl GuestMemory for Grants {
    fn map(&self, refs: &[u32], writable: bool) -> Result<Box<dyn Mapped>, MapError> {
        let refs: Vec<GrantRef> = refs.iter().copied().map(GrantRef).collect();
        let access = if writable {
            Access::Writable
        } else {
            Access::ReadOnly
        };
        Ok(Box::new(self.mapper.map(self.domid, &refs, access)?))
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
