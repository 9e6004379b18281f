//! Xenstore for pvusb: the xs_wire protocol, a client, an embedded xenstored and the vusb schema.
//!
//! - [`wire`]: xs_wire.h without I/O. Every parse is total (bad bytes give a typed error,
//!   never a panic) and `parse(emit(x)) == x`; nothing longer than `XENSTORE_PAYLOAD_MAX`
//!   is ever emitted or accepted.
//! - [`client`]: a sans-I/O [`client::ClientCore`] and the blocking [`client::Xs`] over the
//!   xenstored socket or `/dev/xen/xenbus`, pollable from an event loop.
//! - [`daemon`]: an embedded xenstored with real xenstored's semantics (permissions, watches,
//!   transactions, quotas), one unix socket per simulated domain. One client can never block
//!   or starve another, and no input makes it panic.
//! - [`vusb`] and [`xenbus`]: the `device/vusb` / `backend/vusb` layout exactly as libxl
//!   writes it, and the XenbusState handshake helpers.

pub mod client;
pub mod daemon;
pub mod vusb;
pub mod wire;
pub mod xenbus;

pub use client::{Transaction, WatchEvent, Xs, XsError, XsOps};
pub use wire::{DomId, Perm, PermKind, Perms, XsErrno};
