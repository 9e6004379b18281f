//! Port management and negotiated behaviour end to end: unassign/reassign, re-plug after
//! an unplug, the allow-list, and error containment when `feature-aca` is negotiated.

mod common;

use common::*;
use pvusb_backend::sim::{DeviceSpec, FailNth, Faults, ModelSpec};
use pvusb_ring::wire::{Speed, XferType};
use xenstore_cfg::vusb::UsbVer;
use xenstore_cfg::XsOps;

#[test]
fn unassign_releases_and_reassign_announces_again() {
    let mut h = Harness::new(&[1]);
    let id = h.add_controller(1, 0, UsbVer::Usb20, 2);
    let busid = h.plug(ModelSpec::Loopback { capacity: 4096 });
    h.assign(&id, 2, Some(&busid));
    let mut g = Guest::connect(&mut h, id, false);
    assert_eq!(g.wait_event().speed, Speed::High);
    h.assign(&id, 2, None);
    let ev = g.wait_event();
    assert_eq!((ev.port.get(), ev.speed), (2, Speed::None));
    wait_until("device released", || !h.is_claimed(&busid));
    h.assign(&id, 1, Some(&busid));
    let ev = g.wait_event();
    assert_eq!((ev.port.get(), ev.speed), (1, Speed::High));
    g.enumerate(1, 2);
    let (r, _) = g.transfer(1, 2, 0x01, XferType::Bulk, b"x", 0);
    assert_eq!(r.status, 0);
}

#[test]
fn replugged_device_is_announced_again() {
    let mut h = Harness::new(&[1]);
    let id = h.add_controller(1, 0, UsbVer::Usb20, 2);
    let mut spec = DeviceSpec::new(ModelSpec::Loopback { capacity: 4096 });
    spec.busid = Some("1-4".into());
    let busid = h.plug_spec(&spec);
    h.assign(&id, 1, Some(&busid));
    let mut g = Guest::connect(&mut h, id, false);
    assert_eq!(g.wait_event().speed, Speed::High);
    pvusb_backend::sim::unplug(h.path(), &busid).unwrap();
    assert_eq!(g.wait_event().speed, Speed::None);
    h.plug_spec(&spec);
    let ev = g.wait_event();
    assert_eq!(
        (ev.port.get(), ev.speed),
        (1, Speed::High),
        "log:\n{}",
        h.log()
    );
    g.enumerate(1, 2);
}

#[test]
fn allow_list_refuses_other_devices() {
    let mut h = Harness::with_config(&[1], Some("allow = [\"1209:0002\"]\n"));
    let id = h.add_controller(1, 0, UsbVer::Usb20, 2);
    let lo = h.plug(ModelSpec::Loopback { capacity: 4096 });
    let disk = h.plug(ModelSpec::Storage {
        size_bytes: 1 << 20,
    });
    h.assign(&id, 1, Some(&lo));
    h.assign(&id, 2, Some(&disk));
    let mut g = Guest::connect(&mut h, id, false);
    let ev = g.wait_event();
    assert_eq!(ev.port.get(), 2, "only the allowed storage device");
    assert!(h.log().contains("allow-list"));
    assert!(!h.is_claimed(&lo));
}

fn aca_rig(h: &mut Harness, aca: bool) -> Guest {
    let id = h.add_controller(1, 0, UsbVer::Usb20, 2);
    let busid = h.plug(ModelSpec::Loopback { capacity: 1 << 16 });
    h.assign(&id, 1, Some(&busid));
    let mut g = Guest::connect(h, id, aca);
    g.wait_event();
    g.enumerate(1, 2);
    let faults = Faults {
        fail_nth: Some(FailNth {
            n: 1,
            errno: 71,
            endpoint: Some(0x01),
        }),
        latency_us: 30_000,
        ..Faults::default()
    };
    pvusb_backend::sim::set_faults(h.path(), &busid, &faults).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    g
}

#[test]
fn containment_cancels_followers_until_the_clear_mark() {
    let mut h = Harness::new(&[1]);
    let mut g = aca_rig(&mut h, true);
    assert_eq!(
        h.xs.read("/local/domain/0/backend/vusb/1/0/feature-aca")
            .ok(),
        Some(b"1".to_vec()),
        "the backend offers containment"
    );
    let ids: Vec<u16> = (0..3)
        .map(|i| g.start(1, 2, 0x01, XferType::Bulk, &[i; 512], 0, 0))
        .collect();
    let st: Vec<i32> = ids.iter().map(|&id| g.wait(id).0.status).collect();
    assert_eq!(
        st,
        vec![-71, -108, -108],
        "failure, then contained followers"
    );
    let id = g.start(1, 2, 0x01, XferType::Bulk, &[9; 512], 0, 0);
    assert_eq!(
        g.wait(id).0.status,
        -108,
        "still contained without the mark"
    );
    let id = g.start(1, 2, 0x01, XferType::Bulk, &[9; 512], 0, 0x8000);
    assert_eq!(
        g.wait(id).0.status,
        0,
        "the clear mark reopens the endpoint"
    );
}

#[test]
fn stock_frontend_gets_stock_behaviour() {
    let mut h = Harness::new(&[1]);
    let mut g = aca_rig(&mut h, false);
    let ids: Vec<u16> = (0..3)
        .map(|i| g.start(1, 2, 0x01, XferType::Bulk, &[i; 512], 0, 0))
        .collect();
    let st: Vec<i32> = ids.iter().map(|&id| g.wait(id).0.status).collect();
    assert_eq!(st, vec![-71, 0, 0], "no containment without negotiation");
}

#[test]
fn toolstack_offline_closes_and_releases() {
    let mut h = Harness::new(&[1]);
    let id = h.add_controller(1, 0, UsbVer::Usb20, 2);
    let busid = h.plug(ModelSpec::Loopback { capacity: 4096 });
    h.assign(&id, 1, Some(&busid));
    let mut g = Guest::connect(&mut h, id, false);
    g.wait_event();
    // libxl's device removal: online=0, backend state Closing; the frontend answers Closed.
    let dir = id.backend_dir();
    h.xs.write(&format!("{dir}/online"), b"0").unwrap();
    h.wait_backend_state(&id, xenstore_cfg::xenbus::XenbusState::Closing);
    g.set_state(xenstore_cfg::xenbus::XenbusState::Closed);
    h.wait_backend_state(&id, xenstore_cfg::xenbus::XenbusState::Closed);
    wait_until("device released", || !h.is_claimed(&busid));
    wait_until("rings unmapped", || h.counters().mappings == 0);
}

#[test]
fn hubs_are_refused() {
    let mut h = Harness::new(&[1]);
    let id = h.add_controller(1, 0, UsbVer::Usb20, 2);
    let busid = h.plug(ModelSpec::Loopback { capacity: 4096 });
    let roots = pvusb_backend::host::UsbRoots::sim(h.path());
    std::fs::write(
        roots.devices_dir().join(&busid).join("bDeviceClass"),
        "09\n",
    )
    .unwrap();
    h.assign(&id, 1, Some(&busid));
    let mut g = Guest::connect(&mut h, id, false);
    wait_until("refusal logged", || h.log().contains("hub"));
    g.poll();
    assert!(g.events.is_empty(), "nothing announced");
    assert!(!h.is_claimed(&busid));
}

#[test]
fn offline_controller_is_closed_once_and_left_alone() {
    let mut h = Harness::new(&[1]);
    let id = h.add_controller(1, 0, UsbVer::Usb20, 2);
    h.wait_backend_state(&id, xenstore_cfg::xenbus::XenbusState::InitWait);
    h.xs.write(&format!("{}/online", id.backend_dir()), b"0")
        .unwrap();
    h.wait_backend_state(&id, xenstore_cfg::xenbus::XenbusState::Closed);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(
        h.backend_state(&id),
        xenstore_cfg::xenbus::XenbusState::Closed,
        "not picked up again"
    );
    assert_eq!(
        h.log().matches("controller found").count(),
        1,
        "log:\n{}",
        h.log()
    );
}
