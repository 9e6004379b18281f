//! One entry point for both platforms: resolve a bus id, open the device, watch hotplug.

use std::path::PathBuf;

use super::hotplug::{HotplugError, HotplugMonitor, InotifyMonitor, UeventMonitor};
use super::{resolve, HostDevice, ResolveError, UsbRoots};
use crate::sim::{SimDevice, SimOpenError};
use crate::usbfs::{UsbfsDevice, UsbfsOpenError};

/// Where host devices come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Platform {
    /// Real devices: `/sys`, `/dev/bus/usb`, netlink uevents.
    Real,
    /// The simulated bus of a sim platform directory.
    Sim { simdir: PathBuf },
}

/// Why a bus id could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error(transparent)]
    Usbfs(#[from] UsbfsOpenError),
    #[error(transparent)]
    Sim(#[from] SimOpenError),
}

impl OpenError {
    /// True if the device is simply not there (not plugged, or gone meanwhile).
    pub fn is_absent(&self) -> bool {
        matches!(self, OpenError::Resolve(ResolveError::NotFound { .. }))
    }
}

impl Platform {
    /// The sysfs/devfs roots the resolver uses.
    pub fn roots(&self) -> UsbRoots {
        match self {
            Platform::Real => UsbRoots::real(),
            Platform::Sim { simdir } => UsbRoots::sim(simdir),
        }
    }

    /// Resolves `busid` (hubs are refused) and opens it, claiming its interfaces.
    pub fn open(&self, busid: &str) -> Result<Box<dyn HostDevice>, OpenError> {
        let roots = self.roots();
        let dev = resolve(&roots, busid)?;
        Ok(match self {
            Platform::Real => Box::new(UsbfsDevice::open(&dev)?),
            Platform::Sim { .. } => Box::new(SimDevice::open(&roots, &dev)?),
        })
    }

    /// A hotplug event source: inotify on the sim tree, kernel uevents on a real host.
    pub fn hotplug(&self) -> Result<Box<dyn HotplugMonitor>, HotplugError> {
        Ok(match self {
            Platform::Real => Box::new(UeventMonitor::new()?),
            Platform::Sim { .. } => Box::new(InotifyMonitor::new(&self.roots())?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{plug, unplug, DeviceSpec, ModelSpec};

    #[test]
    fn sim_platform_opens_and_watches() {
        let tmp = tempfile::tempdir().unwrap();
        let p = Platform::Sim {
            simdir: tmp.path().to_path_buf(),
        };
        let mut mon = p.hotplug().unwrap();
        assert!(p.open("1-1").unwrap_err().is_absent());
        let busid = plug(
            tmp.path(),
            &DeviceSpec::new(ModelSpec::Keyboard { text: "x".into() }),
        )
        .unwrap();
        let dev = p.open(&busid).unwrap();
        assert_eq!(dev.speed().usbif_speed(), 2);
        assert_eq!(dev.descriptors().device.id_vendor, 0x1209);
        assert!(matches!(
            p.open(&busid),
            Err(OpenError::Sim(SimOpenError::Busy(_)))
        ));
        unplug(tmp.path(), &busid).unwrap();
        assert_eq!(mon.read_events().unwrap().len(), 2);
    }
}
