//! The embedded xenstored: a sans-I/O engine ([`Xenstored`]) and its mio shell ([`Daemon`]).
//!
//! Directory contract (SIMDIR.md): `<dir>/socket` is the control domain's (dom0,
//! privileged) socket; `<dir>/domains/<domid>/xenstore` exists while `<domid>` is
//! introduced. The socket a client connects through is its domain identity.
//!
//! Semantics follow C xenstored 4.17: permissions (owner + n/r/w/b, inherited on create,
//! checked on every operation, dom0 and owners have full access), watches (fired once on
//! registration, on changes at or below the watched path, and for watched nodes removed
//! with an ancestor; only to watchers that may read the node or its parent; special
//! `@introduceDomain`/`@releaseDomain` by their own permissions), transactions (private
//! copies, conflict → `EAGAIN` at commit), quotas for unprivileged domains (nodes → ENOSPC,
//! entry size → ENOSPC, watches → E2BIG, transactions → ENOSPC), implicit parents.
//! Unknown message types get `ENOSYS`, as xenstored 4.17's `process_message` answers.

mod core;
mod domain;
mod exec;
mod fuzzing;
mod ops;
mod path;
mod server;
mod store;
mod watch;

pub use self::core::{Xenstored, OUT_HARD_LIMIT, OUT_SOFT_LIMIT, SPECIAL_NODES};
pub use self::domain::DOMID_FIRST_RESERVED;
pub use self::fuzzing::exercise;
pub use self::server::{spawn, Config, Daemon, DaemonError, DaemonHandle, Stopper};

use crate::wire::DomId;

/// A client connection of the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// Something the shell must do for the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Action {
    /// Drop this connection (misbehaved, or its domain was released); its state is gone.
    Close(ConnId),
    /// Create `<dir>/domains/<domid>/xenstore`.
    DomainIntroduced(DomId),
    /// Remove `<dir>/domains/<domid>/xenstore`.
    DomainReleased(DomId),
}

/// Per-domain limits for unprivileged domains; xenstored 4.17's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quotas {
    /// Nodes a domain may own (`-e`, 1000).
    pub nodes_per_domain: i64,
    /// Largest node record (`-S`, 2048 bytes).
    pub entry_size: usize,
    /// Watches per domain (`-W`, 128).
    pub watches_per_domain: usize,
    /// Open transactions per connection (`-t`, 10).
    pub transactions_per_conn: usize,
    /// Permission entries per node (`-A`, 5).
    pub perms_per_node: usize,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            nodes_per_domain: 1000,
            entry_size: 2048,
            watches_per_domain: 128,
            transactions_per_conn: 10,
            perms_per_node: 5,
        }
    }
}

/// The path of a simulated domain's socket under `dir`.
pub fn domain_socket(dir: &std::path::Path, domid: DomId) -> std::path::PathBuf {
    dir.join("domains").join(domid.to_string()).join("xenstore")
}

/// The control domain's socket under `dir`.
pub fn control_socket(dir: &std::path::Path) -> std::path::PathBuf {
    dir.join("socket")
}

#[cfg(test)]
mod tests;
