//! The simulated platform: a broker process playing the hypervisor's grant table and event
//! channels for domains that are plain processes on one Linux machine.
//!
//! - Identity is the socket: a process is domain N because it connects to
//!   `<dir>/domains/<N>/hyp`; only dom0 may create or destroy domains.
//! - Grants are memfd pages passed with SCM_RIGHTS; a read-only grant (or a read-only mapping)
//!   is passed as a read-only file description, so the kernel refuses PROT_WRITE.
//! - Ending access is refused while the grantee maps a page; the broker learns of unmaps from
//!   the mapper (and counts a closed connection as unmapping everything it mapped). The
//!   mapper munmaps, then reports the unmap as a one-way message without waiting. Messages of
//!   one connection are handled in order, and before refusing an end of access (or reporting
//!   counters) the broker handles every message already queued by the grantee's connections,
//!   so an unmap that happened before the granter asked (e.g. the backend unmapped, then
//!   pushed the response the frontend reacts to) is always seen: no spurious StillMapped.
//! - Event channels are two eventfds per channel handed to both ends: a notify is one
//!   `write`, with no broker hop. Differences from Xen: ports are per-connection objects with
//!   their own fd (as if each channel had its own /dev/xen/evtchn open); a notify sent before
//!   the peer binds is dropped when it binds (Xen drops it at send time).
//! - Limits of the model: the simulation is not a security boundary between processes of one
//!   host. A mapper is handed the memfd itself; the broker's accounting assumes it closes the
//!   fd after mapping (our client does), since a process that kept it could still reach the
//!   pages after access ended. Memfds are sealed against resizing, so a peer cannot make the
//!   other side's mapping fault.
//! - A domain dies when the last connection of its processes closes (or dom0 destroys it):
//!   its grants are revoked once peers unmap, its ports are closed, and the release hook
//!   runs (the `pvusb-simhyp` binary sends XS_RELEASE to the embedded xenstored).

pub mod broker;
pub mod client;
pub mod fdpass;
pub mod release;
pub mod state;
pub mod wire;

pub use broker::{socket_path, Broker, ReleaseHook, StartError, Stopper};
pub use client::SimPlatform;
pub use wire::Counters;
