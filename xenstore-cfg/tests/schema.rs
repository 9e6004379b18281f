//! The vusb tree our schema writes, as `xenstore-ls -fp` lines, pinned by a snapshot.
//! Compare by eye with section 4 of shared/reference/xenstore-vusb-dump.txt (real Xen 4.17).

mod common;

use xenstore_cfg::vusb::{self, UsbVer};
use xenstore_cfg::{Xs, XsOps};

/// `xenstore-ls -fp <root>` lines (without the root itself), sorted like the dump.
fn ls_fp(xs: &mut Xs, root: &str, out: &mut Vec<String>) {
    for child in xs.directory(root).unwrap() {
        let path = format!("{root}/{child}");
        let value = String::from_utf8_lossy(&xs.read(&path).unwrap()).into_owned();
        let perms = xs.get_perms(&path).unwrap();
        out.push(format!("{path} = {value:?}   ({perms})"));
        ls_fp(xs, &path, out);
    }
}

#[test]
fn controller_and_device_attach_tree() {
    let sim = common::Sim::start();
    let (mut xs, id) = sim.dom1_controller(4);
    vusb::set_port(&mut xs, &id, 1, Some("1-1")).unwrap();
    let mut lines = Vec::new();
    for root in ["/local/domain/0/backend", "/local/domain/1", "/libxl"] {
        ls_fp(&mut xs, root, &mut lines);
    }
    lines.sort();
    insta::assert_snapshot!(lines.join("\n"));

    let mut guest = sim.domain(1);
    assert_eq!(vusb::list_frontends(&mut guest, 1).unwrap(), vec![0]);
    assert_eq!(vusb::read_frontend(&mut guest, 1, 0).unwrap(), id);
    assert_eq!(
        vusb::list_frontends(&mut guest, 2).unwrap_or_default(),
        Vec::<u32>::new()
    );
    let view = vusb::read_backend(&mut xs, &id).unwrap();
    assert_eq!(view.num_ports, 4);
    assert_eq!(view.usb_ver, UsbVer::Usb20);
    assert_eq!(view.ports, vec![Some("1-1".to_owned()), None, None, None]);
    assert!(
        vusb::set_port(&mut xs, &id, 5, Some("1-2")).is_err(),
        "port beyond num-ports"
    );
    assert!(
        vusb::set_port(&mut xs, &id, 2, Some("../x")).is_err(),
        "not a bus id"
    );
}
