//! pvusb-frontend: bridges usbif to the guest kernel's vhci_hcd over USB/IP.
//!
//! This crate's USB/IP half, usable by a mio event-loop daemon without any protocol logic
//! of its own:
//! - [`usbip`]: the USB/IP wire codec (URB PDUs and OP_* management messages, sans-I/O,
//!   streaming) and the server-side [`usbip::Session`] / [`usbip::ServerConn`].
//! - [`vhci`]: vhci_hcd's sysfs files (find, status, free port, attach, detach) and the
//!   socket pair handed to `attach`.
//!
//! Invariants enforced here:
//! - No input from a socket or sysfs panics; every length from the wire is bounded
//!   ([`usbip::Limits`]) before anything is buffered for it, and iso descriptors must lie
//!   inside their transfer buffer. A protocol violation is a typed, connection-fatal error.
//! - Each CMD_SUBMIT is answered exactly once on the wire: RET_SUBMIT (then RET_UNLINK 0
//!   if it was being unlinked), or RET_UNLINK -ECONNRESET and never a RET_SUBMIT
//!   (DESIGN.md contract 4). Every CMD_UNLINK gets exactly one RET_UNLINK, never before
//!   its victim's answer.
//! - Only SHORT_NOT_OK, ISO_ASAP, ZERO_PACKET and DIR_IN survive from `transfer_flags`.

pub mod bridge;
pub mod daemon;
pub mod engine;
pub mod logging;
pub mod pool;
pub mod usbip;
pub mod vhci;
pub mod xenbus;
