//! What crosses the frontend state machine's boundary: its configuration, the requests and
//! actions it emits, and why it refuses.

use crate::wire::{Pipe, URB_RING_SIZE};

use crate::urb::aca::ACA_CLEAR;
use crate::urb::chain::{SPLIT_CONT, SPLIT_MORE};
use crate::urb::split::{Limits, Piece};
use crate::urb::UrbResult;

/// How the controller was negotiated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrontendConfig {
    /// `num-ports` (clamped to 31).
    pub num_ports: u8,
    /// Requests the ring holds: ids `0..ring_size` are used, all in flight at most.
    pub ring_size: u16,
    /// Error containment was negotiated ([`crate::urb::aca::FEATURE_ACA`] on both sides).
    pub aca: bool,
    /// Split chains were negotiated ([`crate::urb::chain::FEATURE_SPLIT_CHAIN`] on both
    /// sides): a large IN transfer's pieces go out together.
    pub split_chain: bool,
    /// Size of one request.
    pub limits: Limits,
    /// Client transfers held without allocating; more are taken, the tables grow.
    pub backlog: usize,
}

impl FrontendConfig {
    /// A stock ring: 16 ids, 16 segments / 65535 bytes per request, no containment.
    pub const fn stock(num_ports: u8) -> Self {
        FrontendConfig {
            num_ports,
            ring_size: URB_RING_SIZE as u16,
            aca: false,
            split_chain: false,
            limits: Limits::STOCK,
            backlog: 64,
        }
    }
}

/// RET_UNLINK status of [`Action::UnlinkReset`]: -ECONNRESET, as the USB/IP stub reports
/// an URB it unlinked before it completed.
pub const ECONNRESET: i32 = -104;

/// The client's name for a transfer or an unlink: unique among its live ones (for USB/IP,
/// e.g. `port << 32 | seqnum`, as seqnums are per connection).
pub type Handle = u64;

/// Why a submission was refused. A refused transfer never completes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The controller is disconnected.
    #[error("the controller is disconnected")]
    Disconnected,
    /// No device on the port (never attached, or gone).
    #[error("no device on port {0}")]
    NoDevice(u8),
}

/// A refused submission, with its payload handed back.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct Rejected<P> {
    /// Why.
    pub reason: Refused,
    /// The transfer's payload, handed back.
    pub payload: P,
}

/// The backend answered an id that is not in flight: it broke the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("response for request id {0}, which is not in flight")]
pub struct UnknownId(pub u16);

/// One usbif request to put on the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// Request id, `0..ring_size`.
    pub id: u16,
    /// The pipe (with `USBIF_PIPE_UNLINK` for an unlink).
    pub pipe: Pipe,
    /// Submit or unlink.
    pub kind: RequestKind,
}

/// What the request carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// Data: bytes `piece.offset .. piece.offset + piece.len` of the transfer `handle`,
    /// in `piece.segs` segments starting at `piece.page_offset`.
    Submit {
        /// The client transfer it belongs to.
        handle: Handle,
        /// Which part of the transfer.
        piece: Piece,
        /// Set `USBIF_SHORT_NOT_OK` in `transfer_flags`.
        short_not_ok: bool,
        /// Set [`ACA_CLEAR`] in `transfer_flags`.
        aca_clear: bool,
        /// Set [`SPLIT_MORE`] in `transfer_flags`: more pieces of the transfer follow.
        split_more: bool,
        /// Set [`SPLIT_CONT`] in `transfer_flags`: it continues the transfer's previous piece.
        split_cont: bool,
    },
    /// Cancel the request `victim`.
    Unlink {
        /// Request id to cancel (`u.unlink.unlink_id`).
        victim: u16,
    },
}

impl RequestKind {
    /// usbif `transfer_flags` for this request.
    pub fn transfer_flags(&self) -> u16 {
        match *self {
            RequestKind::Submit {
                short_not_ok,
                aca_clear,
                split_more,
                split_cont,
                ..
            } => {
                let mut flags = 0;
                if short_not_ok {
                    flags |= crate::wire::SHORT_NOT_OK;
                }
                if aca_clear {
                    flags |= ACA_CLEAR;
                }
                if split_more {
                    flags |= SPLIT_MORE;
                }
                if split_cont {
                    flags |= SPLIT_CONT;
                }
                flags
            }
            RequestKind::Unlink { .. } => 0,
        }
    }
}

/// What the shell must do, in order.
#[derive(Debug)]
#[must_use]
pub enum Action<P> {
    /// Put this request on the ring.
    Push(Request),
    /// The transfer finished (RET_SUBMIT); its payload comes back.
    Complete {
        /// The transfer.
        handle: Handle,
        /// Its status and summed length.
        result: UrbResult,
        /// Its payload, handed back.
        payload: P,
    },
    /// RET_UNLINK status 0: the victim's `Complete` came first, or it was unknown.
    UnlinkOk {
        /// The unlink command.
        handle: Handle,
    },
    /// RET_UNLINK [`ECONNRESET`]: the victim never reached the ring and never completes.
    UnlinkReset {
        /// The unlink command.
        handle: Handle,
        /// The transfer it cancelled.
        victim: Handle,
        /// The victim's payload, handed back.
        payload: P,
    },
}
