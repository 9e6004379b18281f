//! Busy polling (backend `poll-us`, frontend `--poll-us`) changes when the daemons sleep,
//! not what they do: transfers through the guest's vhci socket still echo exactly, both
//! back to back (taken while polling) and after idle gaps longer than the window (taken
//! after sleeping).

use std::time::Duration;

use pvusb_backend::sim::{DeviceSpec, ModelSpec};
use pvusb_tests::platform::Platform;
use pvusb_tests::rng::Rng;
use pvusb_tests::usbip::{bulk_in, bulk_out, control, Answer, UsbipClient};

const T: Duration = Duration::from_secs(30);

fn done(a: Answer) -> pvusb_frontend::usbip::RetSubmit {
    match a {
        Answer::Done(r) => r,
        other => panic!("expected a completion, got {other:?}"),
    }
}

#[test]
fn busy_polling_daemons_echo_exactly() {
    let mut p = Platform::new(&[1]);
    let busid = p.plug(DeviceSpec::new(ModelSpec::Loopback { capacity: 1 << 20 }));
    let id = p.add_controller(1, 0, 4);
    p.assign(&id, 1, Some(&busid));
    p.start_backend_with("poll-us = 200\n");
    let (attach, sock) = p.start_frontend_vhci_with(1, &["--poll-us", "200"]);
    let mut c = UsbipClient::attached(sock, attach.devid, "1-1");
    let set = done(
        c.transfer(control([0, 9, 1, 0, 0, 0, 0, 0], vec![]), T)
            .unwrap(),
    );
    assert_eq!(set.status, 0, "SET_CONFIGURATION\n{}", p.logs());
    let mut rng = Rng::new(7);
    for round in 0..200u32 {
        // Bulk (EP 1) and interrupt (EP 2) pairs; now and then an idle gap past the window.
        let ep = 1 + (round % 2) as u8;
        let len = if ep == 1 {
            1 + rng.below(70_000) as usize
        } else {
            64
        };
        let data: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        let out = done(c.transfer(bulk_out(ep, data.clone()), T).unwrap());
        assert_eq!(
            (out.status, out.actual_length as usize),
            (0, len),
            "round {round}"
        );
        if round % 25 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        let back = done(c.transfer(bulk_in(ep, len as u32), T).unwrap());
        assert_eq!(back.status, 0, "round {round}\n{}", p.logs());
        assert!(back.data == data, "round {round}: echoed data differs");
    }
    c.ledger.assert_settled();
}
