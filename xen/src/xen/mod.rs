//! The real platform: `/dev/xen/gntdev`, `/dev/xen/gntalloc` and `/dev/xen/evtchn`, with
//! ioctls in pure Rust over rustix.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use crate::DeviceError;

pub mod abi;
pub mod copy;
pub mod evtchn;
pub mod gntalloc;
pub mod gntdev;

/// The grant-mapping device (backend side).
pub const GNTDEV: &str = "/dev/xen/gntdev";
/// The grant-allocation device (frontend side).
pub const GNTALLOC: &str = "/dev/xen/gntalloc";
/// The event channel device.
pub const EVTCHN: &str = "/dev/xen/evtchn";

/// The real Xen platform. Devices are opened on first use, so a backend that never grants
/// does not need gntalloc; a missing device is a [`DeviceError::Missing`] naming the driver.
#[derive(Debug, Default)]
pub struct XenPlatform {
    gntdev: Mutex<Option<Arc<OwnedFd>>>,
    gntalloc: Mutex<Option<Arc<OwnedFd>>>,
}

impl XenPlatform {
    /// A platform that opens /dev/xen devices lazily.
    pub fn new() -> XenPlatform {
        XenPlatform::default()
    }

    pub(crate) fn gntdev(&self) -> Result<Arc<OwnedFd>, DeviceError> {
        shared(&self.gntdev, GNTDEV, "gntdev", |fd| {
            gntdev::set_max_grants(fd)
        })
    }

    pub(crate) fn gntalloc(&self) -> Result<Arc<OwnedFd>, DeviceError> {
        shared(&self.gntalloc, GNTALLOC, "gntalloc", |_| {})
    }
}

fn shared(
    slot: &Mutex<Option<Arc<OwnedFd>>>,
    path: &'static str,
    driver: &'static str,
    init: impl FnOnce(&OwnedFd),
) -> Result<Arc<OwnedFd>, DeviceError> {
    let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(fd) = slot.as_ref() {
        return Ok(fd.clone());
    }
    let fd = open_device(path, driver, OFlags::empty())?;
    init(&fd);
    let fd = Arc::new(fd);
    *slot = Some(fd.clone());
    Ok(fd)
}

/// Opens a /dev/xen node read-write; a missing node is reported as such.
pub fn open_device(
    path: &'static str,
    driver: &'static str,
    extra: OFlags,
) -> Result<OwnedFd, DeviceError> {
    rustix::fs::open(path, OFlags::RDWR | OFlags::CLOEXEC | extra, Mode::empty())
        .map_err(|errno| device_error(path, driver, errno))
}

/// Maps an open(2) failure to a [`DeviceError`].
pub fn device_error(path: &'static str, driver: &'static str, errno: Errno) -> DeviceError {
    match errno {
        Errno::NOENT | Errno::NODEV | Errno::NXIO => DeviceError::Missing { path, driver },
        errno => DeviceError::Open { path, errno },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_device_is_a_clear_error() {
        let e = open_device("/dev/xen/does-not-exist", "gntdev", OFlags::empty()).unwrap_err();
        assert!(matches!(e, DeviceError::Missing { .. }), "{e:?}");
        assert!(
            e.to_string().contains("xen-gntdev driver is not loaded"),
            "{e}"
        );
    }

    #[test]
    fn other_open_failures_keep_their_errno() {
        let e = device_error(GNTDEV, "gntdev", Errno::ACCESS);
        assert!(matches!(
            e,
            DeviceError::Open {
                errno: Errno::ACCESS,
                ..
            }
        ));
    }

    #[test]
    fn platform_without_xen_reports_missing_devices() {
        if std::path::Path::new(GNTDEV).exists() {
            return; // running on Xen: nothing to check here
        }
        let p = XenPlatform::new();
        assert!(matches!(
            p.gntdev(),
            Err(DeviceError::Missing { path: GNTDEV, .. })
        ));
        assert!(matches!(
            p.gntalloc(),
            Err(DeviceError::Missing { path: GNTALLOC, .. })
        ));
    }
}
