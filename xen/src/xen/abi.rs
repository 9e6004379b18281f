//! The /dev/xen ioctl ABI: byte-exact structs of `<xen/gntdev.h>`, `<xen/gntalloc.h>` and
//! `<xen/evtchn.h>`, their request numbers, and the crate's only `ioctl` call.
//!
//! Encoding is separate from the call, so it is unit-tested without Xen; the layouts and
//! numbers are checked against the installed uapi headers by `tests/abi_layout.rs`.

use std::mem::{offset_of, size_of};
use std::os::fd::BorrowedFd;

use rustix::io::Errno;
use rustix::ioctl::{opcode, Direction, Ioctl, IoctlOutput, Opcode};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `struct ioctl_gntdev_grant_ref`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct GntdevGrantRef {
    /// Granting domain.
    pub domid: u32,
    /// Grant reference.
    pub gref: u32,
}

/// `struct ioctl_gntdev_map_grant_ref` without its `refs[]` tail.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct GntdevMapGrantRefHead {
    /// IN: number of refs.
    pub count: u32,
    /// Padding.
    pub pad: u32,
    /// OUT: mmap offset.
    pub index: u64,
}

/// `struct ioctl_gntdev_unmap_grant_ref`.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct GntdevUnmapGrantRef {
    /// The offset MAP_GRANT_REF returned.
    pub index: u64,
    /// Pages.
    pub count: u32,
    /// Padding.
    pub pad: u32,
}

/// `struct ioctl_gntdev_set_max_grants`.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct GntdevSetMaxGrants {
    /// Most grants mapped at once.
    pub count: u32,
}

/// `struct ioctl_gntdev_unmap_notify` and `struct ioctl_gntalloc_unmap_notify` (same layout).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct UnmapNotify {
    /// Offset of a byte in the page.
    pub index: u64,
    /// UNMAP_NOTIFY_CLEAR_BYTE | UNMAP_NOTIFY_SEND_EVENT.
    pub action: u32,
    /// Port to notify.
    pub event_channel_port: u32,
}

/// `struct ioctl_gntalloc_alloc_gref` without its `gref_ids[]` tail.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct GntallocAllocGrefHead {
    /// IN: grantee.
    pub domid: u16,
    /// IN: [`GNTALLOC_FLAG_WRITABLE`].
    pub flags: u16,
    /// IN: pages.
    pub count: u32,
    /// OUT: mmap offset.
    pub index: u64,
}

/// `struct ioctl_gntalloc_dealloc_gref` (the C struct is padded to 16 bytes).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct GntallocDeallocGref {
    /// The offset ALLOC_GREF returned.
    pub index: u64,
    /// Pages.
    pub count: u32,
    /// Tail padding of the C struct.
    pub pad: u32,
}

/// `struct ioctl_evtchn_bind_interdomain`.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct EvtchnBindInterdomain {
    /// Remote domain.
    pub remote_domain: u32,
    /// Remote port.
    pub remote_port: u32,
}

/// The one-`u32` evtchn argument structs: `bind_virq`, `bind_unbound_port`, `unbind`,
/// `notify`.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct EvtchnU32 {
    /// virq, remote_domain or port.
    pub value: u32,
}

/// `struct ioctl_evtchn_restrict_domid`.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct EvtchnRestrictDomid {
    /// The only domain this fd may talk to.
    pub domid: u16,
}

/// `GNTALLOC_FLAG_WRITABLE`.
pub const GNTALLOC_FLAG_WRITABLE: u16 = 1;

/// The `foreign` member of `struct gntdev_grant_copy_segment`'s `source`/`dest` union.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct GrantCopyForeign {
    /// Grant reference.
    pub gref: u32,
    /// Offset in the granted page.
    pub offset: u16,
    /// Granting domain.
    pub domid: u16,
}

/// One side of a copy segment: the C union of `void *virt` and [`GrantCopyForeign`]
/// (8 bytes on the 64-bit hosts this crate supports).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct GrantCopyPtr {
    /// The union's bytes.
    pub bytes: [u8; 8],
}

impl GrantCopyPtr {
    /// The `virt` member: an address in this process.
    pub fn virt(addr: usize) -> GrantCopyPtr {
        let mut bytes = [0u8; 8];
        let a = addr.to_ne_bytes();
        bytes[..a.len()].copy_from_slice(&a);
        GrantCopyPtr { bytes }
    }
    /// The `foreign` member.
    pub fn foreign(f: GrantCopyForeign) -> GrantCopyPtr {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(f.as_bytes());
        GrantCopyPtr { bytes }
    }
}

/// `struct gntdev_grant_copy_segment` (24 bytes: two padding bytes after `status`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct GntdevGrantCopySegment {
    /// Where bytes come from.
    pub source: GrantCopyPtr,
    /// Where they go.
    pub dest: GrantCopyPtr,
    /// Bytes to copy.
    pub len: u16,
    /// [`GNTCOPY_SOURCE_GREF`] and/or [`GNTCOPY_DEST_GREF`].
    pub flags: u16,
    /// OUT: `GNTST_*`.
    pub status: i16,
    /// Tail padding of the C struct.
    pub pad: u16,
}

/// `struct ioctl_gntdev_grant_copy` (64-bit layout: the pointer follows 4 bytes of padding).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct GntdevGrantCopy {
    /// Number of segments.
    pub count: u32,
    /// Padding.
    pub pad: u32,
    /// `struct gntdev_grant_copy_segment *segments`.
    pub segments: u64,
}

/// `GNTCOPY_source_gref`: the source is a grant reference.
pub const GNTCOPY_SOURCE_GREF: u16 = 1;
/// `GNTCOPY_dest_gref`: the destination is a grant reference.
pub const GNTCOPY_DEST_GREF: u16 = 2;

const fn gnt(nr: u8, size: usize) -> Opcode {
    opcode::from_components(Direction::None, b'G', nr, size)
}
const fn evt(nr: u8, size: usize) -> Opcode {
    opcode::from_components(Direction::None, b'E', nr, size)
}

/// `sizeof(struct ioctl_gntdev_map_grant_ref)` (one ref included).
pub const SIZEOF_GNTDEV_MAP_GRANT_REF: usize =
    size_of::<GntdevMapGrantRefHead>() + size_of::<GntdevGrantRef>();
/// `sizeof(struct ioctl_gntalloc_alloc_gref)` (one gref included, padded to 8).
pub const SIZEOF_GNTALLOC_ALLOC_GREF: usize =
    (size_of::<GntallocAllocGrefHead>() + 4).next_multiple_of(8);

/// `IOCTL_GNTDEV_MAP_GRANT_REF`.
pub const IOCTL_GNTDEV_MAP_GRANT_REF: Opcode = gnt(0, SIZEOF_GNTDEV_MAP_GRANT_REF);
/// `IOCTL_GNTDEV_UNMAP_GRANT_REF`.
pub const IOCTL_GNTDEV_UNMAP_GRANT_REF: Opcode = gnt(1, size_of::<GntdevUnmapGrantRef>());
/// `IOCTL_GNTDEV_SET_MAX_GRANTS`.
pub const IOCTL_GNTDEV_SET_MAX_GRANTS: Opcode = gnt(3, size_of::<GntdevSetMaxGrants>());
/// `IOCTL_GNTDEV_SET_UNMAP_NOTIFY`.
pub const IOCTL_GNTDEV_SET_UNMAP_NOTIFY: Opcode = gnt(7, size_of::<UnmapNotify>());
/// `IOCTL_GNTALLOC_ALLOC_GREF`.
pub const IOCTL_GNTALLOC_ALLOC_GREF: Opcode = gnt(5, SIZEOF_GNTALLOC_ALLOC_GREF);
/// `IOCTL_GNTALLOC_DEALLOC_GREF`.
pub const IOCTL_GNTALLOC_DEALLOC_GREF: Opcode = gnt(6, size_of::<GntallocDeallocGref>());
/// `IOCTL_GNTALLOC_SET_UNMAP_NOTIFY`.
pub const IOCTL_GNTALLOC_SET_UNMAP_NOTIFY: Opcode = gnt(7, size_of::<UnmapNotify>());
/// `IOCTL_GNTDEV_GRANT_COPY`.
pub const IOCTL_GNTDEV_GRANT_COPY: Opcode = gnt(8, size_of::<GntdevGrantCopy>());
/// `IOCTL_EVTCHN_BIND_VIRQ`.
pub const IOCTL_EVTCHN_BIND_VIRQ: Opcode = evt(0, size_of::<EvtchnU32>());
/// `IOCTL_EVTCHN_BIND_INTERDOMAIN`.
pub const IOCTL_EVTCHN_BIND_INTERDOMAIN: Opcode = evt(1, size_of::<EvtchnBindInterdomain>());
/// `IOCTL_EVTCHN_BIND_UNBOUND_PORT`.
pub const IOCTL_EVTCHN_BIND_UNBOUND_PORT: Opcode = evt(2, size_of::<EvtchnU32>());
/// `IOCTL_EVTCHN_UNBIND`.
pub const IOCTL_EVTCHN_UNBIND: Opcode = evt(3, size_of::<EvtchnU32>());
/// `IOCTL_EVTCHN_NOTIFY`.
pub const IOCTL_EVTCHN_NOTIFY: Opcode = evt(4, size_of::<EvtchnU32>());
/// `IOCTL_EVTCHN_RESET`.
pub const IOCTL_EVTCHN_RESET: Opcode = evt(5, 0);
/// `IOCTL_EVTCHN_RESTRICT_DOMID`.
pub const IOCTL_EVTCHN_RESTRICT_DOMID: Opcode = evt(6, size_of::<EvtchnRestrictDomid>());

/// Every size, offset and request number the C headers also define, by their C names:
/// `tests/abi_layout.rs` compiles a C program printing the same list and compares.
pub fn layout_facts() -> Vec<(&'static str, u64)> {
    let z = |v: usize| v as u64;
    vec![
        (
            "sizeof(struct ioctl_gntdev_grant_ref)",
            z(size_of::<GntdevGrantRef>()),
        ),
        (
            "offsetof(struct ioctl_gntdev_grant_ref, ref)",
            z(offset_of!(GntdevGrantRef, gref)),
        ),
        (
            "sizeof(struct ioctl_gntdev_map_grant_ref)",
            z(SIZEOF_GNTDEV_MAP_GRANT_REF),
        ),
        (
            "offsetof(struct ioctl_gntdev_map_grant_ref, index)",
            z(offset_of!(GntdevMapGrantRefHead, index)),
        ),
        (
            "offsetof(struct ioctl_gntdev_map_grant_ref, refs)",
            z(size_of::<GntdevMapGrantRefHead>()),
        ),
        (
            "sizeof(struct ioctl_gntdev_unmap_grant_ref)",
            z(size_of::<GntdevUnmapGrantRef>()),
        ),
        (
            "offsetof(struct ioctl_gntdev_unmap_grant_ref, count)",
            z(offset_of!(GntdevUnmapGrantRef, count)),
        ),
        (
            "sizeof(struct ioctl_gntdev_set_max_grants)",
            z(size_of::<GntdevSetMaxGrants>()),
        ),
        (
            "sizeof(struct ioctl_gntdev_unmap_notify)",
            z(size_of::<UnmapNotify>()),
        ),
        (
            "offsetof(struct ioctl_gntdev_unmap_notify, action)",
            z(offset_of!(UnmapNotify, action)),
        ),
        (
            "offsetof(struct ioctl_gntdev_unmap_notify, event_channel_port)",
            z(offset_of!(UnmapNotify, event_channel_port)),
        ),
        (
            "sizeof(struct ioctl_gntalloc_alloc_gref)",
            z(SIZEOF_GNTALLOC_ALLOC_GREF),
        ),
        (
            "offsetof(struct ioctl_gntalloc_alloc_gref, flags)",
            z(offset_of!(GntallocAllocGrefHead, flags)),
        ),
        (
            "offsetof(struct ioctl_gntalloc_alloc_gref, count)",
            z(offset_of!(GntallocAllocGrefHead, count)),
        ),
        (
            "offsetof(struct ioctl_gntalloc_alloc_gref, index)",
            z(offset_of!(GntallocAllocGrefHead, index)),
        ),
        (
            "offsetof(struct ioctl_gntalloc_alloc_gref, gref_ids)",
            z(size_of::<GntallocAllocGrefHead>()),
        ),
        (
            "sizeof(struct ioctl_gntalloc_dealloc_gref)",
            z(size_of::<GntallocDeallocGref>()),
        ),
        (
            "offsetof(struct ioctl_gntalloc_dealloc_gref, count)",
            z(offset_of!(GntallocDeallocGref, count)),
        ),
        (
            "sizeof(struct ioctl_gntalloc_unmap_notify)",
            z(size_of::<UnmapNotify>()),
        ),
        (
            "sizeof(struct ioctl_evtchn_bind_interdomain)",
            z(size_of::<EvtchnBindInterdomain>()),
        ),
        (
            "offsetof(struct ioctl_evtchn_bind_interdomain, remote_port)",
            z(offset_of!(EvtchnBindInterdomain, remote_port)),
        ),
        (
            "sizeof(struct ioctl_evtchn_bind_unbound_port)",
            z(size_of::<EvtchnU32>()),
        ),
        (
            "sizeof(struct ioctl_evtchn_notify)",
            z(size_of::<EvtchnU32>()),
        ),
        (
            "sizeof(struct ioctl_evtchn_restrict_domid)",
            z(size_of::<EvtchnRestrictDomid>()),
        ),
        (
            "IOCTL_GNTDEV_MAP_GRANT_REF",
            u64::from(IOCTL_GNTDEV_MAP_GRANT_REF),
        ),
        (
            "IOCTL_GNTDEV_UNMAP_GRANT_REF",
            u64::from(IOCTL_GNTDEV_UNMAP_GRANT_REF),
        ),
        (
            "IOCTL_GNTDEV_SET_MAX_GRANTS",
            u64::from(IOCTL_GNTDEV_SET_MAX_GRANTS),
        ),
        (
            "IOCTL_GNTDEV_SET_UNMAP_NOTIFY",
            u64::from(IOCTL_GNTDEV_SET_UNMAP_NOTIFY),
        ),
        (
            "IOCTL_GNTALLOC_ALLOC_GREF",
            u64::from(IOCTL_GNTALLOC_ALLOC_GREF),
        ),
        (
            "IOCTL_GNTALLOC_DEALLOC_GREF",
            u64::from(IOCTL_GNTALLOC_DEALLOC_GREF),
        ),
        (
            "IOCTL_GNTALLOC_SET_UNMAP_NOTIFY",
            u64::from(IOCTL_GNTALLOC_SET_UNMAP_NOTIFY),
        ),
        (
            "sizeof(struct gntdev_grant_copy_segment)",
            z(size_of::<GntdevGrantCopySegment>()),
        ),
        (
            "offsetof(struct gntdev_grant_copy_segment, dest)",
            z(offset_of!(GntdevGrantCopySegment, dest)),
        ),
        (
            "offsetof(struct gntdev_grant_copy_segment, source.foreign.ref)",
            z(offset_of!(GrantCopyForeign, gref)),
        ),
        (
            "offsetof(struct gntdev_grant_copy_segment, source.foreign.offset)",
            z(offset_of!(GrantCopyForeign, offset)),
        ),
        (
            "offsetof(struct gntdev_grant_copy_segment, source.foreign.domid)",
            z(offset_of!(GrantCopyForeign, domid)),
        ),
        (
            "sizeof(((struct gntdev_grant_copy_segment *)0)->source)",
            z(size_of::<GrantCopyPtr>()),
        ),
        (
            "offsetof(struct gntdev_grant_copy_segment, len)",
            z(offset_of!(GntdevGrantCopySegment, len)),
        ),
        (
            "offsetof(struct gntdev_grant_copy_segment, flags)",
            z(offset_of!(GntdevGrantCopySegment, flags)),
        ),
        (
            "offsetof(struct gntdev_grant_copy_segment, status)",
            z(offset_of!(GntdevGrantCopySegment, status)),
        ),
        (
            "sizeof(struct ioctl_gntdev_grant_copy)",
            z(size_of::<GntdevGrantCopy>()),
        ),
        (
            "offsetof(struct ioctl_gntdev_grant_copy, segments)",
            z(offset_of!(GntdevGrantCopy, segments)),
        ),
        (
            "IOCTL_GNTDEV_GRANT_COPY",
            u64::from(IOCTL_GNTDEV_GRANT_COPY),
        ),
        ("IOCTL_EVTCHN_BIND_VIRQ", u64::from(IOCTL_EVTCHN_BIND_VIRQ)),
        (
            "IOCTL_EVTCHN_BIND_INTERDOMAIN",
            u64::from(IOCTL_EVTCHN_BIND_INTERDOMAIN),
        ),
        (
            "IOCTL_EVTCHN_BIND_UNBOUND_PORT",
            u64::from(IOCTL_EVTCHN_BIND_UNBOUND_PORT),
        ),
        ("IOCTL_EVTCHN_UNBIND", u64::from(IOCTL_EVTCHN_UNBIND)),
        ("IOCTL_EVTCHN_NOTIFY", u64::from(IOCTL_EVTCHN_NOTIFY)),
        ("IOCTL_EVTCHN_RESET", u64::from(IOCTL_EVTCHN_RESET)),
        (
            "IOCTL_EVTCHN_RESTRICT_DOMID",
            u64::from(IOCTL_EVTCHN_RESTRICT_DOMID),
        ),
        ("GNTALLOC_FLAG_WRITABLE", u64::from(GNTALLOC_FLAG_WRITABLE)),
    ]
}

/// The Xen ABI constants grant copy uses, by their `<xen/grant_table.h>` names (checked
/// like [`layout_facts`], in a program of their own: that header and the uapi ones define
/// some types twice).
pub fn grant_table_facts() -> Vec<(&'static str, i64)> {
    use crate::copy::{
        GNTST_BAD_COPY_ARG, GNTST_BAD_DOMAIN, GNTST_BAD_GNTREF, GNTST_GENERAL_ERROR, GNTST_OKAY,
        GNTST_PERMISSION_DENIED,
    };
    vec![
        ("GNTCOPY_source_gref", i64::from(GNTCOPY_SOURCE_GREF)),
        ("GNTCOPY_dest_gref", i64::from(GNTCOPY_DEST_GREF)),
        ("GNTST_okay", i64::from(GNTST_OKAY)),
        ("GNTST_general_error", i64::from(GNTST_GENERAL_ERROR)),
        ("GNTST_bad_domain", i64::from(GNTST_BAD_DOMAIN)),
        ("GNTST_bad_gntref", i64::from(GNTST_BAD_GNTREF)),
        (
            "GNTST_permission_denied",
            i64::from(GNTST_PERMISSION_DENIED),
        ),
        ("GNTST_bad_copy_arg", i64::from(GNTST_BAD_COPY_ARG)),
    ]
}

/// An 8-byte-aligned argument buffer: a fixed head, then a variable `u32` tail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgBuf {
    words: Vec<u64>,
}

impl ArgBuf {
    /// A zeroed buffer of at least `len` bytes, at least `min` bytes (the C sizeof).
    pub fn zeroed(len: usize, min: usize) -> ArgBuf {
        ArgBuf {
            words: vec![0; len.max(min).div_ceil(8)],
        }
    }
    /// A buffer holding `head` followed by `tail`, padded to at least `min` bytes.
    pub fn with<H: IntoBytes + Immutable>(head: &H, tail: &[u32], min: usize) -> ArgBuf {
        let head = head.as_bytes();
        let mut buf = ArgBuf::zeroed(head.len() + tail.len() * 4, min);
        let bytes = buf.words.as_mut_bytes();
        bytes[..head.len()].copy_from_slice(head);
        for (chunk, v) in bytes[head.len()..].chunks_exact_mut(4).zip(tail) {
            chunk.copy_from_slice(&v.to_ne_bytes());
        }
        buf
    }
    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        self.words.as_bytes()
    }
    /// Reads the head back (after the kernel filled OUT fields).
    pub fn head<H: FromBytes>(&self) -> Option<H> {
        H::read_from_prefix(self.bytes()).ok().map(|(h, _)| h)
    }
    /// Reads `n` u32s following a head of `head_len` bytes.
    pub fn tail(&self, head_len: usize, n: usize) -> Option<Vec<u32>> {
        let end = n.checked_mul(4)?.checked_add(head_len)?;
        let bytes = self.bytes().get(head_len..end)?;
        Some(
            bytes
                .chunks_exact(4)
                .filter_map(|c| u32::read_from_bytes(c).ok())
                .collect(),
        )
    }
}

/// `ioctl(fd, opcode, buf)` for a struct the kernel reads and may write back; returns the
/// ioctl's non-negative return value (the new port for evtchn binds).
struct BufIoctl<'a> {
    opcode: Opcode,
    buf: &'a mut ArgBuf,
}

// SAFETY: every opcode built in this module takes a pointer to its argument struct (or
// ignores the argument, for RESET), and `buf` is 8-aligned and at least the C struct's size
// plus any `count`-long tail the caller encoded; the kernel writes only within that. The
// output is the plain return value, so no pointer is read back here.
unsafe impl Ioctl for BufIoctl<'_> {
    type Output = IoctlOutput;
    const IS_MUTATING: bool = true;
    fn opcode(&self) -> Opcode {
        self.opcode
    }
    fn as_ptr(&mut self) -> *mut std::ffi::c_void {
        self.buf.words.as_mut_ptr().cast()
    }
    unsafe fn output_from_ptr(
        out: IoctlOutput,
        _: *mut std::ffi::c_void,
    ) -> rustix::io::Result<IoctlOutput> {
        Ok(out)
    }
}

/// `IOCTL_GNTDEV_GRANT_COPY` over `segs`; the kernel writes each segment's `status`.
///
/// # Safety
///
/// Every `virt` side of `segs` must point to `len` bytes of memory of this process that
/// stay mapped for the call (writable when it is the destination), and no Rust reference
/// may exist into those bytes: the kernel reads or writes them.
pub(crate) unsafe fn grant_copy(
    fd: BorrowedFd<'_>,
    segs: &mut [GntdevGrantCopySegment],
) -> Result<(), Errno> {
    let head = GntdevGrantCopy {
        count: u32::try_from(segs.len()).map_err(|_| Errno::INVAL)?,
        pad: 0,
        segments: segs.as_mut_ptr() as u64,
    };
    let mut buf = ArgBuf::with(&head, &[], 0);
    // SAFETY: the opcode takes `struct ioctl_gntdev_grant_copy`, which `buf` holds; its
    // `segments` points at `segs.len()` writable segments (the kernel writes only their
    // `status` fields) that `segs` borrows mutably for the whole call, and the caller
    // guarantees the `virt` memory they name.
    unsafe {
        rustix::ioctl::ioctl(
            fd,
            BufIoctl {
                opcode: IOCTL_GNTDEV_GRANT_COPY,
                buf: &mut buf,
            },
        )?
    };
    Ok(())
}

/// Performs an ioctl from this module's table with an argument encoded by [`ArgBuf`].
pub(crate) fn call(fd: BorrowedFd<'_>, opcode: Opcode, buf: &mut ArgBuf) -> Result<u32, Errno> {
    // SAFETY: callers in this crate pass one of the opcodes above with the buffer that
    // opcode's struct encodes (see the `unsafe impl Ioctl` above).
    let ret = unsafe { rustix::ioctl::ioctl(fd, BufIoctl { opcode, buf })? };
    u32::try_from(ret).map_err(|_| Errno::INVAL)
}

#[cfg(test)]
mod tests;
