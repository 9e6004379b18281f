//! `<linux/usbdevice_fs.h>` byte for byte, and the ioctl calls: the usbfs layer's `unsafe`.
//!
//! Layouts and ioctl numbers are pinned by a test that compiles a C program against the
//! installed header (`usbfs::tests`).

#![allow(non_camel_case_types)]

use std::ffi::c_void;
use std::os::fd::BorrowedFd;

use rustix::io::Errno;
use rustix::ioctl::{opcode, Ioctl, IoctlOutput, Opcode};

/// `struct usbdevfs_ctrltransfer`.
#[repr(C)]
#[derive(Debug)]
pub struct usbdevfs_ctrltransfer {
    pub b_request_type: u8,
    pub b_request: u8,
    pub w_value: u16,
    pub w_index: u16,
    pub w_length: u16,
    pub timeout: u32,
    pub data: *mut c_void,
}

/// `struct usbdevfs_setinterface`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct usbdevfs_setinterface {
    pub interface: u32,
    pub altsetting: u32,
}

/// `struct usbdevfs_iso_packet_desc`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct usbdevfs_iso_packet_desc {
    pub length: u32,
    pub actual_length: u32,
    pub status: u32,
}

/// `struct usbdevfs_urb` (without its flexible `iso_frame_desc[]` tail).
#[repr(C)]
#[derive(Debug)]
pub struct usbdevfs_urb {
    pub type_: u8,
    pub endpoint: u8,
    pub status: i32,
    pub flags: u32,
    pub buffer: *mut c_void,
    pub buffer_length: i32,
    pub actual_length: i32,
    pub start_frame: i32,
    /// Union with `stream_id`.
    pub number_of_packets: i32,
    pub error_count: i32,
    pub signr: u32,
    pub usercontext: *mut c_void,
    pub iso_frame_desc: [usbdevfs_iso_packet_desc; 0],
}

/// `struct usbdevfs_ioctl`.
#[repr(C)]
#[derive(Debug)]
pub struct usbdevfs_ioctl {
    pub ifno: i32,
    pub ioctl_code: i32,
    pub data: *mut c_void,
}

/// `USBDEVFS_MAXDRIVERNAME + 1`.
pub const DRIVER_NAME_LEN: usize = 256;

/// `struct usbdevfs_disconnect_claim`.
#[repr(C)]
#[derive(Debug)]
pub struct usbdevfs_disconnect_claim {
    pub interface: u32,
    pub flags: u32,
    pub driver: [u8; DRIVER_NAME_LEN],
}

/// `struct usbdevfs_getdriver`.
#[repr(C)]
#[derive(Debug)]
pub struct usbdevfs_getdriver {
    pub interface: u32,
    pub driver: [u8; DRIVER_NAME_LEN],
}

/// ioctl request numbers, composed like the header's `_IO*` macros.
pub mod nr {
    use super::*;
    pub const CONTROL: Opcode = opcode::read_write::<usbdevfs_ctrltransfer>(b'U', 0);
    pub const SETINTERFACE: Opcode = opcode::read::<usbdevfs_setinterface>(b'U', 4);
    pub const SETCONFIGURATION: Opcode = opcode::read::<u32>(b'U', 5);
    pub const GETDRIVER: Opcode = opcode::write::<usbdevfs_getdriver>(b'U', 8);
    pub const SUBMITURB: Opcode = opcode::read::<usbdevfs_urb>(b'U', 10);
    pub const DISCARDURB: Opcode = opcode::none(b'U', 11);
    pub const REAPURB: Opcode = opcode::write::<*mut c_void>(b'U', 12);
    pub const REAPURBNDELAY: Opcode = opcode::write::<*mut c_void>(b'U', 13);
    pub const CLAIMINTERFACE: Opcode = opcode::read::<u32>(b'U', 15);
    pub const RELEASEINTERFACE: Opcode = opcode::read::<u32>(b'U', 16);
    pub const IOCTL: Opcode = opcode::read_write::<usbdevfs_ioctl>(b'U', 18);
    pub const RESET: Opcode = opcode::none(b'U', 20);
    pub const CLEAR_HALT: Opcode = opcode::read::<u32>(b'U', 21);
    pub const DISCONNECT: Opcode = opcode::none(b'U', 22);
    pub const CONNECT: Opcode = opcode::none(b'U', 23);
    pub const GET_CAPABILITIES: Opcode = opcode::read::<u32>(b'U', 26);
    pub const DISCONNECT_CLAIM: Opcode = opcode::read::<usbdevfs_disconnect_claim>(b'U', 27);
    pub const GET_SPEED: Opcode = opcode::none(b'U', 31);
}

/// `USBDEVFS_CAP_*`.
pub mod cap {
    pub const ZERO_PACKET: u32 = 0x01;
    pub const BULK_CONTINUATION: u32 = 0x02;
    pub const NO_PACKET_SIZE_LIM: u32 = 0x04;
    pub const BULK_SCATTER_GATHER: u32 = 0x08;
    pub const REAP_AFTER_DISCONNECT: u32 = 0x10;
}

/// `USBDEVFS_DISCONNECT_CLAIM_EXCEPT_DRIVER`.
pub const DISCONNECT_CLAIM_EXCEPT_DRIVER: u32 = 0x02;

/// An ioctl whose argument is a raw pointer or integer and whose result is the return value.
struct RawIoctl {
    opcode: Opcode,
    arg: *mut c_void,
}

// SAFETY: `output_from_ptr` just passes the return value through; the argument's validity is
// the caller's obligation, stated on `ioctl` below.
unsafe impl Ioctl for RawIoctl {
    type Output = IoctlOutput;
    const IS_MUTATING: bool = true;

    fn opcode(&self) -> Opcode {
        self.opcode
    }

    fn as_ptr(&mut self) -> *mut c_void {
        self.arg
    }

    unsafe fn output_from_ptr(out: IoctlOutput, _: *mut c_void) -> rustix::io::Result<IoctlOutput> {
        Ok(out)
    }
}

/// Issues ioctl `opcode` with `arg` on a usbfs fd.
///
/// # Safety
/// `arg` must be what `opcode` expects: a pointer to a live, correctly laid out argument
/// struct for the duration of the call (and, for SUBMITURB, until the URB is reaped), or an
/// integer value for the ioctls that take one.
unsafe fn ioctl(fd: BorrowedFd<'_>, opcode: Opcode, arg: *mut c_void) -> Result<i32, Errno> {
    // SAFETY: forwarded from this function's contract.
    unsafe { rustix::ioctl::ioctl(fd, RawIoctl { opcode, arg }) }
}

/// `USBDEVFS_SUBMITURB`.
///
/// # Safety
/// `urb` (with its iso descriptors) and the buffer it points to must stay valid and unmoved
/// until the kernel hands the URB back through REAPURB(NDELAY), or the fd is closed.
pub unsafe fn submit_urb(fd: BorrowedFd<'_>, urb: *mut usbdevfs_urb) -> Result<(), Errno> {
    // SAFETY: the caller keeps `urb` and its buffer alive until reaped.
    unsafe { ioctl(fd, nr::SUBMITURB, urb.cast()) }.map(drop)
}

/// `USBDEVFS_REAPURBNDELAY` (`blocking` = false) or `USBDEVFS_REAPURB`: the address of a
/// finished URB, exactly as submitted.
pub fn reap_urb(fd: BorrowedFd<'_>, blocking: bool) -> Result<*mut usbdevfs_urb, Errno> {
    let mut out: *mut c_void = std::ptr::null_mut();
    let op = if blocking {
        nr::REAPURB
    } else {
        nr::REAPURBNDELAY
    };
    // SAFETY: the kernel writes one pointer into `out`, which lives across the call.
    unsafe { ioctl(fd, op, (&mut out as *mut *mut c_void).cast()) }?;
    Ok(out.cast())
}

/// `USBDEVFS_DISCARDURB`: the argument is the submitted URB's address itself.
pub fn discard_urb(fd: BorrowedFd<'_>, urb: *mut usbdevfs_urb) -> Result<(), Errno> {
    // SAFETY: the kernel only compares the address against its pending list (EINVAL if it
    // is not there); it never dereferences it.
    unsafe { ioctl(fd, nr::DISCARDURB, urb.cast()) }.map(drop)
}

/// An ioctl taking a pointer to one `u32`.
fn with_u32(fd: BorrowedFd<'_>, op: Opcode, mut v: u32) -> Result<i32, Errno> {
    // SAFETY: `v` lives across the call; these ioctls read (or write) one u32 there.
    unsafe { ioctl(fd, op, (&mut v as *mut u32).cast()) }
}

/// `USBDEVFS_CLAIMINTERFACE`.
pub fn claim_interface(fd: BorrowedFd<'_>, iface: u32) -> Result<(), Errno> {
    with_u32(fd, nr::CLAIMINTERFACE, iface).map(drop)
}

/// `USBDEVFS_RELEASEINTERFACE`.
pub fn release_interface(fd: BorrowedFd<'_>, iface: u32) -> Result<(), Errno> {
    with_u32(fd, nr::RELEASEINTERFACE, iface).map(drop)
}

/// `USBDEVFS_SETCONFIGURATION` (-1 = unconfigure; pass `u32::MAX`).
pub fn set_configuration(fd: BorrowedFd<'_>, value: u32) -> Result<(), Errno> {
    with_u32(fd, nr::SETCONFIGURATION, value).map(drop)
}

/// `USBDEVFS_CLEAR_HALT`.
pub fn clear_halt(fd: BorrowedFd<'_>, ep: u32) -> Result<(), Errno> {
    with_u32(fd, nr::CLEAR_HALT, ep).map(drop)
}

/// `USBDEVFS_SETINTERFACE`.
pub fn set_interface(fd: BorrowedFd<'_>, interface: u32, altsetting: u32) -> Result<(), Errno> {
    let mut arg = usbdevfs_setinterface {
        interface,
        altsetting,
    };
    // SAFETY: `arg` is a live usbdevfs_setinterface for the call.
    unsafe {
        ioctl(
            fd,
            nr::SETINTERFACE,
            (&mut arg as *mut usbdevfs_setinterface).cast(),
        )
    }
    .map(drop)
}

/// `USBDEVFS_RESET`.
pub fn reset(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    // SAFETY: takes no argument.
    unsafe { ioctl(fd, nr::RESET, std::ptr::null_mut()) }.map(drop)
}

/// `USBDEVFS_GET_SPEED`: Linux `enum usb_device_speed`.
pub fn get_speed(fd: BorrowedFd<'_>) -> Result<u32, Errno> {
    // SAFETY: takes no argument; the speed is the return value.
    let v = unsafe { ioctl(fd, nr::GET_SPEED, std::ptr::null_mut()) }?;
    u32::try_from(v).map_err(|_| Errno::INVAL)
}

/// `USBDEVFS_GET_CAPABILITIES`.
pub fn get_capabilities(fd: BorrowedFd<'_>) -> Result<u32, Errno> {
    let mut caps = 0u32;
    // SAFETY: the kernel writes one u32 into `caps`, live across the call.
    unsafe { ioctl(fd, nr::GET_CAPABILITIES, (&mut caps as *mut u32).cast()) }?;
    Ok(caps)
}

/// `USBDEVFS_DISCONNECT_CLAIM` with EXCEPT_DRIVER "usbfs": detach whatever kernel driver has
/// `iface` and claim it, unless another usbfs user (another process) holds it (EBUSY).
pub fn disconnect_claim(fd: BorrowedFd<'_>, iface: u32) -> Result<(), Errno> {
    let mut arg = usbdevfs_disconnect_claim {
        interface: iface,
        flags: DISCONNECT_CLAIM_EXCEPT_DRIVER,
        driver: [0; DRIVER_NAME_LEN],
    };
    arg.driver[..5].copy_from_slice(b"usbfs");
    // SAFETY: `arg` is a live usbdevfs_disconnect_claim for the call.
    unsafe {
        ioctl(
            fd,
            nr::DISCONNECT_CLAIM,
            (&mut arg as *mut usbdevfs_disconnect_claim).cast(),
        )
    }
    .map(drop)
}

/// `USBDEVFS_IOCTL(ifno, USBDEVFS_CONNECT)`: let kernel drivers bind `iface` again.
pub fn connect(fd: BorrowedFd<'_>, iface: u32) -> Result<(), Errno> {
    let mut arg = usbdevfs_ioctl {
        ifno: i32::try_from(iface).map_err(|_| Errno::INVAL)?,
        ioctl_code: nr::CONNECT as i32,
        data: std::ptr::null_mut(),
    };
    // SAFETY: `arg` is a live usbdevfs_ioctl; CONNECT takes no data.
    unsafe { ioctl(fd, nr::IOCTL, (&mut arg as *mut usbdevfs_ioctl).cast()) }.map(drop)
}

/// `USBDEVFS_CONTROL` (synchronous control transfer). Returns bytes transferred.
pub fn control(
    fd: BorrowedFd<'_>,
    setup: [u8; 8],
    data: &mut [u8],
    timeout_ms: u32,
) -> Result<usize, Errno> {
    let w_length = u16::from_le_bytes([setup[6], setup[7]]);
    if usize::from(w_length) > data.len() {
        return Err(Errno::INVAL);
    }
    let mut arg = usbdevfs_ctrltransfer {
        b_request_type: setup[0],
        b_request: setup[1],
        w_value: u16::from_le_bytes([setup[2], setup[3]]),
        w_index: u16::from_le_bytes([setup[4], setup[5]]),
        w_length,
        timeout: timeout_ms,
        data: data.as_mut_ptr().cast(),
    };
    // SAFETY: `arg.data` points at `data`, at least wLength bytes (checked), live for the call.
    let n = unsafe {
        ioctl(
            fd,
            nr::CONTROL,
            (&mut arg as *mut usbdevfs_ctrltransfer).cast(),
        )
    }?;
    usize::try_from(n).map_err(|_| Errno::INVAL)
}

/// One URB and its iso descriptors in one 8-byte-aligned heap block: the kernel keeps the
/// address from SUBMITURB until the reap, so the block never moves (it is a boxed slice).
#[derive(Debug)]
pub struct UrbBlock {
    words: Box<[u64]>,
    packets: usize,
}

// SAFETY: the block is plain memory; the raw pointers inside are only addresses the kernel
// uses, and the block is only touched through `&mut self` or while not submitted.
unsafe impl Send for UrbBlock {}

const _: () = assert!(std::mem::align_of::<usbdevfs_urb>() <= std::mem::align_of::<u64>());

impl UrbBlock {
    /// A zeroed URB with room for `packets` iso descriptors.
    pub fn new(packets: usize) -> Self {
        let bytes = std::mem::size_of::<usbdevfs_urb>()
            + packets * std::mem::size_of::<usbdevfs_iso_packet_desc>();
        UrbBlock {
            words: vec![0u64; bytes.div_ceil(8)].into_boxed_slice(),
            packets,
        }
    }

    /// The URB's address (stable for the block's life).
    pub fn as_ptr(&mut self) -> *mut usbdevfs_urb {
        self.words.as_mut_ptr().cast()
    }

    /// The URB's address for comparisons and DISCARDURB (never written through).
    pub fn addr(&self) -> *mut usbdevfs_urb {
        self.words.as_ptr().cast_mut().cast()
    }

    /// The URB header.
    pub fn urb(&mut self) -> &mut usbdevfs_urb {
        // SAFETY: the block is at least size_of::<usbdevfs_urb>() bytes, 8-aligned (checked
        // above), zero-initialised (a valid bit pattern: integers and null pointers), and
        // borrowed uniquely through `&mut self`; callers only use this while not in flight.
        unsafe { &mut *self.as_ptr() }
    }

    /// The iso descriptors.
    pub fn iso(&mut self) -> &mut [usbdevfs_iso_packet_desc] {
        let packets = self.packets;
        // SAFETY: the block was sized for `packets` descriptors right after the header
        // (offset size_of::<usbdevfs_urb>(), 4-aligned); same uniqueness as `urb`.
        unsafe {
            let first = std::ptr::addr_of_mut!((*self.as_ptr()).iso_frame_desc).cast();
            std::slice::from_raw_parts_mut(first, packets)
        }
    }
}
