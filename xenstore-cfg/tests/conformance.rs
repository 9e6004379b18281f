//! Xen's own conformance program, `test-xenstore` (xen-utils-4.17), against our daemon:
//! every test, then its random mode, as dom0 and as an unprivileged domain.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use xenstore_cfg::{PermKind, Perms, XsOps};

fn test_xenstore(socket: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(tool("test-xenstore", "xen-utils-4.17"))
        .args(args)
        .env("XENSTORED_PATH", socket)
        .output()
        .unwrap();
    let text = format!("{}{}", stdout(&out), stderr(&out));
    (out.status.success(), text)
}

fn assert_all_tests_pass(socket: &Path) {
    let (ok, text) = test_xenstore(socket, &[]);
    assert!(ok, "{text}");
    // One timing line per test, none failed.
    assert_eq!(text.lines().count(), 12, "{text}");
    assert!(!text.contains("failed"), "{text}");
}

#[test]
fn test_xenstore_passes_as_dom0() {
    let sim = Sim::start();
    assert_all_tests_pass(&sim.socket());
    let (ok, text) = test_xenstore(&sim.socket(), &["-r", "2"]);
    assert!(ok, "random mode: {text}");
    assert!(!text.contains("failed"), "{text}");
    // The program cleans up after itself.
    assert!(sim
        .dom0()
        .try_read("/local/domain/0/xenstore-test")
        .unwrap()
        .is_none());
}

/// As a guest, test-xenstore works in its home's `xenstore-test`, which a guest cannot
/// create itself (its home is `n0,r<domid>`, as libxl makes it): the toolstack creates it.
#[test]
fn test_xenstore_passes_as_a_guest_within_quotas() {
    let sim = Sim::start();
    let mut xs = sim.dom0();
    xs.introduce(5, 0, 0).unwrap();
    let (ok, text) = test_xenstore(&sim.domain_socket(5), &[]);
    assert!(
        !ok && text.contains("ret = 13"),
        "EACCES without a prepared node: {text}"
    );
    let mut prepare = || {
        xs.mkdir("/local/domain/5/xenstore-test").unwrap();
        xs.set_perms(
            "/local/domain/5/xenstore-test",
            &Perms::owner(5, PermKind::None),
        )
        .unwrap();
    };
    prepare();
    assert_all_tests_pass(&sim.domain_socket(5));
    // The program removes its directory when done, so the toolstack creates it again.
    prepare();
    let (ok, text) = test_xenstore(&sim.domain_socket(5), &["-r", "2"]);
    assert!(ok, "random mode: {text}");
}
