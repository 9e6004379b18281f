//! Persistent grants end to end: with `feature-persistent` on both sides each run of data
//! pages is mapped once per connection however many requests reuse it, the data still verifies, and
//! everything is unmapped when the frontend closes; a stock guest keeps map-per-request.

mod common;

use common::*;
use pvusb_backend::sim::ModelSpec;
use pvusb_ring::wire::{Ep, Pipe, Transfer, XferType};
use xenstore_cfg::vusb::{UsbVer, VusbId};
use xenstore_cfg::xenbus::XenbusState;

const ROUNDS: usize = 40;

fn setup(h: &mut Harness, persistent: bool) -> (VusbId, Guest) {
    let id = h.add_controller(1, 0, UsbVer::Usb20, 2);
    let busid = h.plug(ModelSpec::Loopback { capacity: 65536 });
    h.assign(&id, 1, Some(&busid));
    let mut g = Guest::connect_with(h, id, false, persistent);
    assert_eq!(g.wait_event().port.get(), 1);
    g.enumerate(1, 2);
    (id, g)
}

/// Loops `ROUNDS` transfers of `len` bytes through the same two buffers (a frontend's
/// pool); returns the broker's live mappings after each round.
fn loop_rounds(h: &Harness, g: &mut Guest, len: usize) -> Vec<u32> {
    let mut out = Some(g.alloc(len, true));
    let mut inb = Some(g.alloc(len, false));
    let mut live = Vec::new();
    for round in 0..ROUNDS {
        let data: Vec<u8> = (0..len).map(|i| (i * 13 + round) as u8).collect();
        let ob = out.take().unwrap();
        ob.pages.write_at(0, &data).unwrap();
        let pipe = Pipe::new(1, 2, Ep::new(1, false), XferType::Bulk);
        let id = g.submit(pipe, Transfer::Bulk, Some(ob), 0);
        let (r, b) = g.wait(id);
        assert_eq!(
            (r.status, r.actual_length as usize),
            (0, len),
            "OUT {round}"
        );
        out = b;
        let pipe = Pipe::new(1, 2, Ep::new(1, true), XferType::Bulk);
        let id = g.submit(pipe, Transfer::Bulk, inb.take(), 0);
        let (r, b) = g.wait(id);
        assert_eq!((r.status, r.actual_length as usize), (0, len), "IN {round}");
        let ib = b.unwrap();
        assert!(ib.read(len) == data, "round {round}: data looped back");
        inb = Some(ib);
        live.push(h.counters().mappings);
    }
    live
}

#[test]
fn persistent_guest_maps_each_page_once() {
    let mut h = Harness::new(&[1]);
    let (id, mut g) = setup(&mut h, true);
    let before = h.counters().mappings;
    // 8 KiB: a two-page run, 4 KiB: one page; each run is one cached mapping (zero copy).
    for len in [8192, 4096] {
        let live = loop_rounds(&h, &mut g, len);
        assert!(
            live.iter().all(|&m| m == live[0]),
            "no mapping per request: {live:?}"
        );
    }
    // Rings + the enumeration buffers' runs + the OUT and IN runs of both sizes, all still
    // mapped.
    let after = h.counters().mappings;
    assert!(
        after >= before + 4,
        "pages stay mapped: {before} -> {after}"
    );
    g.set_state(XenbusState::Closing);
    h.wait_backend_state(&id, XenbusState::Closing);
    g.set_state(XenbusState::Closed);
    h.wait_backend_state(&id, XenbusState::Closed);
    wait_until("every persistent mapping released", || {
        h.counters().mappings == 0
    });
}

#[test]
fn stock_guest_keeps_map_per_request() {
    let mut h = Harness::new(&[1]);
    let (_id, mut g) = setup(&mut h, false);
    let rings = h.counters().mappings;
    let live = loop_rounds(&h, &mut g, 8192);
    assert!(
        live.iter().all(|&m| m == rings),
        "only the rings stay mapped between requests: {live:?}"
    );
}

#[test]
fn stock_guest_batch_is_answered_with_every_grant_unmapped() {
    // Requests that reach the backend together have their data pages mapped in one broker
    // call; each response still comes only after its pages are unmapped, including those
    // of a request answered without the device (prefetched, then not used).
    let mut h = Harness::new(&[1]);
    let (_id, mut g) = setup(&mut h, false);
    let rings = h.counters().mappings;
    for round in 0..10u8 {
        let data: Vec<u8> = (0..8192).map(|i| (i as u8) ^ round).collect();
        let mut ids = Vec::new();
        for _ in 0..3 {
            let b = g.alloc(8192, true);
            b.pages.write_at(0, &data).unwrap();
            let pipe = Pipe::new(1, 2, Ep::new(1, false), XferType::Bulk);
            ids.push((g.queue(pipe, Transfer::Bulk, Some(b), 0), 0, 8192));
        }
        // Port 2 is empty: answered -ENODEV by the backend itself.
        let b = g.alloc(4096, true);
        let pipe = Pipe::new(2, 2, Ep::new(1, false), XferType::Bulk);
        ids.push((g.queue(pipe, Transfer::Bulk, Some(b), 0), -19, 0));
        for _ in 0..3 {
            let b = g.alloc(8192, false);
            let pipe = Pipe::new(1, 2, Ep::new(1, true), XferType::Bulk);
            ids.push((g.queue(pipe, Transfer::Bulk, Some(b), 0), 0, 8192));
        }
        g.push_queued();
        for (id, status, len) in ids {
            let (r, b) = g.wait(id);
            assert_eq!(
                (r.status, r.actual_length as usize),
                (status, len),
                "{round}"
            );
            let b = b.unwrap();
            if len > 0 && id >= 4 {
                assert!(b.read(len) == data, "round {round}: data looped back");
            }
            b.pages
                .end_access()
                .map_err(|_| ())
                .expect("pages unmapped before the response");
        }
        assert_eq!(h.counters().mappings, rings, "only the rings stay mapped");
    }
}
