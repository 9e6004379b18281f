//! Host USB devices as the toolstack sees them in sysfs (real `/sys` or the simulated
//! tree): hostbus/hostaddr → bus id, identity for listings, and the host drivers of a
//! device's interfaces, recorded like libxl's `/libxl/usbback/<busid>/<intf>/driver_path`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pvusb_backend::host::{list_busids, UsbRoots};
use serde::Serialize;
use xenstore_cfg::{Xs, XsError, XsOps};

/// libxl's record of host drivers to rebind on detach.
pub const USBBACK_INFO_PATH: &str = "/libxl/usbback";

/// What sysfs says about one device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HostDevice {
    /// Bus id ("3-1.5").
    pub busid: String,
    /// `busnum`.
    pub bus: u16,
    /// `devnum`.
    pub device: u16,
    /// `idVendor`.
    pub vid: u16,
    /// `idProduct`.
    pub pid: u16,
    /// `bDeviceClass`.
    pub class: u8,
    /// `speed` (Mbit/s as sysfs writes it).
    pub speed: String,
    /// `manufacturer` string descriptor, if any.
    pub manufacturer: Option<String>,
    /// `product` string descriptor, if any.
    pub product: Option<String>,
    /// `serial` string descriptor, if any.
    pub serial: Option<String>,
}

impl HostDevice {
    /// bDeviceClass 9.
    pub fn is_hub(&self) -> bool {
        self.class == 9
    }
}

/// Why a host device could not be found or read.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// No device at that address.
    #[error("no USB device at hostbus={bus} hostaddr={addr} (see `xl-usb usb-assignable-list`)")]
    NoSuchAddress {
        /// Bus number asked for.
        bus: u64,
        /// Device number asked for.
        addr: u64,
    },
    /// No device with that bus id.
    #[error("no USB device {0} (see `xl-usb usb-assignable-list`)")]
    NoSuchBusid(String),
    /// An attribute is missing or malformed.
    #[error("{path}: {why}")]
    Attr {
        /// Attribute file.
        path: PathBuf,
        /// What was wrong.
        why: String,
    },
}

fn attr(dir: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(name))
        .ok()
        .map(|s| s.trim().to_owned())
}

fn need<T>(dir: &Path, name: &str, parse: impl Fn(&str) -> Option<T>) -> Result<T, HostError> {
    let path = dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(s) => parse(s.trim()).ok_or(HostError::Attr {
            path,
            why: format!("unexpected value {:?}", s.trim()),
        }),
        Err(e) => Err(HostError::Attr {
            path,
            why: e.to_string(),
        }),
    }
}

/// Reads one device's sysfs directory.
pub fn read(roots: &UsbRoots, busid: &str) -> Result<HostDevice, HostError> {
    let dir = roots.devices_dir().join(busid);
    if pvusb_backend::host::check_busid(busid).is_err() || !dir.is_dir() {
        return Err(HostError::NoSuchBusid(busid.to_owned()));
    }
    let hex16 = |s: &str| u16::from_str_radix(s, 16).ok();
    Ok(HostDevice {
        busid: busid.to_owned(),
        bus: need(&dir, "busnum", |s| s.parse().ok())?,
        device: need(&dir, "devnum", |s| s.parse().ok())?,
        vid: need(&dir, "idVendor", hex16)?,
        pid: need(&dir, "idProduct", hex16)?,
        class: need(&dir, "bDeviceClass", |s| u8::from_str_radix(s, 16).ok())?,
        speed: attr(&dir, "speed").unwrap_or_default(),
        manufacturer: attr(&dir, "manufacturer").filter(|s| !s.is_empty()),
        product: attr(&dir, "product").filter(|s| !s.is_empty()),
        serial: attr(&dir, "serial").filter(|s| !s.is_empty()),
    })
}

/// Every device (root hubs and interfaces excluded) that can be read, by bus id.
pub fn list(roots: &UsbRoots) -> Vec<HostDevice> {
    list_busids(roots)
        .iter()
        .filter_map(|b| read(roots, b).ok())
        .collect()
}

/// Finds the bus id of `busnum`/`devnum` by scanning `*/{busnum,devnum}` as libxl does.
pub fn busid_of(roots: &UsbRoots, bus: u64, addr: u64) -> Result<String, HostError> {
    for busid in list_busids(roots) {
        let dir = roots.devices_dir().join(&busid);
        let num = |n: &str| attr(&dir, n).and_then(|s| s.parse::<u64>().ok());
        if num("busnum") == Some(bus) && num("devnum") == Some(addr) {
            return Ok(busid);
        }
    }
    Err(HostError::NoSuchAddress { bus, addr })
}

/// libxl's xenstore encoding of a bus id or interface name: '.' → '_', ':' → '@'.
pub fn xs_encode(name: &str) -> String {
    name.replace('.', "_").replace(':', "@")
}

/// The inverse of [`xs_encode`].
pub fn xs_decode(name: &str) -> String {
    name.replace('_', ".").replace('@', ":")
}

/// Interfaces of `busid` ("1-1:1.0", ...) present in sysfs.
fn interfaces(roots: &UsbRoots, busid: &str) -> Vec<String> {
    let prefix = format!("{busid}:");
    let mut out: Vec<String> = std::fs::read_dir(roots.devices_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    out.sort();
    out
}

fn driver_of(roots: &UsbRoots, intf: &str) -> Option<PathBuf> {
    std::fs::canonicalize(roots.devices_dir().join(intf).join("driver")).ok()
}

/// usbfs claims show up as this driver; it is never worth recording or rebinding.
const USBFS_DRIVER: &str = "usbfs";

/// Records the driver bound to each interface of `busid` under
/// `/libxl/usbback/<busid>/<intf>/driver_path`, as libxl does before handing a device to
/// the backend. Interfaces without a driver (or claimed through usbfs) are skipped.
pub fn record_drivers(xs: &mut Xs, roots: &UsbRoots, busid: &str) -> Result<usize, XsError> {
    let mut n = 0;
    for intf in interfaces(roots, busid) {
        let Some(driver) = driver_of(roots, &intf) else {
            continue;
        };
        if driver.file_name().is_some_and(|f| f == USBFS_DRIVER) {
            continue;
        }
        let path = format!(
            "{USBBACK_INFO_PATH}/{}/{}/driver_path",
            xs_encode(busid),
            xs_encode(&intf)
        );
        xs.write(&path, driver.to_string_lossy().as_bytes())?;
        n += 1;
    }
    Ok(n)
}

/// After a detach: waits (up to `wait`) for the backend to let go of the interfaces, binds
/// each recorded interface that has no driver back to its recorded driver (best effort,
/// as libxl's `usbdev_rebind`), then removes the record. Returns the interfaces rebound.
pub fn rebind_drivers(
    xs: &mut Xs,
    roots: &UsbRoots,
    busid: &str,
    wait: Duration,
) -> Result<Vec<String>, XsError> {
    let dir = format!("{USBBACK_INFO_PATH}/{}", xs_encode(busid));
    let intfs = match xs.directory(&dir) {
        Ok(c) => c,
        Err(XsError::Xs(xenstore_cfg::XsErrno::ENOENT)) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut recorded = Vec::new();
    for enc in intfs {
        if let Some(v) = xs.try_read(&format!("{dir}/{enc}/driver_path"))? {
            recorded.push((
                xs_decode(&enc),
                PathBuf::from(String::from_utf8_lossy(&v).trim()),
            ));
        }
    }
    let unbound = |intf: &str| {
        driver_of(roots, intf).is_none_or(|d| d.file_name().is_some_and(|f| f == USBFS_DRIVER))
    };
    let deadline = Instant::now() + wait;
    while recorded.iter().any(|(i, _)| {
        roots.devices_dir().join(i).exists()
            && driver_of(roots, i).is_some_and(|d| d.file_name().is_some_and(|f| f == USBFS_DRIVER))
    }) && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut rebound = Vec::new();
    for (intf, driver) in &recorded {
        if roots.devices_dir().join(intf).exists() && unbound(intf) {
            match std::fs::write(driver.join("bind"), intf) {
                Ok(()) => rebound.push(intf.clone()),
                Err(e) => {
                    tracing::warn!(intf, driver = %driver.display(), error = %e, "rebinding host driver")
                }
            }
        }
    }
    match xs.rm(&dir) {
        Ok(()) | Err(XsError::Xs(xenstore_cfg::XsErrno::ENOENT)) => {}
        Err(e) => return Err(e),
    }
    Ok(rebound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_matches_libxl() {
        assert_eq!(xs_encode("1-1:1.0"), "1-1@1_0");
        assert_eq!(xs_encode("3-1.5"), "3-1_5");
        assert_eq!(xs_decode("3-1_5@1_0"), "3-1.5:1.0");
    }

    #[test]
    fn finds_busid_by_address_and_skips_interfaces() {
        let tmp = tempfile::tempdir().unwrap();
        let roots = UsbRoots::sim(tmp.path());
        let d = roots.devices_dir().join("1-2");
        std::fs::create_dir_all(&d).unwrap();
        for (k, v) in [
            ("busnum", "1"),
            ("devnum", "5"),
            ("idVendor", "46f4"),
            ("idProduct", "0001"),
            ("bDeviceClass", "00"),
            ("speed", "480"),
        ] {
            std::fs::write(d.join(k), format!("{v}\n")).unwrap();
        }
        std::fs::create_dir_all(roots.devices_dir().join("1-2:1.0")).unwrap();
        assert_eq!(busid_of(&roots, 1, 5).unwrap(), "1-2");
        assert!(busid_of(&roots, 1, 6).is_err());
        let dev = read(&roots, "1-2").unwrap();
        assert_eq!((dev.vid, dev.pid, dev.is_hub()), (0x46f4, 1, false));
        assert_eq!(interfaces(&roots, "1-2"), vec!["1-2:1.0"]);
        assert_eq!(list(&roots).len(), 1);
        assert!(matches!(
            read(&roots, "1-3"),
            Err(HostError::NoSuchBusid(_))
        ));
    }
}
