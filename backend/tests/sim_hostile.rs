//! A hostile frontend gets a defined answer for each malformed request, or its controller
//! closed; other guests keep working; the backend cleans up after dead domains and on
//! SIGTERM.

mod common;

use common::*;
use pvusb_backend::sim::ModelSpec;
use pvusb_ring::wire::{Ep, Pipe, RawUrbRequest, Setup, XferType};
use pvusb_xen::DomId;
use std::sync::atomic::Ordering;
use xenstore_cfg::vusb::UsbVer;
use xenstore_cfg::xenbus::XenbusState;

fn storage_guest(h: &mut Harness, fe: u16) -> (Guest, String) {
    let id = h.add_controller(fe, 0, UsbVer::Usb20, 4);
    let busid = h.plug(ModelSpec::Storage {
        size_bytes: 1 << 20,
    });
    h.assign(&id, 1, Some(&busid));
    let mut g = Guest::connect(h, id, false);
    assert_eq!(g.wait_event().port.get(), 1);
    g.enumerate(1, 4);
    (g, busid)
}

fn inquiry(g: &mut Guest) {
    let (r, _) = g.transfer(
        1,
        4,
        0x02,
        XferType::Bulk,
        &cbw(9, 36, true, &[0x12, 0, 0, 0, 36, 0]),
        0,
    );
    assert_eq!(r.status, 0);
    let (r, d) = g.transfer(1, 4, 0x81, XferType::Bulk, &[], 36);
    assert_eq!((r.status, d.len()), (0, 36));
    let (r, _) = g.transfer(1, 4, 0x81, XferType::Bulk, &[], 13);
    assert_eq!(r.status, 0);
}

fn raw_bulk_in(id: u16, port: u8, dev: u8, gref: u32, offset: u16, len: u16) -> RawUrbRequest {
    let mut raw = RawUrbRequest::default();
    raw.id.set(id);
    raw.pipe
        .set(Pipe::new(port, dev, Ep::new(1, true), XferType::Bulk).0);
    raw.nr_buffer_segs.set(1);
    raw.buffer_length.set(len);
    raw.seg[0].gref.set(gref);
    raw.seg[0].offset.set(offset);
    raw.seg[0].length.set(len);
    raw
}

fn raw_bulk_out(id: u16, port: u8, dev: u8, gref: u32, offset: u16, len: u16) -> RawUrbRequest {
    let mut raw = raw_bulk_in(id, port, dev, gref, offset, len);
    raw.pipe
        .set(Pipe::new(port, dev, Ep::new(1, false), XferType::Bulk).0);
    raw
}

#[test]
fn malformed_requests_get_defined_answers() {
    let mut h = Harness::new(&[1]);
    let (mut g, _) = storage_guest(&mut h, 1);
    let page = g.alloc(4096, false);
    let gref = page.pages.grefs()[0].0;
    let cases: [(&str, RawUrbRequest, i32); 6] = [
        (
            "segment past its page",
            raw_bulk_in(1, 1, 4, gref, 4000, 200),
            -22,
        ),
        ("unknown port", raw_bulk_in(2, 7, 4, gref, 0, 512), -19),
        ("port 0", raw_bulk_in(3, 0, 4, gref, 0, 512), -22),
        ("unknown address", raw_bulk_in(4, 1, 9, gref, 0, 512), -19),
        ("bulk at address 0", raw_bulk_in(5, 1, 0, gref, 0, 512), -22),
        (
            // OUT: its pages are read (copied or mapped) before the device sees it. A bad
            // IN grant is found when the device's bytes are copied back (-EIO), see
            // engine::tests.
            "grant that does not map",
            raw_bulk_out(6, 1, 4, 999_999, 0, 512),
            -22,
        ),
    ];
    for (what, raw, want) in cases {
        g.push_raw(&raw);
        let (r, _) = g.wait(raw.id.get());
        assert_eq!(r.status, want, "{what}");
    }
    // More than 16 segments, reserved pipe bits, unknown transfer flags.
    let mut raw = raw_bulk_in(7, 1, 4, gref, 0, 512);
    raw.nr_buffer_segs.set(17);
    g.push_raw(&raw);
    assert_eq!(g.wait(7).0.status, -22, "17 segments");
    let mut raw = raw_bulk_in(8, 1, 4, gref, 0, 512);
    raw.pipe.set(raw.pipe.get() | 1 << 20);
    g.push_raw(&raw);
    assert_eq!(g.wait(8).0.status, -22, "reserved pipe bits");
    let mut raw = raw_bulk_in(9, 1, 4, gref, 0, 512);
    raw.transfer_flags.set(0x8000);
    g.push_raw(&raw);
    assert_eq!(
        g.wait(9).0.status,
        -22,
        "containment mark without negotiation"
    );
    // SET_ADDRESS out of range, wLength beyond the buffer.
    let (r, _) = g.control(1, 4, Setup::new(0x00, 5, 300, 0, 0), &[]);
    assert_eq!(r.status, -22);
    // Still connected and serving.
    inquiry(&mut g);
    assert_eq!(h.backend_state(&g.id), XenbusState::Connected);
    page.pages
        .end_access()
        .map_err(|_| ())
        .expect("unused page never mapped");
}

#[test]
fn duplicate_live_id_closes_only_that_controller_and_it_can_reconnect() {
    let mut h = Harness::new(&[1]);
    let (mut g, _) = storage_guest(&mut h, 1);
    let a = g.alloc(512, false);
    let b = g.alloc(512, false);
    let ga = a.pages.grefs()[0].0;
    let gb = b.pages.grefs()[0].0;
    g.push_raw(&raw_bulk_in(5, 1, 4, ga, 0, 512));
    g.push_raw(&raw_bulk_in(5, 1, 4, gb, 0, 512));
    g.wait_backend(&h, XenbusState::Closing);
    assert!(h.log().contains("closing the controller"), "warned");
    // The live request was answered (shut down) and its grant unmapped.
    let (r, _) = g.wait(5);
    assert_eq!(r.status, -108);
    a.pages
        .end_access()
        .map_err(|_| ())
        .expect("grants released");
    drop(b);
    let mut g = g.reconnect(&mut h);
    let ev = g.wait_event();
    assert_eq!(ev.port.get(), 1, "ports announced again after reconnect");
    g.enumerate(1, 4);
    inquiry(&mut g);
}

#[test]
fn ring_overflow_closes_one_guest_the_other_keeps_working() {
    let mut h = Harness::new(&[1, 2]);
    let (mut good, _) = storage_guest(&mut h, 1);
    let (mut bad, _) = storage_guest(&mut h, 2);
    let prod = bad.urb.req_prod_pvt();
    bad.urb
        .sring()
        .req_prod()
        .store(prod.wrapping_add(100), Ordering::Release);
    bad.evtchn.notify().unwrap();
    bad.wait_backend(&h, XenbusState::Closing);
    for _ in 0..3 {
        inquiry(&mut good);
    }
    assert_eq!(h.backend_state(&good.id), XenbusState::Connected);
}

#[test]
fn frontend_domain_death_releases_everything() {
    let mut h = Harness::new(&[2]);
    let (mut g, busid) = storage_guest(&mut h, 2);
    let _pending = g.start(1, 4, 0x81, XferType::Bulk, &[], 512, 0);
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert!(h.counters().mappings > 0);
    h.broker.destroy_domain(DomId(2)).unwrap();
    wait_until("broker counters back to idle", || {
        let c = h.counters();
        c.grants == 0 && c.mappings == 0 && c.channels == 0
    });
    wait_until("device released", || !h.is_claimed(&busid));
    assert!(
        h.log().contains("frontend domain gone"),
        "log:\n{}",
        h.log()
    );
    drop(g);
}

#[test]
fn sigterm_answers_in_flight_and_releases_devices() {
    let mut h = Harness::new(&[1]);
    let (mut g, busid) = storage_guest(&mut h, 1);
    let pending = g.start(1, 4, 0x81, XferType::Bulk, &[], 512, 0);
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert!(h.stop_backend(), "clean exit");
    let (r, b) = g.wait(pending);
    assert_eq!(r.status, -108, "in-flight URB answered -ESHUTDOWN");
    b.unwrap()
        .pages
        .end_access()
        .map_err(|_| ())
        .expect("grants released");
    assert_eq!(h.backend_state(&g.id), XenbusState::Closed);
    assert!(!h.is_claimed(&busid));
    wait_until("no mappings left", || h.counters().mappings == 0);
}

#[test]
fn flooding_guest_does_not_starve_another() {
    let mut h = Harness::new(&[1, 2]);
    let (mut good, _) = storage_guest(&mut h, 1);
    let (mut flood, _) = storage_guest(&mut h, 2);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (stop2, sent2) = (stop.clone(), sent.clone());
    let flooder = std::thread::spawn(move || {
        let mut n = 0u64;
        while !stop2.load(Ordering::Relaxed) {
            while !flood.urb.is_full() {
                let id = (n % 16) as u16;
                // Port 3 is empty: answered at once without the host.
                flood.push_raw(&raw_bulk_in(id, 3, 4, 0, 0, 512));
                n += 1;
            }
            sent2.store(n, Ordering::Relaxed);
            flood.poll();
            flood.responses.clear();
        }
    });
    // The flood is going before the other guest starts.
    wait_until("the flood to run", || sent.load(Ordering::Relaxed) > 100);
    let before = sent.load(Ordering::Relaxed);
    let t = std::time::Instant::now();
    for _ in 0..20 {
        inquiry(&mut good);
    }
    let took = t.elapsed();
    let during = sent.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    flooder.join().unwrap();
    assert!(
        took < std::time::Duration::from_secs(5),
        "20 INQUIRYs took {took:?} under the flood ({during} flood requests meanwhile)"
    );
}

#[test]
fn losing_xenstore_still_releases_devices() {
    let mut h = Harness::new(&[1]);
    let (_g, busid) = storage_guest(&mut h, 1);
    assert!(h.is_claimed(&busid));
    h.xenstored.take().unwrap().stop().unwrap();
    let mut child = h.backend.take().unwrap();
    let mut exited = None;
    wait_until("backend exit", || {
        exited = child.try_wait().unwrap();
        exited.is_some()
    });
    assert!(!exited.unwrap().success(), "exits with an error");
    assert!(!h.is_claimed(&busid), "device released on the way out");
}
