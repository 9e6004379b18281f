//! Several controllers in one guest, against the guest's gntalloc limit (every gntalloc
//! user of a domain shares it; Linux's default is 1024 pages). A controller takes 258 pages
//! (its pool and two ring pages), so three fit the default and a fourth does not: that one
//! stays unconnected with its error reported in xenstore as `xenbus_dev_error` does, and the
//! three others work; once the limit is raised, the frontend's retry connects it. With the
//! limit raised from the start, all four work.

use std::collections::BTreeSet;
use std::time::Duration;

use pvusb_backend::sim::{DeviceSpec, ModelSpec};
use pvusb_frontend::pool::GRANTS_PER_CONTROLLER;
use pvusb_tests::platform::Platform;
use pvusb_tests::usbip::{bulk_in, bulk_out, control, devlist, Answer, UsbipClient};
use pvusb_tests::wait;
use xenstore_cfg::vusb::VusbId;
use xenstore_cfg::xenbus::{read_dev_error, read_state, XenbusState};

const T: Duration = Duration::from_secs(30);
const CONTROLLERS: u32 = 4;

/// Four controllers with a loopback on port 1 each, the backend and the frontend started.
fn four_controllers(limit: Option<usize>) -> (Platform, Vec<VusbId>, std::net::SocketAddr) {
    let mut p = Platform::new(&[1]);
    if let Some(pages) = limit {
        p.set_gntalloc_limit(1, pages);
    }
    let ids: Vec<VusbId> = (0..CONTROLLERS)
        .map(|devid| {
            let id = p.add_controller(1, devid, 2);
            let busid = p.plug(DeviceSpec::new(ModelSpec::Loopback { capacity: 1 << 20 }));
            p.assign(&id, 1, Some(&busid));
            id
        })
        .collect();
    p.start_backend();
    let addr = p.start_frontend(1);
    (p, ids, addr)
}

/// The frontend states of the controllers, once none is still on its way to Connected
/// (Connected, or an error reported).
fn settled(p: &Platform, ids: &[VusbId]) -> Vec<(XenbusState, Option<String>)> {
    wait::until(
        T,
        "every controller to connect or report",
        || p.logs(),
        || {
            let mut xs = p.xs();
            let now: Vec<_> = ids
                .iter()
                .map(|id| {
                    let dir = id.frontend_dir();
                    let state = read_state(&mut xs, &dir).unwrap_or(XenbusState::Unknown);
                    (state, read_dev_error(&mut xs, &dir).ok().flatten())
                })
                .collect();
            now.iter()
                .all(|(s, e)| *s == XenbusState::Connected || e.is_some())
                .then_some(now)
        },
    )
}

/// Every exported device echoes a bulk transfer.
fn echo_all(p: &Platform, addr: std::net::SocketAddr, want: usize) {
    let list = wait::until(
        T,
        "the devices to be exported",
        || p.logs(),
        || {
            let l = devlist(addr);
            (l.len() >= want).then_some(l)
        },
    );
    assert_eq!(list.len(), want, "exported: {list:?}\n{}", p.logs());
    let busids: BTreeSet<_> = list.iter().map(|d| d.busid.clone()).collect();
    for busid in busids {
        let mut c = UsbipClient::import_when_ready(addr, &busid, T, || p.logs());
        let done = |a: Answer| match a {
            Answer::Done(r) => r,
            other => panic!("{busid}: expected a completion, got {other:?}"),
        };
        let set = done(
            c.transfer(control([0, 9, 1, 0, 0, 0, 0, 0], vec![]), T)
                .unwrap(),
        );
        assert_eq!(set.status, 0, "{busid}: SET_CONFIGURATION");
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let out = done(c.transfer(bulk_out(1, data.clone()), T).unwrap());
        assert_eq!((out.status, out.actual_length), (0, 20_000), "{busid}");
        let back = done(c.transfer(bulk_in(1, 20_000), T).unwrap());
        assert_eq!(back.status, 0, "{busid}");
        assert!(back.data == data, "{busid}: echoed data differs");
        c.ledger.assert_settled();
    }
}

#[test]
fn a_controller_past_the_gntalloc_limit_reports_it_and_the_others_work() {
    assert_eq!(GRANTS_PER_CONTROLLER, 258);
    let (p, ids, addr) = four_controllers(None);
    let states = settled(&p, &ids);
    let connected = states
        .iter()
        .filter(|(s, _)| *s == XenbusState::Connected)
        .count();
    assert_eq!(connected, 3, "{states:?}\n{}", p.logs());
    let (_, err) = states
        .iter()
        .find(|(s, _)| *s != XenbusState::Connected)
        .expect("one controller left out");
    let err = err.as_deref().unwrap_or_default();
    assert!(
        err.starts_with("28 ") && err.contains("gntalloc limit"),
        "the error names ENOSPC and the limit: {err:?}"
    );
    echo_all(&p, addr, 3);
    // Nothing of the failed controller's allocation is left granted.
    assert_eq!(p.counters().grants as usize, 3 * GRANTS_PER_CONTROLLER);
    // The admin raises the limit: the frontend's retry connects the fourth, and its report
    // goes.
    p.set_gntalloc_limit(1, 2048);
    let states = wait::until(
        T,
        "the fourth controller to connect",
        || p.logs(),
        || {
            let now = settled(&p, &ids);
            now.iter()
                .all(|(s, e)| *s == XenbusState::Connected && e.is_none())
                .then_some(now)
        },
    );
    assert_eq!(states.len(), 4);
    echo_all(&p, addr, 4);
}

#[test]
fn with_the_limit_raised_four_controllers_work() {
    let (p, ids, addr) = four_controllers(Some(2048));
    let states = settled(&p, &ids);
    assert!(
        states
            .iter()
            .all(|(s, e)| *s == XenbusState::Connected && e.is_none()),
        "{states:?}\n{}",
        p.logs()
    );
    echo_all(&p, addr, 4);
}
