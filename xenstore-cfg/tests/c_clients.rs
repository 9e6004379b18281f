//! Debian's libxenstore C tools against the embedded xenstored: outputs as against a real one.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use xenstore_cfg::vusb;
use xenstore_cfg::XsOps;

#[test]
fn write_read_ls_chmod_rm_as_dom0() {
    let sim = Sim::start();
    let s = sim.socket();
    let o = xs_tool(&s, "xenstore-write", &["/t/a", "hello", "/t/b/c", "x y"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&xs_tool(&s, "xenstore-read", &["/t/a"])), "hello\n");
    assert_eq!(stdout(&xs_tool(&s, "xenstore-read", &["/t/b/c"])), "x y\n");
    let o = xs_tool(&s, "xenstore-chmod", &["/t/b", "n0", "r1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&xs_tool(&s, "xenstore-ls", &["-fp", "/t"])),
        "/t/a = \"hello\"   (n0)\n/t/b = \"\"   (n0,r1)\n/t/b/c = \"x y\"   (n0)\n"
    );
    assert_eq!(stdout(&xs_tool(&s, "xenstore-list", &["/t"])), "a\nb\n");
    assert!(xs_tool(&s, "xenstore-exists", &["/t/a"]).status.success());
    assert!(xs_tool(&s, "xenstore-rm", &["/t/b"]).status.success());
    assert_eq!(
        stdout(&xs_tool(&s, "xenstore-ls", &["/t"])),
        "a = \"hello\"\n"
    );
    let o = xs_tool(&s, "xenstore-read", &["/t/b/c"]);
    assert!(!o.status.success());
    assert_eq!(stderr(&o), "xenstore-read: couldn't read path /t/b/c\n");
    // Relative paths of dom0 resolve under /local/domain/0.
    assert_eq!(
        stdout(&xs_tool(&s, "xenstore-read", &["name"])),
        "Domain-0\n"
    );
}

#[test]
fn domain_socket_denials_print_as_with_real_xenstored() {
    let sim = Sim::start();
    let mut xs = sim.dom0();
    xs.introduce(1, 0, 0).unwrap();
    let d = sim.domain_socket(1);
    assert!(d.exists());
    let o = xs_tool(&d, "xenstore-read", &["/local/domain/0/name"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "xenstore-read: couldn't read path /local/domain/0/name\n"
    );
    let o = xs_tool(&d, "xenstore-write", &["/local/domain/0/x", "y"]);
    assert_eq!(
        stderr(&o),
        "xenstore-write: could not write path /local/domain/0/x\n"
    );
    let o = xs_tool(&d, "xenstore-ls", &["-fp", "/local/domain/0"]);
    assert_eq!(
        stderr(&o),
        "xenstore-ls: xs_directory (/local/domain/0): Permission denied\n"
    );
    let o = xs_tool(&d, "xenstore-chmod", &["/local/domain/1/domid", "n1"]);
    assert_eq!(
        stderr(&o),
        "xenstore-chmod: Error occurred setting permissions on '/local/domain/1/domid': \
         Permission denied\n"
    );
    let o = xs_tool(&d, "xenstore-rm", &["/local/domain/1/domid"]);
    assert_eq!(
        stderr(&o),
        "xenstore-rm: could not remove path /local/domain/1/domid\n"
    );
    // What the guest may do, it does, and it owns what it creates.
    assert!(xs_tool(&d, "xenstore-write", &["data/k", "v"])
        .status
        .success());
    assert_eq!(stdout(&xs_tool(&d, "xenstore-read", &["data/k"])), "v\n");
    assert_eq!(
        stdout(&xs_tool(
            &sim.socket(),
            "xenstore-ls",
            &["-fp", "/local/domain/1/data"]
        )),
        "/local/domain/1/data/k = \"v\"   (n1)\n"
    );
    assert_eq!(stdout(&xs_tool(&d, "xenstore-read", &["domid"])), "1\n");
    // After release the socket is gone.
    xs.release(1).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(!d.exists());
}

#[test]
fn xenstore_watch_prints_events() {
    let sim = Sim::start();
    let mut child = Command::new(tool("xenstore-watch", "xenstore-utils"))
        .args(["-n", "3", "/w"])
        .env("XENSTORED_PATH", sim.socket())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The first event is the registration firing.
    assert_eq!(lines.next().unwrap().unwrap(), "/w");
    let mut xs = sim.dom0();
    xs.write("/w/a", b"1").unwrap();
    xs.rm("/w").unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "/w/a");
    assert_eq!(lines.next().unwrap().unwrap(), "/w");
    assert!(child.wait().unwrap().success());
}

/// The tree `xl usbctrl-attach domu type=pv version=2 ports=4` + `xl usbdev-attach` leave,
/// compared with the dump recorded on real Xen 4.17 (section 4 of xenstore-vusb-dump.txt).
#[test]
fn libxl_style_controller_matches_the_real_dump() {
    let sim = Sim::start();
    let (mut xs, id) = sim.dom1_controller(4);
    vusb::set_port(&mut xs, &id, 1, Some("1-1")).unwrap();
    let s = sim.socket();
    let be = stdout(&xs_tool(
        &s,
        "xenstore-ls",
        &["-fp", "/local/domain/0/backend/vusb"],
    ));
    let expected_be = r#"/local/domain/0/backend/vusb/1 = ""   (n0)
/local/domain/0/backend/vusb/1/0 = ""   (n0,r1)
/local/domain/0/backend/vusb/1/0/frontend = "/local/domain/1/device/vusb/0"   (n0,r1)
/local/domain/0/backend/vusb/1/0/frontend-id = "1"   (n0,r1)
/local/domain/0/backend/vusb/1/0/num-ports = "4"   (n0,r1)
/local/domain/0/backend/vusb/1/0/online = "1"   (n0,r1)
/local/domain/0/backend/vusb/1/0/port = ""   (n0,r1)
/local/domain/0/backend/vusb/1/0/port/1 = "1-1"   (n0,r1)
/local/domain/0/backend/vusb/1/0/port/2 = ""   (n0,r1)
/local/domain/0/backend/vusb/1/0/port/3 = ""   (n0,r1)
/local/domain/0/backend/vusb/1/0/port/4 = ""   (n0,r1)
/local/domain/0/backend/vusb/1/0/state = "1"   (n0,r1)
/local/domain/0/backend/vusb/1/0/type = "pv"   (n0,r1)
/local/domain/0/backend/vusb/1/0/usb-ver = "2"   (n0,r1)"#;
    assert_eq!(sorted_lines(&be), sorted_lines(expected_be));
    let fe = stdout(&xs_tool(
        &s,
        "xenstore-ls",
        &["-fp", "/local/domain/1/device"],
    ));
    let expected_fe = r#"/local/domain/1/device/vusb = ""   (n0,r1)
/local/domain/1/device/vusb/0 = ""   (n1,r0)
/local/domain/1/device/vusb/0/backend = "/local/domain/0/backend/vusb/1/0"   (n1,r0)
/local/domain/1/device/vusb/0/backend-id = "0"   (n1,r0)
/local/domain/1/device/vusb/0/state = "1"   (n1,r0)"#;
    assert_eq!(sorted_lines(&fe), sorted_lines(expected_fe));
    let lx = stdout(&xs_tool(
        &s,
        "xenstore-ls",
        &["-fp", "/libxl/1/device/vusb"],
    ));
    let expected_lx = r#"/libxl/1/device/vusb/0 = ""   (n0)
/libxl/1/device/vusb/0/backend = "/local/domain/0/backend/vusb/1/0"   (n0)
/libxl/1/device/vusb/0/frontend = "/local/domain/1/device/vusb/0"   (n0)
/libxl/1/device/vusb/0/frontend-id = "1"   (n0)
/libxl/1/device/vusb/0/num-ports = "4"   (n0)
/libxl/1/device/vusb/0/online = "1"   (n0)
/libxl/1/device/vusb/0/port = ""   (n0)
/libxl/1/device/vusb/0/port/1 = ""   (n0)
/libxl/1/device/vusb/0/port/2 = ""   (n0)
/libxl/1/device/vusb/0/port/3 = ""   (n0)
/libxl/1/device/vusb/0/port/4 = ""   (n0)
/libxl/1/device/vusb/0/state = "1"   (n0)
/libxl/1/device/vusb/0/type = "pv"   (n0)
/libxl/1/device/vusb/0/usb-ver = "2"   (n0)"#;
    assert_eq!(sorted_lines(&lx), sorted_lines(expected_lx));
    // The guest reads its frontend and the backend, but not the libxl copy.
    let d = sim.domain_socket(1);
    assert_eq!(
        stdout(&xs_tool(&d, "xenstore-read", &["device/vusb/0/backend-id"])),
        "0\n"
    );
    assert_eq!(
        stdout(&xs_tool(
            &d,
            "xenstore-read",
            &["/local/domain/0/backend/vusb/1/0/port/1"]
        )),
        "1-1\n"
    );
    assert!(
        !xs_tool(&d, "xenstore-read", &["/libxl/1/device/vusb/0/type"])
            .status
            .success()
    );
    // usbctrl-detach leaves the tree as in section 6 of the dump.
    vusb::remove_controller(&mut xs, &id).unwrap();
    for gone in [
        "/local/domain/0/backend/vusb",
        "/local/domain/1/device/vusb",
        "/libxl/1/device/vusb",
    ] {
        assert!(
            !xs_tool(&s, "xenstore-exists", &[gone]).status.success(),
            "{gone}"
        );
    }
    assert!(xs_tool(&s, "xenstore-exists", &["/local/domain/1/device"])
        .status
        .success());
}

/// A child list longer than one reply: libxenstore gets E2BIG and pages with
/// XS_DIRECTORY_PART; so does our client.
#[test]
fn long_directories_page_through_directory_part() {
    let sim = Sim::start();
    let mut xs = sim.dom0();
    let names: Vec<String> = (0..200)
        .map(|i| format!("child-with-a-rather-long-name-{i:03}"))
        .collect();
    for n in &names {
        xs.write(&format!("/big/{n}"), b"x").unwrap();
    }
    let listed = stdout(&xs_tool(&sim.socket(), "xenstore-list", &["/big"]));
    assert_eq!(listed.lines().collect::<Vec<_>>(), names);
    assert_eq!(xs.directory("/big").unwrap(), names);
}
