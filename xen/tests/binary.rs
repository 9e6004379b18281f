//! The `pvusb-simhyp` binary with the embedded xenstored: a domain's death reaches xenstore
//! as `@releaseDomain`; SIGTERM stops the broker and removes its sockets.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{idle, wait_until};
use pvusb_xen::sim::{socket_path, Broker, SimPlatform};
use pvusb_xen::DomId;
use xenstore_cfg::Xs;

const BIN: &str = env!("CARGO_BIN_EXE_pvusb-simhyp");

#[test]
fn help_names_the_directory_option() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("--dir"), "{text}");
}

#[test]
fn missing_dir_argument_is_an_error() {
    let out = Command::new(BIN).output().unwrap();
    assert!(!out.status.success());
}

/// Introduces `domid` to xenstored and watches `@releaseDomain` (fires once at once).
fn introduce_and_watch(xs: &mut Xs, domid: u16) {
    xs.introduce(domid, 0, 0).unwrap();
    xs.watch("@releaseDomain", "rel").unwrap();
    xs.wait_event_for("rel", Some(Instant::now() + Duration::from_secs(5)))
        .unwrap()
        .unwrap();
}

#[test]
fn library_hook_fires_release_domain_in_xenstored() {
    let dir = tempfile::tempdir().unwrap();
    let xenstored = xenstore_cfg::daemon::spawn(dir.path()).unwrap();
    let mut xs = Xs::connect(xenstored.socket()).unwrap();
    introduce_and_watch(&mut xs, 1);
    let hook = pvusb_xen::sim::release::xenstore_hook(dir.path());
    let broker = Broker::start_with_hook(dir.path(), Some(hook)).unwrap();
    broker.create_domain(DomId(1)).unwrap();
    let dom1 = SimPlatform::connect(dir.path(), DomId(1)).unwrap();
    assert!(xs.is_domain_introduced(1).unwrap());
    drop(dom1); // the domain's only process "dies"
    let ev = xs
        .wait_event_for("rel", Some(Instant::now() + Duration::from_secs(10)))
        .unwrap();
    assert!(ev.is_some(), "@releaseDomain fired");
    assert!(!xs.is_domain_introduced(1).unwrap());
    assert_eq!(broker.counters(), idle(0));
}

#[test]
fn release_of_a_domain_xenstored_never_saw_is_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let xenstored = xenstore_cfg::daemon::spawn(dir.path()).unwrap();
    pvusb_xen::sim::release::release(&xenstored.socket(), DomId(42)).unwrap();
    let e = pvusb_xen::sim::release::release(&dir.path().join("nothing"), DomId(1)).unwrap_err();
    assert!(e.to_string().contains("no xenstored"), "{e}");
}

#[test]
fn binary_serves_domains_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let xenstored = xenstore_cfg::daemon::spawn(dir.path()).unwrap();
    let mut xs = Xs::connect(xenstored.socket()).unwrap();
    introduce_and_watch(&mut xs, 2);
    let mut child = Command::new(BIN)
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    let dom0 = SimPlatform::connect(dir.path(), DomId::DOM0).unwrap();
    dom0.create_domain(DomId(2)).unwrap();
    let dom2 = SimPlatform::connect(dir.path(), DomId(2)).unwrap();
    assert_eq!(dom0.counters().unwrap().domains, 2);
    dom0.destroy_domain(DomId(2)).unwrap();
    // The hook ran before destroy returned.
    let ev = xs
        .wait_event_for("rel", Some(Instant::now() + Duration::from_secs(10)))
        .unwrap();
    assert!(ev.is_some());
    assert!(!xs.is_domain_introduced(2).unwrap());
    assert!(
        dom2.counters().is_err(),
        "the destroyed domain's connection is closed"
    );
    wait_until(|| dom0.counters().unwrap() == idle(1), "counters");

    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!socket_path(dir.path(), DomId::DOM0).exists());
}
