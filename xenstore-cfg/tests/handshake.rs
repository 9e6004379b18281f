//! The XenbusState handshake between a backend (dom0) and a frontend (dom1) thread, each with
//! its own connection, using the xenbus helpers exactly as the vusb ends will.

mod common;

use std::time::Duration;

use xenstore_cfg::vusb;
use xenstore_cfg::xenbus::{self, RingInfo, WaitStateError, XenbusState};
use xenstore_cfg::XsOps;

#[test]
fn backend_and_frontend_connect_then_close() {
    let sim = common::Sim::start();
    let (mut xs, id) = sim.dom1_controller(8);
    let (fe_dir, be_dir) = (id.frontend_dir(), id.backend_dir());
    let rings = RingInfo {
        urb_ring_ref: 8,
        conn_ring_ref: 9,
        event_channel: 8,
    };
    let t = Duration::from_secs(10);

    let mut be = sim.dom0();
    let (fe2, be2) = (fe_dir.clone(), be_dir.clone());
    let backend = std::thread::spawn(move || {
        xenbus::switch_state(&mut be, &be2, XenbusState::InitWait).unwrap();
        let s = xenbus::wait_state(&mut be, &fe2, t, |s| {
            matches!(s, XenbusState::Initialised | XenbusState::Connected)
        })
        .unwrap();
        assert_eq!(
            s,
            XenbusState::Connected,
            "xen-hcd style: straight to Connected"
        );
        let got = xenbus::read_rings(&mut be, &fe2).unwrap();
        xenbus::switch_state(&mut be, &be2, XenbusState::Connected).unwrap();
        xenbus::wait_state(&mut be, &fe2, t, |s| s == XenbusState::Closing).unwrap();
        xenbus::switch_state(&mut be, &be2, XenbusState::Closed).unwrap();
        got
    });

    let mut fe = sim.domain(1);
    let s = xenbus::wait_state(&mut fe, &be_dir, t, |s| {
        matches!(
            s,
            XenbusState::InitWait | XenbusState::Initialised | XenbusState::Connected
        )
    })
    .unwrap();
    assert_eq!(s, XenbusState::InitWait);
    let view = vusb::read_backend(&mut fe, &id).unwrap();
    assert_eq!(view.num_ports, 8);
    xenbus::publish_rings(&mut fe, &fe_dir, &rings, Some(XenbusState::Connected)).unwrap();
    xenbus::wait_state(&mut fe, &be_dir, t, |s| s == XenbusState::Connected).unwrap();
    xenbus::switch_state(&mut fe, &fe_dir, XenbusState::Closing).unwrap();
    xenbus::wait_state(&mut fe, &be_dir, t, |s| s == XenbusState::Closed).unwrap();
    assert_eq!(backend.join().unwrap(), rings);

    // The guest cannot touch the backend's state; a wait gives up at its deadline.
    assert!(xenbus::switch_state(&mut fe, &be_dir, XenbusState::Connected).is_err());
    let e = xenbus::wait_state(&mut fe, &be_dir, Duration::from_millis(100), |s| {
        s == XenbusState::Reconfigured
    })
    .unwrap_err();
    assert!(
        matches!(e, WaitStateError::Timeout(XenbusState::Closed)),
        "{e}"
    );

    // Removing the controller: the state reads Unknown, switching fails instead of
    // recreating the directory.
    vusb::remove_controller(&mut xs, &id).unwrap();
    assert_eq!(
        xenbus::read_state(&mut xs, &be_dir).unwrap(),
        XenbusState::Unknown
    );
    let e = xenbus::switch_state(&mut xs, &be_dir, XenbusState::Closed).unwrap_err();
    assert!(xenbus::is_gone(&e));
    assert!(xs.try_read(&be_dir).unwrap().is_none());
}

#[test]
fn event_loop_pump_and_watch_events_while_replies_are_outstanding() {
    use std::os::fd::AsFd;
    let sim = common::Sim::start();
    let mut a = sim.dom0();
    let mut b = sim.dom0();
    a.watch("/e", "tok").unwrap();
    // Nothing to read yet beyond the registration event: pump never blocks.
    a.pump().unwrap();
    assert_eq!(a.poll_event().unwrap().path, "/e");
    assert!(!a.pump().unwrap());
    b.write("/e/1", b"x").unwrap();
    // Wait for readability as a mio loop would, then pump.
    {
        let fd = a.as_fd();
        let mut fds = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::IN,
        )];
        rustix::event::poll(&mut fds, None).unwrap();
    }
    assert!(a.pump().unwrap());
    assert_eq!(a.poll_event().unwrap().path, "/e/1");
    // Events that arrive while a blocking call waits for its reply are kept.
    b.write("/e/2", b"x").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(a.read_string("/e/1").unwrap(), "x");
    assert_eq!(
        a.wait_event(Some(Duration::from_secs(5)))
            .unwrap()
            .unwrap()
            .path,
        "/e/2"
    );
    assert!(a
        .wait_event(Some(Duration::from_millis(50)))
        .unwrap()
        .is_none());
    // A retrying transaction helper: concurrent increments all land.
    a.write("/counter", b"0").unwrap();
    let (sock, n) = (sim.socket(), 20);
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let sock = sock.clone();
            std::thread::spawn(move || {
                let mut xs = xenstore_cfg::Xs::connect(sock).unwrap();
                for _ in 0..n {
                    xs.transaction(|tx| {
                        let v: u32 = tx.read_string("/counter")?.parse().unwrap();
                        tx.write("/counter", (v + 1).to_string().as_bytes())
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(a.read_string("/counter").unwrap(), (3 * n).to_string());
}
