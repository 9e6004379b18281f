//! Issue 8, cases 2–4: the device unplugged mid-transfer (seed 003), the backend killed -9
//! and restarted, the frontend killed -9. Every pending URB is answered, nothing hangs,
//! nothing leaks.

use std::io::Read;
use std::time::{Duration, Instant};

use pvusb_backend::sim::Faults;
use pvusb_tests::proc::kill9_pid;
use pvusb_tests::rig::{rig, rig_stock, rig_with_faults, Rig};
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

/// Lines appended to `file` since the last call.
fn new_lines(file: &mut std::fs::File) -> u64 {
    let mut buf = [0u8; 16 << 10];
    let mut lines = 0;
    while let Ok(n) = file.read(&mut buf) {
        if n == 0 {
            break;
        }
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
    }
    lines
}

/// Runs `f` on a thread once the device's URB trace at `trace` has `urbs` more lines than
/// now: progress, not time, so it lands mid-run however fast the stack is.
fn after_urbs(
    trace: std::path::PathBuf,
    urbs: u64,
    f: impl FnOnce() + Send + 'static,
) -> std::thread::JoinHandle<()> {
    let mut file = std::fs::File::open(&trace).expect("the device trace");
    let start = new_lines(&mut file);
    std::thread::spawn(move || {
        let deadline = Instant::now() + T;
        let mut seen = start;
        while seen < start + urbs && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
            seen += new_lines(&mut file);
        }
        f()
    })
}

#[test]
fn device_unplugged_mid_transfer() {
    let t = Instant::now();
    let bytes = pvusb_tests::e2e_bytes();
    let blocks = bytes / u64::from(BLOCK);
    // A first part written and verified, then the device unplugs itself in the middle of
    // writing the rest: counted in URBs it executed (each command is CBW, data, CSW), not
    // in time, so it lands mid-run however fast the stack is, with the client's window of
    // commands in flight behind it.
    let first = (blocks / 8).min(8192);
    let commands = |n: u64| n.div_ceil(u64::from(spec(false, 0, 1).chunk));
    let unplug_at = 3 * (2 * commands(first) + commands(blocks - first) / 2);
    let faults = Faults {
        unplug_after: Some(unplug_at),
        ..Faults::default()
    };
    let r = rig_with_faults(bytes, faults);
    let mut disk = r.disk();
    let mut st = Stats::default();
    disk.pass(&spec(false, 0, first), None, &mut st).unwrap();
    disk.pass(&spec(true, 0, first), None, &mut st).unwrap();
    assert_eq!(st.miscompares, 0);
    let res = disk.pass(&spec(false, first, blocks), None, &mut st);
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
    let quarter = 3 * (blocks / u64::from(spec(false, 0, 1).chunk)) / 4;
    let killer = after_urbs(r.p.trace_path(&r.busid), quarter, move || kill9_pid(pid));
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
    let bytes = pvusb_tests::e2e_bytes();
    frontend_killed(rig(bytes), bytes, false);
}

/// The same with the stock protocol (grant copy): the backend's bounce pages go too.
#[test]
fn frontend_killed_releases_everything_with_grant_copy() {
    let bytes = pvusb_tests::e2e_bytes();
    frontend_killed(rig_stock(bytes), bytes, true);
}

fn frontend_killed(r: Rig, bytes: u64, copying: bool) {
    let t = Instant::now();
    let blocks = bytes / u64::from(BLOCK);
    let mut disk = r.disk();
    let mut st = Stats::default();
    let before = r.p.counters();
    assert!(before.grants > 0 && before.mappings > 0 && before.channels > 0);
    assert_eq!(
        before.locals > 0,
        copying,
        "bounce pages iff grant copy: {before:?}"
    );
    let pid = r.p.frontends[&1].0.pid().unwrap();
    let quarter = 3 * (blocks / u64::from(spec(false, 0, 1).chunk)) / 4;
    let killer = after_urbs(r.p.trace_path(&r.busid), quarter, move || kill9_pid(pid));
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
            (c.grants == 0 && c.mappings == 0 && c.channels == 0 && c.locals == 0).then_some(c)
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
