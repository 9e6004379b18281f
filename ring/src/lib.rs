//! Xen PV USB without I/O: the usbif wire format, the shared ring, and URB semantics.
//!
//! This crate is pure: no I/O, threads, clock or allocation on the data path. The same code
//! runs on Xen (over grant mappings) and on the simulated platform (over shared memfd
//! pages); the daemons feed it bytes and events and perform the actions it returns.
//!
//! # Guarantees (DESIGN.md's semantics contract)
//! 1. An accepted submission completes exactly once (finished, cancelled, failed or device
//!    gone); a refused one never completes.
//! 2. Requests for one endpoint reach the device in the order the guest submitted them.
//! 3. After a bulk or interrupt failure on an endpoint, nothing the guest queued there
//!    before it saw the failure reaches the device (negotiated; stock peers get stock
//!    behaviour).
//! 4. An unlink is answered, and so is the request it cancels.
//! 5. When a device or port goes away every in-flight URB completes with an error and
//!    later submissions are refused.
//! 6. Large transfers split only at max-packet multiples; a short or failed piece ends the
//!    whole transfer, which completes once with the summed length.
//! 7. A granted page is released before its response is pushed; no buffer is reused while
//!    the host owns a transfer on it.
//! 8. The peer is untrusted: every request and response is copied out of the shared page
//!    before it is checked ([`sring`] hands out private copies only); ring index overflow
//!    is a typed [`sring::ConsumeError`]; bad ids, segment counts, offsets, lengths, pipe
//!    bits, ports and flags are typed [`wire::BadRequest`]s, each with the usbif status the
//!    guest gets back. No input from a page can panic this crate or make it touch memory
//!    outside the region it was given.
//!
//! # Layers
//! - [`wire`]: usbif.h byte for byte (`Raw*` images, checked `parse`, infallible `emit`),
//!   pinned against the real header by `tests/layout.rs`.
//! - [`shm`]: the only `unsafe` module; a view of peer-writable memory that only does
//!   volatile copies and atomic index accesses.
//! - [`sring`]: ring.h (`FRONT_RING_*`/`BACK_RING_*`) with its barriers, notification
//!   hold-off and overflow checks, model-checked under `cfg(loom)`.
//! - [`urb`]: guarantees 1-6 as sans-I/O state machines, generic over the shell's payload
//!   (mapped grants, a usbfs URB, a client buffer), which each hands back exactly once.
//!   [`urb::backend::Backend`] answers every request taken exactly once (a duplicate live
//!   id is a typed protocol error, never answered), submits in ring order, cancels and
//!   refuses in the same call when a device or the controller goes away, and contains a
//!   failed endpoint until the frontend's clear mark; [`urb::frontend::Frontend`] keeps
//!   ring ids within the ring, one endpoint's requests in submission order, splits large
//!   bulk transfers at max-packet multiples, gives USB/IP exactly one of
//!   (RET_SUBMIT, RET_UNLINK 0) or (RET_UNLINK -ECONNRESET) per unlink, and sends the clear
//!   mark only on a transfer submitted after the client saw the failure. Containment
//!   ([`urb::aca`]) is negotiated with `feature-aca`; stock peers get stock behaviour.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

pub mod shm;
pub mod sring;
mod sync;
pub mod urb;
pub mod wire;

#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;
