//! The guest's USB/IP mass-storage client against an in-test USB/IP server that exports a
//! simulated stick directly (frontend's USB/IP session + backend's device models).

use std::time::Duration;

use pvusb_backend::sim::{self, DeviceSpec, ModelSpec};
use xl_usb::guest::{self, DiskTest, StorageError};
use xl_usb::usbip_direct::DirectServer;

fn stick(dir: &std::path::Path, size: u64) -> String {
    let mut spec = DeviceSpec::new(ModelSpec::Storage { size_bytes: size });
    spec.serial = Some("GUESTTEST".into());
    sim::plug(dir, &spec).unwrap()
}

#[test]
fn writes_and_verifies_a_whole_disk_pipelined() {
    let tmp = tempfile::tempdir().unwrap();
    let busid = stick(tmp.path(), 4 << 20);
    let server = DirectServer::start(tmp.path(), &busid).unwrap();
    let dev = guest::find_storage(server.addr(), Duration::from_secs(5)).unwrap();
    assert_eq!(dev.busid, busid);
    let mut calls = 0;
    let (mut disk, report) = guest::disk_test(
        server.addr(),
        &busid,
        &DiskTest::default(),
        &mut |done, total| {
            calls += 1;
            assert!(done <= total);
        },
    )
    .unwrap();
    assert_eq!(report.bytes, 4 << 20);
    assert_eq!(report.block_size, 512);
    assert_eq!(report.errors, 0);
    assert!(report.urbs >= 3 * 2 * (4 << 20) / (64 * 512), "{report:?}");
    assert!(report.p99_us >= report.p50_us);
    assert_eq!(calls, 2 * (4 << 20) / (64 * 512));
    assert!(report.inquiry.len() > 2, "{report:?}");

    // A different seed must not verify: the check is real.
    let count = 64;
    assert!(matches!(
        disk.verify_pattern(count, 16, 2, 0x11, &mut |_| {}),
        Err(StorageError::Mismatch { lba: 0 })
    ));

    // Hot-unplug: the next command fails instead of hanging.
    sim::unplug(tmp.path(), &busid).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let err = disk.test_unit_ready().unwrap_err();
    assert!(
        matches!(err, StorageError::Urb { .. } | StorageError::Client(_)),
        "{err}"
    );
}

#[test]
fn import_of_an_unknown_busid_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let busid = stick(tmp.path(), 1 << 20);
    let server = DirectServer::start(tmp.path(), &busid).unwrap();
    let err = guest::Client::import(server.addr(), "9-9").unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");
}
