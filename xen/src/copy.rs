//! Grant copy (`GNTTABOP_copy`, gntdev's `IOCTL_GNTDEV_GRANT_COPY`): the hypervisor copies
//! bytes between pages another domain granted and this domain's own memory, so a backend
//! never maps the guest's data pages at all.
//!
//! This is how QEMU's block backend moved data once mapping and unmapping per request
//! (TLB shootdowns included) dominated its profile ("xen_disk: remove use of grant
//! map/unmap"). A copy checks the grant like a map does: a read-only grant can be copied
//! from but never written.
//!
//! The local side of a copy is [`LocalPages`]: memory this process owns and the hypervisor
//! can reach. On Xen any memory is reachable (gntdev takes a virtual address); on the
//! simulated platform it is a memfd the broker also maps, so a backend allocates one
//! [`LocalPages`] up front and carves its bounce buffers out of it.

use std::fmt;
use std::sync::Arc;

use pvusb_ring::shm::Shm;

use crate::error::{AllocError, BrokerError};
use crate::mem::Region;
use crate::{DomId, GrantRef, PAGE_SIZE};

/// Which way a [`CopySeg`] moves bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CopyDir {
    /// From the granted page into local memory (an OUT transfer's data).
    FromGrant,
    /// From local memory into the granted page (an IN transfer's data); the grant must be
    /// writable.
    ToGrant,
}

/// One segment of a [`GrantCopier::copy`] call (`struct gntdev_grant_copy_segment`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopySeg {
    /// The granted page.
    pub gref: GrantRef,
    /// Byte offset in the granted page.
    pub offset: u16,
    /// Bytes to copy; `offset + len` must not exceed [`PAGE_SIZE`].
    pub len: u16,
    /// Byte offset in the [`LocalPages`]; `local + len` must not exceed its length.
    pub local: usize,
    /// Which way.
    pub dir: CopyDir,
}

/// Why one segment of a copy failed (the hypervisor's `GNTST_*` status, or a bound the
/// caller broke). The other segments of the call are unaffected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SegError {
    /// The reference is not granted to this domain by that domain (`GNTST_bad_gntref`,
    /// `GNTST_bad_domain`).
    #[error("grant reference not granted to us")]
    BadGref,
    /// Writing into a read-only grant (`GNTST_permission_denied`).
    #[error("grant is read-only")]
    ReadOnly,
    /// The segment crosses the granted page's end or lies outside the local pages.
    #[error("segment out of range")]
    OutOfRange,
    /// Any other hypervisor status (`GNTST_general_error`, ...): the raw `GNTST_*` value.
    #[error("grant copy status {0}")]
    Status(i16),
}

/// A whole copy call failed (nothing can be assumed copied).
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// No gntdev device.
    #[error(transparent)]
    Device(#[from] crate::error::DeviceError),
    /// The ioctl failed as a whole.
    #[error("IOCTL_GNTDEV_GRANT_COPY: {0}")]
    Ioctl(rustix::io::Errno),
    /// Too many segments for one call (more than [`MAX_COPY_SEGS`]).
    #[error("{0} segments in one copy call (at most {MAX_COPY_SEGS})")]
    TooMany(usize),
    /// The local pages belong to another platform instance (sim: not registered by this
    /// broker connection, e.g. [`LocalPages::anonymous`] or another connection's).
    #[error("the local pages are not known to this platform")]
    ForeignLocal,
    /// The simulated broker failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// The most segments one [`GrantCopier::copy`] call takes (both platforms): 64 requests of
/// 17 pages each, with room.
pub const MAX_COPY_SEGS: usize = 2048;

/// Refuses a call of more than [`MAX_COPY_SEGS`] segments (both platforms).
pub(crate) fn check_count(segs: &[CopySeg]) -> Result<(), CopyError> {
    if segs.len() > MAX_COPY_SEGS {
        return Err(CopyError::TooMany(segs.len()));
    }
    Ok(())
}

/// What must happen when [`LocalPages`] are dropped, after the memory is unmapped (the sim
/// tells the broker to forget them).
pub(crate) trait Forget: Send + Sync + fmt::Debug {
    fn forget(self: Box<Self>);
}

/// Memory of this process that grant copies can reach; unmapped on drop.
///
/// Accessed only through [`LocalPages::shm`] views (volatile copies): the hypervisor
/// (on the sim, the broker process) writes it during copies.
#[derive(Debug)]
pub struct LocalPages {
    // Declared before `forget`: the memory is unmapped before the broker forgets it.
    region: Region,
    /// Which broker registration this is (sim), `None` for plain memory.
    pub(crate) sim_id: Option<u32>,
    _forget: ForgetOnDrop,
}

#[derive(Debug)]
struct ForgetOnDrop(Option<Box<dyn Forget>>);

impl Drop for ForgetOnDrop {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f.forget();
        }
    }
}

impl LocalPages {
    /// `pages` zeroed pages of plain anonymous memory: what the real platform hands out, and
    /// what an in-process test copier can use.
    pub fn anonymous(pages: usize) -> Result<LocalPages, AllocError> {
        check_pages(pages)?;
        let region = Region::anonymous(pages).map_err(|errno| AllocError::Os {
            op: "mmap of local pages",
            errno,
        })?;
        Ok(LocalPages {
            region,
            sim_id: None,
            _forget: ForgetOnDrop(None),
        })
    }

    /// Local pages over `region`, registered as `sim_id` with a broker that `forget` tells
    /// when they are gone.
    pub(crate) fn registered(region: Region, sim_id: u32, forget: Box<dyn Forget>) -> Self {
        LocalPages {
            region,
            sim_id: Some(sim_id),
            _forget: ForgetOnDrop(Some(forget)),
        }
    }

    /// Length in bytes (pages × [`PAGE_SIZE`]).
    pub fn len(&self) -> usize {
        self.region.len()
    }

    /// The memory itself (the simulated copier copies on the caller's CPU).
    pub(crate) fn region(&self) -> &Region {
        &self.region
    }

    /// Never true (at least one page).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Start address (what gntdev's `virt` fields point into).
    pub fn as_ptr(&self) -> *mut u8 {
        self.region.as_ptr()
    }

    /// Copies bytes `off..off+buf.len()` out (volatile: the hypervisor may be writing).
    pub fn read_at(&self, off: usize, buf: &mut [u8]) -> Result<(), crate::MemError> {
        self.region.read_at(off, buf)
    }

    /// Copies `data` into bytes `off..off+data.len()`.
    pub fn write_at(&self, off: usize, data: &[u8]) -> Result<(), crate::MemError> {
        self.region.write_at(off, data)
    }

    /// A writable view of the pages; every view keeps them alive.
    pub fn shm(self: &Arc<Self>) -> Shm {
        self.region.shm_of(true, self.clone())
    }
}

/// `GNTST_okay`.
pub const GNTST_OKAY: i16 = 0;
/// `GNTST_general_error`.
pub const GNTST_GENERAL_ERROR: i16 = -1;
/// `GNTST_bad_domain`.
pub const GNTST_BAD_DOMAIN: i16 = -2;
/// `GNTST_bad_gntref`.
pub const GNTST_BAD_GNTREF: i16 = -3;
/// `GNTST_permission_denied`.
pub const GNTST_PERMISSION_DENIED: i16 = -8;
/// `GNTST_bad_copy_arg`.
pub const GNTST_BAD_COPY_ARG: i16 = -10;

impl SegError {
    /// The segment's outcome from a `GNTST_*` status (both platforms report these).
    pub fn from_gntst(status: i16) -> Result<(), SegError> {
        match status {
            GNTST_OKAY => Ok(()),
            GNTST_BAD_GNTREF | GNTST_BAD_DOMAIN => Err(SegError::BadGref),
            GNTST_PERMISSION_DENIED => Err(SegError::ReadOnly),
            GNTST_BAD_COPY_ARG => Err(SegError::OutOfRange),
            other => Err(SegError::Status(other)),
        }
    }

    /// The `GNTST_*` status that [`SegError::from_gntst`] maps back to this error.
    pub fn to_gntst(self) -> i16 {
        match self {
            SegError::BadGref => GNTST_BAD_GNTREF,
            SegError::ReadOnly => GNTST_PERMISSION_DENIED,
            SegError::OutOfRange => GNTST_BAD_COPY_ARG,
            SegError::Status(s) => s,
        }
    }
}

impl CopySeg {
    /// Checks the bounds a caller controls: `offset + len` within the granted page, and
    /// `local + len` within `local_len` bytes of local memory.
    pub fn check_bounds(&self, local_len: usize) -> Result<(), SegError> {
        let in_page = usize::from(self.offset) + usize::from(self.len) <= PAGE_SIZE;
        let in_local = self
            .local
            .checked_add(usize::from(self.len))
            .is_some_and(|end| end <= local_len);
        if in_page && in_local {
            Ok(())
        } else {
            Err(SegError::OutOfRange)
        }
    }
}

/// Checks a page count for [`LocalPages`]: at least one, and a byte length that fits.
pub(crate) fn check_pages(pages: usize) -> Result<usize, AllocError> {
    pages
        .checked_mul(PAGE_SIZE)
        .filter(|&l| l > 0)
        .ok_or(AllocError::BadCount(pages))
}

/// Backend side of grant copy.
pub trait GrantCopier: Send + Sync + fmt::Debug {
    /// `pages` zeroed pages of local memory that [`GrantCopier::copy`] can reach.
    fn alloc_local(&self, pages: usize) -> Result<LocalPages, AllocError>;

    /// Performs `segs`, all naming pages granted by `domid`, against `local`, in one
    /// hypervisor call (one broker round trip on the sim). One result per segment, in order;
    /// a failed segment leaves its destination bytes unspecified and does not affect the
    /// others. Err only when the call as a whole failed.
    fn copy(
        &self,
        domid: DomId,
        local: &LocalPages,
        segs: &[CopySeg],
    ) -> Result<Vec<Result<(), SegError>>, CopyError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_pages_are_zeroed_and_writable_through_shm() {
        let local = Arc::new(LocalPages::anonymous(3).unwrap());
        assert_eq!(local.len(), 3 * PAGE_SIZE);
        assert!(!local.is_empty());
        assert_eq!(local.sim_id, None);
        let shm = local.shm();
        let mut all = vec![0xaa; local.len()];
        shm.read(0, &mut all).unwrap();
        assert!(all.iter().all(|&b| b == 0), "fresh pages are zeroed");
        shm.write(PAGE_SIZE - 2, &[1, 2, 3, 4]).unwrap();
        let mut back = [0u8; 4];
        local.shm().read(PAGE_SIZE - 2, &mut back).unwrap();
        assert_eq!(back, [1, 2, 3, 4]);
        assert!(shm.write(local.len() - 1, &[0, 0]).is_err(), "bounded");
        drop(local);
        // The view keeps the pages mapped after the last LocalPages handle is gone.
        shm.read(PAGE_SIZE - 2, &mut back).unwrap();
        assert_eq!(back, [1, 2, 3, 4]);
    }

    #[test]
    fn zero_or_overflowing_page_counts_are_refused() {
        assert!(matches!(
            LocalPages::anonymous(0),
            Err(AllocError::BadCount(0))
        ));
        assert!(matches!(
            LocalPages::anonymous(usize::MAX),
            Err(AllocError::BadCount(_))
        ));
    }

    #[test]
    fn bounds_are_checked_against_the_page_and_the_local_length() {
        let seg = |offset, len, local| CopySeg {
            gref: GrantRef(1),
            offset,
            len,
            local,
            dir: CopyDir::ToGrant,
        };
        assert_eq!(seg(0, 4096, 0).check_bounds(4096), Ok(()));
        assert_eq!(seg(100, 3000, 5000).check_bounds(8192), Ok(()));
        assert_eq!(seg(4096, 0, 8192).check_bounds(8192), Ok(()));
        assert_eq!(
            seg(1, 4096, 0).check_bounds(8192),
            Err(SegError::OutOfRange)
        );
        assert_eq!(
            seg(0, 2, 8191).check_bounds(8192),
            Err(SegError::OutOfRange)
        );
        assert_eq!(
            seg(0, 1, usize::MAX).check_bounds(usize::MAX),
            Err(SegError::OutOfRange)
        );
    }
}
