//! Issue 8, cases 2–4: the device unplugged mid-transfer (seed 003), the backend killed -9
//! and restarted, the frontend killed -9. Every pending URB is answered, nothing hangs,
//! nothing leaks.

use std::time::{Duration, Instant};

use pvusb_tests::proc::kill9_pid;
use pvusb_tests::rig::rig;
use pvusb_tests::storage::{PassSpec, RunError, Stats, BLOCK};
use pvusb_tests::usbip::devlist;
use pvusb_tests::wait;

const T: Duration = Duration::from_secs(30);

fn spec(verify: bool, start: u64, end: u64) -> PassSpec {
    PassSpec {
        verify,
        start,
        count: end - start,
        chunk: 64,
        window: 8,
        seed: 0x77,
    }
}

/// Runs `f` on a thread after `delay`.
fn after(delay: Duration, f: impl FnOnce() + Send + 'static) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        std::thread::sleep(delay);
        f()
    })
}

#[test]
fn device_unplugged_mid_transfer() {
    let t = Instant::now();
    let bytes = pvusb_tests::e2e_bytes();
    let r = rig(bytes);
    let mut disk = r.disk();
    let blocks = bytes / u64::from(BLOCK);
    // A first part written and verified, then the unplug lands in the middle of the rest.
    let first = (blocks / 8).min(8192);
    let mut st = Stats::default();
    disk.pass(&spec(false, 0, first), None, &mut st).unwrap();
    disk.pass(&spec(true, 0, first), None, &mut st).unwrap();
    assert_eq!(st.miscompares, 0);
    let (dir, busid) = (r.p.path().to_path_buf(), r.busid.clone());
    let unplugger = after(Duration::from_millis(300), move || {
        pvusb_backend::sim::unplug(&dir, &busid).unwrap()
    });
    let res = disk.pass(&spec(false, first, blocks), None, &mut st);
    unplugger.join().unwrap();
    match res {
        Err(RunError::Gone(why)) => eprintln!("unplug: the guest saw the device go: {why}"),
        other => panic!(
            "the run should end with the device gone: {other:?}\n{}",
            r.p.logs()
        ),
    }
    // Every URB in flight at the unplug was answered (with an error), none twice.
    disk.c.ledger.assert_settled();
    assert!(disk.c.ledger.failed > 0, "in-flight URBs must fail");
    assert!(disk.c.wait_closed(T), "the USB/IP connection must close");
    // Later submissions are refused: the device is no longer exported.
    wait::until(
        T,
        "the device to leave the export list",
        || r.p.logs(),
        || devlist(r.addr).is_empty().then_some(()),
    );
    wait::until(
        T,
        "the backend to release the device node",
        || r.p.logs(),
        || (!r.p.is_claimed(&r.busid)).then_some(()),
    );
    r.check_device_order(&disk, false);
    eprintln!(
        "unplug: stopped at LBA {} of {blocks}, {:.1?}",
        st.next_lba,
        t.elapsed()
    );
}

#[test]
fn backend_killed_and_restarted_mid_transfer() {
    let t = Instant::now();
    let bytes = pvusb_tests::e2e_bytes();
    let mut r = rig(bytes);
    let blocks = bytes / u64::from(BLOCK);
    let mut disk = r.disk();
    let mut st = Stats::default();
    let pid = r.p.backend.as_ref().and_then(|d| d.pid()).unwrap();
    let killer = after(Duration::from_millis(500), move || kill9_pid(pid));
    let res = disk.pass(&spec(false, 0, blocks), None, &mut st);
    killer.join().unwrap();
    assert!(
        matches!(res, Err(RunError::Gone(_))),
        "the run should stop when the backend dies: {res:?}\n{}",
        r.p.logs()
    );
    // The frontend failed every pending URB before closing.
    disk.c.ledger.assert_settled();
    let failed_at = st.next_lba;
    let old = disk;
    r.p.start_backend();
    // The frontend reconnects by itself; the device comes back; the client resumes from
    // the first unfinished command (the failed in-flight ones are retried).
    let mut disk = r.disk();
    let mut all = old.submitted;
    all.append(&mut disk.submitted);
    disk.submitted = all;
    disk.pass(&spec(false, failed_at, blocks), None, &mut st)
        .unwrap_or_else(|e| panic!("{e:?}\n{}", r.p.logs()));
    disk.pass(&spec(true, 0, blocks), None, &mut st)
        .unwrap_or_else(|e| panic!("{e:?}\n{}", r.p.logs()));
    assert_eq!(st.miscompares, 0, "{:?}", st.bad);
    disk.c.ledger.assert_settled();
    r.check_device_order(&disk, false);
    eprintln!(
        "backend restart: killed at LBA {failed_at} of {blocks}, resumed and verified, {:.1?}",
        t.elapsed()
    );
}

#[test]
fn frontend_killed_releases_everything() {
    let t = Instant::now();
    let bytes = pvusb_tests::e2e_bytes();
    let r = rig(bytes);
    let blocks = bytes / u64::from(BLOCK);
    let mut disk = r.disk();
    let mut st = Stats::default();
    let before = r.p.counters();
    assert!(before.grants > 0 && before.mappings > 0 && before.channels > 0);
    let pid = r.p.frontends[&1].0.pid().unwrap();
    let killer = after(Duration::from_millis(500), move || kill9_pid(pid));
    let res = disk.pass(&spec(false, 0, blocks), None, &mut st);
    killer.join().unwrap();
    assert!(
        matches!(res, Err(RunError::Gone(_))),
        "the run should stop when the frontend dies: {res:?}"
    );
    // The backend unmaps everything and gives the device back to the host; the broker
    // shows nothing left of the guest.
    let c = wait::until(
        T,
        "broker counters to return to zero",
        || r.p.logs(),
        || {
            let c = r.p.counters();
            (c.grants == 0 && c.mappings == 0 && c.channels == 0).then_some(c)
        },
    );
    wait::until(
        T,
        "the backend to release the device",
        || r.p.logs(),
        || (!r.p.is_claimed(&r.busid)).then_some(()),
    );
    // The host can open the device again.
    let done = st.next_lba;
    let dev = pvusb_backend::sim::SimDevice::open_busid(r.p.path(), &r.busid)
        .unwrap_or_else(|e| panic!("the host cannot open the released device: {e}"));
    drop(dev);
    eprintln!(
        "frontend kill: {} MiB written before the kill, counters {c:?} (were {before:?}), {:.1?}",
        (done * u64::from(BLOCK)) >> 20,
        t.elapsed()
    );
}
