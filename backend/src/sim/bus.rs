//! The simulated USB bus on disk: `plug`/`unplug` build and remove the sysfs-like tree under
//! `<simdir>/usb/`, device nodes, and per-device persistent state.
//!
//! ```text
//! <simdir>/usb/sys/bus/usb/devices/<busid>/  busnum devnum speed idVendor idProduct
//!        bDeviceClass manufacturer product serial descriptors ... sim-spec.toml
//!        [sim-faults.toml]  (run-time faults, replaced atomically by `set_faults`)
//! <simdir>/usb/dev/bus/usb/BBB/DDD            device node (a file naming the busid;
//!                                              opening it = flock, like claiming usbfs)
//! <simdir>/usb/dev/bus/usb/BBB/next-devnum    where the next plug's number search starts
//! <simdir>/usb/state/<serial>/                persistent state (disk.img), kept on unplug
//! <simdir>/usb/tmp/                           staging for atomic plug/unplug renames
//! ```
//! A device appears by renaming a finished directory into `devices/` and disappears by
//! renaming it out, so readers and inotify watchers never see half a device.
//!
//! The host has [`SIM_BUSES`] root hubs (buses 1, 2, ...), each with device numbers 2..=127
//! (1 is the root hub itself) as on a real bus: a plug without a bus id takes the first bus
//! with a free device number, so the first 126 devices land on bus 1; within a bus numbers
//! are handed out round robin, as Linux does, so a replugged device gets a new one.

use std::path::{Path, PathBuf};

use rustix::fs::RenameFlags;

use super::model::identity;
use super::spec::{DeviceSpec, Faults};
use crate::host::{check_busid, UsbRoots};

/// The spec file in a device's sysfs directory.
pub const SPEC_FILE: &str = "sim-spec.toml";
/// The run-time fault file in a device's sysfs directory.
pub const FAULTS_FILE: &str = "sim-faults.toml";
/// A token unique to one plug of a device: an opened device that finds a different token (or
/// none) knows it was unplugged, even if the same bus id and device number came back.
pub const INSTANCE_FILE: &str = "sim-instance";
/// How many buses (root hubs) the simulated host has: four xHCI controllers' worth, each
/// with a USB 2 and a USB 3 root hub.
pub const SIM_BUSES: u16 = 8;
/// Device numbers a bus hands out (1 is its root hub).
const DEVNUMS: std::ops::RangeInclusive<u16> = 2..=127;
/// In a bus's device-node directory: the device number to try first on the next plug.
const NEXT_FILE: &str = "next-devnum";
/// Root-hub ports tried for a plug without a bus id.
const PORTS: std::ops::RangeInclusive<u16> = 1..=127;

/// Why plug/unplug/set_faults failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bus id {0:?} is invalid or not on a simulated bus (1..={SIM_BUSES})")]
    BadBusid(String),
    #[error("bus id {0} is already in use")]
    BusidTaken(String),
    #[error("no free port or device number on any of the {SIM_BUSES} simulated buses")]
    Full,
    #[error("no simulated device {0}")]
    NotPlugged(String),
    #[error("{path}: {source}")]
    Spec {
        path: PathBuf,
        source: toml::de::Error,
    },
}

fn io<T>(what: &'static str, path: &Path, r: std::io::Result<T>) -> Result<T, BusError> {
    r.map_err(|source| BusError::Io {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// `<simdir>/usb`.
pub fn usb_dir(simdir: &Path) -> PathBuf {
    simdir.join("usb")
}

/// Persistent state directory of the device with `serial`.
pub fn state_dir(simdir: &Path, serial: &str) -> PathBuf {
    usb_dir(simdir).join("state").join(serial)
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{prefix}.{}.{nanos}", std::process::id())
}

/// Reads a device's spec (and its run-time faults, if set) from its sysfs directory.
pub fn read_spec(sysdir: &Path) -> Result<DeviceSpec, BusError> {
    let path = sysdir.join(SPEC_FILE);
    let text = io("reading", &path, std::fs::read_to_string(&path))?;
    let mut spec =
        DeviceSpec::from_toml(&text).map_err(|source| BusError::Spec { path, source })?;
    if let Some(f) = read_faults(sysdir)? {
        spec.faults = f;
    }
    Ok(spec)
}

/// The run-time faults file, if present.
pub fn read_faults(sysdir: &Path) -> Result<Option<Faults>, BusError> {
    let path = sysdir.join(FAULTS_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text)
            .map(Some)
            .map_err(|source| BusError::Spec { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(BusError::Io {
            what: "reading",
            path,
            source,
        }),
    }
}

/// Plugs a simulated device; returns its bus id ("B-P"): the one in `spec`, or the first
/// free port of the first bus with a free device number.
pub fn plug(simdir: &Path, spec: &DeviceSpec) -> Result<String, BusError> {
    let roots = UsbRoots::sim(simdir);
    let devices = roots.devices_dir();
    let tmp = usb_dir(simdir).join("tmp");
    for d in [&devices, &tmp] {
        io("creating", d, std::fs::create_dir_all(d))?;
    }
    let buses = match &spec.busid {
        Some(b) => {
            let bus = bus_of(b).ok_or_else(|| BusError::BadBusid(b.clone()))?;
            bus..=bus
        }
        None => 1..=SIM_BUSES,
    };
    for bus in buses {
        let Some((devnum, node)) = claim_devnum(&roots, bus)? else {
            continue;
        };
        let result = place(simdir, spec, &roots, (bus, devnum), &node, &tmp);
        match result {
            Err(BusError::Full) if spec.busid.is_none() => {
                let _ = std::fs::remove_file(&node);
            }
            Err(e) => {
                let _ = std::fs::remove_file(&node);
                return Err(e);
            }
            Ok(busid) => return Ok(busid),
        }
    }
    Err(BusError::Full)
}

/// The bus number of a valid simulated bus id ("B-P..."), if B is one of our buses.
fn bus_of(busid: &str) -> Option<u16> {
    check_busid(busid).ok()?;
    let bus: u16 = busid.split_once('-')?.0.parse().ok()?;
    (1..=SIM_BUSES).contains(&bus).then_some(bus)
}

/// Takes a free device number of `bus` by creating its node exclusively (concurrent plugs
/// race here); `None` when the bus has none left. As Linux's `usb_choose_address`, the
/// search starts after the number last handed out and wraps, so a device plugged again
/// gets a new number (until the bus has gone round).
fn claim_devnum(roots: &UsbRoots, bus: u16) -> Result<Option<(u16, PathBuf)>, BusError> {
    let nodes = roots.devfs.join(format!("bus/usb/{bus:03}"));
    io("creating", &nodes, std::fs::create_dir_all(&nodes))?;
    let next_file = nodes.join(NEXT_FILE);
    let next = std::fs::read_to_string(&next_file)
        .ok()
        .and_then(|s| s.trim().parse::<u16>().ok())
        .filter(|n| DEVNUMS.contains(n))
        .unwrap_or(*DEVNUMS.start());
    let order = (next..=*DEVNUMS.end()).chain(*DEVNUMS.start()..next);
    let claimed = order.into_iter().find_map(|d| {
        let node = roots.node_path(bus, d);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&node)
            .ok()
            .map(|_| (d, node))
    });
    if let Some((d, _)) = &claimed {
        let after = if d >= DEVNUMS.end() {
            *DEVNUMS.start()
        } else {
            d + 1
        };
        // Best effort: two plugs racing may start from the same number; the exclusive
        // create above still gives them different ones.
        let _ = std::fs::write(&next_file, format!("{after}\n"));
    }
    Ok(claimed)
}

fn place(
    simdir: &Path,
    spec: &DeviceSpec,
    roots: &UsbRoots,
    (bus, devnum): (u16, u16),
    node: &Path,
    tmp: &Path,
) -> Result<String, BusError> {
    let candidates: Vec<String> = match &spec.busid {
        Some(b) => vec![b.clone()],
        None => PORTS.map(|p| format!("{bus}-{p}")).collect(),
    };
    for busid in candidates {
        let target = roots.devices_dir().join(&busid);
        if target.exists() {
            continue;
        }
        let mut spec = spec.clone();
        spec.busid = Some(busid.clone());
        let serial = spec
            .serial
            .get_or_insert_with(|| format!("SIM{}", busid.replace(['-', '.'], "")))
            .clone();
        let staging = tmp.join(unique(&busid));
        write_tree(&staging, &spec, &serial, (bus, devnum))?;
        let state = state_dir(simdir, &serial);
        io("creating", &state, std::fs::create_dir_all(&state))?;
        io("writing", node, std::fs::write(node, format!("{busid}\n")))?;
        match rustix::fs::renameat_with(
            rustix::fs::CWD,
            &staging,
            rustix::fs::CWD,
            &target,
            RenameFlags::NOREPLACE,
        ) {
            Ok(()) => {
                tracing::info!(busid, devnum, "simulated device plugged");
                return Ok(busid);
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                if e != rustix::io::Errno::EXIST && e != rustix::io::Errno::NOTEMPTY {
                    return io("renaming into", &target, Err(e.into()));
                }
            }
        }
    }
    match &spec.busid {
        Some(b) => Err(BusError::BusidTaken(b.clone())),
        None => Err(BusError::Full),
    }
}

fn write_tree(
    dir: &Path,
    spec: &DeviceSpec,
    serial: &str,
    (bus, devnum): (u16, u16),
) -> Result<(), BusError> {
    io("creating", dir, std::fs::create_dir_all(dir))?;
    let id = identity(spec, serial);
    let d = &id.descriptors.device;
    let cfg = id.descriptors.configs.first();
    let busid = spec.busid.as_deref().unwrap_or_default();
    let attrs: Vec<(&str, String)> = vec![
        ("busnum", bus.to_string()),
        ("devnum", devnum.to_string()),
        (
            "devpath",
            busid.split_once('-').map_or("", |p| p.1).to_string(),
        ),
        ("speed", id.speed.to_sysfs().to_string()),
        (
            "version",
            format!("{:2x}.{:02x}", d.bcd_usb >> 8, d.bcd_usb & 0xff),
        ),
        ("bDeviceClass", format!("{:02x}", d.class)),
        ("bDeviceSubClass", format!("{:02x}", d.subclass)),
        ("bDeviceProtocol", format!("{:02x}", d.protocol)),
        ("bMaxPacketSize0", d.max_packet_size0.to_string()),
        ("idVendor", format!("{:04x}", d.id_vendor)),
        ("idProduct", format!("{:04x}", d.id_product)),
        ("bcdDevice", format!("{:04x}", d.bcd_device)),
        ("bNumConfigurations", d.num_configurations.to_string()),
        (
            "bConfigurationValue",
            cfg.map_or(String::new(), |c| c.value.to_string()),
        ),
        (
            "bNumInterfaces",
            cfg.map_or(String::new(), |c| format!("{:2}", c.num_interfaces)),
        ),
        (
            "manufacturer",
            id.strings.first().cloned().unwrap_or_default(),
        ),
        ("product", id.strings.get(1).cloned().unwrap_or_default()),
        ("serial", serial.to_string()),
        (INSTANCE_FILE, unique(busid)),
    ];
    for (name, value) in attrs {
        let p = dir.join(name);
        io("writing", &p, std::fs::write(&p, format!("{value}\n")))?;
    }
    let p = dir.join("descriptors");
    io("writing", &p, std::fs::write(&p, id.descriptors.to_bytes()))?;
    let p = dir.join(SPEC_FILE);
    io("writing", &p, std::fs::write(&p, spec.to_toml()))
}

/// Unplugs a simulated device. A backend that has it open sees it go within ~20 ms: its
/// in-flight URBs complete with -ESHUTDOWN and later submits fail. Persistent state is kept.
pub fn unplug(simdir: &Path, busid: &str) -> Result<(), BusError> {
    check_busid(busid).map_err(|_| BusError::BadBusid(busid.to_string()))?;
    let roots = UsbRoots::sim(simdir);
    let src = roots.devices_dir().join(busid);
    let tmp = usb_dir(simdir).join("tmp");
    io("creating", &tmp, std::fs::create_dir_all(&tmp))?;
    let gone = tmp.join(unique(&format!("gone-{busid}")));
    match std::fs::rename(&src, &gone) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(BusError::NotPlugged(busid.to_string()))
        }
        Err(e) => return io("renaming", &src, Err(e)),
    }
    let attr = |name: &str| {
        std::fs::read_to_string(gone.join(name))
            .ok()
            .and_then(|s| s.trim().parse::<u16>().ok())
    };
    if let (Some(bus), Some(devnum)) = (attr("busnum"), attr("devnum")) {
        let _ = std::fs::remove_file(roots.node_path(bus, devnum));
    }
    let _ = std::fs::remove_dir_all(&gone);
    tracing::info!(busid, "simulated device unplugged");
    Ok(())
}

/// Replaces a plugged device's faults at run time (atomically; the owning backend applies
/// them within ~20 ms, restarting the fault counters and halting `stall` endpoints).
pub fn set_faults(simdir: &Path, busid: &str, faults: &Faults) -> Result<(), BusError> {
    check_busid(busid).map_err(|_| BusError::BadBusid(busid.to_string()))?;
    let dir = UsbRoots::sim(simdir).devices_dir().join(busid);
    if !dir.is_dir() {
        return Err(BusError::NotPlugged(busid.to_string()));
    }
    let tmp = dir.join(unique(".faults"));
    let text = toml::to_string(faults).unwrap_or_default();
    io("writing", &tmp, std::fs::write(&tmp, text))?;
    io(
        "renaming",
        &tmp,
        std::fs::rename(&tmp, dir.join(FAULTS_FILE)),
    )
}
