//! Logging: the subscriber and the rate limiter for guest-caused warnings, shared with the
//! frontend through `pvusb-log` (see [`crate::guest_warn!`]).

pub use pvusb_log::{init, RateLimit};
