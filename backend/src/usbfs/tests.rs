//! Tests for `usbfs` (compiled only under `#[cfg(test)]`, see `mod tests` in usbfs/mod.rs).
//!
//! usbfs struct layouts and ioctl numbers against the installed C header, and error mapping.

use std::collections::HashMap;
use std::mem::{offset_of, size_of};
use std::process::Command;

use super::raw::*;
use super::*;
use crate::host::SubmitError;

const PROGRAM: &str = r#"
#include <stdio.h>
#include <stddef.h>
#include <sys/ioctl.h>
#include <linux/usbdevice_fs.h>
#define P(name, v) printf("%s %lu\n", name, (unsigned long)(v))
int main(void) {
    P("sizeof_urb", sizeof(struct usbdevfs_urb));
    P("urb_type", offsetof(struct usbdevfs_urb, type));
    P("urb_endpoint", offsetof(struct usbdevfs_urb, endpoint));
    P("urb_status", offsetof(struct usbdevfs_urb, status));
    P("urb_flags", offsetof(struct usbdevfs_urb, flags));
    P("urb_buffer", offsetof(struct usbdevfs_urb, buffer));
    P("urb_buffer_length", offsetof(struct usbdevfs_urb, buffer_length));
    P("urb_actual_length", offsetof(struct usbdevfs_urb, actual_length));
    P("urb_start_frame", offsetof(struct usbdevfs_urb, start_frame));
    P("urb_number_of_packets", offsetof(struct usbdevfs_urb, number_of_packets));
    P("urb_error_count", offsetof(struct usbdevfs_urb, error_count));
    P("urb_signr", offsetof(struct usbdevfs_urb, signr));
    P("urb_usercontext", offsetof(struct usbdevfs_urb, usercontext));
    P("urb_iso_frame_desc", offsetof(struct usbdevfs_urb, iso_frame_desc));
    P("sizeof_iso", sizeof(struct usbdevfs_iso_packet_desc));
    P("iso_actual_length", offsetof(struct usbdevfs_iso_packet_desc, actual_length));
    P("iso_status", offsetof(struct usbdevfs_iso_packet_desc, status));
    P("sizeof_ctrl", sizeof(struct usbdevfs_ctrltransfer));
    P("ctrl_wLength", offsetof(struct usbdevfs_ctrltransfer, wLength));
    P("ctrl_timeout", offsetof(struct usbdevfs_ctrltransfer, timeout));
    P("ctrl_data", offsetof(struct usbdevfs_ctrltransfer, data));
    P("sizeof_setintf", sizeof(struct usbdevfs_setinterface));
    P("sizeof_ioctl", sizeof(struct usbdevfs_ioctl));
    P("ioctl_data", offsetof(struct usbdevfs_ioctl, data));
    P("sizeof_dc", sizeof(struct usbdevfs_disconnect_claim));
    P("dc_driver", offsetof(struct usbdevfs_disconnect_claim, driver));
    P("sizeof_getdriver", sizeof(struct usbdevfs_getdriver));
    P("CONTROL", USBDEVFS_CONTROL);
    P("SETINTERFACE", USBDEVFS_SETINTERFACE);
    P("SETCONFIGURATION", USBDEVFS_SETCONFIGURATION);
    P("GETDRIVER", USBDEVFS_GETDRIVER);
    P("SUBMITURB", USBDEVFS_SUBMITURB);
    P("DISCARDURB", USBDEVFS_DISCARDURB);
    P("REAPURB", USBDEVFS_REAPURB);
    P("REAPURBNDELAY", USBDEVFS_REAPURBNDELAY);
    P("CLAIMINTERFACE", USBDEVFS_CLAIMINTERFACE);
    P("RELEASEINTERFACE", USBDEVFS_RELEASEINTERFACE);
    P("IOCTL", USBDEVFS_IOCTL);
    P("RESET", USBDEVFS_RESET);
    P("CLEAR_HALT", USBDEVFS_CLEAR_HALT);
    P("DISCONNECT", USBDEVFS_DISCONNECT);
    P("CONNECT", USBDEVFS_CONNECT);
    P("GET_CAPABILITIES", USBDEVFS_GET_CAPABILITIES);
    P("DISCONNECT_CLAIM", USBDEVFS_DISCONNECT_CLAIM);
    P("GET_SPEED", USBDEVFS_GET_SPEED);
    P("CAP_BULK_CONTINUATION", USBDEVFS_CAP_BULK_CONTINUATION);
    P("CAP_NO_PACKET_SIZE_LIM", USBDEVFS_CAP_NO_PACKET_SIZE_LIM);
    P("CAP_REAP_AFTER_DISCONNECT", USBDEVFS_CAP_REAP_AFTER_DISCONNECT);
    P("EXCEPT_DRIVER", USBDEVFS_DISCONNECT_CLAIM_EXCEPT_DRIVER);
    P("URB_SHORT_NOT_OK", USBDEVFS_URB_SHORT_NOT_OK);
    P("URB_ISO_ASAP", USBDEVFS_URB_ISO_ASAP);
    P("URB_BULK_CONTINUATION", USBDEVFS_URB_BULK_CONTINUATION);
    P("URB_ZERO_PACKET", USBDEVFS_URB_ZERO_PACKET);
    P("TYPE_ISO", USBDEVFS_URB_TYPE_ISO);
    P("TYPE_INTERRUPT", USBDEVFS_URB_TYPE_INTERRUPT);
    P("TYPE_CONTROL", USBDEVFS_URB_TYPE_CONTROL);
    P("TYPE_BULK", USBDEVFS_URB_TYPE_BULK);
    return 0;
}
"#;

/// Compiles and runs PROGRAM; fails loudly if gcc or the header is missing.
fn c_values() -> HashMap<String, u64> {
    let header = std::path::Path::new("/usr/include/linux/usbdevice_fs.h");
    assert!(
        header.exists(),
        "{} missing: install linux-libc-dev",
        header.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("layout.c");
    let exe = dir.path().join("layout");
    std::fs::write(&src, PROGRAM).unwrap();
    let out = Command::new("gcc")
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("gcc not found: install gcc to check usbfs layouts");
    assert!(
        out.status.success(),
        "gcc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&exe).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (k, v) = l.split_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

#[test]
fn layouts_and_ioctl_numbers_match_the_c_header() {
    let c = c_values();
    let rust: Vec<(&str, u64)> = vec![
        ("sizeof_urb", size_of::<usbdevfs_urb>() as u64),
        ("urb_type", offset_of!(usbdevfs_urb, type_) as u64),
        ("urb_endpoint", offset_of!(usbdevfs_urb, endpoint) as u64),
        ("urb_status", offset_of!(usbdevfs_urb, status) as u64),
        ("urb_flags", offset_of!(usbdevfs_urb, flags) as u64),
        ("urb_buffer", offset_of!(usbdevfs_urb, buffer) as u64),
        (
            "urb_buffer_length",
            offset_of!(usbdevfs_urb, buffer_length) as u64,
        ),
        (
            "urb_actual_length",
            offset_of!(usbdevfs_urb, actual_length) as u64,
        ),
        (
            "urb_start_frame",
            offset_of!(usbdevfs_urb, start_frame) as u64,
        ),
        (
            "urb_number_of_packets",
            offset_of!(usbdevfs_urb, number_of_packets) as u64,
        ),
        (
            "urb_error_count",
            offset_of!(usbdevfs_urb, error_count) as u64,
        ),
        ("urb_signr", offset_of!(usbdevfs_urb, signr) as u64),
        (
            "urb_usercontext",
            offset_of!(usbdevfs_urb, usercontext) as u64,
        ),
        (
            "urb_iso_frame_desc",
            offset_of!(usbdevfs_urb, iso_frame_desc) as u64,
        ),
        ("sizeof_iso", size_of::<usbdevfs_iso_packet_desc>() as u64),
        (
            "iso_actual_length",
            offset_of!(usbdevfs_iso_packet_desc, actual_length) as u64,
        ),
        (
            "iso_status",
            offset_of!(usbdevfs_iso_packet_desc, status) as u64,
        ),
        ("sizeof_ctrl", size_of::<usbdevfs_ctrltransfer>() as u64),
        (
            "ctrl_wLength",
            offset_of!(usbdevfs_ctrltransfer, w_length) as u64,
        ),
        (
            "ctrl_timeout",
            offset_of!(usbdevfs_ctrltransfer, timeout) as u64,
        ),
        ("ctrl_data", offset_of!(usbdevfs_ctrltransfer, data) as u64),
        ("sizeof_setintf", size_of::<usbdevfs_setinterface>() as u64),
        ("sizeof_ioctl", size_of::<usbdevfs_ioctl>() as u64),
        ("ioctl_data", offset_of!(usbdevfs_ioctl, data) as u64),
        ("sizeof_dc", size_of::<usbdevfs_disconnect_claim>() as u64),
        (
            "dc_driver",
            offset_of!(usbdevfs_disconnect_claim, driver) as u64,
        ),
        ("sizeof_getdriver", size_of::<usbdevfs_getdriver>() as u64),
        ("CONTROL", u64::from(nr::CONTROL)),
        ("SETINTERFACE", u64::from(nr::SETINTERFACE)),
        ("SETCONFIGURATION", u64::from(nr::SETCONFIGURATION)),
        ("GETDRIVER", u64::from(nr::GETDRIVER)),
        ("SUBMITURB", u64::from(nr::SUBMITURB)),
        ("DISCARDURB", u64::from(nr::DISCARDURB)),
        ("REAPURB", u64::from(nr::REAPURB)),
        ("REAPURBNDELAY", u64::from(nr::REAPURBNDELAY)),
        ("CLAIMINTERFACE", u64::from(nr::CLAIMINTERFACE)),
        ("RELEASEINTERFACE", u64::from(nr::RELEASEINTERFACE)),
        ("IOCTL", u64::from(nr::IOCTL)),
        ("RESET", u64::from(nr::RESET)),
        ("CLEAR_HALT", u64::from(nr::CLEAR_HALT)),
        ("DISCONNECT", u64::from(nr::DISCONNECT)),
        ("CONNECT", u64::from(nr::CONNECT)),
        ("GET_CAPABILITIES", u64::from(nr::GET_CAPABILITIES)),
        ("DISCONNECT_CLAIM", u64::from(nr::DISCONNECT_CLAIM)),
        ("GET_SPEED", u64::from(nr::GET_SPEED)),
        ("CAP_BULK_CONTINUATION", u64::from(cap::BULK_CONTINUATION)),
        ("CAP_NO_PACKET_SIZE_LIM", u64::from(cap::NO_PACKET_SIZE_LIM)),
        (
            "CAP_REAP_AFTER_DISCONNECT",
            u64::from(cap::REAP_AFTER_DISCONNECT),
        ),
        ("EXCEPT_DRIVER", u64::from(DISCONNECT_CLAIM_EXCEPT_DRIVER)),
        (
            "URB_SHORT_NOT_OK",
            u64::from(crate::host::UrbFlags::SHORT_NOT_OK.bits()),
        ),
        (
            "URB_ISO_ASAP",
            u64::from(crate::host::UrbFlags::ISO_ASAP.bits()),
        ),
        (
            "URB_BULK_CONTINUATION",
            u64::from(crate::host::UrbFlags::BULK_CONTINUATION.bits()),
        ),
        (
            "URB_ZERO_PACKET",
            u64::from(crate::host::UrbFlags::ZERO_PACKET.bits()),
        ),
        (
            "TYPE_ISO",
            u64::from(crate::host::XferKind::Iso.usbfs_type()),
        ),
        (
            "TYPE_INTERRUPT",
            u64::from(crate::host::XferKind::Interrupt.usbfs_type()),
        ),
        (
            "TYPE_CONTROL",
            u64::from(crate::host::XferKind::Control.usbfs_type()),
        ),
        (
            "TYPE_BULK",
            u64::from(crate::host::XferKind::Bulk.usbfs_type()),
        ),
    ];
    assert_eq!(
        rust.len(),
        c.len(),
        "C program and Rust table list different items"
    );
    for (name, value) in rust {
        assert_eq!(Some(&value), c.get(name), "{name}");
    }
    // protocol.md's table, x86_64.
    assert_eq!(nr::SUBMITURB, 0x8038_550a);
    assert_eq!(nr::DISCONNECT_CLAIM, 0x8108_551b);
}

#[test]
fn urb_block_holds_header_and_iso_descriptors_contiguously() {
    let mut b = UrbBlock::new(3);
    let base = b.as_ptr() as usize;
    b.urb().number_of_packets = 3;
    b.iso()[2].length = 7;
    let last = &b.iso()[2] as *const _ as usize;
    assert_eq!(
        last - base,
        size_of::<usbdevfs_urb>() + 2 * size_of::<usbdevfs_iso_packet_desc>()
    );
    assert_eq!(base % 8, 0);
    assert_eq!(UrbBlock::new(0).iso().len(), 0);
}

#[test]
fn errors_and_capabilities_map() {
    use rustix::io::Errno;
    assert_eq!(submit_error(Errno::NODEV), SubmitError::Gone);
    assert_eq!(
        submit_error(Errno::REMOTEIO),
        SubmitError::ContinuationRefused
    );
    assert_eq!(submit_error(Errno::NOMEM), SubmitError::NoMemory);
    assert_eq!(submit_error(Errno::PERM), SubmitError::Errno(1));
    let caps = Capabilities(cap::BULK_CONTINUATION | cap::REAP_AFTER_DISCONNECT);
    assert!(caps.bulk_continuation() && caps.reap_after_disconnect());
    assert_eq!(caps.max_bulk_urb(), 16 * 1024);
    assert_eq!(
        Capabilities(cap::NO_PACKET_SIZE_LIM).max_bulk_urb(),
        usize::MAX
    );
}

#[test]
fn opening_a_missing_node_is_a_typed_error() {
    let tmp = tempfile::tempdir().unwrap();
    let roots = UsbRoots {
        sysfs: tmp.path().join("sys"),
        devfs: tmp.path().join("dev"),
    };
    assert!(matches!(
        open_busid(&roots, "1-1"),
        Err(UsbfsOpenError::Descriptors(_))
    ));
    // A simulated tree resolves, but its node is not a usbfs device: claiming fails cleanly.
    let busid = crate::sim::plug(
        tmp.path(),
        &crate::sim::DeviceSpec::new(crate::sim::ModelSpec::Loopback { capacity: 64 }),
    )
    .unwrap();
    let err = open_busid(&UsbRoots::sim(tmp.path()), &busid).unwrap_err();
    assert!(matches!(err, UsbfsOpenError::Claim { .. }), "{err}");
}
