//! The status of a reply: what the broker says about a request.

use std::fmt;

use super::BadMessage;

/// The outcome of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// Done; the reply body follows.
    Ok,
    /// The request did not parse.
    BadRequest,
    /// Only dom0 may do this.
    NotPermitted,
    /// The named domain does not exist or is dying.
    NoSuchDomain,
    /// A reference is not granted to the caller.
    NotGranted,
    /// A writable mapping of a read-only grant was asked for.
    ReadOnlyGrant,
    /// The grant is still mapped by its grantee.
    StillMapped,
    /// The remote port is not an unbound port offered to the caller.
    NotBindable,
    /// No such handle, mapping or port of this connection.
    NoSuchObject,
    /// The domain already exists.
    DomainExists,
    /// The pages come from too many separate grants to pass in one message.
    TooManyFiles,
    /// The broker could not allocate the resource (memfd, eventfd, ...).
    Resource,
    /// The granting domain's gntalloc limit would be exceeded (Linux's `ENOSPC`).
    GrantLimit,
}

pub(super) const STATUSES: [Status; 13] = [
    Status::Ok,
    Status::BadRequest,
    Status::NotPermitted,
    Status::NoSuchDomain,
    Status::NotGranted,
    Status::ReadOnlyGrant,
    Status::StillMapped,
    Status::NotBindable,
    Status::NoSuchObject,
    Status::DomainExists,
    Status::TooManyFiles,
    Status::Resource,
    Status::GrantLimit,
];

impl Status {
    /// The wire number.
    pub fn to_wire(self) -> u32 {
        STATUSES
            .iter()
            .position(|&s| s == self)
            .map_or(u32::MAX, |i| i as u32)
    }
    /// Parses a wire number.
    pub fn from_wire(v: u32) -> Result<Status, BadMessage> {
        usize::try_from(v)
            .ok()
            .and_then(|i| STATUSES.get(i).copied())
            .ok_or(BadMessage::UnknownStatus(v))
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}
