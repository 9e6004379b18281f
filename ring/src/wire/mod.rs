//! usbif bytes, byte-exact with Xen's `io/usbif.h`.

pub mod pipe;
pub mod status;

pub use pipe::{Ep, Pipe, XferType};
pub use status::{Speed, Status, UsbVer};

/// `USBIF_MAX_SEGMENTS_PER_REQUEST`: grant segments in one urb request.
pub const MAX_SEGMENTS_PER_REQUEST: usize = 16;
/// `USBIF_MAX_PORTNR`: ports on one virtual root hub.
pub const MAX_PORTNR: u8 = 31;
/// Xen page size; a segment never crosses it.
pub const PAGE_SIZE: usize = 4096;
/// `USBIF_SHORT_NOT_OK`: the only transfer flag usbif.h defines.
pub const SHORT_NOT_OK: u16 = 0x0001;
