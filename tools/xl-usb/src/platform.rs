//! Which host the commands act on: the real one (xenstored socket or /dev/xen/xenbus, /sys,
//! /dev) or a simulated platform directory (`<dir>/socket`, `<dir>/usb/...`, SIMDIR.md).

use std::path::{Path, PathBuf};

use pvusb_backend::host::UsbRoots;
use xenstore_cfg::{Xs, XsError};

/// Environment variable naming a simulated platform directory (same as `--sim`).
pub const SIM_ENV: &str = "PVUSB_SIM";

/// The platform a command talks to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    /// `Some(dir)` on the simulated platform.
    pub simdir: Option<PathBuf>,
    /// Where sysfs and device nodes live.
    pub roots: UsbRoots,
}

/// Why xenstore could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The simulated xenstored is not running.
    #[error("cannot reach xenstored at {path}: {source} (is the simulated platform up? try `xl-usb sim up --dir {dir}`)")]
    Sim {
        /// Socket path.
        path: PathBuf,
        /// Directory.
        dir: String,
        /// Cause.
        source: XsError,
    },
    /// Neither the xenstored socket nor /dev/xen/xenbus could be opened.
    #[error("cannot reach xenstore ({source}); is this a Xen dom0 or driver domain with xenstored running? (XENSTORED_PATH overrides the socket)")]
    Real {
        /// Cause.
        source: XsError,
    },
}

impl Platform {
    /// The real host.
    pub fn real() -> Self {
        Platform {
            simdir: None,
            roots: UsbRoots::real(),
        }
    }

    /// A simulated platform in `dir`.
    pub fn sim(dir: &Path) -> Self {
        Platform {
            simdir: Some(dir.to_path_buf()),
            roots: UsbRoots::sim(dir),
        }
    }

    /// `--sim <dir>` if given, else `$PVUSB_SIM` if set and non-empty, else the real host.
    pub fn from_args(sim: Option<&Path>) -> Self {
        match sim {
            Some(d) => Self::sim(d),
            None => match std::env::var_os(SIM_ENV).filter(|v| !v.is_empty()) {
                Some(d) => Self::sim(Path::new(&d)),
                None => Self::real(),
            },
        }
    }

    /// Opens xenstore as the control domain of this platform.
    pub fn xs(&self) -> Result<Xs, ConnectError> {
        match &self.simdir {
            Some(dir) => {
                let path = xenstore_cfg::daemon::control_socket(dir);
                Xs::connect(&path).map_err(|source| ConnectError::Sim {
                    path,
                    dir: dir.display().to_string(),
                    source,
                })
            }
            None => Xs::open().map_err(|source| ConnectError::Real { source }),
        }
    }
}
