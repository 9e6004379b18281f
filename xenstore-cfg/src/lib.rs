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
//!
//! Starting a daemon in a test and talking to it as dom0 and as a guest:
//! ```
//! use xenstore_cfg::{daemon, vusb, Xs, XsOps};
//! let dir = tempfile::tempdir()?;
//! let xenstored = daemon::spawn(dir.path())?; // <dir>/socket is live on return
//! let mut dom0 = Xs::connect(xenstored.socket())?;
//! dom0.introduce(1, 0, 0)?; // creates <dir>/domains/1/xenstore and /local/domain/1
//! let id = vusb::VusbId { fe: 1, be: 0, devid: 0 };
//! let cfg = vusb::ControllerConfig {
//!     id,
//!     usb_ver: vusb::UsbVer::Usb20,
//!     num_ports: 4,
//!     ctrl_type: vusb::CtrlType::Pv,
//! };
//! vusb::add_controller(&mut dom0, &cfg)?;
//! let mut guest = Xs::connect(xenstored.domain_socket(1))?;
//! assert_eq!(guest.read_string("device/vusb/0/backend-id")?, "0");
//! xenstored.stop()?; // removes its sockets
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//! The same daemon as a process: `pvusb-xenstored --dir <dir>` (SIGTERM/SIGINT to stop);
//! C tools reach it with `XENSTORED_PATH=<dir>/socket`.

pub mod client;
pub mod daemon;
pub mod vusb;
pub mod wire;
pub mod xenbus;

pub use client::{Transaction, WatchEvent, Xs, XsError, XsOps};
pub use wire::{DomId, Perm, PermKind, Perms, XsErrno};
