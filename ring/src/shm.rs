//! The crate's only `unsafe`: a view of memory the peer may rewrite at any moment.
//!
//! A [`Shm`] never hands out `&` or `&mut` to the bytes: the peer (another domain, or
//! another process on the sim platform) can change them under us, which would break the
//! guarantees Rust attaches to references. Bytes move with volatile copies into private
//! buffers ([`Shm::copy_out`], [`Shm::read`]) or out of them ([`Shm::copy_in`],
//! [`Shm::write`]); ring indices are reached as atomics ([`Shm::atomic_u32`]), the one
//! reference form that stays sound while the peer writes.
//!
//! Under `cfg(loom)` the region is a loom model instead of raw memory: bytes live in loom
//! `UnsafeCell`s (so a read that is not ordered after the write it sees is reported) and
//! every 4-byte word has a loom `AtomicU32` (so each index access is an explored
//! interleaving point). In that model a word is either an index (atomics only) or data
//! (bytes only); the rings keep to that split.

use core::fmt;

use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::sync::AtomicU32;

/// Whether the region may be written (OUT data buffers are granted read-only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Reads only: every write method fails with [`ShmError::ReadOnly`].
    ReadOnly,
    /// Reads and writes.
    ReadWrite,
}

/// A bad access to a shared region. After a ring has checked its geometry once, none of
/// these can happen on its paths; they exist so that no path has to panic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShmError {
    /// `off..off+len` is not inside the region.
    #[error("access at {off}+{len} outside a {size}-byte shared region")]
    OutOfBounds { off: usize, len: usize, size: usize },
    /// An atomic word at an offset that is not 4-byte aligned.
    #[error("atomic word at offset {off} is not 4-byte aligned")]
    Misaligned { off: usize },
    /// A write to a read-only region.
    #[error("write to a read-only shared region")]
    ReadOnly,
}

fn check(off: usize, len: usize, size: usize) -> Result<(), ShmError> {
    match off.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(ShmError::OutOfBounds { off, len, size }),
    }
}

#[cfg(not(loom))]
mod imp {
    use core::ptr::{self, NonNull};
    use std::sync::Arc;

    use super::{check, Access, ShmError};
    use crate::sync::AtomicU32;

    /// Keeps a mapping alive for as long as any view of it exists.
    pub(super) type Owner = Arc<dyn Send + Sync>;

    #[derive(Clone)]
    pub struct Shm {
        base: NonNull<u8>,
        len: usize,
        access: Access,
        owner: Option<Owner>,
    }

    // SAFETY: a `Shm` is a pointer into memory that other parties write concurrently by
    // design; every access through it is volatile or atomic and never forms a reference to
    // the bytes, so sharing or sending the view between threads adds no new race.
    unsafe impl Send for Shm {}
    // SAFETY: as for `Send`: all methods take `&self` and only do volatile/atomic accesses.
    unsafe impl Sync for Shm {}

    impl Shm {
        /// Wraps `len` bytes at `base`.
        ///
        /// # Safety
        /// For as long as this `Shm` or any clone or slice of it exists: `base..base+len`
        /// must stay mapped and readable (and writable if `access` is `ReadWrite`), and no
        /// Rust reference to those bytes may exist except the atomics this type hands out.
        /// Other processes or domains may read and write the bytes at any time.
        pub unsafe fn from_raw_parts(base: NonNull<u8>, len: usize, access: Access) -> Self {
            Shm {
                base,
                len,
                access,
                owner: None,
            }
        }

        pub(super) fn set_owner(&mut self, owner: Owner) {
            self.owner = Some(owner);
        }

        pub fn len(&self) -> usize {
            self.len
        }

        pub fn access(&self) -> Access {
            self.access
        }

        pub fn read_only(&self) -> Self {
            let mut v = self.clone();
            v.access = Access::ReadOnly;
            v
        }

        pub fn addr(&self) -> usize {
            self.base.as_ptr() as usize
        }

        pub fn base_ptr(&self) -> *mut u8 {
            self.base.as_ptr()
        }

        pub fn slice(&self, off: usize, len: usize) -> Result<Self, ShmError> {
            check(off, len, self.len)?;
            // SAFETY: `off <= self.len`, so the result stays inside (or one past) the region.
            let base = unsafe { NonNull::new_unchecked(self.base.as_ptr().add(off)) };
            Ok(Shm {
                base,
                len,
                access: self.access,
                owner: self.owner.clone(),
            })
        }

        pub fn read(&self, off: usize, dst: &mut [u8]) -> Result<(), ShmError> {
            check(off, dst.len(), self.len)?;
            // SAFETY: `off..off+dst.len()` is inside the region, which the constructor's
            // contract keeps mapped; the copy is volatile and forms no reference to it.
            unsafe { volatile_read(self.base.as_ptr().add(off), dst) };
            Ok(())
        }

        pub fn write(&self, off: usize, src: &[u8]) -> Result<(), ShmError> {
            check(off, src.len(), self.len)?;
            if self.access == Access::ReadOnly {
                return Err(ShmError::ReadOnly);
            }
            // SAFETY: in bounds and writable (checked above, guaranteed by the constructor);
            // volatile stores, no reference formed.
            unsafe { volatile_write(self.base.as_ptr().add(off), src) };
            Ok(())
        }

        pub fn atomic_u32(&self, off: usize) -> Result<&AtomicU32, ShmError> {
            check(off, 4, self.len)?;
            let ptr = self.base.as_ptr().wrapping_add(off);
            if ptr.align_offset(4) != 0 {
                return Err(ShmError::Misaligned { off });
            }
            // SAFETY: the word is in bounds, 4-byte aligned and mapped for the lifetime of
            // `&self` (constructor contract). Every party accesses ring indices atomically
            // (ring.h reads and writes them as aligned 32-bit words), so an `&AtomicU32` is
            // the sound way to reach them.
            Ok(unsafe { AtomicU32::from_ptr(ptr.cast::<u32>()) })
        }
    }

    /// A checked index word: in bounds and aligned, with the region kept alive.
    #[derive(Clone)]
    pub struct AtomicWord {
        ptr: NonNull<u32>,
        _shm: Shm,
    }

    impl AtomicWord {
        pub fn new(shm: &Shm, off: usize) -> Result<Self, ShmError> {
            let ptr = NonNull::from(shm.atomic_u32(off)?).cast::<u32>();
            Ok(AtomicWord {
                ptr,
                _shm: shm.clone(),
            })
        }

        pub fn get(&self) -> &AtomicU32 {
            // SAFETY: `new` checked the word is in bounds and aligned; the `Shm` clone held
            // here keeps the mapping alive (its constructor's contract) as long as `self`.
            unsafe { AtomicU32::from_ptr(self.ptr.as_ptr()) }
        }
    }

    // SAFETY: same reasoning as for `Shm`: only atomic accesses go through the pointer.
    unsafe impl Send for AtomicWord {}
    // SAFETY: as above.
    unsafe impl Sync for AtomicWord {}

    /// Copies at least this long go through [`opaque_copy`] (on x86-64): below it the
    /// word loop is as fast, above it `rep movsb` runs at memcpy speed (64 KiB, cache-hot,
    /// this VM: 2.2 µs, memcpy 2.8 µs, the volatile word loop 6.0 µs).
    const REP_MOVSB_MIN: usize = if cfg!(target_arch = "x86_64") {
        256
    } else {
        usize::MAX
    };

    /// A copy the compiler cannot see into: one `rep movsb`, which reads each source byte
    /// once and touches nothing outside the two ranges, like the volatile loops, but moves
    /// cache lines at a time (ERMS). Inline assembly is opaque to the optimiser, so no
    /// reference to the shared bytes is formed and nothing is assumed about them.
    ///
    /// # Safety
    /// `src..src+len` must be readable and `dst..dst+len` writable, and they must not
    /// overlap.
    #[cfg(target_arch = "x86_64")]
    unsafe fn opaque_copy(dst: *mut u8, src: *const u8, len: usize) {
        // SAFETY: the caller guarantees both ranges; the System V ABI guarantees DF=0 on
        // entry (forward copy); rcx/rsi/rdi are declared clobbered and the asm may touch
        // memory (no `nomem`), so the compiler orders it with the surrounding accesses.
        unsafe {
            core::arch::asm!(
                "rep movsb",
                inout("rcx") len => _,
                inout("rdi") dst => _,
                inout("rsi") src => _,
                options(nostack, preserves_flags)
            );
        }
    }

    /// Not reached off x86-64 ([`REP_MOVSB_MIN`] is `usize::MAX` there).
    ///
    /// # Safety
    /// As for the x86-64 version.
    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn opaque_copy(dst: *mut u8, src: *const u8, len: usize) {
        for i in 0..len {
            // SAFETY: `i < len`: inside both ranges the caller guarantees.
            unsafe { ptr::write_volatile(dst.add(i), ptr::read_volatile(src.add(i))) };
        }
    }

    /// Volatile copy out of shared memory, 8 bytes at a time where aligned.
    ///
    /// The one copy routine for peer-writable memory (xen's grant mappings use it too). It
    /// keeps the guarantees of a byte-wise volatile copy: no `&`/`&mut` to the shared bytes is
    /// formed, each source byte is read exactly once (so a value we validate is the value we
    /// keep, whatever the peer does meanwhile), and nothing outside `src..src+len` is touched.
    /// Aligned `u64` volatile loads cannot tear across the range's edges, which are copied a
    /// byte at a time; a peer racing a word may leave us a mix of old and new bytes, which
    /// is what the byte copy would give too.
    ///
    /// # Safety
    /// `src..src+dst.len()` must be mapped and readable.
    unsafe fn volatile_read(src: *const u8, dst: &mut [u8]) {
        if dst.len() >= REP_MOVSB_MIN {
            // SAFETY: the caller's range is mapped and readable; `dst` is our own buffer.
            unsafe { opaque_copy(dst.as_mut_ptr(), src, dst.len()) };
            return;
        }
        let head = src.align_offset(8).min(dst.len());
        let (h, rest) = dst.split_at_mut(head);
        for (i, b) in h.iter_mut().enumerate() {
            // SAFETY: `i < head <= dst.len()`: inside the caller's range.
            *b = unsafe { ptr::read_volatile(src.add(i)) };
        }
        // SAFETY: `head <= dst.len()`.
        let mut p = unsafe { src.add(head) };
        let mut chunks = rest.chunks_exact_mut(8);
        for c in &mut chunks {
            // SAFETY: `p` is 8-aligned (after `head`) and `p..p+8` is inside the range.
            let v = unsafe { ptr::read_volatile(p.cast::<u64>()) };
            c.copy_from_slice(&v.to_ne_bytes());
            // SAFETY: stays within or one past the caller's range.
            p = unsafe { p.add(8) };
        }
        for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
            // SAFETY: the remainder lies inside the caller's range.
            *b = unsafe { ptr::read_volatile(p.add(i)) };
        }
    }

    /// Volatile copy into shared memory, 8 bytes at a time where aligned.
    ///
    /// # Safety
    /// `dst..dst+src.len()` must be mapped and writable.
    unsafe fn volatile_write(dst: *mut u8, src: &[u8]) {
        if src.len() >= REP_MOVSB_MIN {
            // SAFETY: the caller's range is mapped and writable; `src` is our own buffer.
            unsafe { opaque_copy(dst, src.as_ptr(), src.len()) };
            return;
        }
        let head = dst.align_offset(8).min(src.len());
        let (h, rest) = src.split_at(head);
        for (i, b) in h.iter().enumerate() {
            // SAFETY: `i < head <= src.len()`: inside the caller's range.
            unsafe { ptr::write_volatile(dst.add(i), *b) };
        }
        // SAFETY: `head <= src.len()`.
        let mut p = unsafe { dst.add(head) };
        let mut chunks = rest.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            // SAFETY: `p` is 8-aligned and `p..p+8` is inside the caller's range.
            unsafe { ptr::write_volatile(p.cast::<u64>(), u64::from_ne_bytes(w)) };
            // SAFETY: stays within or one past the caller's range.
            p = unsafe { p.add(8) };
        }
        for (i, b) in chunks.remainder().iter().enumerate() {
            // SAFETY: the remainder lies inside the caller's range.
            unsafe { ptr::write_volatile(p.add(i), *b) };
        }
    }

    #[cfg(any(test, feature = "test-utils"))]
    pub(super) fn heap(len: usize) -> Shm {
        use core::cell::UnsafeCell;

        /// One zeroed, page-aligned page the test peer and we both write.
        #[repr(C, align(4096))]
        struct Page(UnsafeCell<[u8; 4096]>);
        struct Pages(Box<[Page]>);
        // SAFETY: the pages are only reached through `Shm`'s volatile and atomic accesses.
        unsafe impl Sync for Pages {}

        let n = len.div_ceil(4096).max(1);
        let pages = Arc::new(Pages(
            (0..n).map(|_| Page(UnsafeCell::new([0; 4096]))).collect(),
        ));
        let base = UnsafeCell::raw_get(pages.0.as_ptr().cast::<UnsafeCell<[u8; 4096]>>());
        let base = NonNull::new(base.cast::<u8>()).unwrap_or(NonNull::dangling());
        // SAFETY: `n * 4096 >= len` bytes of interior-mutable heap memory, kept alive by the
        // `Arc` stored in every view; nothing else references them.
        let mut shm = unsafe { Shm::from_raw_parts(base, len, Access::ReadWrite) };
        shm.set_owner(pages);
        shm
    }
}

#[cfg(loom)]
mod imp {
    use std::sync::Arc;

    use loom::cell::UnsafeCell;

    use super::{check, Access, ShmError};
    use crate::sync::AtomicU32;

    pub(super) type Owner = Arc<dyn Send + Sync>;

    /// A checked index word of the model region.
    #[derive(Clone)]
    pub struct AtomicWord {
        region: Arc<Region>,
        idx: usize,
    }

    impl AtomicWord {
        pub fn new(shm: &Shm, off: usize) -> Result<Self, ShmError> {
            shm.atomic_u32(off)?;
            Ok(AtomicWord {
                region: shm.region.clone(),
                idx: (shm.off + off) / 4,
            })
        }

        // The model is test-only; `new` checked the index, and the words never shrink.
        #[allow(clippy::indexing_slicing)]
        pub fn get(&self) -> &AtomicU32 {
            &self.region.words[self.idx]
        }
    }

    struct Region {
        bytes: Box<[UnsafeCell<u8>]>,
        words: Box<[AtomicU32]>,
    }

    #[derive(Clone)]
    pub struct Shm {
        region: Arc<Region>,
        off: usize,
        len: usize,
        access: Access,
    }

    impl Shm {
        pub(super) fn set_owner(&mut self, _owner: Owner) {}

        pub fn len(&self) -> usize {
            self.len
        }

        pub fn access(&self) -> Access {
            self.access
        }

        pub fn read_only(&self) -> Self {
            let mut v = self.clone();
            v.access = Access::ReadOnly;
            v
        }

        pub fn addr(&self) -> usize {
            self.off
        }

        pub fn slice(&self, off: usize, len: usize) -> Result<Self, ShmError> {
            check(off, len, self.len)?;
            Ok(Shm {
                region: self.region.clone(),
                off: self.off + off,
                len,
                access: self.access,
            })
        }

        pub fn read(&self, off: usize, dst: &mut [u8]) -> Result<(), ShmError> {
            check(off, dst.len(), self.len)?;
            let cells = self.region.bytes.iter().skip(self.off + off);
            for (d, cell) in dst.iter_mut().zip(cells) {
                // SAFETY: loom checks that this read is ordered after the last write.
                *d = cell.with(|p| unsafe { *p });
            }
            Ok(())
        }

        pub fn write(&self, off: usize, src: &[u8]) -> Result<(), ShmError> {
            check(off, src.len(), self.len)?;
            if self.access == Access::ReadOnly {
                return Err(ShmError::ReadOnly);
            }
            let cells = self.region.bytes.iter().skip(self.off + off);
            for (s, cell) in src.iter().zip(cells) {
                // SAFETY: loom checks that this write races with no other access.
                cell.with_mut(|p| unsafe { *p = *s });
            }
            Ok(())
        }

        pub fn atomic_u32(&self, off: usize) -> Result<&AtomicU32, ShmError> {
            check(off, 4, self.len)?;
            let abs = self.off + off;
            if abs % 4 != 0 {
                return Err(ShmError::Misaligned { off });
            }
            self.region.words.get(abs / 4).ok_or(ShmError::OutOfBounds {
                off,
                len: 4,
                size: self.len,
            })
        }
    }

    #[cfg(any(test, feature = "test-utils"))]
    pub(super) fn heap(len: usize) -> Shm {
        let region = Region {
            bytes: (0..len).map(|_| UnsafeCell::new(0)).collect(),
            words: (0..len.div_ceil(4)).map(|_| AtomicU32::new(0)).collect(),
        };
        Shm {
            region: Arc::new(region),
            off: 0,
            len,
            access: Access::ReadWrite,
        }
    }
}

/// A view of a shared region: a grant mapping, a ring page, or (tests) heap memory.
/// Cloning is cheap and shares the region.
#[derive(Clone)]
pub struct Shm(imp::Shm);

impl Shm {
    /// Wraps `len` bytes at `base` that other parties may read and write concurrently.
    ///
    /// # Safety
    /// For as long as this `Shm` or any clone or slice of it exists: `base..base+len` must
    /// stay mapped and readable (and writable if `access` is `ReadWrite`), and no Rust
    /// reference to those bytes may exist besides the atomics `Shm` hands out. Use
    /// [`Shm::with_owner`] to tie the mapping's lifetime to the views.
    #[cfg(not(loom))]
    pub unsafe fn from_raw_parts(base: core::ptr::NonNull<u8>, len: usize, access: Access) -> Self {
        // SAFETY: forwarded verbatim; the caller upholds the same contract.
        Shm(unsafe { imp::Shm::from_raw_parts(base, len, access) })
    }

    /// Start address of the view, for handing to the kernel (usbfs submits it as an URB
    /// buffer). Reaching the bytes through it is the caller's `unsafe` business: the pointer
    /// is valid for [`Shm::len`] bytes while this view (or a clone) lives.
    #[cfg(not(loom))]
    pub fn as_ptr(&self) -> *mut u8 {
        self.0.base_ptr()
    }

    /// Makes every view of this region (this one and later clones and slices) hold `owner`,
    /// typically the mapping's RAII handle, so the mapping outlives them.
    pub fn with_owner(mut self, owner: std::sync::Arc<dyn Send + Sync>) -> Self {
        self.0.set_owner(owner);
        self
    }

    /// A zeroed, page-aligned heap region of `len` bytes (tests and the driver-side mock).
    #[cfg(any(test, feature = "test-utils"))]
    pub fn heap(len: usize) -> Self {
        Shm(imp::heap(len))
    }

    /// Size of the region in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for an empty region.
    pub fn is_empty(&self) -> bool {
        self.0.len() == 0
    }

    /// Whether writes are allowed.
    pub fn access(&self) -> Access {
        self.0.access()
    }

    /// The same region, through which writes are refused (narrowing is always allowed).
    pub fn read_only(&self) -> Self {
        Shm(self.0.read_only())
    }

    /// The sub-region `off..off+len`, sharing the mapping.
    pub fn slice(&self, off: usize, len: usize) -> Result<Self, ShmError> {
        self.0.slice(off, len).map(Shm)
    }

    /// Copies `dst.len()` bytes at `off` out of the region.
    pub fn read(&self, off: usize, dst: &mut [u8]) -> Result<(), ShmError> {
        self.0.read(off, dst)
    }

    /// Copies `src` into the region at `off`.
    pub fn write(&self, off: usize, src: &[u8]) -> Result<(), ShmError> {
        self.0.write(off, src)
    }

    /// Sets `len` bytes at `off` to `byte`.
    pub fn fill(&self, off: usize, len: usize, byte: u8) -> Result<(), ShmError> {
        check(off, len, self.len())?;
        let chunk = [byte; 64];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(chunk.len());
            self.write(off + done, chunk.get(..n).unwrap_or(&[]))?;
            done += n;
        }
        Ok(())
    }

    /// Copies a `T` out of the region (ring.h's `RING_COPY_REQUEST`). Validate the copy,
    /// never the region: the peer can rewrite it while, or after, we read.
    pub fn copy_out<T: FromBytes + IntoBytes>(&self, off: usize) -> Result<T, ShmError> {
        let mut out = T::new_zeroed();
        self.read(off, out.as_mut_bytes())?;
        Ok(out)
    }

    /// Copies a `T` into the region.
    pub fn copy_in<T: IntoBytes + Immutable>(&self, off: usize, val: &T) -> Result<(), ShmError> {
        self.write(off, val.as_bytes())
    }

    /// The 4-byte aligned word at `off` as an atomic: how ring indices are read and written.
    pub fn atomic_u32(&self, off: usize) -> Result<&AtomicU32, ShmError> {
        self.0.atomic_u32(off)
    }
}

/// A ring index word checked once (in bounds, 4-byte aligned) and then reached without
/// further checks; it keeps its region alive. Dereferences to the atomic.
#[derive(Clone)]
pub struct AtomicWord(imp::AtomicWord);

impl AtomicWord {
    /// Checks the word at `off` of `shm`.
    pub fn new(shm: &Shm, off: usize) -> Result<Self, ShmError> {
        imp::AtomicWord::new(&shm.0, off).map(AtomicWord)
    }
}

impl core::ops::Deref for AtomicWord {
    type Target = AtomicU32;
    fn deref(&self) -> &AtomicU32 {
        self.0.get()
    }
}

impl fmt::Debug for AtomicWord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AtomicWord").finish()
    }
}

impl fmt::Debug for Shm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shm")
            .field("addr", &format_args!("{:#x}", self.0.addr()))
            .field("len", &self.len())
            .field("access", &self.access())
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
