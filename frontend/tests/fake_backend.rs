//! The frontend daemon against a ring-level fake backend (tests/common/fakebe.rs): the
//! xenbus handshake, enumeration through SET_ADDRESS emulation, export over USB/IP,
//! bulk transfers split at max-packet multiples, unlinks in flight, and a backend that
//! breaks the protocol.

#![allow(missing_debug_implementations)]

mod common;

use std::time::Duration;

use common::client::{bulk_in, get_descriptor, Client};
use common::fakebe::{FakeBackend, Mode, DEVICE};
use common::{free_port, spawn_frontend, wait_for, wait_listening, Sim};
use pvusb_frontend::usbip::ClientEvent;

fn setup(mode: Mode) -> (Sim, common::Proc, FakeBackend, u16) {
    let sim = Sim::new();
    sim.create_domain(1);
    let id = sim.add_controller(1, 0, 0, 4);
    let port = free_port();
    let fe = spawn_frontend(&sim, 1, port, &[]);
    let be = FakeBackend::start(sim.path().to_owned(), id, mode);
    wait_listening(port);
    (sim, fe, be, port)
}

fn wait_device(sim: &Sim, port: u16) {
    wait_for(15, "the device in the devlist", || {
        let l = Client::devlist(port);
        (!l.is_empty()).then_some(())
    });
    let _ = sim;
}

#[test]
fn enumerates_exports_and_transfers() {
    let (sim, _fe, be, port) = setup(Mode::Good);
    wait_device(&sim, port);
    let devs = Client::devlist(port);
    assert_eq!(devs.len(), 1, "{}", common::frontend_log(&sim));
    let d = &devs[0];
    assert_eq!(
        (d.busid.as_str(), d.id_vendor, d.id_product),
        ("1-1", 0x1209, 0x0001)
    );
    assert_eq!(d.interfaces.len(), 1);

    let (mut c, _) = Client::import(port, "1-1").unwrap();
    assert!(
        Client::import(port, "1-1").is_err(),
        "a device is imported once"
    );
    let r = c.control_in(get_descriptor(1, 18));
    assert_eq!((r.status, r.data.as_slice()), (0, &DEVICE[..]));
    // A string descriptor stalls on this device.
    assert_eq!(c.control_in(get_descriptor(3, 255)).status, -32);

    // 200 KiB: more than three usbif requests, split at 512-byte multiples.
    let payload: Vec<u8> = (0..200 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let out = c.bulk_out(2, payload.clone());
    assert_eq!((out.status, out.actual_length), (0, payload.len() as u32));
    let back = c.bulk_in(1, payload.len() as u32);
    assert_eq!(back.status, 0);
    assert_eq!(back.data, payload);
    let st = be.stats.lock().unwrap();
    assert_eq!(st.bulk_out, payload);
    assert!(st.max_segs <= 16);
}

#[test]
fn unlink_of_a_waiting_in_transfer_is_answered_once() {
    let (sim, _fe, be, port) = setup(Mode::Good);
    wait_device(&sim, port);
    let (mut c, _) = Client::import(port, "1-1").unwrap();
    let victim = c.submit(bulk_in(1, 512));
    wait_for(10, "the IN request to reach the backend", || {
        (be.stats.lock().unwrap().held_now == 1).then_some(())
    });
    let u = c.unlink(victim);
    // The backend answers the cancelled request (-EPROTO) and the unlink: the client must
    // see RET_SUBMIT then RET_UNLINK 0, nothing else (ClientConn checks contract 4).
    let mut seen = Vec::new();
    while let Some(ev) = c.event(Duration::from_millis(500)) {
        seen.push(ev);
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(matches!(&seen[0], ClientEvent::Completed(r) if r.seqnum == victim));
    assert!(matches!(seen[1], ClientEvent::Unlinked { seqnum, status: 0, .. } if seqnum == u));
    assert_eq!(c.conn.outstanding(), 0);
}

fn broken_backend_closes_only_that_controller(mode: Mode) {
    let (sim, _fe, _be, port) = setup(mode);
    wait_device(&sim, port);
    let (mut c, _) = Client::import(port, "1-1").unwrap();
    let seq = c.submit(bulk_in(1, 512));
    // The controller is torn down: the transfer fails and the connection closes.
    let ev = c.event(Duration::from_secs(5));
    assert!(
        matches!(&ev, Some(ClientEvent::Completed(r)) if r.seqnum == seq && r.status != 0),
        "{ev:?}\n{}",
        common::frontend_log(&sim)
    );
    assert!(c.closed(Duration::from_secs(5)));
    let log = common::frontend_log(&sim);
    assert!(log.contains("backend broke the protocol"), "{log}");
    // The daemon is still serving.
    assert!(Client::devlist(port).is_empty());
}

#[test]
fn response_for_unknown_id_disconnects_the_controller() {
    broken_backend_closes_only_that_controller(Mode::UnknownId);
}

#[test]
fn impossible_rsp_prod_disconnects_the_controller() {
    broken_backend_closes_only_that_controller(Mode::RspProdOverflow);
}

#[test]
fn malformed_client_is_dropped_and_the_device_stays_usable() {
    use std::io::{Read, Write};
    let (sim, _fe, _be, port) = setup(Mode::Good);
    wait_device(&sim, port);
    let (c, _) = Client::import(port, "1-1").unwrap();
    drop(c);
    // A raw client imports, then sends a CMD_SUBMIT with direction 7.
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req = vec![0x01, 0x11, 0x80, 0x03, 0, 0, 0, 0];
    let mut busid = [0u8; 32];
    busid[..3].copy_from_slice(b"1-1");
    req.extend_from_slice(&busid);
    wait_for(10, "the first client's port to be free", || {
        Client::devlist(port)
            .iter()
            .any(|d| d.busid == "1-1")
            .then_some(())
    });
    raw.write_all(&req).unwrap();
    let mut rep = vec![0u8; 8 + 312];
    raw.read_exact(&mut rep).unwrap();
    assert_eq!(&rep[4..8], &[0, 0, 0, 0], "import accepted");
    let mut bad = vec![0u8; 48];
    bad[3] = 1; // CMD_SUBMIT
    bad[7] = 1; // seqnum
    bad[8..12].copy_from_slice(&rep[8 + 256 + 32..8 + 256 + 40][..4]);
    bad[15] = 7; // direction
    raw.write_all(&bad).unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(
        raw.read(&mut buf).unwrap_or(0),
        0,
        "the connection is closed"
    );
    // Nothing else is disturbed: the device can be imported and used again.
    let (mut c, _) = wait_for(10, "the device to be importable again", || {
        Client::import(port, "1-1").ok()
    });
    assert_eq!(c.control_in(get_descriptor(1, 18)).status, 0);
}
