//! Test harness: a simulated Xen host in a tempdir (embedded xenstored + grant broker),
//! the frontend as a child process, and a ring-level fake backend for protocol tests.
#![allow(dead_code)]

pub mod bot;
pub mod client;
pub mod fakebe;
pub mod pypi;
pub mod stack;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pvusb_xen::sim::Broker;
use pvusb_xen::DomId;
use xenstore_cfg::daemon::DaemonHandle;
use xenstore_cfg::vusb::{add_controller, ControllerConfig, CtrlType, UsbVer, VusbId};
use xenstore_cfg::Xs;

/// One simulated host.
pub struct Sim {
    pub dir: tempfile::TempDir,
    pub xenstored: DaemonHandle,
    pub broker: Broker,
}

impl Sim {
    pub fn new() -> Sim {
        let dir = tempfile::tempdir().unwrap();
        let xenstored = xenstore_cfg::daemon::spawn(dir.path()).unwrap();
        let hook = pvusb_xen::sim::release::xenstore_hook(dir.path());
        let broker = Broker::start_with_hook(dir.path(), Some(hook)).unwrap();
        Sim {
            dir,
            xenstored,
            broker,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn xs(&self) -> Xs {
        Xs::connect(self.path().join("socket")).unwrap()
    }

    /// Creates a domain at the broker and introduces it to xenstored.
    pub fn create_domain(&self, domid: u16) {
        self.broker.create_domain(DomId(domid)).unwrap();
        self.xs().introduce(domid, 0, 0).unwrap();
    }

    /// A vusb controller `devid` of `fe` served by `be`, as libxl writes it.
    pub fn add_controller(&self, fe: u16, be: u16, devid: u32, num_ports: u8) -> VusbId {
        let id = VusbId { fe, be, devid };
        let cfg = ControllerConfig {
            id,
            usb_ver: UsbVer::Usb20,
            num_ports,
            ctrl_type: CtrlType::Pv,
        };
        add_controller(&mut self.xs(), &cfg).unwrap();
        id
    }
}

/// A free TCP port on localhost (racy, but good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn log_file(dir: &Path, name: &str) -> std::fs::File {
    std::fs::File::create(dir.join(format!("{name}.log"))).unwrap()
}

/// Starts `pvusb-frontend` as domain `domid` with `--usbip-listen 127.0.0.1:<port>`.
pub fn spawn_frontend(sim: &Sim, domid: u16, port: u16, extra: &[&str]) -> Proc {
    let child = Command::new(env!("CARGO_BIN_EXE_pvusb-frontend"))
        .args(["--platform", "sim", "--sim-dir"])
        .arg(sim.path())
        .args(["--domid", &domid.to_string()])
        .args(["--usbip-listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(log_file(sim.path(), "frontend"))
        .spawn()
        .unwrap();
    Proc(child)
}

/// Waits until `f` returns `Some`, or panics after `secs` with `what`.
pub fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the USB/IP server accepts connections.
pub fn wait_listening(port: u16) {
    wait_for(10, "the frontend's USB/IP listener", || {
        TcpStream::connect(("127.0.0.1", port)).ok()
    });
}

/// The frontend's log, for failure messages.
pub fn frontend_log(sim: &Sim) -> String {
    std::fs::read_to_string(sim.path().join("frontend.log")).unwrap_or_default()
}

/// Path of a workspace binary built by `cargo build` (tests of this package do not build
/// other packages' binaries).
pub fn workspace_bin(name: &str) -> Option<PathBuf> {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_pvusb-frontend"));
    let p = exe.parent()?.join(name);
    p.exists().then_some(p)
}

/// The `pvusb-backend` binary: `target/<profile>/pvusb-backend` next to ours. This
/// package's tests cannot depend on another package's binary, so if it is missing it is
/// built once with `cargo build -p pvusb-backend` (same profile and target dir).
pub fn backend_bin() -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        if workspace_bin("pvusb-backend").is_some() {
            return;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let exe = PathBuf::from(env!("CARGO_BIN_EXE_pvusb-frontend"));
        let release = exe.parent().is_some_and(|d| d.ends_with("release"));
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "pvusb-backend", "--bin", "pvusb-backend"]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("running cargo build -p pvusb-backend");
        assert!(status.success(), "cargo build -p pvusb-backend failed");
    });
    workspace_bin("pvusb-backend")
        .expect("target/<profile>/pvusb-backend missing: run `cargo build -p pvusb-backend`")
}

/// Starts the real backend as `domid` on the simulated platform.
pub fn spawn_backend(sim: &Sim, domid: u16, log: &str) -> Proc {
    let child = Command::new(backend_bin())
        .args(["--platform", "sim", "--sim-dir"])
        .arg(sim.path())
        .args(["--domid", &domid.to_string(), "-v"])
        .stdout(Stdio::null())
        .stderr(log_file(sim.path(), log))
        .spawn()
        .unwrap();
    Proc(child)
}

/// The backend's log, for failure messages.
pub fn backend_log(sim: &Sim, log: &str) -> String {
    std::fs::read_to_string(sim.path().join(format!("{log}.log"))).unwrap_or_default()
}

/// vhci_hcd's `status` with port 0 busy and ports 1-3 (hs) and 4-7 (ss) free.
const VHCI_STATUS: &str = "\
hub port sta spd dev      sockfd local_busid
hs  0000 006 003 00010002 000003 3-2
hs  0001 004 000 00000000 000000 0-0
hs  0002 004 000 00000000 000000 0-0
hs  0003 004 000 00000000 000000 0-0
ss  0004 004 000 00000000 000000 0-0
ss  0005 004 000 00000000 000000 0-0
ss  0006 004 000 00000000 000000 0-0
ss  0007 004 000 00000000 000000 0-0
";

/// A directory shaped like vhci_hcd's sysfs files (`nports`, `status`, and empty
/// `attach`/`detach` that record the daemon's last write), for `--vhci`.
pub fn vhci_mimic(sim: &Sim) -> PathBuf {
    let vhci = sim.path().join("sys/platform/vhci_hcd.0");
    std::fs::create_dir_all(&vhci).unwrap();
    std::fs::write(vhci.join("nports"), "8\n").unwrap();
    std::fs::write(vhci.join("status"), VHCI_STATUS).unwrap();
    std::fs::write(vhci.join("attach"), "").unwrap();
    std::fs::write(vhci.join("detach"), "").unwrap();
    vhci
}
