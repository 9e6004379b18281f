//! What the engine hands a host device (`HostUrb`) and what it gets back (`Completion`).

use std::fmt;
use std::ptr::NonNull;

use pvusb_ring::shm::Shm;

/// Linux errno values the host layer reports, as positive numbers (statuses are `-errno`).
pub mod errno {
    pub const ENOENT: i32 = 2;
    pub const EIO: i32 = 5;
    pub const ENOMEM: i32 = 12;
    pub const EBUSY: i32 = 16;
    pub const ENODEV: i32 = 19;
    pub const EINVAL: i32 = 22;
    pub const EPIPE: i32 = 32;
    pub const ETIME: i32 = 62;
    pub const ECOMM: i32 = 70;
    pub const EPROTO: i32 = 71;
    pub const EOVERFLOW: i32 = 75;
    pub const EMSGSIZE: i32 = 90;
    pub const EILSEQ: i32 = 84;
    pub const ECONNRESET: i32 = 104;
    pub const ESHUTDOWN: i32 = 108;
    pub const ETIMEDOUT: i32 = 110;
    pub const EREMOTEIO: i32 = 121;
}

/// Transfer type, numbered as usbfs numbers `USBDEVFS_URB_TYPE_*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[repr(u8)]
pub enum XferKind {
    Iso = 0,
    Interrupt = 1,
    Control = 2,
    Bulk = 3,
}

impl XferKind {
    /// The usbfs type number.
    pub const fn usbfs_type(self) -> u8 {
        self as u8
    }

    /// The kind named by an endpoint descriptor's `bmAttributes` bits 0-1.
    pub const fn from_attributes(bm_attributes: u8) -> Self {
        match bm_attributes & 3 {
            0 => XferKind::Control,
            1 => XferKind::Iso,
            2 => XferKind::Bulk,
            _ => XferKind::Interrupt,
        }
    }
}

bitflags::bitflags! {
    /// URB flags, with usbfs's values (`USBDEVFS_URB_*`), so they pass through unchanged.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct UrbFlags: u32 {
        /// A short IN transfer is an error (-EREMOTEIO).
        const SHORT_NOT_OK = 0x01;
        /// Iso: start at the next free frame rather than `start_frame`.
        const ISO_ASAP = 0x02;
        /// Bulk: this URB continues the previous one on the endpoint; cancelled when that
        /// one fails or is short, and refused with -EREMOTEIO until a non-continuation URB.
        const BULK_CONTINUATION = 0x04;
        /// OUT: end with a zero-length packet when the length is a multiple of wMaxPacketSize.
        const ZERO_PACKET = 0x40;
    }
}

/// Memory an URB transfers into or out of. The engine owns it; a host device only borrows it
/// from `submit` until the matching `Completion` is reaped (DESIGN contract 7), and hands the
/// same `UrbBuf` back inside that completion (or inside `Refused`).
///
/// Either owned (allocated here, freed on drop), shared (a view of guest memory, e.g. a grant
/// mapping: zero copy; the view keeps the mapping alive) or borrowed (built with the `unsafe`
/// [`UrbBuf::from_raw_parts`]).
pub struct UrbBuf {
    ptr: NonNull<u8>,
    len: usize,
    mem: Mem,
}

enum Mem {
    /// A `Box<[u8]>` of `len` bytes we free.
    Owned,
    /// Memory another party may write: copies are volatile (through `pvusb_ring::shm`).
    Shared(Box<Shm>),
    /// Memory kept valid by `from_raw_parts`'s caller.
    Borrowed,
}

// SAFETY: an owned buffer is a plain heap allocation; a shared one is a `Shm` (Send + Sync);
// a borrowed one is valid from any thread per `from_raw_parts`'s contract. UrbBuf hands out
// no shared references across threads.
unsafe impl Send for UrbBuf {}

impl UrbBuf {
    /// A zeroed buffer of `len` bytes owned by this value.
    pub fn zeroed(len: usize) -> Self {
        Self::from_vec(vec![0; len])
    }

    /// Takes ownership of `data`'s bytes.
    pub fn from_vec(data: Vec<u8>) -> Self {
        let boxed: Box<[u8]> = data.into_boxed_slice();
        let len = boxed.len();
        let raw = Box::into_raw(boxed);
        // `Box::into_raw` never returns null, even for an empty slice (dangling but non-null).
        let ptr = NonNull::new(raw.cast::<u8>()).unwrap_or(NonNull::dangling());
        UrbBuf {
            ptr,
            len,
            mem: Mem::Owned,
        }
    }

    /// The bytes of a shared-memory view (guest pages): the host reads and writes the guest's
    /// memory directly. A read-only view refuses [`UrbBuf::write_at`] (an OUT buffer); the
    /// view keeps its mapping alive for as long as this value (or the completion carrying
    /// it) exists, so the engine must drop it before it unmaps (DESIGN contract 7).
    pub fn shared(shm: Shm) -> Self {
        let ptr = NonNull::new(shm.as_ptr()).unwrap_or(NonNull::dangling());
        UrbBuf {
            ptr,
            len: shm.len(),
            mem: Mem::Shared(Box::new(shm)),
        }
    }

    /// Borrows `len` bytes at `ptr` (a grant mapping, a pool slot...).
    ///
    /// # Safety
    /// `ptr..ptr+len` must stay mapped, readable and writable for as long as this `UrbBuf`
    /// (and any `HostUrb`/`Completion` carrying it) exists, and must not be freed or reused
    /// until it is dropped, and no other party may write the bytes while it exists (memory
    /// a guest may write goes through [`UrbBuf::shared`], whose copies are volatile).
    pub unsafe fn from_raw_parts(ptr: NonNull<u8>, len: usize) -> Self {
        UrbBuf {
            ptr,
            len,
            mem: Mem::Borrowed,
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a zero-length buffer.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True if dropping this value frees the memory.
    pub fn is_owned(&self) -> bool {
        matches!(self.mem, Mem::Owned)
    }

    /// True for a view of guest memory ([`UrbBuf::shared`]): IN data is already in place.
    pub fn is_shared(&self) -> bool {
        matches!(self.mem, Mem::Shared(_))
    }

    /// Start address (what usbfs's `buffer` field gets).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The bytes of an owned buffer (`None` for memory another party may reach).
    pub fn as_slice(&self) -> Option<&[u8]> {
        // SAFETY: owned memory is ours alone; `&self` stops `as_mut_slice`/`write_at` from
        // running while the slice lives.
        self.is_owned()
            .then(|| unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) })
    }

    /// Mutable bytes of an owned buffer (`None` for memory another party may reach).
    pub fn as_mut_slice(&mut self) -> Option<&mut [u8]> {
        // SAFETY: as `as_slice`, with `&mut self` making the access unique.
        self.is_owned()
            .then(|| unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) })
    }

    /// Copies `dst.len()` bytes starting at `off` out of the buffer; false if out of range.
    pub fn read_at(&self, off: usize, dst: &mut [u8]) -> bool {
        if let Mem::Shared(shm) = &self.mem {
            return shm.read(off, dst).is_ok();
        }
        match off.checked_add(dst.len()) {
            Some(end) if end <= self.len => {
                // SAFETY: `off..end` is inside the buffer (checked above), valid per the
                // constructor's contract; `dst` is a distinct Rust allocation.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        self.ptr.as_ptr().add(off),
                        dst.as_mut_ptr(),
                        dst.len(),
                    )
                };
                true
            }
            _ => false,
        }
    }

    /// Copies `src` into the buffer at `off`; false if out of range (or a read-only shared
    /// view). Takes `&mut self`: only the current holder of the buffer (the device, while in
    /// flight) may write it.
    pub fn write_at(&mut self, off: usize, src: &[u8]) -> bool {
        if let Mem::Shared(shm) = &self.mem {
            return shm.write(off, src).is_ok();
        }
        match off.checked_add(src.len()) {
            Some(end) if end <= self.len => {
                // SAFETY: as `read_at`, in the other direction.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        src.as_ptr(),
                        self.ptr.as_ptr().add(off),
                        src.len(),
                    )
                };
                true
            }
            _ => false,
        }
    }

    /// The bytes of an owned buffer as a `Vec`; `None` (and the value back) if not owned.
    pub fn into_vec(self) -> Result<Vec<u8>, UrbBuf> {
        if !self.is_owned() {
            return Err(self);
        }
        let this = std::mem::ManuallyDrop::new(self);
        let raw = std::ptr::slice_from_raw_parts_mut(this.ptr.as_ptr(), this.len);
        // SAFETY: owned buffers come from `Box::into_raw` of a `Box<[u8]>` of this length;
        // ManuallyDrop stops our Drop from freeing it a second time (an owned value holds
        // nothing else to drop).
        Ok(unsafe { Box::from_raw(raw) }.into_vec())
    }
}

impl Drop for UrbBuf {
    fn drop(&mut self) {
        if self.is_owned() {
            let raw = std::ptr::slice_from_raw_parts_mut(self.ptr.as_ptr(), self.len);
            // SAFETY: see `into_vec`; this is the only other place that frees it.
            drop(unsafe { Box::from_raw(raw) });
        }
    }
}

impl fmt::Debug for UrbBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mem = match self.mem {
            Mem::Owned => "owned",
            Mem::Shared(_) => "shared",
            Mem::Borrowed => "borrowed",
        };
        f.debug_struct("UrbBuf")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .field("mem", &mem)
            .finish()
    }
}

/// One transfer for the host device, shaped like `struct usbdevfs_urb`.
///
/// Control URBs carry the 8-byte setup packet at the start of `buf` (usbfs layout), so
/// `buf.len() == 8 + wLength`. `actual_length` in the completion excludes the setup bytes.
/// Iso URBs list their packet lengths in `iso_packets`; the packets lie back to back in `buf`.
#[derive(Debug)]
pub struct HostUrb {
    /// Engine's tag, returned in the completion and used by `discard`. Unique among the
    /// URBs in flight on one device.
    pub tag: u64,
    pub kind: XferKind,
    /// Endpoint address, 0x80 set for IN (ep 0 for control, whatever the direction).
    pub endpoint: u8,
    pub flags: UrbFlags,
    pub buf: UrbBuf,
    /// Iso only: requested length of each packet.
    pub iso_packets: Vec<u32>,
    /// Iso only, when `ISO_ASAP` is clear: the frame to start at.
    pub start_frame: i32,
}

impl HostUrb {
    /// An URB with no iso packets.
    pub fn new(tag: u64, kind: XferKind, endpoint: u8, flags: UrbFlags, buf: UrbBuf) -> Self {
        HostUrb {
            tag,
            kind,
            endpoint,
            flags,
            buf,
            iso_packets: Vec::new(),
            start_frame: 0,
        }
    }

    /// True if data moves device → host (control: per the setup packet's bmRequestType).
    pub fn is_in(&self) -> bool {
        if self.kind == XferKind::Control {
            let mut rt = [0u8; 1];
            self.buf.read_at(0, &mut rt) && rt[0] & 0x80 != 0
        } else {
            self.endpoint & 0x80 != 0
        }
    }
}

/// Result of one iso packet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IsoPacketResult {
    pub actual_length: u32,
    /// 0 or a negative errno.
    pub status: i32,
}

/// A finished URB as `reap` returns it: exactly one per accepted `submit`.
#[derive(Debug)]
pub struct Completion {
    pub tag: u64,
    /// 0 or a negative errno, as usbfs reports it: -EPIPE stall, -EREMOTEIO short with
    /// SHORT_NOT_OK, -ECONNRESET/-ENOENT discarded, -ESHUTDOWN/-ENODEV device gone,
    /// -EOVERFLOW babble, -EPROTO/-EILSEQ/-ETIME transfer errors.
    pub status: i32,
    /// Bytes transferred (control: excluding the setup packet; iso: sum of the packets).
    pub actual_length: u32,
    pub iso_packets: Vec<IsoPacketResult>,
    pub error_count: u32,
    pub start_frame: i32,
    /// The buffer, returned to the engine.
    pub buf: UrbBuf,
}

/// Why a host device refused an URB (it never completes: DESIGN contract 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("device is gone")]
    Gone,
    #[error("endpoint {0:#04x} is not in the active configuration/alt setting")]
    NoEndpoint(u8),
    #[error("malformed URB: {0}")]
    Invalid(&'static str),
    #[error("continuation URB refused: an earlier part of the transfer failed")]
    ContinuationRefused,
    #[error("tag {0} is already in flight")]
    DuplicateTag(u64),
    #[error("out of memory for URBs")]
    NoMemory,
    #[error("host error: errno {0}")]
    Errno(i32),
}

impl SubmitError {
    /// The negative errno usbfs would give for this refusal.
    pub fn to_errno(self) -> i32 {
        -match self {
            SubmitError::Gone => errno::ENODEV,
            SubmitError::NoEndpoint(_) => errno::ENOENT,
            SubmitError::Invalid(_) | SubmitError::DuplicateTag(_) => errno::EINVAL,
            SubmitError::ContinuationRefused => errno::EREMOTEIO,
            SubmitError::NoMemory => errno::ENOMEM,
            SubmitError::Errno(e) => e.abs(),
        }
    }
}

/// A refused submission: the error and the URB (with its buffer) handed back.
#[derive(Debug, thiserror::Error)]
#[error("URB {} refused: {error}", urb.tag)]
pub struct Refused {
    pub error: SubmitError,
    pub urb: HostUrb,
}

/// Why `discard` did nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DiscardError {
    /// No URB with that tag is still running: it already completed (its completion may
    /// still be waiting in `reap`, which the engine must keep calling) or was never submitted.
    #[error("no URB with tag {0} in flight")]
    NotInFlight(u64),
    #[error("device is gone")]
    Gone,
}

/// Failure of a synchronous control operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CtrlError {
    #[error("device is gone")]
    Gone,
    #[error("device stalled the request")]
    Stall,
    #[error("invalid argument")]
    Invalid,
    #[error("interface is busy (claimed by someone else)")]
    Busy,
    #[error("host error: errno {0}")]
    Errno(i32),
}

impl CtrlError {
    /// From a positive errno returned by an ioctl.
    pub fn from_errno(e: i32) -> Self {
        match e {
            errno::ENODEV => CtrlError::Gone,
            errno::EPIPE => CtrlError::Stall,
            errno::EINVAL => CtrlError::Invalid,
            errno::EBUSY => CtrlError::Busy,
            e => CtrlError::Errno(e),
        }
    }

    /// As a negative errno for an URB status.
    pub fn to_errno(self) -> i32 {
        -match self {
            CtrlError::Gone => errno::ENODEV,
            CtrlError::Stall => errno::EPIPE,
            CtrlError::Invalid => errno::EINVAL,
            CtrlError::Busy => errno::EBUSY,
            CtrlError::Errno(e) => e.abs(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_buffer_round_trips() {
        let mut b = UrbBuf::from_vec(vec![1, 2, 3, 4]);
        assert!(b.write_at(2, &[9, 9]));
        assert!(!b.write_at(3, &[9, 9]));
        let mut out = [0u8; 2];
        assert!(b.read_at(1, &mut out));
        assert_eq!(out, [2, 9]);
        assert!(!b.read_at(usize::MAX, &mut out));
        assert_eq!(b.into_vec().unwrap(), vec![1, 2, 9, 9]);
        assert!(UrbBuf::zeroed(0).is_empty());
    }

    #[test]
    fn borrowed_buffer_is_not_exposed_or_freed() {
        let mut backing = vec![7u8; 16];
        let ptr = NonNull::new(backing.as_mut_ptr()).unwrap();
        // SAFETY: `backing` outlives `b` and is not touched while `b` lives.
        let mut b = unsafe { UrbBuf::from_raw_parts(ptr, 16) };
        assert!(b.as_slice().is_none());
        assert!(b.write_at(0, &[1]));
        let b = b.into_vec().unwrap_err();
        drop(b);
        assert_eq!(backing[0], 1);
    }

    #[test]
    fn shared_buffer_reaches_guest_memory_and_keeps_it_alive() {
        let guest = Shm::heap(4096);
        let mut b = UrbBuf::shared(guest.slice(100, 16).unwrap());
        assert!(b.is_shared() && !b.is_owned() && b.as_slice().is_none());
        assert_eq!(b.as_ptr() as usize, guest.as_ptr() as usize + 100);
        assert!(b.write_at(14, &[5, 6]));
        assert!(!b.write_at(15, &[5, 6]));
        let mut byte = [0u8; 1];
        guest.read(115, &mut byte).unwrap();
        assert_eq!(byte, [6]);
        guest.write(100, &[9]).unwrap();
        assert!(b.read_at(0, &mut byte));
        assert_eq!(byte, [9]);
        // The view outlives every other handle of the memory.
        drop(guest);
        assert!(b.read_at(15, &mut byte));
        assert_eq!(byte, [6]);
        let mut ro = UrbBuf::shared(Shm::heap(8).read_only());
        assert!(!ro.write_at(0, &[1]));
        assert!(ro.into_vec().is_err());
    }

    #[test]
    fn control_direction_comes_from_setup() {
        let urb = HostUrb::new(
            1,
            XferKind::Control,
            0,
            UrbFlags::empty(),
            UrbBuf::from_vec(vec![0x80, 6, 0, 1, 0, 0, 18, 0]),
        );
        assert!(urb.is_in());
        assert_eq!(SubmitError::ContinuationRefused.to_errno(), -121);
        assert_eq!(XferKind::from_attributes(2), XferKind::Bulk);
    }
}
