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
//!
//! The daemon (`pvusb-backend`, [`daemon::run`]) is a thin epoll loop ([`poller`]) over
//! xenstore, every controller's event channel, every device's completion fd, hotplug and a
//! signal pipe. [`xenbus`] runs each controller's XenbusState handshake and its ports;
//! [`engine`] serves its rings through `pvusb_ring::urb::backend::Backend`, which makes the
//! protocol decisions. What the daemon guarantees to guests:
//! - every request copied off a ring gets exactly one response with one of usbif's seven
//!   status codes, or (ring index overflow, duplicate live id) its controller is closed;
//!   nothing a guest writes panics the process or reaches another guest's controller;
//! - a request's grants are mapped in one call (read-only for OUT) and unmapped before its
//!   response is pushed — unless both ends negotiated `feature-persistent`: then each
//!   request's run of pages is mapped once per ring connection and reused by later
//!   requests naming it or a prefix of it (at most `MAX_PERSISTENT` pages) and all are
//!   unmapped when the connection ends;
//! - one endpoint's URBs reach the host in ring order; a bulk transfer larger than the
//!   host's URB limit is split like libusb does (BULK_CONTINUATION / SHORT_NOT_OK) and
//!   answered once; with `feature-aca` a failed endpoint is contained;
//! - a device that goes away has everything in flight answered -ENODEV and its port
//!   announced empty; on unassign, controller removal, guest death or SIGTERM devices are
//!   released to their host drivers;
//! - one controller serves at most [`engine::RING_BUDGET`] requests per turn, so a busy or
//!   hostile guest cannot starve the others.

pub mod config;
pub mod daemon;
pub mod engine;
pub mod host;
pub mod journal_file;
pub mod logging;
pub mod poller;
pub mod sim;
pub mod usbfs;
pub mod xenbus;

/// Logs a guest-caused warning through a [`logging::RateLimit`]: `pvusb_log::peer_warn!`
/// under the name the backend's code uses.
pub use pvusb_log::peer_warn as guest_warn;

/// Proptest case count: `PROPTEST_CASES` if set, else `default`.
#[cfg(test)]
pub(crate) fn test_cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
