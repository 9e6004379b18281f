//! Logging: the subscriber (`-v`/`-vv` or `RUST_LOG`) and the rate limiter for warnings a
//! backend or a USB/IP client can cause, shared with the backend through `pvusb-log`.

pub use pvusb_log::{init, peer_warn, RateLimit};
