//! Grant tables and event channels: one trait per resource, a real (/dev/xen) and a simulated
//! implementation.
//!
//! Four traits cover what a PV split driver needs from the hypervisor:
//! - [`GrantMapper`] (backend side): map N grant references of a domain as one contiguous
//!   mapping; the returned [`GrantMapping`] unmaps on drop (munmap, *then* the grant unmap —
//!   the order gntdev requires).
//!   [`GrantMapper::map_batch`] maps several requests' references at once (one broker
//!   round trip on the sim; one map each on real Xen).
//! - [`GrantCopier`] (backend side): grant copy, the hypervisor copying between granted
//!   pages and this process's [`LocalPages`] without mapping the guest's pages at all.
//! - [`GrantAllocator`] (frontend side): allocate N pages granted to a domain;
//!   [`GrantedPages::end_access`] fails while the peer still maps a page on the simulated
//!   platform (the real gntalloc defers the free instead; see [`xen::gntalloc`]).
//! - [`EventChannels`] / [`EventChannel`]: allocate an unbound port or bind an interdomain one,
//!   notify, poll an fd, and the /dev/xen/evtchn rule that a port that fired stays masked
//!   until it is unmasked.
//!
//! Two implementations each: [`xen::XenPlatform`] over `/dev/xen/{gntdev,gntalloc,evtchn}`
//! (pure Rust ioctls over rustix) and [`sim::SimPlatform`], a client of the simulated
//! hypervisor broker ([`sim::Broker`], binary `pvusb-simhyp`). A daemon picks one at start-up
//! with [`Platform::open`] from a `--platform xen|sim` option ([`PlatformKind`]).
//!
//! Invariants this crate enforces:
//! - no reference into shared memory is ever handed out: mapped pages are accessed through
//!   raw pointers, volatile copies ([`GrantMapping::read_at`]) or `pvusb_ring::shm::Shm`
//!   views ([`GrantMapping::shm`]), because the peer may change them at any moment;
//! - a read-only grant is never mapped writable (the sim hands over a read-only file
//!   description, so even `mprotect` cannot make it writable);
//! - a [`GrantMapping`] is really unmapped (munmap) when dropped, before the grant is
//!   released, so a use after unmap faults instead of silently reaching the peer's pages;
//!   on the sim the broker is then told with a one-way message, which it always handles
//!   before answering a later end of access, so the granter never sees a mapping that is
//!   already gone (see [`sim`] for what the sim's isolation does and does not cover);
//! - a grant copy reaches only the bytes its segment names inside the granted page and
//!   inside the caller's [`LocalPages`] (both platforms check the bounds; a segment that
//!   breaks them fails alone), never writes a read-only grant, and needs the same grant a
//!   map would (granted by that domain to this one, access not ended);
//! - every mapping, grant, port and registered local memory has exactly one owner whose
//!   drop releases it; nothing the broker tracks outlives the connection that created it;
//! - no input from a socket or a peer panics: the broker answers bad requests with an error
//!   status or closes that one connection.

#![deny(unsafe_op_in_unsafe_fn)]

use std::fmt;
use std::os::fd::AsFd;
use std::str::FromStr;

pub mod copy;
pub mod error;
pub mod mem;
pub mod platform;
pub mod sim;
pub mod xen;

pub use copy::{CopyDir, CopyError, CopySeg, GrantCopier, LocalPages, SegError};
pub use error::{AllocError, DeviceError, EndAccessError, EvtchnError, MapError};
pub use mem::{GrantMapping, GrantedPages, MemError};
pub use platform::{Platform, PlatformKind};

/// The size of a Xen page, the unit of granting.
pub const PAGE_SIZE: usize = 4096;

/// The most pages one map or alloc call accepts (both platforms).
pub const MAX_PAGES_PER_CALL: usize = 256;

/// A Xen domain id (`domid_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomId(pub u16);

impl DomId {
    /// The control domain.
    pub const DOM0: DomId = DomId(0);
}

impl fmt::Display for DomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dom{}", self.0)
    }
}

/// A grant reference (`grant_ref_t`), meaningful together with the granting domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GrantRef(pub u32);

impl fmt::Display for GrantRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gref {}", self.0)
    }
}

/// An event channel port number, local to one domain (`evtchn_port_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EvtchnPort(pub u32);

impl fmt::Display for EvtchnPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "port {}", self.0)
    }
}

/// Whether a grant (or a mapping of one) allows writing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// The grantee may only read (`GTF_readonly` / gntdev `PROT_READ`).
    ReadOnly,
    /// The grantee may read and write.
    Writable,
}

/// One mapping of a [`GrantMapper::map_batch`] call.
#[derive(Clone, Copy, Debug)]
pub struct MapRequest<'a> {
    /// The references, page by page.
    pub refs: &'a [GrantRef],
    /// How to map them.
    pub access: Access,
}

/// Backend side of the grant table: maps pages other domains granted to this one.
pub trait GrantMapper: Send + Sync + fmt::Debug {
    /// Maps `refs`, all granted by `domid`, as one contiguous mapping of `refs.len()` pages, in
    /// order. A [`Access::Writable`] mapping of a read-only grant fails.
    fn map(
        &self,
        domid: DomId,
        refs: &[GrantRef],
        access: Access,
    ) -> Result<GrantMapping, MapError>;

    /// Maps several independent sets of references of `domid`, as [`GrantMapper::map`] would
    /// one by one: one result per request, in order; one request failing does not affect
    /// the others. The simulated platform does the whole batch in one broker round trip (a
    /// backend can map every request it took off the ring at once); the default (and real
    /// gntdev, where each map is an ioctl and an mmap anyway) calls `map` for each.
    fn map_batch(
        &self,
        domid: DomId,
        reqs: &[MapRequest<'_>],
    ) -> Vec<Result<GrantMapping, MapError>> {
        reqs.iter()
            .map(|r| self.map(domid, r.refs, r.access))
            .collect()
    }
}

/// Frontend side of the grant table: grants pages of this domain to another.
pub trait GrantAllocator: Send + Sync + fmt::Debug {
    /// Allocates `count` zeroed pages, granted to `domid` with `access`; this domain can always
    /// read and write them.
    fn alloc(&self, domid: DomId, count: usize, access: Access)
        -> Result<GrantedPages, AllocError>;
}

/// Opens event channels (one [`EventChannel`] per port; each has its own pollable fd).
pub trait EventChannels: Send + Sync + fmt::Debug {
    /// Allocates a port that `remote` may bind to (`EVTCHNOP_alloc_unbound`); the frontend
    /// publishes it as `event-channel` in xenstore.
    fn alloc_unbound(&self, remote: DomId) -> Result<Box<dyn EventChannel>, EvtchnError>;
    /// Binds to `remote_port`, an unbound port `remote` allocated for this domain
    /// (`EVTCHNOP_bind_interdomain`).
    fn bind_interdomain(
        &self,
        remote: DomId,
        remote_port: EvtchnPort,
    ) -> Result<Box<dyn EventChannel>, EvtchnError>;
}

/// One bound event channel. Dropping it unbinds the port.
///
/// Delivery follows /dev/xen/evtchn: when the port fires, [`AsFd::as_fd`] polls readable;
/// [`EventChannel::take_pending`] reports it and leaves the port *masked*: no further event
/// is delivered (they stay pending) until [`EventChannel::unmask`]. The daemon loop is
/// therefore: poll → `take_pending` → handle the ring → `unmask` → re-check the ring.
pub trait EventChannel: AsFd + Send + Sync + fmt::Debug {
    /// This domain's port number.
    fn port(&self) -> EvtchnPort;
    /// Signals the remote end. Sending on a port whose peer is gone is silently dropped, as
    /// in Xen.
    fn notify(&self) -> Result<(), EvtchnError>;
    /// Consumes a delivered event: `true` if the port fired since the last call; the port is
    /// then masked until [`EventChannel::unmask`]. Never blocks.
    fn take_pending(&self) -> Result<bool, EvtchnError>;
    /// Unmasks the port; an event that arrived while it was masked is delivered now.
    fn unmask(&self) -> Result<(), EvtchnError>;
}

impl FromStr for DomId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(DomId)
    }
}
