//! End to end on the sim platform: handshake, conn ring announcement, enumeration, bulk
//! (mass storage INQUIRY / WRITE / READ), interrupt (HID), teardown.

mod common;

use common::*;
use pvusb_backend::sim::ModelSpec;
use pvusb_ring::wire::{Speed, XferType};
use xenstore_cfg::vusb::UsbVer;
use xenstore_cfg::xenbus::XenbusState;

#[test]
fn storage_enumerates_and_round_trips_blocks() {
    let mut h = Harness::new(&[1]);
    let id = h.add_controller(1, 0, UsbVer::Usb20, 4);
    let busid = h.plug(ModelSpec::Storage {
        size_bytes: 1 << 20,
    });
    h.assign(&id, 2, Some(&busid));
    let mut g = Guest::connect(&mut h, id, false);

    let ev = g.wait_event();
    assert_eq!((ev.port.get(), ev.speed), (2, Speed::High));
    assert!(h.is_claimed(&busid), "the backend claims the device");

    let desc = g.enumerate(2, 5);
    assert_eq!(desc[0..2], [18, 1]);

    // INQUIRY.
    let (r, _) = g.transfer(
        2,
        5,
        0x02,
        XferType::Bulk,
        &cbw(1, 36, true, &[0x12, 0, 0, 0, 36, 0]),
        0,
    );
    assert_eq!(r.status, 0);
    let (r, data) = g.transfer(2, 5, 0x81, XferType::Bulk, &[], 36);
    assert_eq!((r.status, data.len()), (0, 36));
    let (r, csw) = g.transfer(2, 5, 0x81, XferType::Bulk, &[], 13);
    assert_eq!((r.status, &csw[0..4]), (0, &b"USBS"[..]));

    // WRITE(10) 32 blocks (16 KiB, 4 pages) at LBA 8, then READ(10) them back.
    let block: Vec<u8> = (0..16384u32).map(|i| (i * 7 + 3) as u8).collect();
    let write = [0x2a, 0, 0, 0, 0, 8, 0, 0, 32, 0];
    let (r, _) = g.transfer(2, 5, 0x02, XferType::Bulk, &cbw(2, 16384, false, &write), 0);
    assert_eq!(r.status, 0);
    let (r, _) = g.transfer(2, 5, 0x02, XferType::Bulk, &block, 0);
    assert_eq!((r.status, r.actual_length), (0, 16384));
    let (r, csw) = g.transfer(2, 5, 0x81, XferType::Bulk, &[], 13);
    assert_eq!((r.status, csw[12]), (0, 0), "write CSW status");
    let read = [0x28, 0, 0, 0, 0, 8, 0, 0, 32, 0];
    let (r, _) = g.transfer(2, 5, 0x02, XferType::Bulk, &cbw(3, 16384, true, &read), 0);
    assert_eq!(r.status, 0);
    let (r, back) = g.transfer(2, 5, 0x81, XferType::Bulk, &[], 16384);
    assert_eq!(r.status, 0);
    assert!(back == block, "read back what was written");
    let (r, csw) = g.transfer(2, 5, 0x81, XferType::Bulk, &[], 13);
    assert_eq!((r.status, csw[12]), (0, 0), "read CSW status");

    // Frontend closes: backend follows, unmaps everything, releases nothing yet.
    g.set_state(XenbusState::Closing);
    h.wait_backend_state(&id, XenbusState::Closing);
    g.set_state(XenbusState::Closed);
    h.wait_backend_state(&id, XenbusState::Closed);
    drop(g);
    wait_until("grants and mappings released", || {
        let c = h.counters();
        c.mappings == 0 && c.grants == 0
    });
    assert!(h.stop_backend(), "backend exits cleanly on SIGTERM");
    assert!(!h.is_claimed(&busid), "device released on shutdown");
}

/// Throughput of 64 KiB mass-storage READs through the whole stack (run with
/// `cargo test -p pvusb-backend --release --test sim_basic -- --ignored --nocapture`).
#[test]
#[ignore = "measurement, not a check"]
fn measure_read_throughput() {
    let mut h = Harness::new(&[1]);
    let id = h.add_controller(1, 0, UsbVer::Usb20, 1);
    let busid = h.plug(ModelSpec::Storage {
        size_bytes: 8 << 20,
    });
    h.assign(&id, 1, Some(&busid));
    let mut g = Guest::connect(&mut h, id, false);
    g.wait_event();
    g.enumerate(1, 2);
    let n = 300u32;
    let t = std::time::Instant::now();
    for i in 0..n {
        let lba = ((i * 128) % 16384).to_be_bytes();
        let read = [0x28, 0, lba[0], lba[1], lba[2], lba[3], 0, 0, 128, 0];
        let (r, _) = g.transfer(1, 2, 0x02, XferType::Bulk, &cbw(i, 65536, true, &read), 0);
        assert_eq!(r.status, 0);
        let (r, _) = g.transfer(1, 2, 0x81, XferType::Bulk, &[], 65536);
        assert_eq!((r.status, r.actual_length), (0, 65536));
        let (r, _) = g.transfer(1, 2, 0x81, XferType::Bulk, &[], 13);
        assert_eq!(r.status, 0);
    }
    let s = t.elapsed().as_secs_f64();
    if std::env::var_os("PVUSB_SHOW_LOG").is_some() {
        let log = h.log();
        let lines: Vec<&str> = log.lines().collect();
        for l in &lines[lines.len().saturating_sub(14)..] {
            println!("{l}");
        }
    }
    println!(
        "{n} x 64 KiB READ(10): {:.1} MiB/s, {:.0} us per command (3 URBs)",
        f64::from(n) * 64.0 / 1024.0 / s,
        s * 1e6 / f64::from(n)
    );
}
