//! Pins every usbif and ring.h layout against the real C headers, compiled with gcc.
//!
//! A C program built at test time prints `sizeof`/`offsetof` of every field and the
//! header's constants; each line must equal what the Rust types say. A missing gcc or
//! header fails the test: `ci/test.sh` installs `gcc` and `libxen-dev`.

use std::collections::BTreeMap;
use std::mem::{offset_of, size_of};
use std::path::Path;
use std::process::Command;

use pvusb_ring::sring::header::{const_ring_size, RawSringHeader, HEADER_SIZE};
use pvusb_ring::wire::{self, pipe::bits, *};

const HEADER: &str = "/usr/include/xen/io/usbif.h";

const C_PROGRAM: &str = r#"
#include <stdio.h>
#include <stddef.h>
#include <stdint.h>
#include <xen/io/usbif.h>

#define SZ(t) printf("sizeof %s %zu\n", #t, sizeof(t))
#define OFF(t, f) printf("offsetof %s.%s %zu\n", #t, #f, offsetof(t, f))
#define FSZ(t, f) printf("fieldsize %s.%s %zu\n", #t, #f, sizeof(((t *)0)->f))
#define VAL(c) printf("value %s %lld\n", #c, (long long)(c))
#define FIELD(t, f) do { OFF(t, f); FSZ(t, f); } while (0)

int main(void) {
    SZ(struct usbif_request_segment);
    FIELD(struct usbif_request_segment, gref);
    FIELD(struct usbif_request_segment, offset);
    FIELD(struct usbif_request_segment, length);

    SZ(struct usbif_urb_request);
    FIELD(struct usbif_urb_request, id);
    FIELD(struct usbif_urb_request, nr_buffer_segs);
    FIELD(struct usbif_urb_request, pipe);
    FIELD(struct usbif_urb_request, transfer_flags);
    FIELD(struct usbif_urb_request, buffer_length);
    FIELD(struct usbif_urb_request, u);
    FIELD(struct usbif_urb_request, u.ctrl);
    FIELD(struct usbif_urb_request, u.isoc.interval);
    FIELD(struct usbif_urb_request, u.isoc.start_frame);
    FIELD(struct usbif_urb_request, u.isoc.number_of_packets);
    FIELD(struct usbif_urb_request, u.isoc.nr_frame_desc_segs);
    FIELD(struct usbif_urb_request, u.intr.interval);
    FIELD(struct usbif_urb_request, u.intr.pad);
    FIELD(struct usbif_urb_request, u.unlink.unlink_id);
    FIELD(struct usbif_urb_request, u.unlink.pad);
    FIELD(struct usbif_urb_request, seg);

    SZ(struct usbif_urb_response);
    FIELD(struct usbif_urb_response, id);
    FIELD(struct usbif_urb_response, start_frame);
    FIELD(struct usbif_urb_response, status);
    FIELD(struct usbif_urb_response, actual_length);
    FIELD(struct usbif_urb_response, error_count);

    SZ(struct usbif_conn_request);
    FIELD(struct usbif_conn_request, id);
    SZ(struct usbif_conn_response);
    FIELD(struct usbif_conn_response, id);
    FIELD(struct usbif_conn_response, portnum);
    FIELD(struct usbif_conn_response, speed);

    SZ(union usbif_urb_sring_entry);
    SZ(union usbif_conn_sring_entry);
    FIELD(struct usbif_urb_sring, req_prod);
    FIELD(struct usbif_urb_sring, req_event);
    FIELD(struct usbif_urb_sring, rsp_prod);
    FIELD(struct usbif_urb_sring, rsp_event);
    FIELD(struct usbif_urb_sring, pvt);
    FIELD(struct usbif_urb_sring, __pad);
    OFF(struct usbif_urb_sring, ring);
    FIELD(struct usbif_conn_sring, req_prod);
    FIELD(struct usbif_conn_sring, req_event);
    FIELD(struct usbif_conn_sring, rsp_prod);
    FIELD(struct usbif_conn_sring, rsp_event);
    FIELD(struct usbif_conn_sring, pvt);
    FIELD(struct usbif_conn_sring, __pad);
    OFF(struct usbif_conn_sring, ring);

    VAL(USB_URB_RING_SIZE);
    VAL(USB_CONN_RING_SIZE);
    VAL(__CONST_RING_SIZE(usbif_urb, 2 * USBIF_RING_SIZE));
    VAL(__CONST_RING_SIZE(usbif_urb, 16 * USBIF_RING_SIZE));
    VAL(__CONST_RING_SIZE(usbif_conn, 4 * USBIF_RING_SIZE));
    VAL(USBIF_RING_SIZE);
    VAL(USBIF_MAX_SEGMENTS_PER_REQUEST);
    VAL(USBIF_MAX_PORTNR);
    VAL(USBIF_SHORT_NOT_OK);
    VAL(USBIF_PIPE_PORT_MASK);
    VAL(USBIF_PIPE_UNLINK);
    VAL(USBIF_PIPE_DIR);
    VAL(USBIF_PIPE_DEV_MASK);
    VAL(USBIF_PIPE_DEV_SHIFT);
    VAL(USBIF_PIPE_EP_MASK);
    VAL(USBIF_PIPE_EP_SHIFT);
    VAL(USBIF_PIPE_TYPE_MASK);
    VAL(USBIF_PIPE_TYPE_SHIFT);
    VAL(USBIF_PIPE_TYPE_ISOC);
    VAL(USBIF_PIPE_TYPE_INT);
    VAL(USBIF_PIPE_TYPE_CTRL);
    VAL(USBIF_PIPE_TYPE_BULK);
    VAL(USBIF_STATUS_OK);
    VAL(USBIF_STATUS_NODEV);
    VAL(USBIF_STATUS_INVAL);
    VAL(USBIF_STATUS_STALL);
    VAL(USBIF_STATUS_IOERROR);
    VAL(USBIF_STATUS_BABBLE);
    VAL(USBIF_STATUS_SHUTDOWN);
    VAL(USBIF_SPEED_NONE);
    VAL(USBIF_SPEED_LOW);
    VAL(USBIF_SPEED_FULL);
    VAL(USBIF_SPEED_HIGH);
    VAL(USB_VER_USB11);
    VAL(USB_VER_USB20);
    return 0;
}
"#;

/// What the Rust side says, keyed like the C program's output lines.
fn rust_facts() -> BTreeMap<String, i64> {
    let mut m = BTreeMap::new();
    let mut put = |k: &str, v: usize| {
        m.insert(k.to_string(), i64::try_from(v).unwrap());
    };
    macro_rules! field {
        ($c:literal, $t:ty, $f:ident) => {{
            put(
                concat!("offsetof ", $c, ".", stringify!($f)),
                offset_of!($t, $f),
            );
            put(
                concat!("fieldsize ", $c, ".", stringify!($f)),
                size_of_field(|x: &$t| &x.$f),
            );
        }};
    }
    macro_rules! union_field {
        ($t:ty, $name:literal, $f:ident) => {{
            let base = offset_of!(RawUrbRequest, u);
            put(
                concat!(
                    "offsetof struct usbif_urb_request.u.",
                    $name,
                    ".",
                    stringify!($f)
                ),
                base + offset_of!($t, $f),
            );
            put(
                concat!(
                    "fieldsize struct usbif_urb_request.u.",
                    $name,
                    ".",
                    stringify!($f)
                ),
                size_of_field(|x: &$t| &x.$f),
            );
        }};
    }
    let seg = "struct usbif_request_segment";
    put(&format!("sizeof {seg}"), size_of::<RawSeg>());
    field!("struct usbif_request_segment", RawSeg, gref);
    field!("struct usbif_request_segment", RawSeg, offset);
    field!("struct usbif_request_segment", RawSeg, length);

    put(
        "sizeof struct usbif_urb_request",
        size_of::<RawUrbRequest>(),
    );
    field!("struct usbif_urb_request", RawUrbRequest, id);
    field!("struct usbif_urb_request", RawUrbRequest, nr_buffer_segs);
    field!("struct usbif_urb_request", RawUrbRequest, pipe);
    field!("struct usbif_urb_request", RawUrbRequest, transfer_flags);
    field!("struct usbif_urb_request", RawUrbRequest, buffer_length);
    field!("struct usbif_urb_request", RawUrbRequest, u);
    field!("struct usbif_urb_request", RawUrbRequest, seg);
    put(
        "offsetof struct usbif_urb_request.u.ctrl",
        offset_of!(RawUrbRequest, u),
    );
    put(
        "fieldsize struct usbif_urb_request.u.ctrl",
        size_of::<[u8; 8]>(),
    );
    union_field!(RawIsoc, "isoc", interval);
    union_field!(RawIsoc, "isoc", start_frame);
    union_field!(RawIsoc, "isoc", number_of_packets);
    union_field!(RawIsoc, "isoc", nr_frame_desc_segs);
    union_field!(RawIntr, "intr", interval);
    union_field!(RawIntr, "intr", pad);
    union_field!(RawUnlink, "unlink", unlink_id);
    union_field!(RawUnlink, "unlink", pad);

    put(
        "sizeof struct usbif_urb_response",
        size_of::<RawUrbResponse>(),
    );
    field!("struct usbif_urb_response", RawUrbResponse, id);
    field!("struct usbif_urb_response", RawUrbResponse, start_frame);
    field!("struct usbif_urb_response", RawUrbResponse, status);
    field!("struct usbif_urb_response", RawUrbResponse, actual_length);
    field!("struct usbif_urb_response", RawUrbResponse, error_count);

    put(
        "sizeof struct usbif_conn_request",
        size_of::<RawConnRequest>(),
    );
    field!("struct usbif_conn_request", RawConnRequest, id);
    put(
        "sizeof struct usbif_conn_response",
        size_of::<RawConnResponse>(),
    );
    field!("struct usbif_conn_response", RawConnResponse, id);
    field!("struct usbif_conn_response", RawConnResponse, portnum);
    field!("struct usbif_conn_response", RawConnResponse, speed);

    let urb_entry = size_of::<RawUrbRequest>().max(size_of::<RawUrbResponse>());
    let conn_entry = size_of::<RawConnRequest>().max(size_of::<RawConnResponse>());
    put("sizeof union usbif_urb_sring_entry", urb_entry);
    put("sizeof union usbif_conn_sring_entry", conn_entry);
    for ring in ["usbif_urb", "usbif_conn"] {
        let mut sring = |f: &str, off: usize, size: usize| {
            put(&format!("offsetof struct {ring}_sring.{f}"), off);
            put(&format!("fieldsize struct {ring}_sring.{f}"), size);
        };
        sring("req_prod", offset_of!(RawSringHeader, req_prod), 4);
        sring("req_event", offset_of!(RawSringHeader, req_event), 4);
        sring("rsp_prod", offset_of!(RawSringHeader, rsp_prod), 4);
        sring("rsp_event", offset_of!(RawSringHeader, rsp_event), 4);
        sring(
            "pvt",
            offset_of!(RawSringHeader, pvt),
            size_of_field(|h: &RawSringHeader| &h.pvt),
        );
        sring(
            "__pad",
            offset_of!(RawSringHeader, pad),
            size_of_field(|h: &RawSringHeader| &h.pad),
        );
        put(&format!("offsetof struct {ring}_sring.ring"), HEADER_SIZE);
    }

    let page = wire::RING_PAGE_SIZE;
    put("value USB_URB_RING_SIZE", wire::URB_RING_SIZE as usize);
    put("value USB_CONN_RING_SIZE", wire::CONN_RING_SIZE as usize);
    assert_eq!(const_ring_size(page, urb_entry), wire::URB_RING_SIZE);
    assert_eq!(const_ring_size(page, conn_entry), wire::CONN_RING_SIZE);
    put(
        "value __CONST_RING_SIZE(usbif_urb, 2 * USBIF_RING_SIZE)",
        const_ring_size(2 * page, urb_entry) as usize,
    );
    put(
        "value __CONST_RING_SIZE(usbif_urb, 16 * USBIF_RING_SIZE)",
        const_ring_size(16 * page, urb_entry) as usize,
    );
    put(
        "value __CONST_RING_SIZE(usbif_conn, 4 * USBIF_RING_SIZE)",
        const_ring_size(4 * page, conn_entry) as usize,
    );
    put("value USBIF_RING_SIZE", page);
    put(
        "value USBIF_MAX_SEGMENTS_PER_REQUEST",
        wire::MAX_SEGMENTS_PER_REQUEST,
    );
    put("value USBIF_MAX_PORTNR", usize::from(wire::MAX_PORTNR));
    put("value USBIF_SHORT_NOT_OK", usize::from(wire::SHORT_NOT_OK));
    put("value USBIF_PIPE_PORT_MASK", bits::PORT_MASK as usize);
    put("value USBIF_PIPE_UNLINK", bits::UNLINK as usize);
    put("value USBIF_PIPE_DIR", bits::DIR as usize);
    put("value USBIF_PIPE_DEV_MASK", bits::DEV_MASK as usize);
    put("value USBIF_PIPE_DEV_SHIFT", bits::DEV_SHIFT as usize);
    put("value USBIF_PIPE_EP_MASK", bits::EP_MASK as usize);
    put("value USBIF_PIPE_EP_SHIFT", bits::EP_SHIFT as usize);
    put("value USBIF_PIPE_TYPE_MASK", bits::TYPE_MASK as usize);
    put("value USBIF_PIPE_TYPE_SHIFT", bits::TYPE_SHIFT as usize);
    put("value USBIF_PIPE_TYPE_ISOC", XferType::Isoc as usize);
    put("value USBIF_PIPE_TYPE_INT", XferType::Int as usize);
    put("value USBIF_PIPE_TYPE_CTRL", XferType::Ctrl as usize);
    put("value USBIF_PIPE_TYPE_BULK", XferType::Bulk as usize);
    put("value USBIF_SPEED_NONE", Speed::None as usize);
    put("value USBIF_SPEED_LOW", Speed::Low as usize);
    put("value USBIF_SPEED_FULL", Speed::Full as usize);
    put("value USBIF_SPEED_HIGH", Speed::High as usize);
    put("value USB_VER_USB11", UsbVer::Usb11 as usize);
    put("value USB_VER_USB20", UsbVer::Usb20 as usize);
    for (name, s) in [
        ("OK", Status::Ok),
        ("NODEV", Status::NoDev),
        ("INVAL", Status::Inval),
        ("STALL", Status::Stall),
        ("IOERROR", Status::IoError),
        ("BABBLE", Status::Babble),
        ("SHUTDOWN", Status::Shutdown),
    ] {
        m.insert(format!("value USBIF_STATUS_{name}"), i64::from(s.to_wire()));
    }
    m
}

fn size_of_field<T, F>(_: impl Fn(&T) -> &F) -> usize {
    size_of::<F>()
}

fn c_facts() -> BTreeMap<String, i64> {
    assert!(
        Path::new(HEADER).exists(),
        "{HEADER} is missing: install libxen-dev (ci/test.sh does) — the layout check cannot run without the real header"
    );
    let dir = std::env::temp_dir().join(format!("pvusb-ring-layout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("layout.c");
    let exe = dir.join("layout");
    std::fs::write(&src, C_PROGRAM).unwrap();
    let out = Command::new("gcc")
        .args(["-std=gnu11", "-Wall", "-Werror", "-o"])
        .arg(&exe)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run gcc ({e}): install gcc (ci/test.sh does) — the layout check needs it"
            )
        });
    assert!(
        out.status.success(),
        "gcc failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&exe).output().unwrap();
    assert!(run.status.success(), "layout program failed");
    std::fs::remove_dir_all(&dir).ok();
    String::from_utf8(run.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

#[test]
fn layout_matches_usbif_h_and_ring_h() {
    let c = c_facts();
    let rust = rust_facts();
    let mut bad = Vec::new();
    for (k, cv) in &c {
        match rust.get(k) {
            Some(rv) if rv == cv => {}
            Some(rv) => bad.push(format!("{k}: C {cv}, Rust {rv}")),
            None => bad.push(format!("{k}: C {cv}, no Rust counterpart")),
        }
    }
    for k in rust.keys().filter(|k| !c.contains_key(*k)) {
        bad.push(format!("{k}: Rust only, not printed by the C program"));
    }
    assert!(bad.is_empty(), "layout mismatches:\n{}", bad.join("\n"));
    assert!(c.len() > 100, "only {} facts compared", c.len());
}
