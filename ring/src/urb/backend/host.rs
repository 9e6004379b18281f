//! What the host gives back: how a URB ended, and the error for one it does not have.

use crate::wire::Status;

/// How the host finished a URB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostStatus {
    /// It ran to this status (usbfs: anything but -ECONNRESET/-ENOENT, mapped with
    /// [`Status::from_errno`]).
    Done(Status),
    /// It was cancelled before it ran to an end: usbfs reaped it with -ECONNRESET or
    /// -ENOENT, or refused it with -EREMOTEIO because an earlier URB of its
    /// `BULK_CONTINUATION` chain failed.
    Cancelled,
}

/// A URB the host gave back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostResult {
    /// How it ended.
    pub status: HostStatus,
    /// Bytes transferred.
    pub actual_length: u32,
    /// Isochronous: the frame it started in.
    pub start_frame: u16,
    /// Isochronous: packets that failed.
    pub error_count: u32,
}

impl HostResult {
    /// A non-isochronous URB that ran to `status` after `actual_length` bytes.
    pub const fn done(status: Status, actual_length: u32) -> Self {
        HostResult {
            status: HostStatus::Done(status),
            actual_length,
            start_frame: 0,
            error_count: 0,
        }
    }

    /// A URB cancelled before it transferred anything.
    pub const fn cancelled() -> Self {
        HostResult {
            status: HostStatus::Cancelled,
            actual_length: 0,
            start_frame: 0,
            error_count: 0,
        }
    }
}

/// The host gave back a URB the backend does not have on the host (a shell bug).
#[derive(Debug, thiserror::Error)]
#[error("host gave back urb {id}, which is not in flight")]
pub struct UnknownUrb<P> {
    /// The id the host named.
    pub id: u16,
    /// The payload it gave back, for the shell to release.
    pub payload: P,
}
