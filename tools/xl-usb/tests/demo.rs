//! The whole stack as separate processes: `xl-usb sim up/plug/status/down` and
//! `xl-usb demo` (xenstored, the broker, pvusb-backend and pvusb-frontend, with the
//! guest-side mass-storage client writing and verifying a disk through them).

mod common;

use common::{stderr, stdout};

fn xl() -> assert_cmd::Command {
    let mut c = assert_cmd::Command::cargo_bin("xl-usb").unwrap();
    c.env_remove("PVUSB_SIM")
        .env_remove("RUST_LOG")
        .env("PVUSB_USB_IDS", "/nonexistent");
    c
}

#[test]
fn demo_writes_verifies_unplugs_and_cleans_up() {
    common::ensure_platform_binaries();
    let dir = tempfile::tempdir().unwrap();
    let sim = dir.path().join("sim");
    let o = xl()
        .args(["demo", "--size", "2M", "--dir"])
        .arg(&sim)
        .timeout(std::time::Duration::from_secs(80))
        .output()
        .unwrap();
    let out = stdout(&o);
    assert!(o.status.success(), "demo failed:\n{out}\n{}", stderr(&o));
    for want in [
        "[1/7] platform up in",
        "[3/7] xl-usb usbdev-attach guest1 hostbus=1 hostaddr=2 -> controller 0 port 1",
        "  Port 1: Bus 001 Device 002",
        "2097152 bytes verified",
        "[6/7] hot-unplugged 1-1: guest1 saw it after",
        "[7/7] usbdev-detach, usbctrl-detach (backend closed it), platform stopped",
        "errors 0",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    // Everything stopped: no pid files, no state file.
    assert!(!sim.join("sim.json").exists());
    assert_eq!(std::fs::read_dir(sim.join("run")).unwrap().count(), 0);
}

#[test]
fn sim_up_plug_status_down() {
    common::ensure_platform_binaries();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap().to_owned();
    let o = xl()
        .args(["sim", "up", "--dir", &d, "--guests", "guest1,guest2"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let up = stdout(&o);
    for p in ["xenstored", "simhyp", "backend", "frontend-1", "frontend-2"] {
        assert!(up.contains(p), "{p} missing from:\n{up}");
    }
    let o = xl().args(["sim", "up", "--dir", &d]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("already runs in"), "{}", stderr(&o));

    let o = xl()
        .args(["sim", "plug", "--dir", &d, "storage:1M", "serial=S1"])
        .output()
        .unwrap();
    assert_eq!(
        stdout(&o),
        "1-1 hostbus=1 hostaddr=2 1209:0002\n",
        "{}",
        stderr(&o)
    );
    // Every other command works against it unchanged, through --sim or $PVUSB_SIM.
    xl().env("PVUSB_SIM", &d)
        .args(["usbdev-attach", "guest2", "hostbus=1", "hostaddr=2"])
        .assert()
        .success();
    let list = stdout(
        &xl()
            .args(["--sim", &d, "usb-list", "guest2"])
            .output()
            .unwrap(),
    );
    assert!(list.contains("  Port 1: Bus 001 Device 002"), "{list}");
    let o = xl().args(["sim", "status", "--dir", &d]).output().unwrap();
    assert!(o.status.success(), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("device 1-1 Bus 001 Device 002"),
        "{}",
        stdout(&o)
    );
    let v: serde_json::Value = serde_json::from_slice(
        &xl()
            .args(["--json", "sim", "status", "--dir", &d])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(v["guests"][1]["name"], "guest2");
    assert!(
        v["processes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["running"] == true),
        "{v}"
    );
    xl().args(["sim", "unplug", "--dir", &d, "1-1"])
        .assert()
        .success();
    let o = xl()
        .args(["sim", "unplug", "--dir", &d, "1-1"])
        .output()
        .unwrap();
    assert_eq!(
        stderr(&o),
        format!("xl-usb: unplugging 1-1 in {d}: no simulated device 1-1\n")
    );

    let o = xl().args(["sim", "down", "--dir", &d]).output().unwrap();
    assert_eq!(
        stdout(&o),
        "stopped frontend-1, frontend-2, backend, simhyp, xenstored\n",
        "{}",
        stderr(&o)
    );
    let o = xl().args(["sim", "down", "--dir", &d]).output().unwrap();
    assert_eq!(stderr(&o), format!("xl-usb: nothing is running in {d}\n"));
}

#[test]
fn missing_binaries_are_named() {
    // A copy of xl-usb alone in a directory, with an empty PATH: nothing to find.
    let bin = tempfile::tempdir().unwrap();
    let exe = bin.path().join("xl-usb");
    std::fs::copy(assert_cmd::cargo::cargo_bin("xl-usb"), &exe).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(&exe)
        .args(["sim", "up", "--dir"])
        .arg(dir.path())
        .env("PATH", "/nonexistent")
        .env_remove("PVUSB_BIN_DIR")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.starts_with("xl-usb: cannot find the `pvusb-xenstored` binary next to "),
        "{err}"
    );
    assert!(err.contains("cargo build -p xenstore-cfg"), "{err}");
}

#[test]
fn direct_baseline_runs_without_the_stack() {
    let o = xl()
        .args(["demo", "--direct", "--size", "1M", "--window", "2"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("Summary (direct): 1 MiB written and read back, verified;"),
        "{out}"
    );
    assert!(out.contains("errors 0"), "{out}");
}
