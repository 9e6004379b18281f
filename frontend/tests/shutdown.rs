//! SIGTERM (what systemd sends on stop): the frontend answers what its clients are owed,
//! detaches vhci, closes each controller with the backend, ends its grants once the backend
//! unmapped them, and exits 0. The guest domain outlives its agent, so nothing here is
//! released by the domain dying: only the frontend's own shutdown can close the rings.

#![allow(missing_debug_implementations)]

mod common;

use std::fs;
use std::process::ExitStatus;
use std::time::Duration;

use common::client::bulk_in;
use common::stack::stack;
use common::{free_port, spawn_backend, spawn_frontend, wait_for, wait_listening, Proc, Sim};
use pvusb_backend::sim::{plug, DeviceSpec, ModelSpec};
use pvusb_frontend::usbip::ClientEvent;
use pvusb_xen::sim::SimPlatform;
use pvusb_xen::DomId;
use rustix::process::{kill_process, Pid, Signal};
use xenstore_cfg::vusb::{set_port, VusbId};
use xenstore_cfg::XsOps;

/// `XenbusStateClosed`.
const CLOSED: &str = "6";

fn sigterm(p: &mut Proc) -> ExitStatus {
    let pid = Pid::from_child(&p.0);
    kill_process(pid, Signal::TERM).unwrap();
    wait_for(15, "the frontend to exit", || p.0.try_wait().unwrap())
}

/// What a clean shutdown leaves: both ends Closed, the backend maps nothing, every grant
/// ended, and the frontend did not give up waiting.
fn expect_released(sim: &Sim, id: &VusbId, status: ExitStatus, log: &str) {
    assert!(status.success(), "exit status {status}\n{log}");
    let mut xs = sim.xs();
    let state =
        |xs: &mut xenstore_cfg::Xs, dir: String| xs.read_string(&format!("{dir}/state")).unwrap();
    assert_eq!(state(&mut xs, id.frontend_dir()), CLOSED, "{log}");
    let be = wait_for(10, "the backend to close", || {
        let s = state(&mut xs, id.backend_dir());
        (s == CLOSED).then_some(s)
    });
    assert_eq!(be, CLOSED);
    let c = sim.broker.counters();
    assert_eq!((c.mappings, c.grants), (0, 0), "{log}");
    assert!(!log.contains("exiting anyway"), "{log}");
}

#[test]
fn sigterm_fails_pending_urbs_and_closes_the_controller() {
    let mut s = stack(0, ModelSpec::Loopback { capacity: 1 << 16 });
    let _guest = SimPlatform::connect(s.sim.path(), DomId(1)).unwrap();
    let mut c = s.import();
    // Nothing was written yet: this IN waits in the backend.
    let seq = c.submit(bulk_in(1, 512));
    std::thread::sleep(Duration::from_millis(100));
    let status = sigterm(&mut s.frontend);
    match c.event(Duration::from_secs(5)) {
        Some(ClientEvent::Completed(r)) => {
            assert_eq!(r.seqnum, seq);
            assert_eq!(r.status, -108, "ESHUTDOWN for the pending URB");
        }
        other => panic!(
            "expected the pending URB to fail, got {other:?}\n{}",
            s.logs()
        ),
    }
    assert!(c.closed(Duration::from_secs(5)), "the client sees EOF");
    expect_released(&s.sim, &s.id, status, &s.logs());
}

#[test]
fn sigterm_detaches_vhci() {
    let sim = Sim::new();
    let vhci = common::vhci_mimic(&sim);
    sim.create_domain(1);
    let _guest = SimPlatform::connect(sim.path(), DomId(1)).unwrap();
    let spec = DeviceSpec::new(ModelSpec::Loopback { capacity: 1 << 16 });
    let busid = plug(sim.path(), &spec).unwrap();
    let id = sim.add_controller(1, 0, 0, 4);
    set_port(&mut sim.xs(), &id, 1, Some(&busid)).unwrap();
    let _be = spawn_backend(&sim, 0, "backend");
    let port = free_port();
    let vhci_arg = vhci.to_str().unwrap();
    let mut fe = spawn_frontend(&sim, 1, port, &["--vhci", vhci_arg]);
    wait_listening(port);
    wait_for(20, "a write to vhci's attach", || {
        let s = fs::read_to_string(vhci.join("attach")).ok()?;
        (!s.is_empty()).then_some(())
    });
    let status = sigterm(&mut fe);
    let log = common::frontend_log(&sim) + &common::backend_log(&sim, "backend");
    assert_eq!(
        fs::read_to_string(vhci.join("detach")).unwrap().trim(),
        "1",
        "{log}"
    );
    expect_released(&sim, &id, status, &log);
}
