//! Mapped grant memory: the crate's mmap/munmap `unsafe`, and the RAII grant handles.
//!
//! No `&`/`&mut` into a mapping is ever created: the peer may write the pages at any time, so
//! access is by volatile copy ([`GrantMapping::read_at`]) or through the raw pointer handed
//! to `pvusb_ring::shm` (which owns the ring's atomics).

use std::fmt;
use std::os::fd::BorrowedFd;
use std::ptr::NonNull;
use std::sync::Arc;

use pvusb_ring::shm::{Access as ShmAccess, Shm, ShmError};

use rustix::io::Errno;
use rustix::mm::{MapFlags, MprotectFlags, ProtFlags};

use crate::error::{EndAccessError, RevokeError};
use crate::{Access, DomId, GrantRef, PAGE_SIZE};

/// Why a copy into or out of mapped grant memory was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MemError {
    /// The range does not lie inside the mapping.
    #[error("bytes {off}..{off}+{len} are outside the {size}-byte mapping")]
    OutOfRange {
        /// Start of the requested range.
        off: usize,
        /// Length of the requested range.
        len: usize,
        /// Size of the mapping.
        size: usize,
    },
    /// The mapping is read-only.
    #[error("the mapping is read-only")]
    ReadOnly,
}

/// A region of address space this process mmap'ed; unmapped on drop.
pub(crate) struct Region {
    ptr: NonNull<u8>,
    len: usize,
    access: Access,
}

// SAFETY: a Region is an address range, not a Rust reference; all access goes through raw
// pointers with volatile copies, which are sound from any thread (the peer writes it anyway).
unsafe impl Send for Region {}
// SAFETY: as above; `&Region` only allows volatile copies and reading the pointer.
unsafe impl Sync for Region {}

fn prot(access: Access) -> ProtFlags {
    match access {
        Access::ReadOnly => ProtFlags::READ,
        Access::Writable => ProtFlags::READ | ProtFlags::WRITE,
    }
}

impl Region {
    /// `mmap(NULL, len, prot, MAP_SHARED, fd, offset)`: how gntdev and gntalloc mappings are
    /// made (the ioctl's `index` is the offset).
    pub(crate) fn map_shared(
        fd: BorrowedFd<'_>,
        offset: u64,
        len: usize,
        access: Access,
    ) -> Result<Region, Errno> {
        Self::mmap_shared(fd, offset, len, access, MapFlags::empty())
    }

    /// [`Region::map_shared`] with the pages populated up front (see [`Region::map_fixed`]):
    /// the simulated mapper's one-run case, one mmap instead of a reservation plus a fill.
    pub(crate) fn map_shared_populated(
        fd: BorrowedFd<'_>,
        offset: u64,
        len: usize,
        access: Access,
    ) -> Result<Region, Errno> {
        Self::mmap_shared(fd, offset, len, access, MapFlags::POPULATE)
    }

    fn mmap_shared(
        fd: BorrowedFd<'_>,
        offset: u64,
        len: usize,
        access: Access,
        extra: MapFlags,
    ) -> Result<Region, Errno> {
        if len == 0 {
            return Err(Errno::INVAL);
        }
        // SAFETY: a fresh mapping chosen by the kernel (NULL hint, no MAP_FIXED) cannot alias
        // any existing Rust object; the Region owns it from here and unmaps it once.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                prot(access),
                MapFlags::SHARED | extra,
                fd,
                offset,
            )?
        };
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(Errno::NOMEM)?;
        Ok(Region { ptr, len, access })
    }

    /// `pages` zeroed pages of private anonymous memory, readable and writable: grant copy's
    /// local side on Xen.
    pub(crate) fn anonymous(pages: usize) -> Result<Region, Errno> {
        Self::mmap_anonymous(
            pages,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::PRIVATE,
            Access::Writable,
        )
    }

    fn mmap_anonymous(
        pages: usize,
        prot: ProtFlags,
        flags: MapFlags,
        access: Access,
    ) -> Result<Region, Errno> {
        let len = pages
            .checked_mul(PAGE_SIZE)
            .filter(|&l| l > 0)
            .ok_or(Errno::INVAL)?;
        // SAFETY: as in map_shared: a fresh kernel-chosen anonymous range owned by the Region.
        let ptr = unsafe { rustix::mm::mmap_anonymous(std::ptr::null_mut(), len, prot, flags)? };
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(Errno::NOMEM)?;
        Ok(Region { ptr, len, access })
    }

    /// Start of the region.
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Copies `len` bytes at `src_off` of `src` to `dst_off` of `self` (the simulated
    /// hypervisor's grant copy, between two of its own long-lived mappings).
    ///
    /// Both mappings are shared with other processes that may write them meanwhile, so
    /// the bytes copied are whatever is there; no Rust reference is made into either. They
    /// may even be two mappings of the same file, hence `ptr::copy` (memmove).
    pub(crate) fn copy_from(
        &self,
        dst_off: usize,
        src: &Region,
        src_off: usize,
        len: usize,
    ) -> Result<(), MemError> {
        if self.access == Access::ReadOnly {
            return Err(MemError::ReadOnly);
        }
        for (r, off) in [(src, src_off), (self, dst_off)] {
            if off.checked_add(len).is_none_or(|end| end > r.len) {
                return Err(MemError::OutOfRange {
                    off,
                    len,
                    size: r.len,
                });
            }
        }
        // SAFETY: both ranges were just checked to lie inside their Region's mapping, which
        // `&self`/`&src` keep mapped for the call (readable, and `self` writable); memfds
        // behind broker mappings are sealed against shrinking, so no page can vanish. The
        // only references involved are the raw pointers; concurrent writers in other
        // processes can make the copied bytes arbitrary but not the copy unsound for us.
        unsafe {
            std::ptr::copy(
                src.ptr.as_ptr().add(src_off),
                self.ptr.as_ptr().add(dst_off),
                len,
            );
        }
        Ok(())
    }

    /// Reserves `pages` pages of address space (PROT_NONE) to be filled by [`Region::map_fixed`]:
    /// the simulated mapper builds one contiguous mapping out of several memfds this way.
    pub(crate) fn reserve(pages: usize, access: Access) -> Result<Region, Errno> {
        Self::mmap_anonymous(
            pages,
            ProtFlags::empty(),
            MapFlags::PRIVATE | MapFlags::NORESERVE,
            access,
        )
    }

    /// Maps `pages` pages of `fd` starting at page `file_page` over this region's pages from
    /// `first_page`, with the region's access.
    pub(crate) fn map_fixed(
        &mut self,
        first_page: usize,
        fd: BorrowedFd<'_>,
        file_page: u64,
        pages: usize,
    ) -> Result<(), Errno> {
        let off = first_page.checked_mul(PAGE_SIZE).ok_or(Errno::INVAL)?;
        let len = pages.checked_mul(PAGE_SIZE).ok_or(Errno::INVAL)?;
        let end = off.checked_add(len).ok_or(Errno::INVAL)?;
        let file_off = file_page
            .checked_mul(PAGE_SIZE as u64)
            .ok_or(Errno::INVAL)?;
        if end > self.len || len == 0 {
            return Err(Errno::INVAL);
        }
        // SAFETY: `off..end` lies inside this Region's reservation, which no Rust reference
        // points into; MAP_FIXED replaces only those pages of our own reservation.
        unsafe {
            rustix::mm::mmap(
                self.ptr.as_ptr().add(off).cast(),
                len,
                prot(self.access),
                // Populate now: one kernel call instead of a page fault per page on first
                // touch (a 64 KiB request is 16 pages, mapped and unmapped per URB).
                MapFlags::SHARED | MapFlags::FIXED | MapFlags::POPULATE,
                fd,
                file_off,
            )?;
        }
        Ok(())
    }

    /// Asks the kernel to make the region writable. Only used to prove that a read-only grant
    /// cannot be upgraded (the sim hands over a read-only file description).
    pub(crate) fn try_mprotect_writable(&self) -> Result<(), Errno> {
        // SAFETY: the range is exactly this Region's own mapping; changing its protection does
        // not invalidate any Rust reference (none exist into it).
        unsafe {
            rustix::mm::mprotect(
                self.ptr.as_ptr().cast(),
                self.len,
                MprotectFlags::READ | MprotectFlags::WRITE,
            )
        }
    }

    /// A transient `pvusb_ring` view of the whole region, for one copy: the ring crate's
    /// `shm` module is the one implementation of volatile copies (word-wise, no reference
    /// into the pages, each byte read or written once).
    fn view(&self) -> Shm {
        let access = match self.access {
            Access::ReadOnly => ShmAccess::ReadOnly,
            Access::Writable => ShmAccess::ReadWrite,
        };
        // SAFETY: the view is dropped before `&self` ends (callers use it for one copy), and
        // the Region keeps `ptr..ptr+len` mapped, readable (and writable iff `Writable`)
        // until it is dropped; this module never makes a Rust reference into the pages.
        unsafe { Shm::from_raw_parts(self.ptr, self.len, access) }
    }

    pub(crate) fn read_at(&self, off: usize, buf: &mut [u8]) -> Result<(), MemError> {
        self.view().read(off, buf).map_err(|e| self.mem_error(e))
    }

    pub(crate) fn write_at(&self, off: usize, data: &[u8]) -> Result<(), MemError> {
        if self.access == Access::ReadOnly {
            return Err(MemError::ReadOnly);
        }
        self.view().write(off, data).map_err(|e| self.mem_error(e))
    }

    fn mem_error(&self, e: ShmError) -> MemError {
        match e {
            ShmError::ReadOnly => MemError::ReadOnly,
            ShmError::OutOfBounds { off, len, size } => MemError::OutOfRange { off, len, size },
            // Copies never ask for an atomic word; keep the mapping's size in the answer.
            ShmError::Misaligned { off } => MemError::OutOfRange {
                off,
                len: 0,
                size: self.len,
            },
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: ptr/len describe exactly the mapping this Region made and owns; nothing
        // refers into it once the Region is dropped.
        if let Err(e) = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) } {
            tracing::error!(error = %e, "munmap of grant memory failed");
        }
    }
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Region")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .field("access", &self.access)
            .finish()
    }
}

impl Region {
    /// A `pvusb_ring` view of the region, keeping `owner` (whose drop unmaps it) alive.
    pub(crate) fn shm_of(&self, writable: bool, owner: Arc<dyn Send + Sync>) -> Shm {
        let access = if writable {
            ShmAccess::ReadWrite
        } else {
            ShmAccess::ReadOnly
        };
        // SAFETY: `owner` owns this Region, so the mapping stays in place (and writable iff
        // `writable`, which callers derive from how it was mapped) for as long as any view
        // holds the owner; no Rust reference into it exists (this module only makes volatile
        // copies).
        unsafe { Shm::from_raw_parts(self.ptr, self.len, access) }.with_owner(owner)
    }
}

/// `len` bytes of `file` from offset 0, mapped shared and writable, as a `pvusb_ring` view:
/// stores reach the file at once and outlive the process (the backend's restart journal).
/// The last view dropped unmaps it.
pub fn map_file(file: BorrowedFd<'_>, len: usize) -> Result<Shm, Errno> {
    Ok(Region::map_shared(file, 0, len, Access::Writable)?.into_shm())
}

impl Region {
    /// The region alone as a `pvusb_ring` view (writable iff mapped writable); the last view
    /// dropped unmaps it.
    pub(crate) fn into_shm(self) -> Shm {
        let writable = self.access == Access::Writable;
        let owner = Arc::new(self);
        owner.shm_of(writable, owner.clone())
    }
}

/// What must happen after a mapping's memory is unmapped (gntdev UNMAP_GRANT_REF, or telling
/// the broker).
pub(crate) trait Unmap: Send + Sync + fmt::Debug {
    fn unmap(self: Box<Self>);
}

/// Drops the memory first, then releases the grant: field order is drop order.
#[derive(Debug)]
struct UnmapOnDrop(Option<Box<dyn Unmap>>);

impl Drop for UnmapOnDrop {
    fn drop(&mut self) {
        if let Some(u) = self.0.take() {
            u.unmap();
        }
    }
}

/// Grant references of another domain mapped into this process as one contiguous range.
/// Dropping it unmaps the memory, then releases the grants.
#[derive(Debug)]
pub struct GrantMapping {
    // Declared before `unmap`: munmap must precede IOCTL_GNTDEV_UNMAP_GRANT_REF.
    region: Region,
    domid: DomId,
    refs: Vec<GrantRef>,
    _unmap: UnmapOnDrop,
}

impl GrantMapping {
    pub(crate) fn new(
        region: Region,
        domid: DomId,
        refs: &[GrantRef],
        unmap: Box<dyn Unmap>,
    ) -> Self {
        GrantMapping {
            region,
            domid,
            refs: refs.to_vec(),
            _unmap: UnmapOnDrop(Some(unmap)),
        }
    }
    /// The granting domain.
    pub fn domid(&self) -> DomId {
        self.domid
    }
    /// The mapped references, page by page.
    pub fn refs(&self) -> &[GrantRef] {
        &self.refs
    }
    /// How the pages are mapped.
    pub fn access(&self) -> Access {
        self.region.access
    }
    /// Start of the mapping; valid for [`GrantMapping::len`] bytes while `self` lives.
    pub fn as_ptr(&self) -> *mut u8 {
        self.region.ptr.as_ptr()
    }
    /// Length in bytes (pages × [`PAGE_SIZE`]).
    pub fn len(&self) -> usize {
        self.region.len
    }
    /// Never true: a mapping has at least one page.
    pub fn is_empty(&self) -> bool {
        self.region.len == 0
    }
    /// Copies bytes out of the mapping (volatile: the peer may be writing).
    pub fn read_at(&self, off: usize, buf: &mut [u8]) -> Result<(), MemError> {
        self.region.read_at(off, buf)
    }
    /// Copies bytes into the mapping; refused for a read-only mapping.
    pub fn write_at(&self, off: usize, data: &[u8]) -> Result<(), MemError> {
        self.region.write_at(off, data)
    }
    /// The mapping as a `pvusb_ring` shared-memory view (read-only for a read-only mapping).
    /// Every view holds the `Arc`, so the grants are unmapped when the last of them and the
    /// `Arc` are dropped.
    pub fn shm(self: &Arc<Self>) -> Shm {
        self.region
            .shm_of(self.region.access == Access::Writable, self.clone())
    }
    /// Tries to make a read-only mapping writable with `mprotect`; the kernel must refuse
    /// (`EACCES`) for a read-only grant. Exists so tests can prove it without a segfault.
    pub fn try_make_writable(&self) -> Result<(), Errno> {
        self.region.try_mprotect_writable()
    }
}

/// What ending a grant means on one platform.
pub(crate) trait GrantOwner: Send + Sync + fmt::Debug {
    /// Revokes the grants now if no peer maps them, refuses otherwise (our own mapping still
    /// exists when this is called).
    fn try_revoke(&mut self) -> Result<(), RevokeError>;
    /// Ends access after our mapping is gone: at once, or once the peer unmaps.
    fn release(self: Box<Self>);
}

#[derive(Debug)]
struct ReleaseOnDrop(Option<Box<dyn GrantOwner>>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        if let Some(o) = self.0.take() {
            o.release();
        }
    }
}

/// Pages of this domain granted to another domain. Dropping it without
/// [`GrantedPages::end_access`] ends access lazily (once the peer unmaps).
#[derive(Debug)]
pub struct GrantedPages {
    // Declared before `owner`: gntalloc frees the grant only after our munmap.
    region: Region,
    domid: DomId,
    grefs: Vec<GrantRef>,
    grant_access: Access,
    owner: ReleaseOnDrop,
}

impl GrantedPages {
    pub(crate) fn new(
        region: Region,
        domid: DomId,
        grefs: Vec<GrantRef>,
        grant_access: Access,
        owner: Box<dyn GrantOwner>,
    ) -> Self {
        GrantedPages {
            region,
            domid,
            grefs,
            grant_access,
            owner: ReleaseOnDrop(Some(owner)),
        }
    }
    /// The domain the pages are granted to.
    pub fn domid(&self) -> DomId {
        self.domid
    }
    /// One grant reference per page, in page order.
    pub fn grefs(&self) -> &[GrantRef] {
        &self.grefs
    }
    /// What the grantee may do.
    pub fn grant_access(&self) -> Access {
        self.grant_access
    }
    /// Start of the pages (always readable and writable by this domain).
    pub fn as_ptr(&self) -> *mut u8 {
        self.region.ptr.as_ptr()
    }
    /// Length in bytes (pages × [`PAGE_SIZE`]).
    pub fn len(&self) -> usize {
        self.region.len
    }
    /// Never true: an allocation has at least one page.
    pub fn is_empty(&self) -> bool {
        self.region.len == 0
    }
    /// Copies bytes out of the pages (volatile: the peer may be writing).
    pub fn read_at(&self, off: usize, buf: &mut [u8]) -> Result<(), MemError> {
        self.region.read_at(off, buf)
    }
    /// Copies bytes into the pages.
    pub fn write_at(&self, off: usize, data: &[u8]) -> Result<(), MemError> {
        self.region.write_at(off, data)
    }
    /// The pages as a `pvusb_ring` shared-memory view (always writable by this domain).
    /// Views hold the `Arc`; [`Arc::try_unwrap`] it after they are gone to end access.
    pub fn shm(self: &Arc<Self>) -> Shm {
        self.region.shm_of(true, self.clone())
    }
    /// Ends the peer's access to every page, like `gnttab_end_foreign_access_ref`: refused
    /// with [`EndAccessError::StillMapped`] (which hands the pages back) while the peer maps
    /// any of them. On real Xen the peer's mapping cannot be observed from user space, so
    /// this succeeds and gntalloc frees the pages once the peer unmaps.
    pub fn end_access(mut self) -> Result<(), EndAccessError> {
        let Some(owner) = self.owner.0.as_mut() else {
            return Ok(());
        };
        match owner.try_revoke() {
            Ok(()) => Ok(()),
            Err(RevokeError::StillMapped) => Err(EndAccessError::StillMapped {
                pages: Box::new(self),
            }),
            Err(RevokeError::Other(e)) => Err(e),
        }
    }
}
