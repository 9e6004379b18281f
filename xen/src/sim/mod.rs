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
//! - Grant copy runs on the caller's CPU, as `GNTTABOP_copy` runs on the calling vCPU
//!   ([`gnttab`]): the broker publishes every live grant in its granter's table, a sealed
//!   memfd that copiers map read-only (COPY_ATTACH); a copier checks each segment there as
//!   a map would be checked (granted by that domain to the caller, not ended, writable for
//!   a copy into the grant, within the page and the local memory), gets each allocation's
//!   file once (FILES, a MAP that maps nothing) and copies between its own long-lived
//!   mappings. Ending access waits while a copier's hazard word names the granter. With
//!   [`CopyVia::Broker`] (`PVUSB_SIM_COPY=broker`) each copy is instead one COPY round
//!   trip in which the broker checks and copies between its own mappings of the grant files
//!   and of local memory the backend registered once (a memfd sealed against resizing).
//!   Local memory is registered either way, so a copy from another connection's memory is
//!   refused on both paths.
//! - Limits of the model: the simulation is not a security boundary between processes of one
//!   host. A mapper is handed the memfd itself, and a process that kept it could reach the
//!   pages without asking — before and after access ended. That was true when every MAP
//!   passed the fd again (nothing stops a client from keeping it), so caching the files does
//!   not weaken what the sim enforces. What it enforces is the accounting of mappings made
//!   through MAP: grant and read-only checks, StillMapped while mapped, revocation once
//!   unmapped, cleanup on death. Memfds are sealed against resizing, so a peer cannot make
//!   the other side's mapping fault, and a read-only grant is only ever passed as a
//!   read-only file description. A copier on its own CPU keeps the files FILES gave it,
//!   like a mapper, and is trusted to check the table and publish its hazard word, as Xen
//!   trusts its own copy code; a copier stopped inside one copy for
//!   [`state::HAZARD_WAIT`] (killed or frozen mid-copy) no longer holds ends of access up.
//! - A domain dies when the last connection of its processes closes (or dom0 destroys it):
//!   its grants are revoked once peers unmap, its ports are closed, and the release hook
//!   runs (the `pvusb-simhyp` binary sends XS_RELEASE to the embedded xenstored).

pub mod broker;
pub mod client;
pub mod fdpass;
pub mod files;
pub mod gnttab;
pub mod release;
pub mod state;
pub mod wire;

pub use broker::{gntalloc_limit_path, socket_path, Broker, ReleaseHook, StartError, Stopper};
pub use client::{CopyVia, SimPlatform, COPY_VIA_ENV};
pub use wire::Counters;
