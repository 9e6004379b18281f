//! The vhci path against a directory shaped like vhci_hcd's sysfs files: the daemon picks
//! the first free port of the right hub, writes `port sockfd devid speed` to `attach`, and
//! serves USB/IP on the other end of that socket; an unplug writes the port to `detach`.
//! The test takes the socket end out of the daemon with pidfd_getfd(2), as the kernel
//! takes its reference at `attach`.

#![allow(missing_debug_implementations)]

mod common;

use std::fs;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::client::{get_descriptor, Client};
use common::{spawn_backend, wait_for, Proc, Sim};
use pvusb_backend::sim::{plug, DeviceSpec, ModelSpec};
use pvusb_frontend::usbip::{ClientConn, CmdSubmit, Limits};
use rustix::process::{pidfd_getfd, pidfd_open, Pid, PidfdFlags, PidfdGetfdFlags};
use xenstore_cfg::vusb::set_port;

#[test]
fn attaches_to_vhci_and_serves_the_socket() {
    let sim = Sim::new();
    let vhci = common::vhci_mimic(&sim);

    sim.create_domain(1);
    let busid = plug(
        sim.path(),
        &DeviceSpec::new(ModelSpec::Loopback { capacity: 1 << 20 }),
    )
    .unwrap();
    let id = sim.add_controller(1, 0, 0, 4);
    set_port(&mut sim.xs(), &id, 1, Some(&busid)).unwrap();
    let _be = spawn_backend(&sim, 0, "backend");
    let fe = Proc(
        Command::new(env!("CARGO_BIN_EXE_pvusb-frontend"))
            .args(["--platform", "sim", "--sim-dir"])
            .arg(sim.path())
            .args(["--domid", "1", "--vhci"])
            .arg(&vhci)
            .arg("-v")
            .stdout(Stdio::null())
            .stderr(fs::File::create(sim.path().join("frontend.log")).unwrap())
            .spawn()
            .unwrap(),
    );

    let attach = wait_for(20, "a write to vhci's attach", || {
        let s = fs::read_to_string(vhci.join("attach")).ok()?;
        (!s.is_empty()).then_some(s)
    });
    let f: Vec<u32> = attach
        .split_whitespace()
        .map(|w| w.parse().unwrap())
        .collect();
    let [port, sockfd, devid, speed] = f[..] else {
        panic!("attach content {attach:?}")
    };
    assert_eq!(port, 1, "the first free hs port");
    assert_eq!(speed, 3, "high speed");
    assert_eq!(devid, (1 << 16) | 1, "bus 1 (controller 0), address 1");

    let pidfd = pidfd_open(Pid::from_child(&fe.0), PidfdFlags::empty()).unwrap();
    let fd = pidfd_getfd(&pidfd, sockfd as i32, PidfdGetfdFlags::empty()).unwrap();
    let sock = UnixStream::from(fd);
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut c = Client::over(
        Box::new(sock),
        ClientConn::attached(devid, Limits::default()),
    );

    let d = c.control_in(get_descriptor(1, 18));
    assert_eq!(
        (d.status, &d.data[8..12]),
        (0, &[0x09, 0x12, 0x01, 0x00][..])
    );
    let set = c.transfer(CmdSubmit {
        setup: [0, 9, 1, 0, 0, 0, 0, 0],
        ..CmdSubmit::default()
    });
    assert_eq!(set.status, 0);
    let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    let seq = c.submit(common::client::bulk_out(1, data.clone()));
    match c.event(Duration::from_secs(10)) {
        Some(pvusb_frontend::usbip::ClientEvent::Completed(r)) if r.seqnum == seq => {
            assert_eq!(r.status, 0)
        }
        other => panic!("{other:?}\n{}", common::frontend_log(&sim)),
    }
    assert_eq!(c.bulk_in(1, 100_000).data, data);

    // Unplug: vhci is told to detach the port.
    set_port(&mut sim.xs(), &id, 1, None).unwrap();
    wait_for(10, "a write to vhci's detach", || {
        let s = fs::read_to_string(vhci.join("detach")).ok()?;
        (s.trim() == "1").then_some(())
    });
    assert!(
        c.closed(Duration::from_secs(5)),
        "the USB/IP socket closes with the device"
    );
}
