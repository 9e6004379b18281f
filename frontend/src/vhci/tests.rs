//! Tests for `vhci` (compiled only under `#[cfg(test)]`, see `mod tests` in vhci.rs).
//!
//! vhci against a directory shaped like the kernel's: `status` in vhci_sysfs.c's format,
//! `attach`/`detach` as plain files whose written content is checked.

use std::io::{Read, Write};
use std::os::fd::AsFd;

use super::*;

/// Controller 0 of a kernel built with 4 ports per hub: port 1 holds a high-speed device
/// (devid 1-2, sockfd 3, attached as 3-1 in the guest), port 5 a SuperSpeed one.
const STATUS0: &str = "\
hub port sta spd dev      sockfd local_busid
hs  0000 004 000 00000000 000000 0-0
hs  0001 006 003 00010002 000003 3-2
hs  0002 004 000 00000000 000000 0-0
hs  0003 004 000 00000000 000000 0-0
ss  0004 004 000 00000000 000000 0-0
ss  0005 006 005 00020003 000007 4-1
ss  0006 004 000 00000000 000000 0-0
ss  0007 004 000 00000000 000000 0-0
";

/// Controller 1: ports 8..15, all hs ports taken.
const STATUS1: &str = "\
hub port sta spd dev      sockfd local_busid
hs  0008 006 002 00010004 000009 5-1
hs  0009 006 001 00010005 000010 5-2
hs  0010 005 003 00010006 000011 5-3
hs  0011 007 003 00010007 000012 5-4
ss  0012 004 000 00000000 000000 0-0
ss  0013 004 000 00000000 000000 0-0
ss  0014 004 000 00000000 000000 0-0
ss  0015 004 000 00000000 000000 0-0
";

fn fake_vhci(status: &[&str]) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("platform/vhci_hcd.0");
    fs::create_dir_all(&dir).unwrap();
    fs::create_dir_all(root.path().join("pci0000:00")).unwrap();
    fs::write(dir.join("nports"), format!("{}\n", 8 * status.len())).unwrap();
    for (i, s) in status.iter().enumerate() {
        let name = if i == 0 {
            "status".to_owned()
        } else {
            format!("status.{i}")
        };
        fs::write(dir.join(name), s).unwrap();
    }
    fs::write(dir.join("attach"), "").unwrap();
    fs::write(dir.join("detach"), "").unwrap();
    fs::write(dir.join("usbip_debug"), "0\n").unwrap();
    root
}

#[test]
fn finds_the_controller_below_devices() {
    let root = fake_vhci(&[STATUS0]);
    let v = Vhci::find_in(root.path()).unwrap();
    assert_eq!(v.dir(), root.path().join("platform/vhci_hcd.0"));
    assert_eq!(
        Vhci::at(root.path().join("platform/vhci_hcd.0")).unwrap(),
        v
    );
}

#[test]
fn missing_controller_is_not_found() {
    let root = tempfile::tempdir().unwrap();
    assert!(matches!(
        Vhci::find_in(root.path()),
        Err(VhciError::NotFound(_))
    ));
    assert!(matches!(Vhci::at(root.path()), Err(VhciError::NotFound(_))));
}

#[test]
fn status_rows_parse_like_libusbip() {
    let rows = parse_status(STATUS0).unwrap();
    assert_eq!(rows.len(), 8);
    assert_eq!(
        rows[1],
        PortStatus {
            hub: Hub::Hs,
            port: 1,
            status: VDEV_ST_USED,
            speed: 3,
            devid: 0x0001_0002,
            sockfd: 3,
            local_busid: "3-2".into()
        }
    );
    assert!(rows[0].is_free() && !rows[1].is_free());
    assert_eq!(rows[5].hub, Hub::Ss);
}

#[test]
fn status_rejects_malformed_rows() {
    assert_eq!(
        parse_status("hub port\nxs  0000 004 000 00000000 000000 0-0\n")
            .unwrap_err()
            .0,
        2
    );
    assert_eq!(
        parse_status("hs  00x0 004 000 00000000 000000 0-0\n")
            .unwrap_err()
            .0,
        1
    );
    assert_eq!(
        parse_status("hs  0000 004 000 0000000g 000000 0-0\n")
            .unwrap_err()
            .0,
        1
    );
    assert_eq!(parse_status("hs  0000 004 000\n").unwrap_err().0, 1);
}

#[test]
fn reads_nports_and_every_controllers_status() {
    let root = fake_vhci(&[STATUS0, STATUS1]);
    let v = Vhci::find_in(root.path()).unwrap();
    assert_eq!(v.nports().unwrap(), 16);
    let rows = v.status().unwrap();
    assert_eq!(
        rows.iter().map(|r| r.port).collect::<Vec<_>>(),
        (0..16).collect::<Vec<_>>()
    );
    assert_eq!(
        v.port_status(10).unwrap().unwrap().status,
        VDEV_ST_NOTASSIGNED
    );
    assert_eq!(v.port_status(99).unwrap(), None);
}

#[test]
fn free_port_matches_the_hub_of_the_speed() {
    let root = fake_vhci(&[STATUS0, STATUS1]);
    let v = Vhci::find_in(root.path()).unwrap();
    assert_eq!(v.free_port(Speed::High).unwrap(), 0);
    assert_eq!(v.free_port(Speed::Low).unwrap(), 0);
    assert_eq!(v.free_port(Speed::Super).unwrap(), 4);
    assert_eq!(v.free_port(Speed::SuperPlus).unwrap(), 4);
}

#[test]
fn no_free_port_when_the_hub_is_full() {
    let full0 = STATUS0
        .replace("hs  0000 004", "hs  0000 006")
        .replace("hs  0002 004", "hs  0002 006")
        .replace("hs  0003 004", "hs  0003 006");
    let root = fake_vhci(&[&full0, STATUS1]);
    let v = Vhci::find_in(root.path()).unwrap();
    assert!(matches!(
        v.free_port(Speed::Full),
        Err(VhciError::NoFreePort(Hub::Hs))
    ));
    assert_eq!(v.free_port(Speed::Super).unwrap(), 4);
}

#[test]
fn bad_nports_and_status_are_parse_errors() {
    let root = fake_vhci(&["hs  0000 004 000 00000000 000000 0-0\nbogus\n"]);
    let v = Vhci::find_in(root.path()).unwrap();
    assert!(matches!(v.status(), Err(VhciError::Parse { line: 2, .. })));
    fs::write(v.dir().join("nports"), "eight\n").unwrap();
    assert!(matches!(v.nports(), Err(VhciError::Parse { .. })));
}

#[test]
fn attach_writes_port_sockfd_devid_speed() {
    let root = fake_vhci(&[STATUS0]);
    let v = Vhci::find_in(root.path()).unwrap();
    let (kernel_end, _ours) = socketpair().unwrap();
    v.attach(2, kernel_end.as_fd(), 0x0001_0002, Speed::High)
        .unwrap();
    let written = fs::read_to_string(v.dir().join("attach")).unwrap();
    assert_eq!(written, format!("2 {} 65538 3", kernel_end.as_raw_fd()));
    v.detach(12).unwrap();
    assert_eq!(fs::read_to_string(v.dir().join("detach")).unwrap(), "12");
    // Each write replaces the last, as each sysfs store stands alone.
    v.detach(3).unwrap();
    assert_eq!(fs::read_to_string(v.dir().join("detach")).unwrap(), "3");
}

#[test]
fn attach_errnos_map_to_typed_errors() {
    let p = PathBuf::from("attach");
    let e = |errno: Errno| io::Error::from_raw_os_error(errno.raw_os_error());
    assert!(matches!(
        attach_error(1, p.clone(), e(Errno::BUSY)),
        AttachError::PortBusy(1)
    ));
    assert!(matches!(
        attach_error(1, p.clone(), e(Errno::INVAL)),
        AttachError::Invalid(1)
    ));
    assert!(matches!(
        attach_error(1, p.clone(), e(Errno::AGAIN)),
        AttachError::NotReady(1)
    ));
    assert!(matches!(
        attach_error(1, p.clone(), e(Errno::NOENT)),
        AttachError::Io { .. }
    ));
    assert!(matches!(
        detach_error(1, p.clone(), e(Errno::INVAL)),
        DetachError::NotAttached(1)
    ));
    assert!(matches!(
        detach_error(1, p, e(Errno::PERM)),
        DetachError::Io { .. }
    ));
}

#[test]
fn attach_to_a_missing_attribute_is_an_io_error() {
    let root = fake_vhci(&[STATUS0]);
    let v = Vhci::find_in(root.path()).unwrap();
    fs::remove_file(v.dir().join("attach")).unwrap();
    let (a, _b) = socketpair().unwrap();
    assert!(matches!(
        v.attach(0, a.as_fd(), 1, Speed::Full),
        Err(AttachError::Io { .. })
    ));
}

#[test]
fn socketpair_is_a_connected_stream() {
    let (a, b) = socketpair().unwrap();
    let mut a = std::os::unix::net::UnixStream::from(a);
    let mut b = std::os::unix::net::UnixStream::from(b);
    a.write_all(b"usbip").unwrap();
    let mut buf = [0u8; 5];
    b.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"usbip");
    let ty = rustix::net::sockopt::socket_type(&b).unwrap();
    assert_eq!(ty, SocketType::STREAM);
}
