//! Bus-id resolution: "3-1.5" → sysfs attributes → usbfs node, for real and simulated trees.

use std::path::{Path, PathBuf};

use super::desc::{DescError, Descriptors};

/// Where the sysfs-like tree and the device nodes live: `/sys` + `/dev` on a real host,
/// `<simdir>/usb/sys` + `<simdir>/usb/dev` on the simulated platform. The same resolver
/// code serves both.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsbRoots {
    pub sysfs: PathBuf,
    pub devfs: PathBuf,
}

impl UsbRoots {
    /// The real host's `/sys` and `/dev`.
    pub fn real() -> Self {
        UsbRoots {
            sysfs: PathBuf::from("/sys"),
            devfs: PathBuf::from("/dev"),
        }
    }

    /// The simulated USB bus of `<simdir>`.
    pub fn sim(simdir: &Path) -> Self {
        UsbRoots {
            sysfs: simdir.join("usb/sys"),
            devfs: simdir.join("usb/dev"),
        }
    }

    /// `<sysfs>/bus/usb/devices`.
    pub fn devices_dir(&self) -> PathBuf {
        self.sysfs.join("bus/usb/devices")
    }

    /// `<devfs>/bus/usb/BBB/DDD`.
    pub fn node_path(&self, busnum: u16, devnum: u16) -> PathBuf {
        self.devfs.join(format!("bus/usb/{busnum:03}/{devnum:03}"))
    }
}

/// A device's speed, as sysfs `speed` / USBDEVFS_GET_SPEED report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostSpeed {
    Low,
    Full,
    High,
    Wireless,
    Super,
    SuperPlus,
}

impl HostSpeed {
    /// From the sysfs `speed` attribute (Mbit/s: "1.5", "12", "480", "53.3", "5000", ...).
    pub fn from_sysfs(s: &str) -> Option<Self> {
        Some(match s.trim() {
            "1.5" => HostSpeed::Low,
            "12" => HostSpeed::Full,
            "480" => HostSpeed::High,
            "53.3" => HostSpeed::Wireless,
            "5000" => HostSpeed::Super,
            "10000" | "20000" => HostSpeed::SuperPlus,
            _ => return None,
        })
    }

    /// The sysfs `speed` text.
    pub fn to_sysfs(self) -> &'static str {
        match self {
            HostSpeed::Low => "1.5",
            HostSpeed::Full => "12",
            HostSpeed::High => "480",
            HostSpeed::Wireless => "53.3",
            HostSpeed::Super => "5000",
            HostSpeed::SuperPlus => "10000",
        }
    }

    /// From Linux `enum usb_device_speed` (USBDEVFS_GET_SPEED's return value).
    pub fn from_linux(v: u32) -> Option<Self> {
        Some(match v {
            1 => HostSpeed::Low,
            2 => HostSpeed::Full,
            3 => HostSpeed::High,
            4 => HostSpeed::Wireless,
            5 => HostSpeed::Super,
            6 => HostSpeed::SuperPlus,
            _ => return None,
        })
    }

    /// The usbif speed to announce (`USBIF_SPEED_LOW 1 / FULL 2 / HIGH 3`). usbif has no
    /// SuperSpeed: those devices are presented as HIGH, with [`super::fixup_superspeed_as_high`]
    /// applied to their device descriptor (see [`HostSpeed::needs_ep0_fixup`]).
    pub fn usbif_speed(self) -> u8 {
        match self {
            HostSpeed::Low => 1,
            HostSpeed::Full => 2,
            HostSpeed::High | HostSpeed::Wireless | HostSpeed::Super | HostSpeed::SuperPlus => 3,
        }
    }

    /// True if the device is faster than usbif can say and needs the bMaxPacketSize0 fix-up.
    pub fn needs_ep0_fixup(self) -> bool {
        matches!(self, HostSpeed::Super | HostSpeed::SuperPlus)
    }
}

/// Why a bus id could not be resolved to a usable device.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("{0:?} is not a USB bus id (expected e.g. \"3-1.5\")")]
    InvalidBusid(String),
    #[error("no USB device {busid} under {dir}")]
    NotFound { busid: String, dir: PathBuf },
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds {value:?}, not a valid value")]
    BadValue { path: PathBuf, value: String },
    #[error("{0} is a hub (bDeviceClass 9); hubs cannot be passed through")]
    Hub(String),
    #[error("descriptors of {busid}: {source}")]
    Descriptors { busid: String, source: DescError },
}

/// Checks the shape of a bus id ("B-P[.P...]", decimal, B ≥ 1): it comes from xenstore, so
/// it must never be able to name another path ("..", "/", interface "1-1:1.0", "usb1").
pub fn check_busid(busid: &str) -> Result<(), ResolveError> {
    let bad = || ResolveError::InvalidBusid(busid.to_string());
    let (bus, ports) = busid.split_once('-').ok_or_else(bad)?;
    let num = |s: &str| !s.is_empty() && s.len() <= 3 && s.bytes().all(|b| b.is_ascii_digit());
    if !num(bus) || bus.starts_with('0') || busid.len() > 32 {
        return Err(bad());
    }
    if ports.split('.').all(|p| num(p) && !p.starts_with('0')) {
        Ok(())
    } else {
        Err(bad())
    }
}

/// Everything the backend needs to know about one host device before opening it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedDevice {
    pub busid: String,
    pub sysdir: PathBuf,
    pub busnum: u16,
    pub devnum: u16,
    pub speed: HostSpeed,
    pub device_class: u8,
    pub id_vendor: u16,
    pub id_product: u16,
    pub manufacturer: Option<String>,
    pub product: Option<String>,
    pub serial: Option<String>,
    /// Raw sysfs `descriptors`: device descriptor + every configuration descriptor.
    pub descriptors: Vec<u8>,
    /// `<devfs>/bus/usb/BBB/DDD`.
    pub node: PathBuf,
}

impl ResolvedDevice {
    /// [`super::HostDevice::instance`] of the device.
    pub fn instance(&self) -> u32 {
        u32::from(self.busnum) << 16 | u32::from(self.devnum)
    }

    /// The parsed descriptors.
    pub fn parsed_descriptors(&self) -> Result<Descriptors, ResolveError> {
        Descriptors::parse(&self.descriptors).map_err(|source| ResolveError::Descriptors {
            busid: self.busid.clone(),
            source,
        })
    }
}

fn read_attr(dir: &Path, name: &str) -> Result<String, ResolveError> {
    let path = dir.join(name);
    std::fs::read_to_string(&path)
        .map(|s| s.trim_end_matches('\n').to_string())
        .map_err(|source| ResolveError::Io { path, source })
}

fn read_opt(dir: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(name))
        .ok()
        .map(|s| s.trim_end_matches('\n').to_string())
}

fn parse_attr<T>(dir: &Path, name: &str, f: impl Fn(&str) -> Option<T>) -> Result<T, ResolveError> {
    let value = read_attr(dir, name)?;
    f(value.trim()).ok_or_else(|| ResolveError::BadValue {
        path: dir.join(name),
        value,
    })
}

fn hex16(s: &str) -> Option<u16> {
    u16::from_str_radix(s, 16).ok()
}

/// Resolves `busid` under `roots`: reads the sysfs attributes, refuses hubs, and names the
/// device node. Does not open anything.
pub fn resolve(roots: &UsbRoots, busid: &str) -> Result<ResolvedDevice, ResolveError> {
    check_busid(busid)?;
    let sysdir = roots.devices_dir().join(busid);
    if !sysdir.is_dir() {
        return Err(ResolveError::NotFound {
            busid: busid.to_string(),
            dir: roots.devices_dir(),
        });
    }
    let device_class = parse_attr(&sysdir, "bDeviceClass", |s| u8::from_str_radix(s, 16).ok())?;
    if device_class == 9 {
        return Err(ResolveError::Hub(busid.to_string()));
    }
    let busnum = parse_attr(&sysdir, "busnum", |s| s.parse::<u16>().ok())?;
    let devnum = parse_attr(&sysdir, "devnum", |s| s.parse::<u16>().ok())?;
    let speed = parse_attr(&sysdir, "speed", HostSpeed::from_sysfs)?;
    let id_vendor = parse_attr(&sysdir, "idVendor", hex16)?;
    let id_product = parse_attr(&sysdir, "idProduct", hex16)?;
    let path = sysdir.join("descriptors");
    let descriptors = std::fs::read(&path).map_err(|source| ResolveError::Io { path, source })?;
    Ok(ResolvedDevice {
        busid: busid.to_string(),
        node: roots.node_path(busnum, devnum),
        manufacturer: read_opt(&sysdir, "manufacturer"),
        product: read_opt(&sysdir, "product"),
        serial: read_opt(&sysdir, "serial"),
        sysdir,
        busnum,
        devnum,
        speed,
        device_class,
        id_vendor,
        id_product,
        descriptors,
    })
}

/// Bus ids of all devices under `roots` (no root hubs "usbN", no interfaces "1-1:1.0"),
/// sorted. Hubs are included; `resolve` refuses them.
pub fn list_busids(roots: &UsbRoots) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(roots.devices_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| check_busid(n).is_ok())
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_device(roots: &UsbRoots, busid: &str, class: &str, speed: &str) {
        let d = roots.devices_dir().join(busid);
        std::fs::create_dir_all(&d).unwrap();
        for (k, v) in [
            ("busnum", "3"),
            ("devnum", "7"),
            ("speed", speed),
            ("bDeviceClass", class),
            ("idVendor", "0627"),
            ("idProduct", "0001"),
            ("product", "QEMU USB HARDDRIVE"),
        ] {
            std::fs::write(d.join(k), format!("{v}\n")).unwrap();
        }
        std::fs::write(d.join("descriptors"), super::super::desc::tests::STICK).unwrap();
    }

    #[test]
    fn resolves_fake_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let roots = UsbRoots {
            sysfs: tmp.path().join("sys"),
            devfs: tmp.path().join("dev"),
        };
        fake_device(&roots, "3-1.5", "00", "480");
        fake_device(&roots, "3-1", "09", "480");
        std::fs::create_dir_all(roots.devices_dir().join("3-1.5:1.0")).unwrap();
        std::fs::create_dir_all(roots.devices_dir().join("usb3")).unwrap();
        let d = resolve(&roots, "3-1.5").unwrap();
        assert_eq!((d.busnum, d.devnum, d.id_vendor), (3, 7, 0x0627));
        assert_eq!(d.speed, HostSpeed::High);
        assert_eq!(d.node, tmp.path().join("dev/bus/usb/003/007"));
        assert_eq!(d.product.as_deref(), Some("QEMU USB HARDDRIVE"));
        assert_eq!(d.parsed_descriptors().unwrap().configs.len(), 1);
        assert!(matches!(resolve(&roots, "3-1"), Err(ResolveError::Hub(_))));
        assert!(matches!(
            resolve(&roots, "3-2"),
            Err(ResolveError::NotFound { .. })
        ));
        assert_eq!(list_busids(&roots), vec!["3-1", "3-1.5"]);
        fake_device(&roots, "4-1", "00", "fast");
        assert!(matches!(
            resolve(&roots, "4-1"),
            Err(ResolveError::BadValue { .. })
        ));
    }

    #[test]
    fn busid_shape_is_checked() {
        for ok in ["1-1", "3-1.5", "12-3.4.1"] {
            assert!(check_busid(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "1", "usb1", "1-1:1.0", "../1-1", "1-", "1-1.", "0-1", "1-01", "1-1/x", "-1",
        ] {
            assert!(check_busid(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn speeds_map_to_usbif() {
        for s in ["1.5", "12", "480", "53.3", "5000", "10000"] {
            let sp = HostSpeed::from_sysfs(s).unwrap();
            assert_eq!(HostSpeed::from_sysfs(sp.to_sysfs()), Some(sp));
        }
        assert_eq!(HostSpeed::Super.usbif_speed(), 3);
        assert!(HostSpeed::Super.needs_ep0_fixup());
        assert_eq!(HostSpeed::from_linux(2), Some(HostSpeed::Full));
        assert_eq!(HostSpeed::from_linux(0), None);
    }
}
