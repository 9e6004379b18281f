//! The `xsd_errors` table of xs_wire.h: error replies carry an errno *name*, not a number.

use std::fmt;

/// An error a xenstore server can report, exactly the names of xs_wire.h's `xsd_errors`.
///
/// Real xenstored sends `EINVAL` for any errno outside this table, so the table is closed.
#[allow(clippy::upper_case_acronyms)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum XsErrno {
    /// Invalid argument (bad path, malformed request, bad transaction body).
    EINVAL,
    /// Permission denied.
    EACCES,
    /// Already exists (e.g. a duplicate watch).
    EEXIST,
    /// Is a directory.
    EISDIR,
    /// No such node, transaction or watch.
    ENOENT,
    /// Out of memory.
    ENOMEM,
    /// Quota exceeded (nodes, entry size, transactions).
    ENOSPC,
    /// I/O error.
    EIO,
    /// Directory not empty.
    ENOTEMPTY,
    /// Unknown or unsupported message type.
    ENOSYS,
    /// Read-only.
    EROFS,
    /// Busy (nested transaction start).
    EBUSY,
    /// Transaction conflict: retry the whole transaction.
    EAGAIN,
    /// Already connected.
    EISCONN,
    /// Reply or argument too big, watch quota exceeded.
    E2BIG,
    /// Operation not permitted (e.g. changing a node's owner as a guest).
    EPERM,
}

impl XsErrno {
    /// Every entry of `xsd_errors`, in header order.
    pub const ALL: [XsErrno; 16] = [
        Self::EINVAL,
        Self::EACCES,
        Self::EEXIST,
        Self::EISDIR,
        Self::ENOENT,
        Self::ENOMEM,
        Self::ENOSPC,
        Self::EIO,
        Self::ENOTEMPTY,
        Self::ENOSYS,
        Self::EROFS,
        Self::EBUSY,
        Self::EAGAIN,
        Self::EISCONN,
        Self::E2BIG,
        Self::EPERM,
    ];

    /// The name sent on the wire (without the NUL).
    pub fn name(self) -> &'static str {
        match self {
            Self::EINVAL => "EINVAL",
            Self::EACCES => "EACCES",
            Self::EEXIST => "EEXIST",
            Self::EISDIR => "EISDIR",
            Self::ENOENT => "ENOENT",
            Self::ENOMEM => "ENOMEM",
            Self::ENOSPC => "ENOSPC",
            Self::EIO => "EIO",
            Self::ENOTEMPTY => "ENOTEMPTY",
            Self::ENOSYS => "ENOSYS",
            Self::EROFS => "EROFS",
            Self::EBUSY => "EBUSY",
            Self::EAGAIN => "EAGAIN",
            Self::EISCONN => "EISCONN",
            Self::E2BIG => "E2BIG",
            Self::EPERM => "EPERM",
        }
    }

    /// Looks a wire name up in the table.
    pub fn from_name(name: &[u8]) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.name().as_bytes() == name)
    }

    /// The Linux errno number, as libxenstore reports it to C callers.
    pub fn raw_os_error(self) -> i32 {
        match self {
            Self::EINVAL => 22,
            Self::EACCES => 13,
            Self::EEXIST => 17,
            Self::EISDIR => 21,
            Self::ENOENT => 2,
            Self::ENOMEM => 12,
            Self::ENOSPC => 28,
            Self::EIO => 5,
            Self::ENOTEMPTY => 39,
            Self::ENOSYS => 38,
            Self::EROFS => 30,
            Self::EBUSY => 16,
            Self::EAGAIN => 11,
            Self::EISCONN => 106,
            Self::E2BIG => 7,
            Self::EPERM => 1,
        }
    }
}

impl fmt::Display for XsErrno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for e in XsErrno::ALL {
            assert_eq!(XsErrno::from_name(e.name().as_bytes()), Some(e));
        }
        assert_eq!(XsErrno::from_name(b"EQUOTA"), None);
    }
}
