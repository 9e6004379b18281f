//! pvusb-backend: serves usbif frontends from host USB devices.
//!
//! Host devices sit behind one trait, [`host::HostDevice`], with Linux usbfs semantics
//! (asynchronous submit/reap/discard, per-endpoint order, BULK_CONTINUATION cancellation,
//! stall until CLEAR_HALT, exactly-once completion even across unplug). Two implementations:
//! [`usbfs`] (real devices, our own ioctl layer over rustix) and [`sim`] (device models on the
//! simulated platform, reached through a sysfs-like tree resolved by the same code as /sys).
//! Invariants: an accepted URB completes exactly once and a refused one never; a URB buffer
//! is never freed or reused while the host may touch it; nothing read from sysfs, a spec file
//! or a device panics the process.

pub mod config;
pub mod daemon;
pub mod engine;
pub mod host;
pub mod logging;
pub mod poller;
pub mod sim;
pub mod usbfs;
pub mod xenbus;

/// Proptest case count: `PROPTEST_CASES` if set, else `default`.
#[cfg(test)]
pub(crate) fn test_cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
