//! The simulated platform: a broker process playing the hypervisor's grant table and event
//! channels for domains that are plain processes on one Linux machine.
//!
//! - Identity is the socket: a process is domain N because it connects to
//!   `<dir>/domains/<N>/hyp`; only dom0 may create or destroy domains.
//! - Grants are memfd pages passed with SCM_RIGHTS; a read-only grant (or a read-only mapping)
//!   is passed as a read-only file description, so the kernel refuses PROT_WRITE.
//! - Ending access is refused while the grantee maps a page; the broker learns of unmaps from
//!   the mapper (and counts a closed connection as unmapping everything it mapped). The
//!   mapper munmaps, then reports the unmap as a one-way message without waiting, on the
//!   connection's side channel (a socket pair the broker does not poll, so the report wakes
//!   nobody; see `broker::side`). The broker reads a connection's side channel before each of
//!   its main messages, and before refusing an end of access (or reporting counters) it
//!   handles every message already queued by the grantee's connections, so an unmap that
//!   happened before the granter asked (e.g. the backend unmapped, then pushed the response
//!   the frontend reacts to) is always seen: no spurious StillMapped. Otherwise a side
//!   channel is read every 20 ms.
//! - Event channels are two eventfds per channel handed to both ends, plus a shared page
//!   with each end's mask and pending bits (Xen keeps them in `shared_info`): a notify sets
//!   the peer's pending bit and `write`s its eventfd only if the port was neither pending nor
//!   masked, with no broker hop; unmasking re-raises an event that arrived while masked.
//!   Differences from Xen: the peer can write our bits (it can only delay its own events to
//!   us or cause a spurious wake-up; the masked flag that matters is kept privately); ports
//!   are per-connection objects with their own fd (as if each channel had its own
//!   /dev/xen/evtchn open); a notify sent before the peer binds is dropped when it binds (Xen
//!   drops it at send time).
//! - MAP is batched (several mappings per round trip, each refused or granted on its own) and
//!   a grant's memfd is passed to a connection once: the broker remembers which files
//!   (allocation serial × access) each connection holds, the client caches them
//!   ([`files::FileCache`], bounded, evicted with a one-way FORGET) and closes those the
//!   broker reports dead in a later MAP reply.
//! - Grant copy: a backend registers local memory once (a memfd sealed against resizing,
//!   passed with SCM_RIGHTS and mapped by the broker until the client forgets it or its
//!   connection closes); each COPY is one round trip in which the broker checks every
//!   segment as a map would be checked (granted by that domain to the caller, not ended,
//!   writable for a copy into the grant, within the page and the local memory) and copies
//!   between its own long-lived mappings of the grant files and of the local memfd: no
//!   mmap or munmap per copy on either side.
//! - Limits of the model: the simulation is not a security boundary between processes of one
//!   host. A mapper is handed the memfd itself, and a process that kept it could reach the
//!   pages without asking — before and after access ended. That was true when every MAP
//!   passed the fd again (nothing stops a client from keeping it), so caching the files does
//!   not weaken what the sim enforces. What it enforces is the accounting of mappings made
//!   through MAP: grant and read-only checks, StillMapped while mapped, revocation once
//!   unmapped, cleanup on death. Memfds are sealed against resizing, so a peer cannot make
//!   the other side's mapping fault, and a read-only grant is only ever passed as a
//!   read-only file description.
//! - A domain dies when the last connection of its processes closes (or dom0 destroys it):
//!   its grants are revoked once peers unmap, its ports are closed, and the release hook
//!   runs (the `pvusb-simhyp` binary sends XS_RELEASE to the embedded xenstored).

pub mod broker;
pub mod client;
pub mod fdpass;
pub mod files;
pub mod release;
pub mod state;
pub mod wire;

pub use broker::{gntalloc_limit_path, socket_path, Broker, ReleaseHook, StartError, Stopper};
pub use client::SimPlatform;
pub use wire::Counters;
