//! Transfer types and error paths end to end: interrupt (HID), isochronous with frame
//! descriptors written back, unlink (both answers), stall + CLEAR_FEATURE(HALT), unplug
//! mid-transfer, large bulk transfers split into usbfs-style URBs, SuperSpeed shown as HIGH.

mod common;

use common::*;
use pvusb_backend::host::HostSpeed;
use pvusb_backend::sim::{DeviceSpec, Faults, ModelSpec};
use pvusb_ring::wire::{Ep, Pipe, Setup, Speed, Transfer, Unlink, UrbRequest, XferType};
use xenstore_cfg::vusb::UsbVer;

fn setup_one(h: &mut Harness, model: ModelSpec) -> (Guest, String) {
    let id = h.add_controller(1, 0, UsbVer::Usb20, 4);
    let busid = h.plug(model);
    h.assign(&id, 1, Some(&busid));
    let mut g = Guest::connect(h, id, false);
    let ev = g.wait_event();
    assert_eq!(ev.port.get(), 1);
    g.enumerate(1, 3);
    (g, busid)
}

#[test]
fn hid_interrupt_and_control() {
    let mut h = Harness::new(&[1]);
    let (mut g, _) = setup_one(&mut h, ModelSpec::Keyboard { text: "ab".into() });
    // GET_DESCRIPTOR(CONFIG) header, then interrupt reports.
    let (r, d) = g.control(1, 3, Setup::new(0x80, 6, 0x200, 0, 9), &[]);
    assert_eq!((r.status, d.len(), d[1]), (0, 9, 2));
    let mut keys = Vec::new();
    for _ in 0..4 {
        let (r, rep) = g.transfer(1, 3, 0x81, XferType::Int, &[], 8);
        assert_eq!(r.status, 0);
        assert_eq!(rep.len(), 8);
        keys.push(rep[2]);
    }
    assert!(keys.contains(&4), "usage 0x04 ('a') reported: {keys:?}");
}

#[test]
fn iso_source_writes_frame_descriptors_back() {
    let mut h = Harness::new(&[1]);
    let (mut g, _) = setup_one(&mut h, ModelSpec::IsoSource { packet_size: 192 });
    let (r, _) = g.control(1, 3, Setup::new(0x01, 0x0b, 1, 0, 0), &[]);
    assert_eq!(r.status, 0, "SET_INTERFACE alt 1");
    let (r, data, descs) = iso_in(&mut g, 1, 3, 0x81, 8, 192);
    assert_eq!(r.status, 0);
    assert_eq!(r.actual_length, 8 * 192);
    assert_eq!(r.error_count, 0);
    for (i, &(actual, status)) in descs.iter().enumerate() {
        assert_eq!((actual, status), (192, 0), "descriptor {i}");
    }
    // Packet i of frame f holds (f*7 + j) for byte j: consecutive frames, no gaps.
    let f0 = u64::from(data[0]);
    for i in 0..8usize {
        for j in [0usize, 1, 191] {
            let want = ((f0 + i as u64 * 7 + j as u64) & 0xff) as u8;
            assert_eq!(data[i * 192 + j], want, "packet {i} byte {j}");
        }
    }
}

#[test]
fn unlink_answers_both() {
    let mut h = Harness::new(&[1]);
    let (mut g, _) = setup_one(
        &mut h,
        ModelSpec::Storage {
            size_bytes: 1 << 20,
        },
    );
    // An IN on the data pipe with no command pending stays on the host.
    let victim = g.start(1, 3, 0x81, XferType::Bulk, &[], 512, 0);
    std::thread::sleep(std::time::Duration::from_millis(50));
    g.poll();
    assert!(!g.responses.contains_key(&victim), "still in flight");
    let uid = g.fresh_id();
    g.push(&UrbRequest::Unlink(Unlink {
        id: uid,
        pipe: Pipe::new(1, 3, Ep::new(1, true), XferType::Bulk),
        victim,
    }));
    let (ru, _) = g.wait(uid);
    let (rv, buf) = g.wait(victim);
    assert_eq!(ru.status, 0, "unlink answered 0");
    assert_eq!(rv.status, -71, "victim answered -EPROTO");
    buf.unwrap()
        .pages
        .end_access()
        .map_err(|_| ())
        .expect("victim's grants released");
    // Unlinking something already answered is answered 0 too.
    let uid = g.fresh_id();
    g.push(&UrbRequest::Unlink(Unlink {
        id: uid,
        pipe: Pipe::new(1, 3, Ep::new(1, true), XferType::Bulk),
        victim,
    }));
    assert_eq!(g.wait(uid).0.status, 0);
}

#[test]
fn stall_then_clear_halt() {
    let mut h = Harness::new(&[1]);
    let (mut g, busid) = setup_one(&mut h, ModelSpec::Loopback { capacity: 4096 });
    let (r, _) = g.transfer(1, 3, 0x01, XferType::Bulk, b"hello", 0);
    assert_eq!(r.status, 0);
    // Halt the IN endpoint at run time (SET_CONFIGURATION during enumeration clears halts).
    let faults = Faults {
        stall: vec![0x81],
        ..Faults::default()
    };
    pvusb_backend::sim::set_faults(h.path(), &busid, &faults).unwrap();
    let mut stalled = false;
    for _ in 0..100 {
        let (r, _) = g.transfer(1, 3, 0x81, XferType::Bulk, &[], 1);
        if r.status == -32 {
            stalled = true;
            break;
        }
        assert_eq!(r.status, 0);
        std::thread::sleep(std::time::Duration::from_millis(10));
        let (r, _) = g.transfer(1, 3, 0x01, XferType::Bulk, b"h", 0);
        assert_eq!(r.status, 0);
    }
    assert!(stalled, "stalled endpoint answers -EPIPE");
    let (r, _) = g.transfer(1, 3, 0x81, XferType::Bulk, &[], 512);
    assert_eq!(r.status, -32, "and keeps answering it");
    let (r, _) = g.control(1, 3, Setup::new(0x02, 0x01, 0, 0x81, 0), &[]);
    assert_eq!(r.status, 0, "CLEAR_FEATURE(ENDPOINT_HALT)");
    let (r, _) = g.transfer(1, 3, 0x01, XferType::Bulk, b"world", 0);
    assert_eq!(r.status, 0);
    let (r, d) = g.transfer(1, 3, 0x81, XferType::Bulk, &[], 512);
    assert_eq!(r.status, 0);
    assert!(!d.is_empty(), "data flows again");
}

#[test]
fn unplug_mid_transfer_answers_everything_once() {
    let mut h = Harness::new(&[1]);
    let (mut g, busid) = setup_one(
        &mut h,
        ModelSpec::Storage {
            size_bytes: 1 << 20,
        },
    );
    let ids: Vec<u16> = (0..3)
        .map(|_| g.start(1, 3, 0x81, XferType::Bulk, &[], 512, 0))
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(30));
    pvusb_backend::sim::unplug(h.path(), &busid).unwrap();
    for id in ids {
        let (r, b) = g.wait(id);
        assert_eq!(r.status, -19, "in-flight URB answered -ENODEV");
        b.unwrap()
            .pages
            .end_access()
            .map_err(|_| ())
            .expect("grants released");
    }
    let ev = g.wait_event();
    assert_eq!((ev.port.get(), ev.speed), (1, Speed::None));
    // Later submissions are refused at once.
    let (r, _) = g.transfer(1, 3, 0x81, XferType::Bulk, &[], 512);
    assert_eq!(r.status, -19);
    g.poll();
    assert!(g.responses.is_empty(), "no extra answers");
}

#[test]
fn large_bulk_transfers_are_split_and_short_reads_end_them() {
    let mut h = Harness::with_config(&[1], Some("max-bulk-urb = 4096\n"));
    let (mut g, _) = setup_one(
        &mut h,
        ModelSpec::Storage {
            size_bytes: 1 << 20,
        },
    );
    let block: Vec<u8> = (0..65536u32).map(|i| (i ^ (i >> 8)) as u8).collect();
    let write = [0x2a, 0, 0, 0, 0, 0, 0, 0, 128, 0];
    let (r, _) = g.transfer(1, 3, 0x02, XferType::Bulk, &cbw(1, 65536, false, &write), 0);
    assert_eq!(r.status, 0);
    let (r, _) = g.transfer(1, 3, 0x02, XferType::Bulk, &block, 0);
    assert_eq!((r.status, r.actual_length), (0, 65536));
    let (r, csw) = g.transfer(1, 3, 0x81, XferType::Bulk, &[], 13);
    assert_eq!((r.status, csw[12]), (0, 0));
    let read = [0x28, 0, 0, 0, 0, 0, 0, 0, 128, 0];
    let (r, _) = g.transfer(1, 3, 0x02, XferType::Bulk, &cbw(2, 65536, true, &read), 0);
    assert_eq!(r.status, 0);
    let (r, back) = g.transfer(1, 3, 0x81, XferType::Bulk, &[], 65536);
    assert_eq!((r.status, r.actual_length), (0, 65536));
    assert!(back == block);
    let (r, csw) = g.transfer(1, 3, 0x81, XferType::Bulk, &[], 13);
    assert_eq!((r.status, csw[12]), (0, 0));
    // INQUIRY answers 36 bytes into a 16 KiB buffer: the first piece is short, the rest is
    // cancelled, and the guest sees one short, successful transfer.
    let (r, _) = g.transfer(
        1,
        3,
        0x02,
        XferType::Bulk,
        &cbw(3, 36, true, &[0x12, 0, 0, 0, 36, 0]),
        0,
    );
    assert_eq!(r.status, 0);
    let (r, d) = g.transfer(1, 3, 0x81, XferType::Bulk, &[], 16384);
    assert_eq!((r.status, d.len()), (0, 36));
    let (r, csw) = g.transfer(1, 3, 0x81, XferType::Bulk, &[], 13);
    assert_eq!((r.status, &csw[0..4]), (0, &b"USBS"[..]));
}

#[test]
fn superspeed_is_high_with_ep0_fix_and_too_fast_for_usb1_is_refused() {
    let mut h = Harness::new(&[1]);
    let id = h.add_controller(1, 0, UsbVer::Usb20, 2);
    let mut spec = DeviceSpec::new(ModelSpec::Storage {
        size_bytes: 1 << 20,
    });
    spec.speed = Some(HostSpeed::Super);
    let ss = h.plug_spec(&spec);
    h.assign(&id, 1, Some(&ss));
    let mut g = Guest::connect(&mut h, id, false);
    let ev = g.wait_event();
    assert_eq!(ev.speed, Speed::High);
    let (r, d) = g.control(1, 0, Setup::new(0x80, 6, 0x100, 0, 18), &[]);
    assert_eq!(r.status, 0);
    assert_eq!(d[7], 64, "bMaxPacketSize0 patched for a high-speed port");

    let id1 = h.add_controller(1, 1, UsbVer::Usb11, 2);
    let hs = h.plug(ModelSpec::Storage {
        size_bytes: 1 << 20,
    });
    h.assign(&id1, 1, Some(&hs));
    let mut g1 = Guest::connect(&mut h, id1, false);
    wait_until("refusal logged", || h.log().contains("too fast"));
    g1.poll();
    assert!(
        g1.events.is_empty(),
        "nothing announced on the USB 1.1 controller"
    );
    assert!(!h.is_claimed(&hs), "the refused device is released");
    let _ = Transfer::Bulk;
}

#[test]
fn sixteen_in_flight_keep_endpoint_order() {
    let mut h = Harness::new(&[1]);
    let (mut g, _) = setup_one(&mut h, ModelSpec::Loopback { capacity: 1 << 20 });
    let chunks: Vec<Vec<u8>> = (0..16u8).map(|i| vec![i; 4096]).collect();
    let ids: Vec<u16> = chunks
        .iter()
        .map(|c| g.start(1, 3, 0x01, XferType::Bulk, c, 0, 0))
        .collect();
    for id in ids {
        assert_eq!(g.wait(id).0.status, 0);
    }
    let ids: Vec<u16> = (0..16)
        .map(|_| g.start(1, 3, 0x81, XferType::Bulk, &[], 4096, 0))
        .collect();
    for (i, id) in ids.into_iter().enumerate() {
        let (r, b) = g.wait(id);
        assert_eq!((r.status, r.actual_length), (0, 4096));
        assert!(b.unwrap().read(4096) == chunks[i], "chunk {i} in order");
    }
}
