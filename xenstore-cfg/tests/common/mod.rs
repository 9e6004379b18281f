//! Shared helpers for the integration tests: a daemon in a tempdir and the C tools.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use xenstore_cfg::daemon::{self, DaemonHandle};
use xenstore_cfg::vusb::{self, ControllerConfig, CtrlType, UsbVer, VusbId};
use xenstore_cfg::Xs;

pub struct Sim {
    pub dir: tempfile::TempDir,
    pub daemon: Option<DaemonHandle>,
}

impl Sim {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let daemon = daemon::spawn(dir.path()).unwrap();
        Self {
            dir,
            daemon: Some(daemon),
        }
    }
    pub fn socket(&self) -> PathBuf {
        daemon::control_socket(self.dir.path())
    }
    pub fn domain_socket(&self, domid: u16) -> PathBuf {
        daemon::domain_socket(self.dir.path(), domid)
    }
    pub fn dom0(&self) -> Xs {
        Xs::connect(self.socket()).unwrap()
    }
    pub fn domain(&self, domid: u16) -> Xs {
        Xs::connect(self.domain_socket(domid)).unwrap()
    }

    /// Introduces dom1 and gives it a USB 2.0 PV controller 0 with `num_ports` ports served
    /// by dom0, as `xl usbctrl-attach` does; returns dom0's connection and the id.
    pub fn dom1_controller(&self, num_ports: u8) -> (Xs, VusbId) {
        let mut xs = self.dom0();
        xs.introduce(1, 0, 0).unwrap();
        let id = VusbId {
            fe: 1,
            be: 0,
            devid: 0,
        };
        let cfg = ControllerConfig {
            id,
            usb_ver: UsbVer::Usb20,
            num_ports,
            ctrl_type: CtrlType::Pv,
        };
        vusb::add_controller(&mut xs, &cfg).unwrap();
        (xs, id)
    }
}

/// Path of a Debian tool; panics with the package to install (ci/test.sh installs it).
pub fn tool(name: &str, package: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/lib/xen-4.17/bin", "/usr/sbin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} not found: apt-get install {package} (ci/test.sh does)");
}

/// Runs a libxenstore C tool against `socket`.
pub fn xs_tool(socket: &Path, name: &str, args: &[&str]) -> Output {
    Command::new(tool(name, "xenstore-utils"))
        .args(args)
        .env("XENSTORED_PATH", socket)
        .env_remove("XENSTORED_RUNDIR")
        .output()
        .unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Lines of `xenstore-ls -fp` output, sorted (the reference dump is sorted; xenstored
/// itself lists children in creation order).
pub fn sorted_lines(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s.lines().map(str::to_owned).collect();
    v.sort();
    v
}
