//! The usual test rig: guest dom1 with one 4-port controller served by the backend in dom0,
//! a traced simulated disk on port 1, the frontend serving USB/IP; and the write-then-verify
//! run every data test does.

use std::net::SocketAddr;
use std::time::Instant;

use pvusb_backend::sim::{DeviceSpec, Faults, ModelSpec};
use xenstore_cfg::vusb::VusbId;

use crate::devtrace;
use crate::platform::Platform;
use crate::storage::{Chaos, Disk, PassSpec, RunError, Stats, BLOCK};

/// A running stack with one disk.
#[derive(Debug)]
pub struct Rig {
    /// The platform (processes die with it).
    pub p: Platform,
    /// dom1's controller.
    pub id: VusbId,
    /// The disk's bus id.
    pub busid: String,
    /// The frontend's USB/IP address.
    pub addr: SocketAddr,
    /// The disk's bus id as the frontend exports it (controller 0 port 1).
    pub usbip_busid: String,
}

/// Starts the rig with a disk of `disk_bytes`.
pub fn rig(disk_bytes: u64) -> Rig {
    rig_with_faults(disk_bytes, Faults::default())
}

/// Starts the rig with a disk of `disk_bytes` that has `faults` from the start (counted
/// faults such as `unplug_after` count from its first URB).
pub fn rig_with_faults(disk_bytes: u64, faults: Faults) -> Rig {
    rig_configured(disk_bytes, faults, "")
}

/// The rig with the stock protocol: the backend does not offer persistent grants, so the
/// guest's data pages go by grant copy (what Linux xen-hcd gets).
pub fn rig_stock(disk_bytes: u64) -> Rig {
    rig_configured(
        disk_bytes,
        Faults::default(),
        "feature-persistent = false\n",
    )
}

/// The rig with the backend started with `config` (TOML; empty for the defaults).
fn rig_configured(disk_bytes: u64, faults: Faults, config: &str) -> Rig {
    let mut p = Platform::new(&[1]);
    let mut spec = DeviceSpec::new(ModelSpec::Storage {
        size_bytes: disk_bytes,
    });
    spec.faults = faults;
    let busid = p.plug(spec);
    let id = p.add_controller(1, 0, 4);
    p.assign(&id, 1, Some(&busid));
    p.start_backend_with(config);
    let addr = p.start_frontend(1);
    Rig {
        p,
        id,
        busid,
        addr,
        usbip_busid: "1-1".into(),
    }
}

impl Rig {
    /// Imports and opens the disk.
    pub fn disk(&self) -> Disk {
        let logs = || self.p.logs();
        match Disk::open(self.addr, &self.usbip_busid, logs) {
            Ok(d) => d,
            Err(e) => panic!("opening the disk: {e:?}\n{}", self.p.logs()),
        }
    }

    /// Checks the device trace against the guest's submissions (IN records by content
    /// unless `faults` desynchronised the device); returns records matched.
    pub fn check_device_order(&self, disk: &Disk, faults: bool) -> usize {
        let records = devtrace::read(&self.p.trace_path(&self.busid));
        assert!(!records.is_empty(), "the device trace is empty");
        devtrace::check_order(&records, &disk.submitted, !faults)
    }
}

/// Writes the pattern over `bytes` from LBA 0 and reads it back, `window` commands of
/// `chunk` blocks in flight. Prints and returns the stats.
pub fn write_verify(
    disk: &mut Disk,
    bytes: u64,
    chunk: u32,
    window: usize,
    seed: u8,
    mut chaos: Option<&mut Chaos>,
    what: &str,
) -> Result<Stats, RunError> {
    let blocks = bytes / u64::from(BLOCK);
    let mut stats = Stats::default();
    let t0 = Instant::now();
    let mut spec = PassSpec {
        verify: false,
        start: 0,
        count: blocks,
        chunk,
        window,
        seed,
    };
    disk.pass(&spec, chaos.as_deref_mut(), &mut stats)?;
    let tw = t0.elapsed();
    let t1 = Instant::now();
    spec.verify = true;
    disk.pass(&spec, chaos, &mut stats)?;
    let tr = t1.elapsed();
    let l = &disk.c.ledger;
    eprintln!(
        "{what}: {} MiB written in {:.1?} ({:.0} MB/s), verified in {:.1?} ({:.0} MB/s); \
         {} commands, {} recoveries, {} miscompares; URBs: {} submitted, {} ok, {} failed, \
         {} cancelled, {} unlinks sent, {} dropped at close",
        bytes >> 20,
        tw,
        bytes as f64 / 1e6 / tw.as_secs_f64(),
        tr,
        bytes as f64 / 1e6 / tr.as_secs_f64(),
        stats.commands,
        stats.recoveries,
        stats.miscompares,
        l.submitted,
        l.ok,
        l.failed,
        l.cancelled,
        l.unlinks,
        l.dropped
    );
    Ok(stats)
}
