//! usbif bytes, byte-exact with Xen's `io/usbif.h`.
//!
//! Each structure has a raw image (`Raw*`, zerocopy, any bytes valid), a checked repr
//! built by `parse` from a private copy, and an infallible `emit`. Layouts are pinned
//! against the real header by `tests/layout.rs`.

pub mod conn;
pub mod iso;
pub mod pipe;
pub mod response;
pub mod seg;
pub mod setup;
pub mod status;
pub mod urb;

pub use conn::{BadConnResponse, ConnEvent, ConnRequest, RawConnRequest, RawConnResponse};
pub use iso::{
    iso_packets, BadIsoPacket, IsoPacket, IsoPacketResult, RawIsoPacketDesc, ISO_DESC_SIZE,
};
pub use pipe::{Ep, Pipe, Port, XferType};
pub use seg::{Seg, Segments};
pub use setup::Setup;
pub use status::{Speed, Status, UsbVer};
pub use urb::{
    BadRequest, BadResponse, Isoc, Limits, RawIntr, RawIsoc, RawSeg, RawUnlink, RawUrbRequest,
    RawUrbResponse, Submit, Transfer, Unlink, UrbRequest, UrbResponse, MAX_BUFFER,
};

/// `USBIF_MAX_SEGMENTS_PER_REQUEST`: grant segments in one urb request.
pub const MAX_SEGMENTS_PER_REQUEST: usize = 16;
/// `USBIF_MAX_PORTNR`: ports on one virtual root hub.
pub const MAX_PORTNR: u8 = 31;
/// Xen page size; a segment never crosses it.
pub const PAGE_SIZE: usize = 4096;
/// `USBIF_SHORT_NOT_OK`: the only transfer flag usbif.h defines.
pub const SHORT_NOT_OK: u16 = 0x0001;
/// `USBIF_RING_SIZE`: bytes of one stock ring page.
pub const RING_PAGE_SIZE: usize = 4096;
/// `USB_URB_RING_SIZE`: entries of the stock URB ring (148-byte requests in one page).
pub const URB_RING_SIZE: u32 = 16;
/// `USB_CONN_RING_SIZE`: entries of the stock conn ring (4-byte responses in one page).
pub const CONN_RING_SIZE: u32 = 512;
