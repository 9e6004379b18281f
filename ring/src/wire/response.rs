//! The URB ring's responses: raw `usbif_urb_response`, checked parse, emit.

use zerocopy::little_endian::{I32, U16};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::Status;

/// `struct usbif_urb_response`, 16 bytes.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(C)]
pub struct RawUrbResponse {
    /// Id of the request answered.
    pub id: U16,
    /// Start frame (isochronous).
    pub start_frame: U16,
    /// `USBIF_STATUS_*` (a negative Linux errno, or 0).
    pub status: I32,
    /// Bytes transferred.
    pub actual_length: I32,
    /// Number of failed ISO packets.
    pub error_count: I32,
}

/// Why a response from the backend was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadResponse {
    /// `actual_length` is negative.
    #[error("negative actual_length {0}")]
    NegativeActualLength(i32),
    /// `error_count` is negative.
    #[error("negative error_count {0}")]
    NegativeErrorCount(i32),
}

/// A checked URB response. `status` is kept raw: a stock backend may send any errno, and
/// [`UrbResponse::status_lossy`] maps it the way xen-hcd does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UrbResponse {
    /// Id of the request answered.
    pub id: u16,
    /// Start frame (isochronous).
    pub start_frame: u16,
    /// Raw status: 0 or a negative Linux errno.
    pub status: i32,
    /// Bytes transferred, ≤ `i32::MAX` (the wire field is signed).
    pub actual_length: u32,
    /// Failed ISO packets, ≤ `i32::MAX`.
    pub error_count: u32,
}

impl UrbResponse {
    /// A non-isochronous response.
    pub const fn new(id: u16, status: Status, actual_length: u32) -> Self {
        UrbResponse {
            id,
            start_frame: 0,
            status: status.to_wire(),
            actual_length,
            error_count: 0,
        }
    }

    /// The status if it is one usbif.h defines.
    pub const fn status(&self) -> Option<Status> {
        Status::from_wire(self.status)
    }

    /// The status as xen-hcd reads it: unknown codes become `Shutdown`.
    pub const fn status_lossy(&self) -> Status {
        Status::from_wire_lossy(self.status)
    }

    /// True for status 0.
    pub const fn is_ok(&self) -> bool {
        self.status == 0
    }

    /// Checks a private copy of a response.
    pub fn parse(raw: &RawUrbResponse) -> Result<Self, BadResponse> {
        let al = raw.actual_length.get();
        let ec = raw.error_count.get();
        let actual_length = u32::try_from(al).map_err(|_| BadResponse::NegativeActualLength(al))?;
        let error_count = u32::try_from(ec).map_err(|_| BadResponse::NegativeErrorCount(ec))?;
        Ok(UrbResponse {
            id: raw.id.get(),
            start_frame: raw.start_frame.get(),
            status: raw.status.get(),
            actual_length,
            error_count,
        })
    }

    /// Writes the response; lengths above `i32::MAX` saturate.
    pub fn emit(&self, raw: &mut RawUrbResponse) {
        raw.id.set(self.id);
        raw.start_frame.set(self.start_frame);
        raw.status.set(self.status);
        raw.actual_length
            .set(i32::try_from(self.actual_length).unwrap_or(i32::MAX));
        raw.error_count
            .set(i32::try_from(self.error_count).unwrap_or(i32::MAX));
    }

    /// [`UrbResponse::emit`] into a fresh raw response.
    pub fn to_raw(&self) -> RawUrbResponse {
        let mut raw = RawUrbResponse::new_zeroed();
        self.emit(&mut raw);
        raw
    }
}

const _: () = assert!(core::mem::size_of::<RawUrbResponse>() == 16);
