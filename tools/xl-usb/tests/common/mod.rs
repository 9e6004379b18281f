//! Test platform: an embedded xenstored in a tempdir with two named guests, a simulated
//! USB bus in the same directory, a state-only fake backend (like the one that recorded
//! shared/reference/xenstore-vusb-dump.txt), and helpers to run `xl-usb` against it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use assert_cmd::Command;
use pvusb_backend::sim::{self, DeviceSpec, ModelSpec};
use xenstore_cfg::daemon::{self, DaemonHandle};
use xenstore_cfg::xenbus::{read_state, XenbusState};
use xenstore_cfg::{Xs, XsOps};

pub struct Sim {
    pub dir: tempfile::TempDir,
    pub daemon: Option<DaemonHandle>,
    backend: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

impl Sim {
    /// xenstored with dom1 "guest1" and dom2 "guest2" (introduced and named as xl does).
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let daemon = daemon::spawn(dir.path()).unwrap();
        let mut xs = Xs::connect(daemon::control_socket(dir.path())).unwrap();
        for (id, name) in [(1u16, "guest1"), (2, "guest2")] {
            xs.introduce(id, 0, 0).unwrap();
            xs.write(&format!("/local/domain/{id}/name"), name.as_bytes())
                .unwrap();
        }
        Sim {
            dir,
            daemon: Some(daemon),
            backend: None,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn xs(&self) -> Xs {
        Xs::connect(daemon::control_socket(self.path())).unwrap()
    }

    /// `xl-usb --sim <dir> --timeout 1 ...`
    pub fn xl(&self, args: &[&str]) -> Command {
        let mut c = Command::cargo_bin("xl-usb").unwrap();
        c.arg("--sim")
            .arg(self.path())
            .args(["--timeout", "1"])
            .args(args);
        c.env("PVUSB_USB_IDS", "/nonexistent")
            .env_remove("PVUSB_SIM")
            .env_remove("RUST_LOG");
        c
    }

    /// `xl-usb --json ...`: its stdout as JSON.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let o = self.xl(&[&["--json"], args].concat()).output().unwrap();
        serde_json::from_slice(&o.stdout).unwrap()
    }

    pub fn plug_stick(&self, serial: &str) -> String {
        let mut spec = DeviceSpec::new(ModelSpec::Storage {
            size_bytes: 1 << 20,
        });
        spec.serial = Some(serial.into());
        sim::plug(self.path(), &spec).unwrap()
    }

    /// A backend that only drives its xenbus state (1→2, 5→6) for every vusb device of
    /// every backend domain.
    pub fn start_fake_backend(&mut self) {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let mut xs = self.xs();
        let t = std::thread::spawn(move || {
            xs.watch("/local/domain", "fakebe").unwrap();
            while !flag.load(Ordering::SeqCst) {
                let _ = xs.wait_event(Some(Duration::from_millis(50)));
                while xs.poll_event().is_some() {}
                for be in xs.directory("/local/domain").unwrap_or_default() {
                    let root = format!("/local/domain/{be}/backend/vusb");
                    for fe in xs.directory(&root).unwrap_or_default() {
                        for devid in xs.directory(&format!("{root}/{fe}")).unwrap_or_default() {
                            let dir = format!("{root}/{fe}/{devid}");
                            let next = match read_state(&mut xs, &dir) {
                                Ok(XenbusState::Initialising) => XenbusState::InitWait,
                                Ok(XenbusState::Closing) => XenbusState::Closed,
                                _ => continue,
                            };
                            let _ = xs.write(&format!("{dir}/state"), next.to_string().as_bytes());
                        }
                    }
                }
            }
        });
        self.backend = Some((stop, t));
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Some((stop, t)) = self.backend.take() {
            stop.store(true, Ordering::SeqCst);
            let _ = t.join();
        }
    }
}

/// `xenstore-ls -fp` lines of the subtrees, sorted like the reference dump.
pub fn tree(xs: &mut Xs, roots: &[&str]) -> String {
    fn walk(xs: &mut Xs, root: &str, out: &mut Vec<String>) {
        for child in xs.directory(root).unwrap_or_default() {
            let path = format!("{root}/{child}");
            let value = String::from_utf8_lossy(&xs.read(&path).unwrap()).into_owned();
            let perms = xs.get_perms(&path).unwrap();
            out.push(format!("{path} = {value:?}   ({perms})"));
            walk(xs, &path, out);
        }
    }
    let mut lines = Vec::new();
    for r in roots {
        walk(xs, r, &mut lines);
    }
    lines.sort();
    lines.join("\n")
}

/// The vusb-relevant part of the store: dom0's backend, the guests' device dirs, /libxl.
pub fn vusb_tree(xs: &mut Xs) -> String {
    tree(
        xs,
        &[
            "/local/domain/0/backend",
            "/local/domain/2/backend",
            "/local/domain/1/device",
            "/local/domain/2/device",
            "/libxl",
        ],
    )
}

pub fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn bin_dir() -> PathBuf {
    assert_cmd::cargo::cargo_bin("xl-usb")
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Builds the platform's other binaries (xenstored, broker, backend, frontend) into the
/// same target directory as xl-usb, once per test process: cargo builds only this
/// package's binaries for its tests.
pub fn ensure_platform_binaries() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let dir = bin_dir();
        let all = [
            "pvusb-xenstored",
            "pvusb-simhyp",
            "pvusb-backend",
            "pvusb-frontend",
        ];
        if std::env::var_os("XL_USB_TEST_NO_BUILD").is_some()
            && all.iter().all(|b| dir.join(b).exists())
        {
            return;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
        let target = dir.parent().unwrap().to_path_buf();
        let profile_release = dir.file_name().is_some_and(|n| n == "release");
        let mut c = std::process::Command::new(cargo);
        c.arg("build")
            .arg("--manifest-path")
            .arg(manifest)
            .arg("--target-dir")
            .arg(target);
        for p in [
            "xenstore-cfg",
            "pvusb-xen",
            "pvusb-backend",
            "pvusb-frontend",
        ] {
            c.args(["-p", p]);
        }
        c.arg("--bins");
        if profile_release {
            c.arg("--release");
        }
        let out = c.output().expect("running cargo build");
        assert!(
            out.status.success(),
            "building the platform binaries failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for b in all {
            assert!(
                dir.join(b).exists(),
                "{b} was not built into {}",
                dir.display()
            );
        }
    });
}
