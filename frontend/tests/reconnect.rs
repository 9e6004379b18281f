//! Backend loss and return: the backend process killed (-9) and restarted, and the backend's
//! whole domain destroyed and re-created. Pending URBs fail, the USB/IP client sees the
//! device gone, the device comes back by itself, and the broker's counters show nothing
//! leaked (one connection's grants, the backend's two ring mappings).

#![allow(missing_debug_implementations)]

mod common;

use std::time::Duration;

use common::client::{bulk_in, bulk_out, Client};
use common::stack::{stack, Stack};
use common::{spawn_backend, wait_for};
use pvusb_backend::sim::ModelSpec;
use pvusb_frontend::usbip::ClientEvent;
use pvusb_xen::DomId;
use xenstore_cfg::vusb::set_port;

/// Grants of one controller connection: two ring pages and the 16 × 16-page pool.
const GRANTS_PER_CONNECTION: u32 = 2 + 256;

/// Imports the device and leaves one IN transfer waiting in the backend.
fn pending_in(s: &Stack) -> (Client, u32) {
    let mut c = s.import();
    let seq = c.submit(bulk_in(1, 512));
    std::thread::sleep(Duration::from_millis(100));
    (c, seq)
}

/// The waiting transfer fails and the connection closes.
fn expect_failed(s: &Stack, c: &mut Client, seq: u32) {
    match c.event(Duration::from_secs(10)) {
        Some(ClientEvent::Completed(r)) => {
            assert_eq!(r.seqnum, seq);
            assert!(r.status < 0, "the pending URB must fail: {r:?}");
        }
        other => panic!(
            "expected the pending URB to fail, got {other:?}\n{}",
            s.logs()
        ),
    }
    assert!(
        c.closed(Duration::from_secs(5)),
        "the client must see the device gone"
    );
}

/// The device is back and works.
fn expect_back(s: &Stack) {
    if std::env::var_os("PVUSB_TEST_LOGS").is_some() {
        println!("{}", s.logs());
    }
    let mut c = s.import();
    assert_eq!(c.bulk_out(1, b"again".to_vec()).status, 0, "{}", s.logs());
    assert_eq!(c.bulk_in(1, 64).data, b"again");
    drop(c);
    // No leak: exactly one connection's grants (a revoked grant still mapped would count),
    // the backend maps the two rings plus, with feature-persistent, the pool pages used so
    // far — never more than this connection's grants.
    let counters = wait_for(10, "grants to settle", || {
        let c = s.sim.broker.counters();
        (c.grants == GRANTS_PER_CONNECTION && (2..=GRANTS_PER_CONNECTION).contains(&c.mappings))
            .then_some(c)
    });
    assert_eq!(counters.grants, GRANTS_PER_CONNECTION);
}

#[test]
fn backend_killed_and_restarted() {
    let mut s = stack(0, ModelSpec::Loopback { capacity: 1 << 16 });
    let (mut c, seq) = pending_in(&s);
    s.backend.0.kill().unwrap();
    s.backend.0.wait().unwrap();
    expect_failed(&s, &mut c, seq);
    s.backend = spawn_backend(&s.sim, 0, "backend2");
    expect_back(&s);
}

#[test]
fn backend_domain_destroyed_and_recreated() {
    let mut s = stack(2, ModelSpec::Loopback { capacity: 1 << 16 });
    let (mut c, seq) = pending_in(&s);
    s.sim.broker.destroy_domain(DomId(2)).unwrap();
    let _ = s.backend.0.kill();
    let _ = s.backend.0.wait();
    expect_failed(&s, &mut c, seq);
    // The toolstack builds the domain and its backend directory again.
    s.sim.create_domain(2);
    let id = s.sim.add_controller(1, 2, 0, 4);
    set_port(&mut s.sim.xs(), &id, 1, Some(&s.busid)).unwrap();
    s.backend = spawn_backend(&s.sim, 2, "backend2");
    expect_back(&s);
}

#[test]
fn device_unplugged_while_in_use() {
    let s = stack(0, ModelSpec::Loopback { capacity: 1 << 16 });
    let (mut c, seq) = pending_in(&s);
    set_port(&mut s.sim.xs(), &s.id, 1, None).unwrap();
    expect_failed(&s, &mut c, seq);
    assert!(Client::devlist(s.port).is_empty());
    // Plugged again: exported again.
    set_port(&mut s.sim.xs(), &s.id, 1, Some(&s.busid)).unwrap();
    let mut c = s.import();
    assert_eq!(c.transfer(bulk_out(1, vec![7; 100])).status, 0);
}

#[test]
fn frontend_killed_and_restarted() {
    let mut s = stack(0, ModelSpec::Loopback { capacity: 1 << 16 });
    let mut c = s.import();
    assert_eq!(c.bulk_out(1, b"one".to_vec()).status, 0);
    assert_eq!(c.bulk_in(1, 64).data, b"one");
    drop(c);
    // In the sim a domain dies with its last process; the guest outlives its agent.
    let _guest = pvusb_xen::sim::SimPlatform::connect(s.sim.path(), DomId(1)).unwrap();
    s.frontend.0.kill().unwrap();
    s.frontend.0.wait().unwrap();
    // The backend still reads Connected, on the dead frontend's rings.
    s.frontend = common::spawn_frontend(&s.sim, 1, s.port, &[]);
    common::wait_listening(s.port);
    expect_back(&s);
}
