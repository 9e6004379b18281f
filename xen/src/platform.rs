//! [`Platform`]: the real or the simulated hypervisor, chosen at start-up.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::copy::{CopyError, CopySeg, GrantCopier, LocalPages, SegError};
use crate::error::BrokerError;
use crate::sim::SimPlatform;
use crate::xen::XenPlatform;
use crate::{
    Access, AllocError, DomId, EventChannel, EventChannels, EvtchnError, EvtchnPort,
    GrantAllocator, GrantMapper, GrantMapping, GrantRef, GrantedPages, MapError, MapRequest,
};

/// Which platform a daemon runs on (`--platform xen|sim`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlatformKind {
    /// /dev/xen devices.
    Xen,
    /// The simulated broker under a simulation directory.
    Sim,
}

impl FromStr for PlatformKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "xen" => Ok(PlatformKind::Xen),
            "sim" => Ok(PlatformKind::Sim),
            other => Err(format!("unknown platform {other:?} (expected xen or sim)")),
        }
    }
}

/// Opening a platform failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// `--platform sim` needs the simulation directory.
    #[error("the sim platform needs a simulation directory")]
    NoSimDir,
    /// The broker could not be reached.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// The hypervisor interface a daemon uses: implements all four traits, so it can be shared as
/// `Arc<Platform>` or handed out as `&dyn GrantMapper` etc.
#[derive(Debug)]
pub enum Platform {
    /// Real Xen.
    Xen(XenPlatform),
    /// The simulated broker.
    Sim(SimPlatform),
}

impl Platform {
    /// Opens the platform: for `Xen` nothing is opened until first use; for `Sim` this
    /// connects to `<sim_dir>/domains/<domid>/hyp` as `domid`.
    pub fn open(
        kind: PlatformKind,
        sim_dir: Option<&Path>,
        domid: DomId,
    ) -> Result<Platform, OpenError> {
        match kind {
            PlatformKind::Xen => Ok(Platform::Xen(XenPlatform::new())),
            PlatformKind::Sim => {
                let dir: PathBuf = sim_dir.ok_or(OpenError::NoSimDir)?.into();
                Ok(Platform::Sim(SimPlatform::connect(&dir, domid)?))
            }
        }
    }
}

impl GrantMapper for Platform {
    fn map(
        &self,
        domid: DomId,
        refs: &[GrantRef],
        access: Access,
    ) -> Result<GrantMapping, MapError> {
        match self {
            Platform::Xen(p) => p.map(domid, refs, access),
            Platform::Sim(p) => p.map(domid, refs, access),
        }
    }

    fn map_batch(
        &self,
        domid: DomId,
        reqs: &[MapRequest<'_>],
    ) -> Vec<Result<GrantMapping, MapError>> {
        match self {
            Platform::Xen(p) => p.map_batch(domid, reqs),
            Platform::Sim(p) => p.map_batch(domid, reqs),
        }
    }
}

impl GrantCopier for Platform {
    fn alloc_local(&self, pages: usize) -> Result<LocalPages, AllocError> {
        match self {
            Platform::Xen(p) => p.alloc_local(pages),
            Platform::Sim(p) => p.alloc_local(pages),
        }
    }

    fn copy(
        &self,
        domid: DomId,
        local: &LocalPages,
        segs: &[CopySeg],
    ) -> Result<Vec<Result<(), SegError>>, CopyError> {
        match self {
            Platform::Xen(p) => p.copy(domid, local, segs),
            Platform::Sim(p) => p.copy(domid, local, segs),
        }
    }
}

impl GrantAllocator for Platform {
    fn alloc(
        &self,
        domid: DomId,
        count: usize,
        access: Access,
    ) -> Result<GrantedPages, AllocError> {
        match self {
            Platform::Xen(p) => p.alloc(domid, count, access),
            Platform::Sim(p) => p.alloc(domid, count, access),
        }
    }
}

impl EventChannels for Platform {
    fn alloc_unbound(&self, remote: DomId) -> Result<Box<dyn EventChannel>, EvtchnError> {
        match self {
            Platform::Xen(p) => p.alloc_unbound(remote),
            Platform::Sim(p) => p.alloc_unbound(remote),
        }
    }

    fn bind_interdomain(
        &self,
        remote: DomId,
        remote_port: EvtchnPort,
    ) -> Result<Box<dyn EventChannel>, EvtchnError> {
        match self {
            Platform::Xen(p) => p.bind_interdomain(remote, remote_port),
            Platform::Sim(p) => p.bind_interdomain(remote, remote_port),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_parses_the_two_names_only() {
        assert_eq!("xen".parse(), Ok(PlatformKind::Xen));
        assert_eq!("sim".parse(), Ok(PlatformKind::Sim));
        assert!("Xen".parse::<PlatformKind>().is_err());
    }

    #[test]
    fn sim_without_dir_is_an_error() {
        assert!(matches!(
            Platform::open(PlatformKind::Sim, None, DomId(1)),
            Err(OpenError::NoSimDir)
        ));
    }

    #[test]
    fn sim_without_broker_is_a_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = Platform::open(PlatformKind::Sim, Some(dir.path()), DomId(1)).unwrap_err();
        assert!(
            matches!(e, OpenError::Broker(BrokerError::Connect { .. })),
            "{e:?}"
        );
    }
}
