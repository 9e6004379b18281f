//! The shared ring page: ring.h's 64-byte header, its index words and the slot geometry.

use core::mem::offset_of;

use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::shm::{Access, AtomicWord, Shm, ShmError};
use crate::sync::{fence, AtomicU32, Ordering};
use crate::wire::PAGE_SIZE;

/// ring.h's `struct __name##_sring` without the entries: the first 64 bytes of a ring.
/// Only used to pin the layout; the rings reach the index words as atomics.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct RawSringHeader {
    /// Requests produced (written by the frontend).
    pub req_prod: U32,
    /// Notify the backend when `req_prod` passes this (written by the backend).
    pub req_event: U32,
    /// Responses produced (written by the backend).
    pub rsp_prod: U32,
    /// Notify the frontend when `rsp_prod` passes this (written by the frontend).
    pub rsp_event: U32,
    /// The `pvt` union (netif/tapif only); zeroed.
    pub pvt: [u8; 4],
    /// `__pad`; zeroed.
    pub pad: [u8; 44],
}

/// Bytes before the first entry (`offsetof(sring, ring)`).
pub const HEADER_SIZE: usize = 64;
/// Largest multi-page ring: 2^4 = 16 pages.
pub const MAX_RING_ORDER: u32 = 4;

const REQ_PROD: usize = offset_of!(RawSringHeader, req_prod);
const REQ_EVENT: usize = offset_of!(RawSringHeader, req_event);
const RSP_PROD: usize = offset_of!(RawSringHeader, rsp_prod);
const RSP_EVENT: usize = offset_of!(RawSringHeader, rsp_event);
const PVT: usize = offset_of!(RawSringHeader, pvt);

const _: () = assert!(core::mem::size_of::<RawSringHeader>() == HEADER_SIZE);

/// ring.h's `__CONST_RING_SIZE` / `__RING_SIZE`: entries in `ring_bytes` bytes of ring
/// (header included) of `entry_size`-byte entries, rounded down to a power of two.
/// 0 if not even one entry fits.
pub const fn const_ring_size(ring_bytes: usize, entry_size: usize) -> u32 {
    if entry_size == 0 || ring_bytes < HEADER_SIZE {
        return 0;
    }
    let n = (ring_bytes - HEADER_SIZE) / entry_size;
    if n == 0 {
        return 0;
    }
    let pow = 1usize << (usize::BITS - 1 - n.leading_zeros());
    if pow > u32::MAX as usize {
        return 1 << 31;
    }
    pow as u32
}

/// Why a region cannot hold a ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RingSetupError {
    /// The region is smaller than a header plus one entry, or larger than 16 pages.
    #[error("a {len}-byte region cannot hold a ring of {entry_size}-byte entries")]
    BadLength { len: usize, entry_size: usize },
    /// Ring pages must be writable by both ends.
    #[error("ring region is read-only")]
    ReadOnly,
    /// The index words are not reachable (misaligned region).
    #[error(transparent)]
    Shm(#[from] ShmError),
    /// More requests said to be taken and unanswered than the ring holds.
    #[error("{taken} requests taken and unanswered on a ring of {size}")]
    TakenBeyondRing { taken: u32, size: u32 },
}

/// A checked shared ring: the region, its index words and its slot geometry.
/// The region is `PAGE_SIZE << order` bytes for a usbif ring (order 0 for a stock peer,
/// up to 4 when negotiated); any length from a header plus one entry up to 16 pages is
/// accepted, as ring.h's `__RING_SIZE` does.
#[derive(Clone, Debug)]
pub struct SharedRing {
    shm: Shm,
    size: u32,
    entry_size: usize,
    req_prod: AtomicWord,
    req_event: AtomicWord,
    rsp_prod: AtomicWord,
    rsp_event: AtomicWord,
}

impl SharedRing {
    /// Checks `shm` as a ring of `entry_size`-byte entries; touches no shared byte.
    pub fn new(shm: Shm, entry_size: usize) -> Result<Self, RingSetupError> {
        let len = shm.len();
        let size = const_ring_size(len, entry_size);
        if size == 0 || len > PAGE_SIZE << MAX_RING_ORDER {
            return Err(RingSetupError::BadLength { len, entry_size });
        }
        if shm.access() != Access::ReadWrite {
            return Err(RingSetupError::ReadOnly);
        }
        Ok(SharedRing {
            req_prod: AtomicWord::new(&shm, REQ_PROD)?,
            req_event: AtomicWord::new(&shm, REQ_EVENT)?,
            rsp_prod: AtomicWord::new(&shm, RSP_PROD)?,
            rsp_event: AtomicWord::new(&shm, RSP_EVENT)?,
            shm,
            size,
            entry_size,
        })
    }

    /// ring.h's `SHARED_RING_INIT`: producers 0, events 1, `pvt` and `__pad` zeroed.
    /// Only the frontend does this, before it grants the page.
    pub fn init(&self) -> Result<(), ShmError> {
        self.req_prod.store(0, Ordering::Relaxed);
        self.rsp_prod.store(0, Ordering::Relaxed);
        self.req_event.store(1, Ordering::Relaxed);
        self.rsp_event.store(1, Ordering::Relaxed);
        self.shm.fill(PVT, HEADER_SIZE - PVT, 0)
    }

    /// Entries in the ring (a power of two).
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Bytes per entry.
    pub fn entry_size(&self) -> usize {
        self.entry_size
    }

    /// The whole region.
    pub fn shm(&self) -> &Shm {
        &self.shm
    }

    /// Byte offset of the slot for free-running index `idx` (`idx & (size - 1)`).
    pub fn slot_offset(&self, idx: u32) -> usize {
        HEADER_SIZE + (idx & (self.size - 1)) as usize * self.entry_size
    }

    /// `sring->req_prod`.
    pub fn req_prod(&self) -> &crate::sync::AtomicU32 {
        &self.req_prod
    }
    /// `sring->req_event`.
    pub fn req_event(&self) -> &crate::sync::AtomicU32 {
        &self.req_event
    }
    /// `sring->rsp_prod`.
    pub fn rsp_prod(&self) -> &crate::sync::AtomicU32 {
        &self.rsp_prod
    }
    /// `sring->rsp_event`.
    pub fn rsp_event(&self) -> &crate::sync::AtomicU32 {
        &self.rsp_event
    }
}

/// ring.h's notification test after publishing `new` (previously `old`): notify iff the
/// peer's event index lies in `(old, new]`, i.e. `(u32)(new - event) < (u32)(new - old)`.
pub const fn need_notify(old: u32, new: u32, event: u32) -> bool {
    new.wrapping_sub(event) < new.wrapping_sub(old)
}

/// ring.h's `PUSH_*_AND_CHECK_NOTIFY` after the slots are written: publishes producer index
/// `new` (last published: `old`) and tells whether the peer asked, through `event`, to be
/// notified of an entry in `(old, new]`.
pub(super) fn publish_and_check_notify(
    prod: &AtomicU32,
    event: &AtomicU32,
    old: u32,
    new: u32,
) -> bool {
    // wmb: the peer sees the entries before the index.
    prod.store(new, Ordering::Release);
    // mb: the peer sees the new index before we read its event index; paired with the
    // fence in its final check, one of us sees the other's store.
    fence(Ordering::SeqCst);
    need_notify(old, new, event.load(Ordering::Relaxed))
}

/// The middle of ring.h's `FINAL_CHECK_FOR_*`: asks for an event on the entry after `cons`.
/// The caller then checks the producer index again, so no entry published meanwhile is
/// missed.
pub(super) fn request_event(event: &AtomicU32, cons: u32) {
    event.store(cons.wrapping_add(1), Ordering::Relaxed);
    // mb: publish the event index before re-reading the producer index.
    fence(Ordering::SeqCst);
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn ring_sizes_match_usbif() {
        assert_eq!(const_ring_size(4096, 148), crate::wire::URB_RING_SIZE);
        assert_eq!(const_ring_size(4096, 4), crate::wire::CONN_RING_SIZE);
        assert_eq!(const_ring_size(4096 << 4, 148), 256);
        assert_eq!(const_ring_size(64 + 147, 148), 0);
        assert_eq!(const_ring_size(63, 1), 0);
        assert_eq!(const_ring_size(64 + 3 * 8, 8), 2);
    }

    #[test]
    fn init_writes_shared_ring_init() {
        let shm = Shm::heap(4096);
        shm.fill(0, 4096, 0xaa).unwrap();
        let ring = SharedRing::new(shm.clone(), 148).unwrap();
        ring.init().unwrap();
        let h: RawSringHeader = shm.copy_out(0).unwrap();
        assert_eq!(
            (
                h.req_prod.get(),
                h.req_event.get(),
                h.rsp_prod.get(),
                h.rsp_event.get()
            ),
            (0, 1, 0, 1)
        );
        assert_eq!(h.pvt, [0; 4]);
        assert_eq!(h.pad, [0; 44]);
        assert_eq!(shm.copy_out::<u8>(64).unwrap(), 0xaa, "entries untouched");
        assert_eq!(ring.slot_offset(17), 64 + 148);
    }

    #[test]
    fn setup_rejects_bad_regions() {
        assert!(matches!(
            SharedRing::new(Shm::heap(100), 148),
            Err(RingSetupError::BadLength { .. })
        ));
        assert!(SharedRing::new(Shm::heap(PAGE_SIZE << 5), 148).is_err());
        assert!(SharedRing::new(Shm::heap(PAGE_SIZE << 4), 148).is_ok());
        let odd = Shm::heap(8192).slice(2, 4096).unwrap();
        assert!(matches!(
            SharedRing::new(odd, 148),
            Err(RingSetupError::Shm(ShmError::Misaligned { .. }))
        ));
    }

    #[test]
    fn notify_rule_is_ring_h() {
        assert!(need_notify(0, 1, 1));
        assert!(!need_notify(1, 2, 1));
        assert!(need_notify(0, 5, 3));
        assert!(!need_notify(5, 5, 5));
        assert!(need_notify(u32::MAX, 1, 0));
        assert!(!need_notify(u32::MAX, 1, 2));
    }
}
