//! The cross-process harness: an embedded xenstored and grant broker in this process, a
//! real `pvusb-backend --platform sim` child, and a ring-level frontend playing guest
//! domain N (grants through the broker, rings with `pvusb_ring`'s front halves).
#![allow(dead_code)]

mod guest;

pub use guest::*;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pvusb_backend::sim::{DeviceSpec, ModelSpec};
use pvusb_xen::sim::{Broker, Counters};
use pvusb_xen::DomId;
use xenstore_cfg::daemon::DaemonHandle;
use xenstore_cfg::vusb::{self, ControllerConfig, CtrlType, UsbVer, VusbId};
use xenstore_cfg::xenbus::{self, XenbusState};
use xenstore_cfg::Xs;

pub const T: Duration = Duration::from_secs(10);

/// Waits until `cond` holds.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// xenstored + broker + the backend process, in one temp directory.
pub struct Harness {
    pub backend: Option<Child>,
    pub broker: Broker,
    pub xenstored: Option<DaemonHandle>,
    pub xs: Xs,
    pub dir: tempfile::TempDir,
}

impl Harness {
    /// Starts xenstored and the broker (releasing dead domains in xenstored, as
    /// `pvusb-simhyp` does), creates guest domains `guests`, and starts the backend.
    pub fn new(guests: &[u16]) -> Harness {
        Self::with_config(guests, None)
    }

    pub fn with_config(guests: &[u16], config: Option<&str>) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let xenstored = xenstore_cfg::daemon::spawn(dir.path()).unwrap();
        let socket = xenstored.socket();
        let hook = Box::new(move |d: DomId| {
            if let Ok(mut xs) = Xs::connect(&socket) {
                let _ = xs.release(d.0);
            }
        });
        let broker = Broker::start_with_hook(dir.path(), Some(hook)).unwrap();
        let mut xs = Xs::connect(xenstored.socket()).unwrap();
        for &g in guests {
            broker.create_domain(DomId(g)).unwrap();
            xs.introduce(g, 0, 0).unwrap();
        }
        let mut h = Harness {
            backend: None,
            broker,
            xenstored: Some(xenstored),
            xs,
            dir,
        };
        h.start_backend(config);
        h
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn start_backend(&mut self, config: Option<&str>) {
        let log = std::fs::File::create(self.dir.path().join("backend.log")).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pvusb-backend"));
        cmd.args(["--platform", "sim", "--sim-dir"])
            .arg(self.dir.path())
            .args(["--domid", "0", "-v"])
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(text) = config {
            let p: PathBuf = self.dir.path().join("backend.toml");
            std::fs::write(&p, text).unwrap();
            cmd.arg("--config").arg(p);
        }
        self.backend = Some(cmd.spawn().unwrap());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("backend.log")).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the backend to exit; returns whether it exited cleanly.
    pub fn stop_backend(&mut self) -> bool {
        let Some(mut child) = self.backend.take() else {
            return true;
        };
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + T;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Writes a libxl-style controller for guest `fe`.
    pub fn add_controller(&mut self, fe: u16, devid: u32, usb_ver: UsbVer, ports: u8) -> VusbId {
        let id = VusbId { fe, be: 0, devid };
        vusb::add_controller(
            &mut self.xs,
            &ControllerConfig {
                id,
                usb_ver,
                num_ports: ports,
                ctrl_type: CtrlType::Pv,
            },
        )
        .unwrap();
        id
    }

    pub fn plug(&self, model: ModelSpec) -> String {
        pvusb_backend::sim::plug(self.path(), &DeviceSpec::new(model)).unwrap()
    }

    pub fn plug_spec(&self, spec: &DeviceSpec) -> String {
        pvusb_backend::sim::plug(self.path(), spec).unwrap()
    }

    pub fn assign(&mut self, id: &VusbId, port: u8, busid: Option<&str>) {
        vusb::set_port(&mut self.xs, id, port, busid).unwrap();
    }

    pub fn backend_state(&mut self, id: &VusbId) -> XenbusState {
        xenbus::read_state(&mut self.xs, &id.backend_dir()).unwrap()
    }

    pub fn wait_backend_state(&mut self, id: &VusbId, want: XenbusState) {
        let dir = id.backend_dir();
        let got = xenbus::wait_state(&mut self.xs, &dir, T, |s| s == want);
        assert_eq!(got.ok(), Some(want), "backend state; log:\n{}", self.log());
    }

    pub fn counters(&self) -> Counters {
        self.broker.counters()
    }

    /// Whether the simulated device node is claimed (flocked) by some process.
    pub fn is_claimed(&self, busid: &str) -> bool {
        let roots = pvusb_backend::host::UsbRoots::sim(self.path());
        let sys = roots.devices_dir().join(busid);
        let num = |n: &str| -> u16 {
            std::fs::read_to_string(sys.join(n))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        let f = std::fs::File::open(roots.node_path(num("busnum"), num("devnum"))).unwrap();
        rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(mut c) = self.backend.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
