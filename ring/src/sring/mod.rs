//! ring.h over a [`Shm`](crate::shm::Shm): the shared header, the front (request producer) and the back
//! (request consumer) halves, with ring.h's barriers, notification hold-off and overflow
//! checks.
//!
//! Index arithmetic is wrapping `u32` throughout (ring.h's `RING_IDX`). Barriers map as
//! ring.h's comments ask: `wmb` before publishing a producer index is a `Release` store,
//! `rmb` after reading one is an `Acquire` load, and `mb` (publish, then read the peer's
//! event index; or set our event index, then re-read the producer) is `fence(SeqCst)`.
//! Every entry is copied out of the page before the caller sees it.

pub mod back;
pub mod front;
pub mod header;

pub use back::BackRing;
pub use front::FrontRing;
pub use header::{const_ring_size, need_notify, RawSringHeader, RingSetupError, SharedRing};

use crate::shm::ShmError;
use crate::wire::{RawConnRequest, RawConnResponse, RawUrbRequest, RawUrbResponse};

/// The frontend's half of the URB ring.
pub type UrbFrontRing = FrontRing<RawUrbRequest, RawUrbResponse>;
/// The backend's half of the URB ring.
pub type UrbBackRing = BackRing<RawUrbRequest, RawUrbResponse>;
/// The frontend's half of the conn ring.
pub type ConnFrontRing = FrontRing<RawConnRequest, RawConnResponse>;
/// The backend's half of the conn ring.
pub type ConnBackRing = BackRing<RawConnRequest, RawConnResponse>;

/// The peer published an impossible producer index, or the region failed us. A ring that
/// returns this is broken for good: stop using it and disconnect that one peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConsumeError {
    /// ring.h's `RING_REQUEST_PROD_OVERFLOW` (more than a ring's worth of requests past
    /// our last response), or `req_prod` moved back behind what we already consumed.
    #[error("frontend req_prod {req_prod} impossible: req_cons {req_cons}, rsp_prod_pvt {rsp_prod_pvt}, ring size {size}")]
    RequestProdOverflow {
        req_prod: u32,
        req_cons: u32,
        rsp_prod_pvt: u32,
        size: u32,
    },
    /// ring.h's `RING_RESPONSE_PROD_OVERFLOW`, made exact: more responses than requests we
    /// produced, or `rsp_prod` moved back behind what we already consumed.
    #[error(
        "backend rsp_prod {rsp_prod} impossible: rsp_cons {rsp_cons}, req_prod_pvt {req_prod_pvt}"
    )]
    ResponseProdOverflow {
        rsp_prod: u32,
        rsp_cons: u32,
        req_prod_pvt: u32,
    },
    /// Copying an entry failed (cannot happen once the geometry is checked).
    #[error(transparent)]
    Shm(#[from] ShmError),
}

/// Our own misuse of a ring, refused instead of corrupting it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProduceError {
    /// No free request slot (`RING_FULL`): wait for responses.
    #[error("ring full ({size} requests outstanding)")]
    Full { size: u32 },
    /// Every consumed request is already answered; another response would overwrite a
    /// request slot the frontend may still be filling.
    #[error("no consumed request left to answer")]
    NoRequestToAnswer,
    /// Copying an entry failed (cannot happen once the geometry is checked).
    #[error(transparent)]
    Shm(#[from] ShmError),
}

/// Entry size of a ring of `Req`/`Rsp`: the size of ring.h's `union sring_entry`. The raw
/// types are unaligned, so this is the larger size; for usbif's rings it equals the C
/// union's size (`tests/layout.rs` checks).
pub const fn entry_size<Req, Rsp>() -> usize {
    let a = core::mem::size_of::<Req>();
    let b = core::mem::size_of::<Rsp>();
    if a > b {
        a
    } else {
        b
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
