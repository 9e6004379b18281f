//! Every xl-usb toolstack command against an embedded xenstored and a simulated USB bus,
//! with insta snapshots of the xenstore tree after each step. Compare the snapshots by eye
//! with shared/reference/xenstore-vusb-dump.txt (libxl under real Xen 4.17): same keys,
//! same values, same permissions.

mod common;

use common::{stderr, stdout, vusb_tree, Sim};
use predicates::prelude::*;

#[test]
fn controller_and_device_lifecycle_matches_libxl() {
    let mut sim = Sim::start();
    sim.start_fake_backend();
    let busid = sim.plug_stick("LIFE1");
    assert_eq!(busid, "1-1");
    let mut xs = sim.xs();

    sim.xl(&[
        "usbctrl-attach",
        "guest1",
        "type=pv",
        "version=2",
        "ports=4",
    ])
    .assert()
    .success()
    .stdout("");
    insta::assert_snapshot!("1_usbctrl_attach", vusb_tree(&mut xs));

    sim.xl(&["usbdev-attach", "guest1", "hostbus=1", "hostaddr=0x2"])
        .assert()
        .success()
        .stdout("1-1 (Bus 001 Device 002) -> guest1 (1) controller 0 port 1\n");
    insta::assert_snapshot!("2_usbdev_attach", vusb_tree(&mut xs));

    let list = sim.xl(&["usb-list", "guest1"]).output().unwrap();
    assert!(list.status.success());
    insta::assert_snapshot!("3_usb_list", stdout(&list));
    let v = sim.json(&["usb-list", "1"]);
    assert_eq!(v[0]["devid"], 0);
    assert_eq!(v[0]["port_list"][0]["busid"], "1-1");
    assert_eq!(v[0]["port_list"][0]["bus"], 1);
    assert_eq!(v[0]["port_list"][0]["device"], 2);

    sim.xl(&["usbdev-detach", "guest1", "0", "1"])
        .assert()
        .success();
    insta::assert_snapshot!("4_usbdev_detach", vusb_tree(&mut xs));

    // The documented key=value form (xl itself parses it as controller 0 port 0).
    sim.xl(&[
        "usbdev-attach",
        "guest1",
        "hostbus=1",
        "hostaddr=2",
        "controller=0",
        "port=3",
    ])
    .assert()
    .success()
    .stdout(predicate::str::contains("controller 0 port 3"));
    sim.xl(&["usbdev-detach", "guest1", "controller=0", "port=3"])
        .assert()
        .success();

    sim.xl(&["usbctrl-detach", "guest1", "0"])
        .assert()
        .success()
        .stderr("");
    insta::assert_snapshot!("5_usbctrl_detach", vusb_tree(&mut xs));
}

#[test]
fn usbdev_attach_creates_a_controller_and_fills_ports_in_order() {
    let mut sim = Sim::start();
    sim.start_fake_backend();
    let a = sim.plug_stick("AUTO1");
    let b = sim.plug_stick("AUTO2");
    sim.xl(&["usbctrl-attach", "guest1", "ports=1"])
        .assert()
        .success();
    let v = sim.json(&["usbdev-attach", "guest1", "hostbus=1", "hostaddr=2"]);
    assert_eq!(
        (
            v["busid"].as_str(),
            v["controller"].as_u64(),
            v["port"].as_u64()
        ),
        (Some(a.as_str()), Some(0), Some(1))
    );
    assert_eq!(v["created_controller"], false);
    // Controller 0 is full: a new controller 1 (8 ports, version 2) is created.
    let v = sim.json(&["usbdev-attach", "guest1", "hostbus=1", "hostaddr=3"]);
    assert_eq!(
        (
            v["busid"].as_str(),
            v["controller"].as_u64(),
            v["port"].as_u64()
        ),
        (Some(b.as_str()), Some(1), Some(1))
    );
    assert_eq!(v["created_controller"], true);
    let list = stdout(&sim.xl(&["usb-list", "guest1"]).output().unwrap());
    insta::assert_snapshot!("auto_controller_usb_list", list);
    // usbctrl-detach empties the ports first.
    sim.xl(&["usbctrl-detach", "guest1", "1"])
        .assert()
        .success();
    sim.xl(&["usbctrl-detach", "guest1", "0"])
        .assert()
        .success();
    let mut xs = sim.xs();
    assert_eq!(
        vusb_tree(&mut xs),
        "/libxl/1 = \"\"   (n0)\n/libxl/1/device = \"\"   (n0)"
    );
}

#[test]
fn driver_domain_backend() {
    let mut sim = Sim::start();
    sim.start_fake_backend();
    sim.xl(&[
        "usbctrl-attach",
        "guest1",
        "version=1",
        "ports=2",
        "backend=guest2",
    ])
    .assert()
    .success();
    let mut xs = sim.xs();
    insta::assert_snapshot!("driver_domain_usbctrl_attach", vusb_tree(&mut xs));
    // dom0 cannot see a driver domain's devices: busid= names it directly.
    sim.xl(&["usbdev-attach", "guest1", "busid=3-7", "controller=0"])
        .assert()
        .success()
        .stdout("3-7 -> guest1 (1) controller 0 port 1\n");
    assert_eq!(
        fails(&sim, &["usbdev-attach", "guest2", "busid=3-7"]),
        "xl-usb: 3-7 is already assigned to guest1 (1) controller 0 port 1"
    );
    assert_eq!(
        fails(
            &sim,
            &["usbdev-attach", "guest1", "busid=../x", "controller=0"]
        ),
        "xl-usb: no USB device ../x (see `xl-usb usb-assignable-list`)"
    );
    assert_eq!(
        fails(&sim, &["usbdev-attach", "guest1", "busid=3-7", "hostbus=1"]),
        "xl-usb: give busid= or hostbus= and hostaddr=, not both"
    );
    insta::assert_snapshot!(
        "driver_domain_usbdev_attach",
        common::tree(&mut xs, &["/local/domain/2/backend"])
    );
    let list = stdout(&sim.xl(&["usb-list", "guest1"]).output().unwrap());
    assert_eq!(
        list,
        "Devid  Type         BE  state usb-ver ports\n0      pv           2   1     1       2    \n  Port 1: 3-7 (not in this domain's sysfs)\n  Port 2:\n"
    );
    sim.xl(&["usbctrl-detach", "guest1", "0"])
        .assert()
        .success();
    assert_eq!(common::tree(&mut xs, &["/local/domain/2/backend"]), "");
}

#[test]
fn a_frontend_error_report_is_listed_and_goes_with_the_controller() {
    let mut sim = Sim::start();
    sim.start_fake_backend();
    sim.xl(&["usbctrl-attach", "guest1", "version=2", "ports=1"])
        .assert()
        .success();
    // What pvusb-frontend (or xen-hcd, with xenbus_dev_error) writes when it cannot connect.
    let mut xs = sim.xs();
    let err = "28 setting up the rings: gntalloc limit";
    xenstore_cfg::xenbus::dev_error(&mut xs, "/local/domain/1/device/vusb/0", 28, &err[3..])
        .unwrap();
    let list = stdout(&sim.xl(&["usb-list", "guest1"]).output().unwrap());
    assert!(
        list.contains(&format!("\n  Frontend error: {err}\n")),
        "{list}"
    );
    let v = sim.json(&["usb-list", "1"]);
    assert_eq!(v[0]["frontend_error"], err);
    sim.xl(&["usbctrl-detach", "guest1", "0"])
        .assert()
        .success();
    assert_eq!(
        xenstore_cfg::xenbus::read_dev_error(&mut xs, "/local/domain/1/device/vusb/0").unwrap(),
        None
    );
    assert_eq!(common::tree(&mut xs, &["/local/domain/1/error/device"]), "");
}

#[test]
fn assignable_list_shows_ids_names_and_assignment() {
    let mut sim = Sim::start();
    sim.start_fake_backend();
    sim.plug_stick("LIST1");
    let ids = sim.path().join("usb.ids");
    std::fs::write(
        &ids,
        "1209  Generic\n\t0002  pvusb simulated disk (usb.ids)\n",
    )
    .unwrap();
    let before = sim.xl(&["usb-assignable-list"]).output().unwrap();
    assert!(before.status.success(), "{}", stderr(&before));
    insta::assert_snapshot!("assignable_unassigned", stdout(&before));
    sim.xl(&["usbdev-attach", "guest2", "hostbus=1", "hostaddr=2"])
        .assert()
        .success();
    let after = sim
        .xl(&["usb-assignable-list"])
        .env("PVUSB_USB_IDS", &ids)
        .output()
        .unwrap();
    insta::assert_snapshot!("assignable_assigned_usb_ids", stdout(&after));
    let v = sim.json(&["usb-assignable-list"]);
    assert_eq!(v[0]["busid"], "1-1");
    assert_eq!(v[0]["id"], "1209:0002");
    assert_eq!(v[0]["assigned"]["domid"], 2);
    assert_eq!(v[0]["assignable"], true);
}

/// Runs a failing command and returns its one-line stderr.
fn fails(sim: &Sim, args: &[&str]) -> String {
    let o = sim.xl(args).output().unwrap();
    assert!(!o.status.success(), "{args:?} succeeded: {}", stdout(&o));
    assert_eq!(o.status.code(), Some(1), "{args:?}");
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{args:?}: not one line: {err}");
    err.trim_end().to_owned()
}

#[test]
fn every_error_is_one_line_with_a_reason() {
    let mut sim = Sim::start();
    sim.start_fake_backend();
    sim.plug_stick("ERR1");
    // A hub: bDeviceClass 9 in the simulated sysfs tree.
    let hub = sim.path().join("usb/sys/bus/usb/devices/1-9");
    std::fs::create_dir_all(&hub).unwrap();
    for (k, v) in [
        ("busnum", "1"),
        ("devnum", "90"),
        ("idVendor", "05e3"),
        ("idProduct", "0608"),
        ("bDeviceClass", "09"),
        ("speed", "480"),
    ] {
        std::fs::write(hub.join(k), format!("{v}\n")).unwrap();
    }
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["usb-list", "nosuch"], "xl-usb: unknown domain \"nosuch\""),
        (vec!["usb-list", "7"], "xl-usb: unknown domain \"7\""),
        (vec!["usbctrl-attach", "guest1", "ports"], "xl-usb: expected key=value, got \"ports\""),
        (vec!["usbctrl-attach", "guest1", "colour=red"], "xl-usb: unknown key \"colour\" (valid: type,version,ports,backend)"),
        (vec!["usbctrl-attach", "guest1", "version=3"], "xl-usb: version=\"3\": must be between 1 and 2"),
        (vec!["usbctrl-attach", "guest1", "ports=32"], "xl-usb: ports=\"32\": must be between 1 and 31"),
        (vec!["usbctrl-attach", "guest1", "ports=x"], "xl-usb: ports=\"x\": not a number"),
        (vec!["usbctrl-attach", "guest1", "type=qusb"], "xl-usb: type=\"qusb\": only type=pv is served by pvusb-backend (qusb and devicemodel are QEMU's: use xl)"),
        (vec!["usbctrl-attach", "guest1", "backend=nosuch"], "xl-usb: backend=: unknown domain \"nosuch\""),
        (vec!["usbctrl-attach", "guest1", "backend=1"], "xl-usb: backend=dom1 is the guest itself"),
        (vec!["usbctrl-detach", "guest1", "5"], "xl-usb: dom1 has no vusb controller 5"),
        (vec!["usbdev-attach", "guest1", "hostaddr=2"], "xl-usb: missing hostbus="),
        (vec!["usbdev-attach", "guest1", "hostbus=1", "hostaddr=9"], "xl-usb: no USB device at hostbus=1 hostaddr=9 (see `xl-usb usb-assignable-list`)"),
        (vec!["usbdev-attach", "guest1", "hostbus=1", "hostaddr=90"], "xl-usb: 1-9 is a USB hub (bDeviceClass 9); hubs cannot be passed through"),
        (vec!["usbdev-attach", "guest1", "hostbus=1", "hostaddr=2", "port=1"], "xl-usb: port= needs controller= (as in xl)"),
        (vec!["usbdev-attach", "guest1", "hostbus=1", "hostaddr=2", "controller=4"], "xl-usb: dom1 has no vusb controller 4"),
        (vec!["usbdev-detach", "guest1", "0", "1"], "xl-usb: guest1 (1) has no vusb controller 0"),
        (vec!["usbdev-attach", "guest1", "busid=9-9"], "xl-usb: no USB device 9-9 (see `xl-usb usb-assignable-list`)"),
        (vec!["usbdev-detach", "guest1", "controller=0"], "error"),
    ];
    for (args, want) in &cases[..cases.len() - 1] {
        assert_eq!(fails(&sim, args), *want, "{args:?}");
    }
    // clap's own usage errors are not one line, but they fail with status 2.
    sim.xl(&["usbdev-detach", "guest1", "controller=0"])
        .assert()
        .code(2);

    sim.xl(&["usbctrl-attach", "guest1", "ports=1"])
        .assert()
        .success();
    sim.xl(&["usbdev-attach", "guest1", "hostbus=1", "hostaddr=2"])
        .assert()
        .success();
    let more: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["usbdev-attach", "guest2", "hostbus=1", "hostaddr=2"],
            "xl-usb: 1-1 is already assigned to guest1 (1) controller 0 port 1",
        ),
        (
            vec![
                "usbdev-attach",
                "guest1",
                "hostbus=1",
                "hostaddr=2",
                "controller=0",
                "port=2",
            ],
            "xl-usb: 1-1 is already assigned to guest1 (1) controller 0 port 1",
        ),
        (
            vec!["usbdev-detach", "guest1", "0", "2"],
            "xl-usb: controller 0 of guest1 (1) has no port 2 (it has 1)",
        ),
        (
            vec!["usbdev-detach", "guest1", "0", "x"],
            "xl-usb: bad port \"x\"",
        ),
    ];
    for (args, want) in &more {
        assert_eq!(fails(&sim, args), *want, "{args:?}");
    }
    let other = sim.plug_stick("ERR2");
    assert_eq!(other, "1-2");
    assert_eq!(
        fails(
            &sim,
            &[
                "usbdev-attach",
                "guest1",
                "hostbus=1",
                "hostaddr=3",
                "controller=0"
            ]
        ),
        "xl-usb: no free port on controller 0 of dom1"
    );
    assert_eq!(
        fails(
            &sim,
            &[
                "usbdev-attach",
                "guest1",
                "hostbus=1",
                "hostaddr=3",
                "controller=0",
                "port=1"
            ]
        ),
        "xl-usb: port 1 of controller 0 of dom1 is in use by 1-1"
    );
    sim.xl(&["usbdev-detach", "guest1", "0", "1"])
        .assert()
        .success();
    assert_eq!(
        fails(&sim, &["usbdev-detach", "guest1", "0", "1"]),
        "xl-usb: port 1 of controller 0 of guest1 (1) is empty"
    );
}

#[test]
fn no_backend_and_no_xenstore_are_reported() {
    let sim = Sim::start(); // no fake backend
    let err = fails(&sim, &["usbctrl-attach", "guest1"]);
    assert_eq!(err, "xl-usb: controller 0 of dom1 written, but no backend in dom0 reached InitWait within 1 s (backend state 1); is pvusb-backend running there? (remove it with `xl-usb usbctrl-detach 1 0`)");
    // Like libxl, the keys stay; usbctrl-detach then force-removes them with a warning.
    let o = sim.xl(&["usbctrl-detach", "guest1", "0"]).output().unwrap();
    assert!(o.status.success());
    assert_eq!(
        stderr(&o),
        "warning: backend did not close controller 0 of guest1 (1) within 1 s (state 5); removed it anyway\n"
    );
    let mut xs = sim.xs();
    assert_eq!(
        vusb_tree(&mut xs),
        "/libxl/1 = \"\"   (n0)\n/libxl/1/device = \"\"   (n0)"
    );

    let empty = tempfile::tempdir().unwrap();
    let o = assert_cmd::Command::cargo_bin("xl-usb")
        .unwrap()
        .args(["usb-list", "guest1", "--sim"])
        .arg(empty.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.starts_with("xl-usb: cannot reach xenstored at "),
        "{err}"
    );
    assert!(err.contains("is the simulated platform up?"), "{err}");
    assert_eq!(err.lines().count(), 1);
}

#[test]
fn xenstore_refusal_is_reported() {
    let sim = Sim::start();
    // A guest's own connection may not list other domains: run xl-usb as if the control
    // socket were guest1's (on the sim platform, identity is the socket).
    let guest_dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        xenstore_cfg::daemon::domain_socket(sim.path(), 1),
        guest_dir.path().join("socket"),
    )
    .unwrap();
    let o = assert_cmd::Command::cargo_bin("xl-usb")
        .unwrap()
        .arg("--sim")
        .arg(guest_dir.path())
        .args(["--timeout", "1", "usbctrl-attach", "1"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert_eq!(err, "xl-usb: listing domains: xenstore: EACCES\n");
}

#[test]
fn host_drivers_are_recorded_and_rebound_like_libxl() {
    let mut sim = Sim::start();
    sim.start_fake_backend();
    let busid = sim.plug_stick("DRV1");
    let usb = sim.path().join("usb/sys/bus/usb");
    let driver = usb.join("drivers/usb-storage");
    std::fs::create_dir_all(&driver).unwrap();
    let intf = usb.join(format!("devices/{busid}:1.0"));
    std::fs::create_dir_all(&intf).unwrap();
    std::os::unix::fs::symlink(&driver, intf.join("driver")).unwrap();
    sim.xl(&["usbdev-attach", "guest1", "hostbus=1", "hostaddr=2"])
        .assert()
        .success();
    let mut xs = sim.xs();
    let root = std::fs::canonicalize(sim.path()).unwrap();
    let tree =
        common::tree(&mut xs, &["/libxl/usbback"]).replace(root.to_str().unwrap(), "<simdir>");
    insta::assert_snapshot!("usbback_driver_path", tree);

    // The backend claimed it through usbfs; after the detach it lets go and the
    // interface has no driver: xl-usb binds it back to the recorded one.
    std::fs::remove_file(intf.join("driver")).unwrap();
    let usbfs = usb.join("drivers/usbfs");
    std::fs::create_dir_all(&usbfs).unwrap();
    sim.xl(&["usbdev-detach", "guest1", "0", "1"])
        .assert()
        .success();
    assert_eq!(
        std::fs::read_to_string(driver.join("bind")).unwrap(),
        format!("{busid}:1.0")
    );
    assert_eq!(common::tree(&mut xs, &["/libxl/usbback"]), "");
    use xenstore_cfg::XsOps;
    assert_eq!(xs.read("/libxl/usbback").unwrap(), b"");
}
