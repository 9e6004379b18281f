//! The fault-free reference run of the issue-8 suite: the whole stack as processes, a
//! pipelined write and read-verify of `PVUSB_E2E_MIB` MiB, both ledgers checked.

use std::time::Instant;

use pvusb_tests::rig::{rig, write_verify};

#[test]
fn clean_write_verify_through_the_whole_stack() {
    let t = Instant::now();
    let bytes = pvusb_tests::e2e_bytes();
    let r = rig(bytes);
    let mut disk = r.disk();
    let stats = write_verify(&mut disk, bytes, chunk(), 8, 0x33, None, "baseline")
        .unwrap_or_else(|e| panic!("{e:?}\n{}", r.p.logs()));
    assert_eq!(stats.miscompares, 0, "{:?}", stats.bad);
    assert_eq!(stats.recoveries, 0, "no fault was injected");
    disk.c.ledger.assert_settled();
    assert_eq!(disk.c.ledger.failed + disk.c.ledger.cancelled, 0);
    let matched = r.check_device_order(&disk);
    eprintln!(
        "baseline: {matched} device URBs in order, {:.1?}",
        t.elapsed()
    );
}

fn chunk() -> u32 {
    std::env::var("CHUNK")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64)
}
