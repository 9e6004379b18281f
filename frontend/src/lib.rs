//! pvusb-frontend: the guest's Xen PV USB agent. It connects each `device/vusb/<devid>`
//! controller of its domain to the backend over usbif (two granted ring pages, one event
//! channel) and presents every device the backend announces to the guest kernel through
//! vhci_hcd (a socket pair handed to `attach`, then USB/IP), or to USB/IP clients with
//! `--usbip-listen`.
//!
//! Layers, from the wire up:
//! - [`usbip`]: the USB/IP codec and the sans-I/O server [`usbip::Session`] /
//!   [`usbip::ServerConn`]; [`vhci`]: vhci_hcd's sysfs files.
//! - [`bridge`]: one port as a USB/IP device, sans-I/O: addressing through the backend's
//!   SET_ADDRESS emulation, descriptors, the endpoint table, CMD_SUBMIT → usbif pipe.
//! - [`engine`]: one connected controller — rings, event channel, the data [`pool`] and
//!   `pvusb_ring`'s frontend state machine (ids, order, splitting, unlink, containment).
//! - [`xenbus`]: the frontend's half of the xenstore handshake.
//! - [`daemon`]: the mio loop that moves events between them; no protocol decisions.
//!
//! Invariants enforced here:
//! - No input from a socket, sysfs, xenstore or a ring page panics; every length from the
//!   wire is bounded ([`usbip::Limits`]) before anything is buffered for it, and iso
//!   descriptors must lie inside their transfer buffer. A USB/IP protocol violation closes
//!   that connection; a backend protocol violation (impossible ring index, unknown
//!   response id, negative length, bad conn event) tears down that controller only.
//! - Each CMD_SUBMIT is answered exactly once on the wire: RET_SUBMIT (then RET_UNLINK 0
//!   if it was being unlinked), or RET_UNLINK -ECONNRESET and never a RET_SUBMIT
//!   (DESIGN.md contract 4). Every CMD_UNLINK gets exactly one RET_UNLINK, never before
//!   its victim's answer.
//! - Data bounces through pages granted once per controller connection; a request id's
//!   pages are reused only after the backend answered that id (contract 7). Grants are
//!   ended only once the backend unmapped them (retried until then).
//! - When the backend goes away every pending transfer completes with an error and every
//!   client sees its device gone (contract 5); when it comes back the agent reconnects
//!   with fresh rings, grants and channel by itself.
//! - Only SHORT_NOT_OK, ISO_ASAP, ZERO_PACKET and DIR_IN survive from `transfer_flags`.

pub mod bridge;
pub mod daemon;
pub mod engine;
pub mod logging;
pub mod pool;
pub mod usbip;
pub mod vhci;
pub mod xenbus;
