//! Issue 8, case 5: two guests on one backend, one hostile (garbage in its ring, bad grant
//! references, a producer index far past the ring). The hostile one is disconnected; the
//! other's pipelined write/verify run is unaffected.

use std::time::{Duration, Instant};

use pvusb_backend::sim::{DeviceSpec, ModelSpec};
use pvusb_tests::hostile::HostileGuest;
use pvusb_tests::rig::{rig, write_verify};
use pvusb_tests::rng::Rng;
use pvusb_tests::wait;
use xenstore_cfg::xenbus::XenbusState;

#[test]
fn hostile_guest_is_disconnected_the_other_is_unaffected() {
    let t = Instant::now();
    let bytes = pvusb_tests::e2e_bytes();
    let r = rig(bytes);
    // dom2: a controller with a loopback device, driven by the hostile guest.
    r.p.create_domain(2);
    let bad_busid =
        r.p.plug(DeviceSpec::new(ModelSpec::Loopback { capacity: 1 << 16 }));
    let bad_id = r.p.add_controller(2, 0, 2);
    r.p.assign(&bad_id, 1, Some(&bad_busid));
    let mut bad = HostileGuest::connect(r.p.path(), bad_id);
    let mut rng = Rng::from_env("hostile");

    // The good guest runs its whole write/verify while the hostile one misbehaves.
    let disk = r.disk();
    let good = std::thread::spawn(move || {
        let mut disk = disk;
        let res = write_verify(&mut disk, bytes, 64, 8, 0x42, None, "good guest");
        (disk, res)
    });
    bad.garbage(&mut rng, 2000);
    let still = bad.backend_state();
    bad.overflow_index();
    let closed = wait::until(
        Duration::from_secs(30),
        "the backend to disconnect the hostile guest",
        || r.p.logs(),
        || {
            let s = r.p.backend_state(&bad_id)?;
            matches!(s, XenbusState::Closing | XenbusState::Closed).then_some(s)
        },
    );
    let (disk, res) = good.join().unwrap();
    let stats = res.unwrap_or_else(|e| panic!("good guest: {e:?}\n{}", r.p.logs()));
    assert_eq!(stats.miscompares, 0, "{:?}", stats.bad);
    assert_eq!(stats.recoveries, 0, "the good guest saw errors");
    disk.c.ledger.assert_settled();
    assert_eq!(disk.c.ledger.failed + disk.c.ledger.cancelled, 0);
    assert_eq!(
        r.p.backend_state(&r.id),
        Some(XenbusState::Connected),
        "the good controller must stay connected"
    );
    assert!(
        r.p.backend.as_ref().and_then(|d| d.pid()).is_some(),
        "the backend must survive"
    );
    r.check_device_order(&disk, false);
    eprintln!(
        "hostile: state after garbage {still:?}, after index overflow {closed:?}; {:.1?}",
        t.elapsed()
    );
}
