//! Engine tests (compiled only under #[cfg(test)], see engine/mod.rs) over the in-process
//! rig: data paths, address emulation, unlink, splitting, protocol errors, and the fuzz body
//! under proptest.

use proptest::prelude::*;
use pvusb_ring::wire::{
    ConnRequest, Ep, Pipe, Port, Seg, Segments, Setup, Speed, Status, Submit, Transfer, Unlink,
    UrbRequest, XferType,
};

use super::testing::{fuzz_controller, Bus, InProcDevice, Rig};
use crate::sim::{Faults, ModelSpec, ShortRead};

fn submit(id: u16, pipe: Pipe, xfer: Transfer, pages: &[u32], len: u32) -> UrbRequest {
    let mut segs = Segments::new();
    let mut left = len;
    for (i, &g) in pages.iter().enumerate() {
        let n = left.min(4096);
        if n == 0 {
            break;
        }
        segs.push(Seg::new(i, g, 0, n as u16).unwrap()).unwrap();
        left -= n;
    }
    UrbRequest::Submit(Submit {
        id,
        pipe,
        xfer,
        segs,
        buffer_length: len,
        short_not_ok: false,
        ext_flags: 0,
    })
}

fn ctrl(rig: &mut Rig, id: u16, port: u8, dev: u8, setup: Setup) -> (i32, u32) {
    let pages: &[u32] = if setup.length() > 0 { &[20] } else { &[] };
    let req = submit(
        id,
        Pipe::new(port, dev, Ep::new(0, setup.is_in()), XferType::Ctrl),
        Transfer::Ctrl { setup: setup.0 },
        pages,
        u32::from(setup.length()),
    );
    answer(rig, &req)
}

fn answer(rig: &mut Rig, req: &UrbRequest) -> (i32, u32) {
    rig.push(&req.to_raw());
    rig.collect();
    let r = rig
        .responses
        .iter()
        .rev()
        .find(|r| r.id == req.id())
        .copied()
        .expect("answered");
    rig.responses.clear();
    (r.status, r.actual_length)
}

fn addressed(max_bulk: usize) -> Rig {
    addressed_in(max_bulk, false)
}

/// An addressed rig whose data moves by mapping, or by grant copy (`copy`).
fn addressed_in(max_bulk: usize, copy: bool) -> Rig {
    let mut rig = if copy {
        Rig::copying(max_bulk, false)
    } else {
        Rig::new(max_bulk, false)
    }
    .unwrap();
    for port in 1..=3 {
        assert_eq!(ctrl(&mut rig, 1, port, 0, Setup::new(0, 5, 7, 0, 0)).0, 0);
        assert_eq!(ctrl(&mut rig, 2, port, 7, Setup::new(0, 9, 1, 0, 0)).0, 0);
    }
    rig
}

fn bulk(id: u16, ep: u8, pages: &[u32], len: u32) -> UrbRequest {
    submit(
        id,
        Pipe::new(1, 7, Ep::from_address(ep), XferType::Bulk),
        Transfer::Bulk,
        pages,
        len,
    )
}

#[test]
fn address_zero_and_unknown_addresses() {
    let mut rig = Rig::new(usize::MAX, false).unwrap();
    let (st, len) = ctrl(&mut rig, 1, 1, 0, Setup::new(0x80, 6, 0x100, 0, 18));
    assert_eq!((st, len), (0, 18));
    let (st, _) = ctrl(&mut rig, 2, 1, 0, Setup::new(0x80, 0, 0, 0, 2));
    assert_eq!(st, Status::Inval.to_wire(), "GET_STATUS at address 0");
    let (st, _) = ctrl(&mut rig, 3, 1, 9, Setup::new(0x80, 6, 0x100, 0, 18));
    assert_eq!(st, Status::NoDev.to_wire(), "address never set");
    assert_eq!(ctrl(&mut rig, 4, 1, 0, Setup::new(0, 5, 9, 0, 0)).0, 0);
    let (st, len) = ctrl(&mut rig, 5, 1, 9, Setup::new(0x80, 6, 0x100, 0, 18));
    assert_eq!((st, len), (0, 18));
    let (st, _) = ctrl(&mut rig, 6, 4, 0, Setup::new(0x80, 6, 0x100, 0, 18));
    assert_eq!(st, Status::NoDev.to_wire(), "empty port");
}

/// 6000 bytes OUT to the loopback and back IN through a rig whose bulk URBs are at most
/// `max_bulk` bytes, by mapping or by grant copy; the rig is returned for more checks.
fn echo_6000(max_bulk: usize, copy: bool) -> Rig {
    let mut rig = addressed_in(max_bulk, copy);
    let data: Vec<u8> = (0..6000u32).map(|i| (i * 3) as u8).collect();
    rig.mem.arena().write(4 * 4096, &data).unwrap();
    assert_eq!(answer(&mut rig, &bulk(3, 0x01, &[4, 5], 6000)), (0, 6000));
    assert_eq!(answer(&mut rig, &bulk(4, 0x81, &[8, 9], 6000)), (0, 6000));
    let mut back = vec![0u8; 6000];
    rig.mem.arena().read(8 * 4096, &mut back).unwrap();
    assert!(back == data, "max_bulk {max_bulk}, copy: {copy}");
    rig
}

#[test]
fn loopback_round_trip_unmaps_everything() {
    for copy in [false, true] {
        assert_eq!(echo_6000(usize::MAX, copy).mem.live_mappings(), 0);
    }
}

#[test]
fn copied_in_bytes_the_guest_cannot_take_fail_the_request() {
    let mut rig = addressed_in(usize::MAX, true);
    rig.mem.arena().write(4 * 4096, &[7; 4096]).unwrap();
    assert_eq!(answer(&mut rig, &bulk(3, 0x01, &[4], 4096)), (0, 4096));
    let copier = rig.copier.clone().unwrap();
    copier.set_read_only(8);
    let (status, len) = answer(&mut rig, &bulk(4, 0x81, &[8], 4096));
    assert_eq!((status, len), (Status::IoError.to_wire(), 0));
    // The next request is unaffected.
    assert_eq!(answer(&mut rig, &bulk(5, 0x01, &[4], 4096)), (0, 4096));
    assert_eq!(answer(&mut rig, &bulk(6, 0x81, &[9], 4096)), (0, 4096));
    let mut back = vec![0u8; 4096];
    rig.mem.arena().read(9 * 4096, &mut back).unwrap();
    assert!(back.iter().all(|&b| b == 7));
}

#[test]
fn split_transfers_match_whole_ones() {
    for copy in [false, true] {
        echo_6000(1024, copy);
    }
}

#[test]
fn unlink_answers_victim_and_itself() {
    let mut rig = addressed(usize::MAX);
    rig.push(&bulk(3, 0x81, &[8], 512).to_raw());
    rig.collect();
    assert!(rig.responses.is_empty(), "loopback IN waits for data");
    let unlink = UrbRequest::Unlink(Unlink {
        id: 4,
        pipe: Pipe::new(1, 7, Ep::new(1, true), XferType::Bulk),
        victim: 3,
    });
    rig.push(&unlink.to_raw());
    rig.collect();
    let mut got: Vec<(u16, i32)> = rig.responses.iter().map(|r| (r.id, r.status)).collect();
    got.sort();
    assert_eq!(got, vec![(3, Status::IoError.to_wire()), (4, 0)]);
    assert_eq!(rig.mem.live_mappings(), 0);
}

#[test]
fn duplicate_live_id_closes_the_controller() {
    let mut rig = addressed(usize::MAX);
    rig.push(&bulk(3, 0x81, &[8], 512).to_raw());
    assert!(!rig.closed);
    rig.push(&bulk(3, 0x81, &[9], 512).to_raw());
    assert!(rig.closed, "protocol error");
    rig.collect();
    assert_eq!(
        rig.responses
            .iter()
            .map(|r| (r.id, r.status))
            .collect::<Vec<_>>(),
        vec![(3, Status::Shutdown.to_wire())],
        "the live one answered once, the duplicate never"
    );
    assert_eq!(rig.mem.live_mappings(), 0);
    rig.reconnect().unwrap();
    assert_eq!(
        ctrl(&mut rig, 1, 1, 0, Setup::new(0x80, 6, 0x100, 0, 18)).0,
        0
    );
}

#[test]
fn unplug_answers_in_flight_with_nodev() {
    let mut rig = addressed(usize::MAX);
    rig.push(&bulk(3, 0x81, &[8], 512).to_raw());
    let port = pvusb_ring::wire::Port::new(1).unwrap();
    drop(rig.engine.detach(port));
    rig.collect();
    assert_eq!(
        rig.responses
            .iter()
            .map(|r| (r.id, r.status))
            .collect::<Vec<_>>(),
        vec![(3, Status::NoDev.to_wire())]
    );
    rig.responses.clear();
    assert_eq!(
        answer(&mut rig, &bulk(4, 0x81, &[8], 512)).0,
        Status::NoDev.to_wire()
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(crate::test_cases(64)))]
    #[test]
    fn controller_survives_arbitrary_guests(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
        fuzz_controller(&data);
    }
}

#[test]
fn hotplug_events_wait_for_conn_ring_slots() {
    let mut rig = Rig::with_conn_slots(usize::MAX, false, 1).unwrap();
    rig.collect();
    assert_eq!(rig.events.len(), 1, "one slot, one event; the rest queued");
    for _ in 0..2 {
        rig.kick();
        rig.collect();
    }
    let ports: Vec<u8> = rig.events.iter().map(|e| e.port.get()).collect();
    assert_eq!(
        ports,
        vec![1, 2, 3],
        "each re-posted slot carries the next event, in order"
    );
}

#[test]
fn short_split_read_fails_only_if_the_guest_asked() {
    for (flag, want) in [(false, 0), (true, Status::IoError.to_wire())] {
        let mut rig = addressed(1024);
        rig.mem.arena().write(4 * 4096, &[7u8; 100]).unwrap();
        assert_eq!(answer(&mut rig, &bulk(3, 0x01, &[4], 100)), (0, 100));
        let mut req = bulk(4, 0x81, &[8, 9], 6000);
        if let UrbRequest::Submit(s) = &mut req {
            s.short_not_ok = flag;
        }
        assert_eq!(answer(&mut rig, &req), (want, 100), "SHORT_NOT_OK {flag}");
    }
}

/// A rig (port 1 addressed and configured) whose loopback holds two records, 100 bytes of
/// 7 then 50 bytes of 9.
fn two_records(max_bulk: usize, aca: bool) -> Rig {
    let mut rig = Rig::new(max_bulk, aca).unwrap();
    assert_eq!(ctrl(&mut rig, 1, 1, 0, Setup::new(0, 5, 7, 0, 0)).0, 0);
    assert_eq!(ctrl(&mut rig, 2, 1, 7, Setup::new(0, 9, 1, 0, 0)).0, 0);
    rig.mem.arena().write(4 * 4096, &[7u8; 100]).unwrap();
    rig.mem.arena().write(5 * 4096, &[9u8; 50]).unwrap();
    assert_eq!(answer(&mut rig, &bulk(3, 0x01, &[4], 100)), (0, 100));
    assert_eq!(answer(&mut rig, &bulk(4, 0x01, &[5], 50)), (0, 50));
    rig
}

/// The answer to request `id` among those collected: (status, actual length).
fn got(rig: &Rig, id: u16) -> Option<(i32, u32)> {
    rig.responses
        .iter()
        .find(|r| r.id == id)
        .map(|r| (r.status, r.actual_length))
}

#[test]
fn short_host_split_read_does_not_cancel_the_next_transfer_under_aca() {
    let mut rig = two_records(1024, true);
    // A 6000-byte IN (six host URBs of 1024) meets the 100-byte record; the 50-byte IN
    // queued behind it is a transfer of its own and must run.
    rig.push(&bulk(5, 0x81, &[8, 9], 6000).to_raw());
    rig.push(&bulk(6, 0x81, &[10], 50).to_raw());
    rig.collect();
    assert_eq!(got(&rig, 5), Some((0, 100)));
    assert_eq!(got(&rig, 6), Some((0, 50)));
    rig.responses.clear();
    // The endpoint is not left refusing continuations either.
    assert_eq!(answer(&mut rig, &bulk(7, 0x01, &[4], 30)), (0, 30));
    assert_eq!(answer(&mut rig, &bulk(8, 0x81, &[8], 30)), (0, 30));
}

/// Split chains: three pieces of one IN transfer at once; the first meets a 100-byte record
/// and ends short, the two behind it are cancelled without reading the next record, which
/// the next transfer gets. The flags anywhere but on bulk IN are refused.
#[test]
fn split_chain_short_piece_cancels_only_its_own_transfer() {
    use pvusb_ring::urb::chain::{SPLIT_CONT, SPLIT_MORE};
    for aca in [false, true] {
        let mut rig = two_records(usize::MAX, aca);
        rig.push(&piece(5, 8, SPLIT_MORE).to_raw());
        rig.push(&piece(6, 9, SPLIT_MORE | SPLIT_CONT).to_raw());
        rig.push(&piece(7, 10, SPLIT_CONT).to_raw());
        rig.collect();
        assert_eq!(got(&rig, 5), Some((0, 100)), "aca {aca}");
        for id in [6, 7] {
            let (status, len) = got(&rig, id).expect("answered");
            assert!(status < 0 && len == 0, "piece {id} ran: {status} {len}");
        }
        rig.responses.clear();
        assert_eq!(answer(&mut rig, &bulk(8, 0x81, &[11], 50)), (0, 50));
        let mut back = [0u8; 50];
        rig.mem.arena().read(11 * 4096, &mut back).unwrap();
        assert_eq!(back, [9u8; 50]);
        let mut out = bulk(9, 0x01, &[4], 10);
        if let UrbRequest::Submit(s) = &mut out {
            s.ext_flags = SPLIT_MORE;
        }
        assert_eq!(answer(&mut rig, &out).0, Status::Inval.to_wire());
    }
}

/// A 4 KiB bulk IN into `page` carrying the split chain `flags`.
fn piece(id: u16, page: u32, flags: u16) -> UrbRequest {
    let mut r = bulk(id, 0x81, &[page], 4096);
    if let UrbRequest::Submit(s) = &mut r {
        s.ext_flags = flags;
    }
    r
}

/// A rig whose loopback sits on an xHCI-like bus (no stop at a short packet) and cuts the
/// first IN read to 100 bytes, addressed and configured, with nothing buffered yet.
fn xhci_rig(max_bulk: usize, aca: bool) -> Rig {
    let bus = Bus {
        no_stop_on_short: true,
        faults: Faults {
            short_read: Some(ShortRead {
                max_bytes: 100,
                endpoint: Some(0x81),
                count: Some(1),
            }),
            ..Faults::default()
        },
    };
    let mut rig = Rig::with_loopback_on(max_bulk, aca, bus).unwrap();
    assert_eq!(ctrl(&mut rig, 1, 1, 0, Setup::new(0, 5, 7, 0, 0)).0, 0);
    assert_eq!(ctrl(&mut rig, 2, 1, 7, Setup::new(0, 9, 1, 0, 0)).0, 0);
    rig
}

/// Writes a 150-byte record (bytes 0..150) the pending IN reads meet.
fn feed_150(rig: &mut Rig, id: u16) {
    let record: Vec<u8> = (0..150u8).collect();
    rig.mem.arena().write(4 * 4096, &record).unwrap();
    rig.push(&bulk(id, 0x01, &[4], 150).to_raw());
    rig.collect();
    assert_eq!(got(rig, id), Some((0, 150)));
}

/// After the short read: a fresh 4 KiB IN gets the rest of the record, bytes 100..150.
fn rest_of_record_is_still_there(rig: &mut Rig, id: u16) {
    rig.responses.clear();
    assert_eq!(answer(rig, &bulk(id, 0x81, &[11], 4096)), (0, 50));
    let mut back = [0u8; 50];
    rig.mem.arena().read(11 * 4096, &mut back).unwrap();
    assert_eq!(back.to_vec(), (100..150u8).collect::<Vec<_>>());
}

/// Split chains on a bus that does not stop at a short packet: the pieces wait one behind
/// the other, so the piece after the short one never takes the rest of the record.
#[test]
fn split_chain_on_xhci_holds_each_piece_until_the_one_before_is_back() {
    use pvusb_ring::urb::chain::{SPLIT_CONT, SPLIT_MORE};
    for aca in [false, true] {
        let mut rig = xhci_rig(usize::MAX, aca);
        rig.push(&piece(5, 8, SPLIT_MORE).to_raw());
        rig.push(&piece(6, 9, SPLIT_MORE | SPLIT_CONT).to_raw());
        rig.push(&piece(7, 10, SPLIT_CONT).to_raw());
        rig.collect();
        assert!(rig.responses.is_empty(), "nothing to read yet");
        feed_150(&mut rig, 3);
        assert_eq!(got(&rig, 5), Some((0, 100)), "aca {aca}");
        for id in [6, 7] {
            let (status, len) = got(&rig, id).expect("answered");
            assert!(status < 0 && len == 0, "piece {id} ran: {status} {len}");
        }
        rest_of_record_is_still_there(&mut rig, 8);
    }
}

/// A request the backend cuts into host URBs itself (`max-bulk-urb`), on a bus that does
/// not stop at a short packet: its URBs go one at a time, so the one after the short one
/// never takes the rest of the record.
#[test]
fn host_split_on_xhci_submits_one_urb_at_a_time() {
    for aca in [false, true] {
        let mut rig = xhci_rig(1024, aca);
        rig.push(&bulk(5, 0x81, &[8, 9], 6000).to_raw());
        rig.collect();
        assert!(rig.responses.is_empty(), "nothing to read yet");
        feed_150(&mut rig, 3);
        assert_eq!(got(&rig, 5), Some((0, 100)), "aca {aca}");
        rest_of_record_is_still_there(&mut rig, 6);
    }
}

/// Unlinking such a request while its first URB waits on the device: it is answered once,
/// its queued URBs never reach the device, and the next read gets the record whole.
#[test]
fn unlinking_a_host_split_request_on_xhci_leaves_nothing_queued() {
    let bus = Bus {
        no_stop_on_short: true,
        ..Bus::default()
    };
    let mut rig = Rig::with_loopback_on(1024, false, bus).unwrap();
    assert_eq!(ctrl(&mut rig, 1, 1, 0, Setup::new(0, 5, 7, 0, 0)).0, 0);
    assert_eq!(ctrl(&mut rig, 2, 1, 7, Setup::new(0, 9, 1, 0, 0)).0, 0);
    rig.push(&bulk(5, 0x81, &[8, 9], 6000).to_raw());
    rig.collect();
    assert!(rig.responses.is_empty(), "nothing to read yet");
    let unlink = UrbRequest::Unlink(Unlink {
        id: 6,
        pipe: Pipe::new(1, 7, Ep::new(1, true), XferType::Bulk),
        victim: 5,
    });
    rig.push(&unlink.to_raw());
    rig.collect();
    let (status, len) = got(&rig, 5).expect("answered");
    assert!(status < 0 && len == 0, "{status} {len}");
    assert_eq!(got(&rig, 6), Some((0, 0)));
    assert_eq!(rig.responses.len(), 2);
    feed_150(&mut rig, 3);
    rig.responses.clear();
    assert_eq!(answer(&mut rig, &bulk(7, 0x81, &[11], 4096)), (0, 150));
}

/// A backend process dies with requests on the ring it never answered, and no journal
/// (a first start, or a lost runtime directory); the next one takes the rings over (a
/// frontend that keeps them, as xen-hcd does) and answers those with -EIO without running
/// them: the OUT never reaches the device, and the IN takes nothing.
#[test]
fn requests_left_by_a_dead_backend_are_failed_not_run() {
    let mut rig = addressed(usize::MAX);
    rig.mem.arena().write(4 * 4096, &[7u8; 100]).unwrap();
    rig.push_unseen(&bulk(3, 0x01, &[4], 100).to_raw());
    rig.push_unseen(&bulk(4, 0x81, &[8], 512).to_raw());
    rig.events.clear();
    assert_eq!(rig.restart_backend_unjournaled(), Some(2));
    rig.kick();
    rig.collect();
    let eio = Status::IoError.to_wire();
    assert_eq!(got(&rig, 3), Some((eio, 0)));
    assert_eq!(got(&rig, 4), Some((eio, 0)));
    rig.responses.clear();
    // The guest's devices stay as it knows them: no port with a device is announced again
    // (the guest would drop the device and enumerate it anew), only the empty port 4, in
    // case the guest saw a device there.
    assert_eq!(announced(&rig), [(4, Speed::None)]);
    // The new process takes the address the guest uses as the one it set, on that port
    // only; a new record then comes back alone: the left-over OUT never reached the device.
    rig.mem.arena().write(5 * 4096, &[9u8; 50]).unwrap();
    assert_eq!(answer(&mut rig, &bulk(5, 0x01, &[5], 50)), (0, 50));
    assert_eq!(answer(&mut rig, &bulk(6, 0x81, &[10], 512)), (0, 50));
    let mut back = [0u8; 50];
    rig.mem.arena().read(10 * 4096, &mut back).unwrap();
    assert_eq!(back, [9u8; 50]);
    // Once taken, the address is checked as before; another port takes its own.
    let other = |id, dev| {
        submit(
            id,
            Pipe::new(1, dev, Ep::from_address(0x81), XferType::Bulk),
            Transfer::Bulk,
            &[10],
            512,
        )
    };
    assert_eq!(answer(&mut rig, &other(7, 9)).0, Status::NoDev.to_wire());
    let get_status = Setup::new(0x80, 0, 0, 0, 2);
    assert_eq!(ctrl(&mut rig, 8, 2, 7, get_status).0, 0);
    // Nothing was left over the second time.
    assert_eq!(rig.restart_backend(), Some(0));
}

/// The dead process had answered out of ring order: a read still waiting for data when it
/// died, a control request behind it answered. Its journal says which is in flight: the
/// read alone is failed, once; the answered request is not answered again (from the ring's
/// positions alone it would be, and the read never); and what the dead process never took
/// runs.
#[test]
fn a_takeover_answers_what_the_dead_process_had_in_flight() {
    let mut rig = addressed(usize::MAX);
    rig.push(&bulk(3, 0x81, &[8], 512).to_raw());
    let get_status = Setup::new(0x80, 0, 0, 0, 2);
    assert_eq!(ctrl(&mut rig, 4, 1, 7, get_status).0, 0);
    rig.collect();
    assert_eq!(got(&rig, 3), None, "the read waits for data");
    rig.mem.arena().write(5 * 4096, &[9u8; 50]).unwrap();
    rig.push_unseen(&bulk(5, 0x01, &[5], 50).to_raw());
    rig.responses.clear();
    rig.events.clear();
    assert_eq!(rig.restart_backend(), Some(1));
    rig.kick();
    rig.collect();
    // Every device is the one the guest was told of: none is announced again.
    assert_eq!(announced(&rig), [(4, Speed::None)]);
    let answered: Vec<(u16, i32, u32)> = rig
        .responses
        .iter()
        .map(|r| (r.id, r.status, r.actual_length))
        .collect();
    assert_eq!(answered, [(3, Status::IoError.to_wire(), 0), (5, 0, 50)]);
    rig.responses.clear();
    assert_eq!(answer(&mut rig, &bulk(6, 0x81, &[10], 512)), (0, 50));
}

/// Hotplug events the guest read: (port, speed).
fn announced(rig: &Rig) -> Vec<(u8, Speed)> {
    rig.events.iter().map(|e| (e.port.get(), e.speed)).collect()
}

/// The journal also says which device the guest was told of on each port. One swapped while
/// no backend ran (port 1's loopback for another) is announced gone, then present, so the
/// guest enumerates it anew; the address the guest had set is not taken over there, while
/// the ports that kept their devices are kept.
#[test]
fn a_device_swapped_while_no_backend_ran_is_announced_anew() {
    let mut rig = addressed(usize::MAX);
    let port1 = Port::new(1).unwrap();
    let speed = rig.events.iter().find(|e| e.port == port1).unwrap().speed;
    rig.engine.die();
    drop(rig.engine.detach(port1));
    let other = InProcDevice::new(ModelSpec::Loopback { capacity: 8192 }).unwrap();
    assert!(rig.engine.attach(port1, "1-1", Box::new(other)).is_ok());
    rig.events.clear();
    assert_eq!(rig.restart_backend(), Some(0));
    rig.collect();
    assert_eq!(
        announced(&rig),
        [(1, Speed::None), (1, speed), (4, Speed::None)]
    );
    let get_status = Setup::new(0x80, 0, 0, 0, 2);
    assert_eq!(
        ctrl(&mut rig, 20, 1, 7, get_status).0,
        Status::NoDev.to_wire()
    );
    assert_eq!(ctrl(&mut rig, 21, 2, 7, get_status).0, 0);
}

/// A device the dead process attached but never told the guest of (here: the guest had
/// given no conn ring slot yet) is announced by the process that takes over.
#[test]
fn a_device_the_guest_was_never_told_of_is_announced_after_a_takeover() {
    let mut rig = Rig::with_conn_slots(usize::MAX, false, 0).unwrap();
    rig.collect();
    assert!(rig.events.is_empty());
    rig.engine.die();
    for id in 0..8 {
        rig.conn.push_request(&ConnRequest { id }.to_raw()).unwrap();
    }
    rig.conn.push_requests();
    assert_eq!(rig.restart_backend(), Some(0));
    rig.collect();
    let got = announced(&rig);
    let ports: Vec<u8> = got.iter().map(|&(p, _)| p).collect();
    assert_eq!(ports, [1, 2, 3, 4], "{got:?}");
    assert!(
        got.iter().take(3).all(|&(_, s)| s != Speed::None),
        "{got:?}"
    );
}
