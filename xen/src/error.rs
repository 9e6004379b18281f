//! The error of each operation, shared by the real and the simulated platform.

use rustix::io::Errno;

use crate::mem::GrantedPages;
use crate::{DomId, EvtchnPort, GrantRef};

/// A /dev/xen device could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The node does not exist.
    #[error("{path} does not exist: not a Xen domain, or the xen-{driver} driver is not loaded")]
    Missing {
        /// The device node.
        path: &'static str,
        /// The kernel driver that provides it.
        driver: &'static str,
    },
    /// The node exists but cannot be opened.
    #[error("cannot open {path}: {errno}")]
    Open {
        /// The device node.
        path: &'static str,
        /// Why.
        errno: Errno,
    },
}

/// Talking to the simulated hypervisor broker failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// The domain's broker socket could not be reached.
    #[error("cannot connect to the broker socket {path}: {errno}")]
    Connect {
        /// The socket path.
        path: String,
        /// Why.
        errno: Errno,
    },
    /// Sending or receiving failed.
    #[error("broker connection: {0}")]
    Io(Errno),
    /// The broker closed the connection (it stopped, or the domain was destroyed).
    #[error("the broker closed the connection")]
    Closed,
    /// The reply did not parse or did not match the request.
    #[error("malformed broker reply: {0}")]
    BadReply(&'static str),
    /// The broker refused the request with a status this operation does not expect.
    #[error("the broker refused the request: {0}")]
    Refused(crate::sim::wire::Status),
}

/// Mapping grants failed.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// No device.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// Zero references, or more than [`crate::MAX_PAGES_PER_CALL`].
    #[error("cannot map {0} grant references at once")]
    BadCount(usize),
    /// A reference does not exist or is not granted to this domain.
    #[error("{domid} has not granted all of {refs:?} to this domain")]
    NotGranted {
        /// Granting domain.
        domid: DomId,
        /// The references asked for.
        refs: Vec<GrantRef>,
    },
    /// A writable mapping of a read-only grant was requested.
    #[error("some of {refs:?} of {domid} are granted read-only")]
    ReadOnlyGrant {
        /// Granting domain.
        domid: DomId,
        /// The references asked for.
        refs: Vec<GrantRef>,
    },
    /// The granting domain does not exist (or is dying).
    #[error("{0} does not exist")]
    NoSuchDomain(DomId),
    /// A system call failed (real platform: the ioctl or the mmap performing the hypercall).
    #[error("{op} failed: {errno}")]
    Os {
        /// What was being done.
        op: &'static str,
        /// Why.
        errno: Errno,
    },
    /// The broker failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// Allocating granted pages failed.
#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    /// No device.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// Zero pages, or more than [`crate::MAX_PAGES_PER_CALL`].
    #[error("cannot grant {0} pages at once")]
    BadCount(usize),
    /// The grantee does not exist.
    #[error("{0} does not exist")]
    NoSuchDomain(DomId),
    /// Granting `count` more pages would pass this domain's gntalloc limit, which every
    /// user of `/dev/xen/gntalloc` in the domain shares (`ENOSPC`; on Xen also the answer
    /// when the domain's grant table itself is full).
    #[error(
        "granting {count} more pages passes this domain's gntalloc limit \
         (/sys/module/xen_gntalloc/parameters/limit, shared by every gntalloc user; \
         Linux's default is 1024 pages) or fills its grant table: raise the limit, \
         or attach fewer controllers"
    )]
    Limit {
        /// Pages asked for.
        count: usize,
    },
    /// A system call failed.
    #[error("{op} failed: {errno}")]
    Os {
        /// What was being done.
        op: &'static str,
        /// Why.
        errno: Errno,
    },
    /// The broker failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// Ending access to granted pages failed.
#[derive(Debug, thiserror::Error)]
pub enum EndAccessError {
    /// The peer still maps at least one page; access continues. The pages are handed back.
    #[error("the peer still maps granted pages {:?}", pages.grefs())]
    StillMapped {
        /// The pages, still granted and still mapped here.
        pages: Box<GrantedPages>,
    },
    /// A system call failed.
    #[error("{op} failed: {errno}")]
    Os {
        /// What was being done.
        op: &'static str,
        /// Why.
        errno: Errno,
    },
    /// The broker failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// Why [`crate::mem::GrantOwner::try_revoke`] refused, before the pages are attached.
#[derive(Debug)]
pub(crate) enum RevokeError {
    StillMapped,
    Other(EndAccessError),
}

/// An event channel operation failed.
#[derive(Debug, thiserror::Error)]
pub enum EvtchnError {
    /// No device.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The remote port does not exist, is not offered to this domain, or is already bound.
    #[error("{port} of {remote} is not an unbound port offered to this domain")]
    NotBindable {
        /// Remote domain.
        remote: DomId,
        /// Remote port.
        port: EvtchnPort,
    },
    /// The remote domain does not exist.
    #[error("{0} does not exist")]
    NoSuchDomain(DomId),
    /// /dev/xen/evtchn's event buffer overflowed (`EFBIG`); the port must be reset.
    #[error("event channel ring overflow")]
    Overflow,
    /// A system call failed.
    #[error("{op} failed: {errno}")]
    Os {
        /// What was being done.
        op: &'static str,
        /// Why.
        errno: Errno,
    },
    /// The broker failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}
