//! `@releaseDomain`: telling the embedded xenstored that a simulated domain is gone.

use std::path::{Path, PathBuf};

use xenstore_cfg::{Xs, XsErrno, XsError};

use super::ReleaseHook;
use crate::DomId;

/// Why telling xenstored failed.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// No xenstored listens at the socket.
    #[error("no xenstored at {path}: {source}")]
    Connect {
        /// `<dir>/socket`.
        path: PathBuf,
        /// Why.
        source: XsError,
    },
    /// xenstored refused XS_RELEASE.
    #[error("XS_RELEASE of dom{domid}: {source}")]
    Release {
        /// The domain.
        domid: u16,
        /// Why.
        source: XsError,
    },
}

/// Sends XS_RELEASE for `domid` to the xenstored at `socket`, as the control domain. A domain
/// xenstored never heard of (`ENOENT`) counts as released.
pub fn release(socket: &Path, domid: DomId) -> Result<(), ReleaseError> {
    let mut xs = Xs::connect(socket).map_err(|source| ReleaseError::Connect {
        path: socket.into(),
        source,
    })?;
    match xs.release(domid.0) {
        Ok(()) | Err(XsError::Xs(XsErrno::ENOENT)) => Ok(()),
        Err(source) => Err(ReleaseError::Release {
            domid: domid.0,
            source,
        }),
    }
}

/// The broker hook of the `pvusb-simhyp` binary: XS_RELEASE to `<dir>/socket`, which closes
/// the domain's xenstore connections and fires `@releaseDomain`. Failures are logged: the
/// broker also runs without a xenstored (its unit tests, the benchmarks).
pub fn xenstore_hook(dir: &Path) -> ReleaseHook {
    let socket = dir.join("socket");
    Box::new(move |domid: DomId| match release(&socket, domid) {
        Ok(()) => tracing::info!(domid = domid.0, "@releaseDomain sent to xenstored"),
        Err(e) => tracing::warn!(domid = domid.0, error = %e, "cannot tell xenstored"),
    })
}
