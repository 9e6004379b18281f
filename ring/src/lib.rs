//! Xen PV USB without I/O: the usbif wire format, the shared ring, and URB semantics.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

pub mod wire;
