//! Issue 8, case 1: random device errors (STALL, EPROTO, short reads) and random unlinks
//! while pipelined writes and reads run — zero miscompares, every URB answered exactly once,
//! per-endpoint device order equal to the guest's submission order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pvusb_backend::sim::{set_faults, FailNth, Faults, ShortRead};
use pvusb_tests::rig::{rig, rig_stock, write_verify, Rig};
use pvusb_tests::rng::Rng;
use pvusb_tests::storage::Chaos;

/// A random fault set: a failing URB soon (EPROTO or EPIPE), sometimes a short read, now and
/// then a halted endpoint.
fn random_faults(rng: &mut Rng) -> Faults {
    let mut f = Faults::default();
    match rng.below(4) {
        0 => f.stall = vec![if rng.one_in(2) { 0x81 } else { 0x02 }],
        1 => {
            f.short_read = Some(ShortRead {
                max_bytes: rng.below(4096) as u32,
                endpoint: Some(0x81),
                count: Some(1),
            })
        }
        _ => {
            f.fail_nth = Some(FailNth {
                n: 1 + rng.below(60),
                errno: if rng.one_in(2) { 71 } else { 32 },
                endpoint: None,
            })
        }
    }
    f
}

#[test]
fn random_errors_and_unlinks_while_pipelined() {
    let bytes = pvusb_tests::e2e_bytes();
    errors_and_unlinks(
        rig(bytes),
        bytes,
        "random_errors_and_unlinks_while_pipelined",
    );
}

/// The same with the stock protocol: every request's data by grant copy, IN bytes copied
/// back before each response is published.
#[test]
fn random_errors_and_unlinks_with_grant_copy() {
    let bytes = pvusb_tests::e2e_bytes();
    errors_and_unlinks(
        rig_stock(bytes),
        bytes,
        "random_errors_and_unlinks_with_grant_copy",
    );
}

fn errors_and_unlinks(r: Rig, bytes: u64, name: &str) {
    let t = Instant::now();
    let mut disk = r.disk();
    let mut rng = Rng::from_env(name);
    let stop = Arc::new(AtomicBool::new(false));
    let injector = {
        let stop = Arc::clone(&stop);
        let dir = r.p.path().to_path_buf();
        let busid = r.busid.clone();
        let mut rng = Rng::new(rng.next_u64());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100 + rng.below(200)));
                let _ = set_faults(&dir, &busid, &random_faults(&mut rng));
                n += 1;
            }
            let _ = set_faults(&dir, &busid, &Faults::default());
            n
        })
    };
    let mut chaos = Chaos {
        unlink_one_in: 200,
        rng: Rng::new(rng.next_u64()),
    };
    let res = write_verify(&mut disk, bytes, 64, 8, 0x5a, Some(&mut chaos), "faults");
    stop.store(true, Ordering::Relaxed);
    let injected = injector.join().unwrap();
    let stats = res.unwrap_or_else(|e| panic!("run failed: {e:?}\n{}", r.p.logs()));
    assert_eq!(
        stats.miscompares, 0,
        "miscompares (LBA, found): {:?}",
        stats.bad
    );
    assert!(
        stats.recoveries > 0,
        "no injected fault was ever hit ({injected} sets)"
    );
    disk.c.ledger.assert_settled();
    let matched = r.check_device_order(&disk, true);
    eprintln!(
        "{name}: {injected} fault sets injected, {matched} device URBs matched in order, {:.1?}",
        t.elapsed()
    );
}
