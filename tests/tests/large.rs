//! Issue 8, case 6 (seed 001): a 1 MiB bulk IN that meets a short packet mid-way completes
//! once with the right length, and no piece after the short one reaches the device.

use std::time::{Duration, Instant};

use pvusb_backend::sim::{DeviceSpec, ModelSpec};
use pvusb_tests::devtrace;
use pvusb_tests::platform::Platform;
use pvusb_tests::rng::Rng;
use pvusb_tests::usbip::{bulk_in, bulk_out, Answer, UsbipClient};

const T: Duration = Duration::from_secs(30);
const MIB: usize = 1 << 20;

fn pattern(n: usize, salt: u64) -> Vec<u8> {
    let mut r = Rng::new(salt + 1);
    (0..n).map(|_| r.next_u64() as u8).collect()
}

fn done(a: Answer) -> pvusb_frontend::usbip::RetSubmit {
    match a {
        Answer::Done(r) => r,
        other => panic!("expected a completion, got {other:?}"),
    }
}

/// Which host controller the loopback sits on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bus {
    /// Stops an endpoint at a short packet (EHCI): usbfs offers BULK_CONTINUATION.
    Stops,
    /// Runs the next queued URB after a short packet (xHCI): usbfs withholds it.
    RunsOn,
}

/// The stack (backend configured by `config`, TOML) with a 4 MiB loopback on port 1 of a
/// controller on `bus`, imported over USB/IP and configured: the platform, its bus id, the
/// client.
fn configured_loopback(config: &str) -> (Platform, String, UsbipClient) {
    loopback_on(Bus::Stops, 0, config)
}

/// [`configured_loopback`] on `bus`, the device answering each URB `latency_us` after it was
/// submitted (so that the pieces of a transfer queue up on it).
fn loopback_on(bus: Bus, latency_us: u64, config: &str) -> (Platform, String, UsbipClient) {
    let mut p = Platform::new(&[1]);
    let mut spec = DeviceSpec::new(ModelSpec::Loopback { capacity: 4 * MIB });
    spec.no_stop_on_short = bus == Bus::RunsOn;
    spec.faults.latency_us = latency_us;
    let busid = p.plug(spec);
    let id = p.add_controller(1, 0, 4);
    p.assign(&id, 1, Some(&busid));
    p.start_backend_with(config);
    let addr = p.start_frontend(1);
    let logs = || p.logs();
    let mut c = UsbipClient::import_when_ready(addr, "1-1", T, logs);
    let set = c
        .transfer(
            pvusb_tests::usbip::control([0, 9, 1, 0, 0, 0, 0, 0], vec![]),
            T,
        )
        .unwrap();
    assert_eq!(set.status(), 0, "SET_CONFIGURATION");
    (p, busid, c)
}

#[test]
fn short_packet_mid_way_through_a_large_bulk_in() {
    short_packet_mid_way(Bus::Stops, "");
}

/// The same with the stock protocol: each piece's data by grant copy.
#[test]
fn short_packet_mid_way_with_grant_copy() {
    short_packet_mid_way(Bus::Stops, "feature-persistent = false\n");
}

/// On an xHCI-like bus a split chain's pieces go one at a time: the piece behind a short
/// one would otherwise take the next data before usbfs cancels it.
#[test]
fn short_packet_mid_way_on_a_bus_that_does_not_stop() {
    short_packet_mid_way(Bus::RunsOn, "");
}

/// The same with the backend cutting each request into 16 KiB usbfs URBs itself, and no
/// split chains: the host URBs of one request go one at a time there too.
#[test]
fn short_packet_mid_way_in_host_split_urbs_on_a_bus_that_does_not_stop() {
    short_packet_mid_way(
        Bus::RunsOn,
        "feature-split-chain = false\nmax-bulk-urb = 16384\n",
    );
}

/// Both on the xHCI-like bus with the stock data path (grant copy): split chains, then
/// host-split URBs.
#[test]
fn short_packet_mid_way_on_a_bus_that_does_not_stop_with_grant_copy() {
    short_packet_mid_way(Bus::RunsOn, "feature-persistent = false\n");
    short_packet_mid_way(
        Bus::RunsOn,
        "feature-persistent = false\nfeature-split-chain = false\nmax-bulk-urb = 16384\n",
    );
}

/// Runs the rounds on `bus` with the backend configured by `config` (TOML).
fn short_packet_mid_way(bus: Bus, config: &str) {
    let t = Instant::now();
    // Latency: the pieces queue on the device, so the one behind the short one is there to
    // run (xHCI) or be cancelled (a bus that stops).
    let (p, busid, mut c) = loopback_on(bus, 500, config);
    let mut rng = Rng::from_env("large");
    let trace = p.trace_path(&busid);
    let rounds = 16;
    let mut moved = 0usize;
    for round in 0..rounds {
        // Less than 1 MiB waiting, ending off a packet boundary: the piece that reaches the
        // end comes back short.
        let len = MIB / 2 + rng.below((MIB / 2 - 1) as u64) as usize;
        let len = if len % 512 == 0 { len + 7 } else { len };
        let data = pattern(len, round);
        let r = done(c.transfer(bulk_out(1, data.clone()), T).unwrap());
        assert_eq!((r.status, r.actual_length as usize), (0, len), "OUT");
        // A marker waits right behind it: a piece of the big IN run after the short one
        // would swallow it.
        let marker = pattern(64, 1000 + round);
        assert_eq!(
            done(c.transfer(bulk_out(1, marker.clone()), T).unwrap()).status,
            0
        );
        let seen = devtrace::read(&trace).len();
        let r = done(c.transfer(bulk_in(1, MIB as u32), T).unwrap());
        assert_eq!(r.status, 0, "IN status\n{}", p.logs());
        assert_eq!(
            r.actual_length as usize, len,
            "one completion with the summed length"
        );
        assert!(r.data == data, "round {round}: data differs");
        // The device trace: the IN pieces are full up to one short piece, then nothing.
        std::thread::sleep(Duration::from_millis(30));
        let recs: Vec<_> = devtrace::read(&trace)
            .into_iter()
            .skip(seen)
            .filter(|r| r.ep == 0x81)
            .collect();
        let (last, full) = recs.split_last().expect("IN pieces in the trace");
        assert!(
            full.iter().all(|r| r.actual == r.len && r.status == 0),
            "round {round}: a piece before the short one was short: {recs:?}"
        );
        assert!(
            last.actual < last.len,
            "the last piece must be the short one"
        );
        let sum: u64 = recs.iter().map(|r| r.actual).sum();
        assert_eq!(sum as usize, len, "round {round}: pieces {recs:?}");
        // The marker is read back whole.
        let r = done(c.transfer(bulk_in(1, MIB as u32), T).unwrap());
        assert_eq!(r.data, marker, "round {round}: the marker was swallowed");
        moved += len + 64;
    }
    c.ledger.assert_settled();
    assert_eq!(c.ledger.failed + c.ledger.cancelled, 0);
    eprintln!(
        "large: {rounds} rounds, {} MiB each way, {:.1?}",
        moved >> 20,
        t.elapsed()
    );
}

/// A 1 MiB IN submitted before the 1 MiB OUT that feeds it (the loopback has nothing yet):
/// the IN's pieces wait on the device holding ring ids, and must leave enough for the OUT
/// (split chains take at most a quarter of the ring). Both complete; the data comes back.
#[test]
fn a_large_in_waiting_for_data_leaves_ids_for_the_out_feeding_it() {
    let (p, _, mut c) = configured_loopback("");
    for round in 0..4 {
        let data = pattern(MIB, 2000 + round);
        let rd = c.submit(bulk_in(1, MIB as u32));
        let wr = c.submit(bulk_out(1, data.clone()));
        let mut got = Vec::new();
        for _ in 0..2 {
            match c.next(T) {
                Ok(a) => got.push(done(a)),
                Err(e) => panic!("round {round}: {e:?}\n{}", p.logs()),
            }
        }
        got.sort_by_key(|r| r.seqnum);
        assert_eq!((got[0].seqnum, got[1].seqnum), (rd, wr));
        assert_eq!((got[1].status, got[1].actual_length as usize), (0, MIB));
        assert_eq!((got[0].status, got[0].actual_length as usize), (0, MIB));
        assert!(got[0].data == data, "round {round}: data differs");
    }
    c.ledger.assert_settled();
}

/// A 1 MiB IN waiting on an empty loopback (a split chain with its first pieces on the
/// device) is unlinked: it is answered once, and none of its pieces is left behind to
/// swallow what is written next; a later large IN reads it whole.
#[test]
fn unlinking_a_waiting_large_in_leaves_no_piece_behind() {
    let (p, _, mut c) = configured_loopback("");
    for round in 0..4 {
        let rd = c.submit(bulk_in(1, MIB as u32));
        std::thread::sleep(Duration::from_millis(20));
        c.unlink(rd);
        match c.next(T) {
            Ok(Answer::Cancelled(s)) => assert_eq!(s, rd),
            Ok(Answer::Done(r)) => {
                assert_eq!(r.seqnum, rd);
                assert_ne!(r.status, 0, "round {round}: nothing was written to read");
            }
            Err(e) => panic!("round {round}: {e:?}\n{}", p.logs()),
        }
        let data = pattern(MIB / 2 + 100, 3000 + round);
        let w = done(c.transfer(bulk_out(1, data.clone()), T).unwrap());
        assert_eq!((w.status, w.actual_length as usize), (0, data.len()));
        let r = done(c.transfer(bulk_in(1, MIB as u32), T).unwrap());
        assert_eq!(r.status, 0, "round {round}\n{}", p.logs());
        assert!(
            r.data == data,
            "round {round}: a piece of the unlinked IN took data"
        );
    }
    c.ledger.assert_settled();
}
