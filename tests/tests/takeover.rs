//! Issue 8, case 3, for a frontend that keeps its rings across a backend `kill -9` (Linux's
//! xen-hcd does; nothing tells a guest that a dom0 process died): the restarted backend
//! takes the rings over and answers exactly the requests the dead one had in flight, once
//! each, even when the device had answered out of ring order. Real processes: xenstored,
//! the broker and the backend (killed, then started again), with the guest at ring level.

use std::time::Duration;

use pvusb_backend::sim::{DeviceSpec, ModelSpec};
use pvusb_ring::wire::{
    Ep, Pipe, Seg, Segments, Setup, Speed, Status, Submit, Transfer, UrbRequest, UrbResponse,
    XferType,
};
use pvusb_tests::platform::Platform;
use pvusb_tests::proc::kill9_pid;
use pvusb_tests::ring_guest::RingGuest;
use pvusb_tests::wait;
use xenstore_cfg::xenbus::XenbusState;

const T: Duration = Duration::from_secs(20);
const KBD: (u8, u8) = (1, 5);
const LOOP: (u8, u8) = (2, 6);

/// A request on `(port, devnum)`, its data in data page `page`.
fn submit(
    g: &RingGuest,
    id: u16,
    at: (u8, u8),
    ep: Ep,
    xfer: Transfer,
    page: usize,
    len: u16,
) -> UrbRequest {
    let mut segs = Segments::new();
    if len > 0 {
        segs.push(Seg::new(0, g.data_gref(page), 0, len).unwrap())
            .unwrap();
    }
    let ty = match xfer {
        Transfer::Ctrl { .. } => XferType::Ctrl,
        Transfer::Int { .. } => XferType::Int,
        _ => XferType::Bulk,
    };
    UrbRequest::Submit(Submit {
        id,
        pipe: Pipe::new(at.0, at.1, ep, ty),
        xfer,
        segs,
        buffer_length: u32::from(len),
        short_not_ok: false,
        ext_flags: 0,
    })
}

fn ctrl(g: &RingGuest, id: u16, at: (u8, u8), setup: Setup) -> UrbRequest {
    let ep = Ep::new(0, setup.is_in());
    let len = setup.length();
    submit(g, id, at, ep, Transfer::Ctrl { setup: setup.0 }, 3, len)
}

fn answer(g: &mut RingGuest, req: &UrbRequest) -> UrbResponse {
    g.push(&req.to_raw());
    g.wait_for(req.id(), T)
        .unwrap_or_else(|| panic!("no answer to request {}", req.id()))
}

/// SET_ADDRESS and SET_CONFIGURATION, retried until the backend has the device on the port.
fn enumerate(g: &mut RingGuest, p: &Platform, id: &mut u16, (port, dev): (u8, u8)) {
    wait::until(
        T,
        "the device on its port",
        || p.logs(),
        || {
            *id += 1;
            let req = ctrl(g, *id, (port, 0), Setup::new(0, 5, u16::from(dev), 0, 0));
            answer(g, &req).is_ok().then_some(())
        },
    );
    *id += 1;
    let req = ctrl(g, *id, (port, dev), Setup::new(0, 9, 1, 0, 0));
    assert!(answer(g, &req).is_ok(), "SET_CONFIGURATION");
}

/// A host with a keyboard on port 1 and a loopback on port 2 of guest 2's controller, and
/// the guest at ring level with both enumerated. Returns the loopback's bus id.
fn setup() -> (Platform, RingGuest, String) {
    let mut p = Platform::new(&[2]);
    p.start_backend();
    let kbd = p.plug(DeviceSpec::new(ModelSpec::Keyboard {
        text: String::new(),
    }));
    let lo = p.plug(DeviceSpec::new(ModelSpec::Loopback { capacity: 1 << 16 }));
    let vusb = p.add_controller(2, 0, 2);
    p.assign(&vusb, KBD.0, Some(&kbd));
    p.assign(&vusb, LOOP.0, Some(&lo));
    let mut g = RingGuest::connect(p.path(), vusb, 4);
    let mut id = 0u16;
    enumerate(&mut g, &p, &mut id, KBD);
    enumerate(&mut g, &p, &mut id, LOOP);
    (p, g, lo)
}

/// `kill -9` of the backend, and a wait until the simulated hypervisor has seen it go (on
/// Xen its event channels close as the process exits, before a new one can start).
fn kill_backend(p: &Platform) {
    let pid = p
        .backend
        .as_ref()
        .and_then(|d| d.pid())
        .expect("backend pid");
    let before = p.counters().connections;
    kill9_pid(pid);
    wait::until(
        T,
        "the broker to see the backend gone",
        || p.logs(),
        || (p.counters().connections < before).then_some(()),
    );
}

#[test]
fn a_restarted_backend_answers_exactly_what_the_dead_one_had_in_flight() {
    let (mut p, mut g, _) = setup();
    let vusb = g.id;

    // The keyboard's interrupt read waits (nothing typed); the loopback's write and read
    // behind it are answered: the device answered out of ring order.
    let irq = submit(
        &g,
        40,
        KBD,
        Ep::new(1, true),
        Transfer::Int { interval: 8 },
        0,
        8,
    );
    g.push(&irq.to_raw());
    g.data().write(4096, &[0x5a; 512]).unwrap();
    let out = submit(&g, 41, LOOP, Ep::new(1, false), Transfer::Bulk, 1, 512);
    assert!(answer(&mut g, &out).is_ok());
    let inp = submit(&g, 42, LOOP, Ep::new(1, true), Transfer::Bulk, 2, 512);
    let r = answer(&mut g, &inp);
    assert_eq!((r.status, r.actual_length), (0, 512));
    assert!(g.wait_for(40, Duration::from_millis(100)).is_none());
    let before = g.responses.len();

    kill_backend(&p);
    p.start_backend();

    // The read the dead process held is failed, once; nothing answered before comes again.
    let r = g.wait_for(40, T).unwrap_or_else(|| {
        panic!(
            "the interrupt read in flight was never answered\n{}",
            p.logs()
        )
    });
    assert_eq!(r.status, Status::IoError.to_wire());
    std::thread::sleep(Duration::from_millis(300));
    g.collect();
    let after: Vec<u16> = g.responses[before..].iter().map(|r| r.id).collect();
    assert_eq!(after, [40], "answers after the restart\n{}", p.logs());
    assert_eq!(p.backend_state(&vusb), Some(XenbusState::Connected));

    // The guest goes on with the addresses it set through the dead process.
    g.data().write(4096, &[0x3c; 100]).unwrap();
    let out = submit(&g, 43, LOOP, Ep::new(1, false), Transfer::Bulk, 1, 100);
    assert!(answer(&mut g, &out).is_ok(), "{}", p.logs());
    let inp = submit(&g, 44, LOOP, Ep::new(1, true), Transfer::Bulk, 2, 512);
    let r = answer(&mut g, &inp);
    assert_eq!((r.status, r.actual_length), (0, 100));
    let mut back = [0u8; 100];
    g.data().read(2 * 4096, &mut back).unwrap();
    assert_eq!(back, [0x3c; 100]);
    let irq = submit(
        &g,
        45,
        KBD,
        Ep::new(1, true),
        Transfer::Int { interval: 8 },
        0,
        8,
    );
    g.push(&irq.to_raw());
    assert!(
        g.wait_for(45, Duration::from_millis(100)).is_none(),
        "the keyboard's next read waits again"
    );
}

/// The loopback is swapped for another device at the same bus id while no backend runs
/// (the host gives it a new device number): the restarted backend announces port 2 gone and
/// then present, so the guest enumerates the new device instead of using it under the old
/// one's address; the keyboard, untouched, is not announced again and keeps its address.
#[test]
fn a_device_swapped_while_the_backend_is_down_is_announced_anew() {
    let (mut p, mut g, lo) = setup();
    wait::until(
        T,
        "the guest to hear of both ports",
        || p.logs(),
        || {
            g.collect();
            (g.events.len() >= 2).then_some(())
        },
    );
    let speed = g.events.iter().find(|e| e.0 == LOOP.0).map(|e| e.1);
    g.events.clear();
    kill_backend(&p);
    pvusb_backend::sim::unplug(p.path(), &lo).expect("unplugging");
    let mut spec = DeviceSpec::new(ModelSpec::Loopback { capacity: 1 << 16 });
    spec.busid = Some(lo.clone());
    assert_eq!(p.plug(spec), lo);
    p.start_backend();
    wait::until(
        T,
        "the swapped port to be announced",
        || p.logs(),
        || {
            g.collect();
            (g.events.len() >= 2).then_some(())
        },
    );
    std::thread::sleep(Duration::from_millis(200));
    g.collect();
    let want = [
        (LOOP.0, Speed::None),
        (LOOP.0, speed.expect("port 2's speed")),
    ];
    assert_eq!(g.events, want, "{}", p.logs());
    let get_status = Setup::new(0x80, 0, 0, 0, 2);
    let old_address = ctrl(&g, 60, LOOP, get_status);
    let r = answer(&mut g, &old_address);
    assert_eq!(
        r.status,
        Status::NoDev.to_wire(),
        "the old address on the new device"
    );
    let keyboard = ctrl(&g, 61, KBD, get_status);
    let r = answer(&mut g, &keyboard);
    assert!(r.is_ok(), "the keyboard keeps its address");
    let mut id = 70;
    enumerate(&mut g, &p, &mut id, LOOP);
}
