//! Tests for `sim` (compiled only under `#[cfg(test)]`, see `mod tests` in sim/mod.rs).
//!
//! Async semantics of simulated devices through the `HostDevice` trait.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::*;
use crate::host::{
    errno, resolve, Completion, DiscardError, HostDevice, HostUrb, SubmitError, UrbBuf, UrbFlags,
    UsbRoots, XferKind,
};

pub(crate) fn open(spec: DeviceSpec) -> (tempfile::TempDir, SimDevice, String) {
    let tmp = tempfile::tempdir().unwrap();
    let busid = plug(tmp.path(), &spec).unwrap();
    let dev = SimDevice::open_busid(tmp.path(), &busid).unwrap();
    (tmp, dev, busid)
}

fn loopback() -> DeviceSpec {
    DeviceSpec::new(ModelSpec::Loopback { capacity: 1 << 20 })
}

fn bulk(tag: u64, ep: u8, flags: UrbFlags, buf: UrbBuf) -> HostUrb {
    HostUrb::new(tag, XferKind::Bulk, ep, flags, buf)
}

/// Reaps `n` completions, waiting on the poll fd, or panics after 5 s.
pub(crate) fn reap_n(dev: &mut dyn HostDevice, n: usize) -> Vec<Completion> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut out = Vec::new();
    while out.len() < n {
        while let Some(c) = dev.reap() {
            out.push(c);
        }
        if out.len() >= n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {n} completions",
            out.len()
        );
        let fd = dev.poll_fd();
        let mut fds = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::IN,
        )];
        let _ = rustix::event::poll(
            &mut fds,
            Some(&rustix::time::Timespec {
                tv_sec: 0,
                tv_nsec: 50_000_000,
            }),
        );
    }
    out
}

#[test]
fn sim_busid_resolves_through_the_real_resolver() {
    let tmp = tempfile::tempdir().unwrap();
    let mut spec = DeviceSpec::new(ModelSpec::Storage {
        size_bytes: 1 << 20,
    });
    spec.speed = Some(crate::host::HostSpeed::Super);
    let busid = plug(tmp.path(), &spec).unwrap();
    assert_eq!(busid, "1-1");
    let roots = UsbRoots::sim(tmp.path());
    let d = resolve(&roots, &busid).unwrap();
    assert_eq!(d.busnum, 1);
    assert!(d.node.is_file(), "{}", d.node.display());
    assert_eq!(d.product.as_deref(), Some("pvusb sim disk"));
    let desc = d.parsed_descriptors().unwrap();
    assert_eq!(desc.device.max_packet_size0, 9);
    let mut raw = desc.device_raw;
    assert!(crate::host::fixup_superspeed_as_high(&mut raw));
    assert_eq!(desc.configs[0].alts[0].endpoints[0].max_packet(), 1024);
    assert_eq!(crate::host::list_busids(&roots), vec!["1-1".to_string()]);
    let second = plug(tmp.path(), &loopback()).unwrap();
    assert_eq!(second, "1-2");
    assert_ne!(resolve(&roots, &second).unwrap().devnum, d.devnum);
    let dev = SimDevice::open(&roots, &d).unwrap();
    assert!(matches!(
        SimDevice::open(&roots, &d),
        Err(SimOpenError::Busy(_))
    ));
    drop(dev);
    unplug(tmp.path(), &busid).unwrap();
    assert!(!d.node.exists());
    assert!(matches!(
        unplug(tmp.path(), &busid),
        Err(BusError::NotPlugged(_))
    ));
    assert!(matches!(
        plug(tmp.path(), &{
            let mut s = loopback();
            s.busid = Some("1-2".into());
            s
        }),
        Err(BusError::BusidTaken(_))
    ));
}

#[test]
fn a_full_bus_spills_onto_the_next_and_freed_numbers_are_reused() {
    let tmp = tempfile::tempdir().unwrap();
    let roots = UsbRoots::sim(tmp.path());
    // 126 device numbers (2..=127) per bus, as a real bus (1 is the root hub).
    let busids: Vec<String> = (0..130)
        .map(|_| plug(tmp.path(), &loopback()).unwrap())
        .collect();
    assert_eq!((busids[0].as_str(), busids[125].as_str()), ("1-1", "1-126"));
    assert_eq!(&busids[126..], ["2-1", "2-2", "2-3", "2-4"]);
    let d = resolve(&roots, "2-1").unwrap();
    assert_eq!((d.busnum, d.devnum), (2, 2));
    assert!(d.node.ends_with("bus/usb/002/002"), "{}", d.node.display());
    let dev = SimDevice::open(&roots, &d).unwrap();
    drop(dev);
    // An unplug frees its bus's number and node: the next plug fills the gap on bus 1.
    let gone = resolve(&roots, "1-7").unwrap();
    unplug(tmp.path(), "1-7").unwrap();
    assert!(!gone.node.exists());
    assert!(resolve(&roots, "2-1").unwrap().node.exists());
    let again = plug(tmp.path(), &loopback()).unwrap();
    assert_eq!(again, "1-7");
    assert_eq!(resolve(&roots, &again).unwrap().devnum, gone.devnum);
    // A requested bus id names its bus; one past the host's buses is refused.
    let on = |b: &str| {
        let mut s = loopback();
        s.busid = Some(b.into());
        plug(tmp.path(), &s)
    };
    assert_eq!(on("3-5").unwrap(), "3-5");
    assert_eq!(resolve(&roots, "3-5").unwrap().busnum, 3);
    assert!(matches!(
        on(&format!("{}-1", SIM_BUSES + 1)),
        Err(BusError::BadBusid(_))
    ));
    assert!(matches!(on("0-1"), Err(BusError::BadBusid(_))));
    assert!(matches!(on("2-2"), Err(BusError::BusidTaken(_))));
}

#[test]
fn hotplug_monitor_sees_plug_and_unplug() {
    use crate::host::hotplug::{HotplugEvent, HotplugMonitor, InotifyMonitor};
    let tmp = tempfile::tempdir().unwrap();
    let mut mon = InotifyMonitor::new(&UsbRoots::sim(tmp.path())).unwrap();
    let busid = plug(tmp.path(), &loopback()).unwrap();
    unplug(tmp.path(), &busid).unwrap();
    assert_eq!(
        mon.read_events().unwrap(),
        vec![
            HotplugEvent::Add(busid.clone()),
            HotplugEvent::Remove(busid)
        ]
    );
}

#[test]
fn loopback_keeps_per_endpoint_order_with_many_in_flight() {
    let (_tmp, mut dev, _) = open(loopback());
    for i in 0..16u64 {
        dev.submit(bulk(100 + i, 0x81, UrbFlags::empty(), UrbBuf::zeroed(512)))
            .unwrap();
    }
    assert_eq!(dev.in_flight(), 16);
    assert!(dev.reap().is_none());
    for i in 0..16u64 {
        dev.submit(bulk(
            i,
            0x01,
            UrbFlags::empty(),
            UrbBuf::from_vec(vec![i as u8; 100 + i as usize]),
        ))
        .unwrap();
    }
    let done = reap_n(&mut dev, 32);
    let ins: Vec<&Completion> = done.iter().filter(|c| c.tag >= 100).collect();
    assert_eq!(
        ins.iter().map(|c| c.tag).collect::<Vec<_>>(),
        (100..116).collect::<Vec<_>>()
    );
    for c in ins {
        let i = c.tag - 100;
        assert_eq!((c.status, c.actual_length), (0, 100 + i as u32));
        assert!(c.buf.as_slice().unwrap()[..c.actual_length as usize]
            .iter()
            .all(|&b| b == i as u8));
    }
    assert_eq!(dev.in_flight(), 0);
}

#[test]
fn loopback_reuses_drained_records_without_their_old_bytes() {
    // Each record is drained before the next OUT, so every OUT after the first lands in a
    // recycled buffer: shorter (its old tail must not come back) or longer.
    let (_tmp, mut dev, _) = open(loopback());
    for (tag, (len, byte)) in [(300, 1u8), (10, 2), (200, 3), (4096, 4)]
        .into_iter()
        .enumerate()
    {
        let tag = 2 * tag as u64;
        dev.submit(bulk(
            tag,
            0x01,
            UrbFlags::empty(),
            UrbBuf::from_vec(vec![byte; len]),
        ))
        .unwrap();
        dev.submit(bulk(tag + 1, 0x81, UrbFlags::empty(), UrbBuf::zeroed(8192)))
            .unwrap();
        let done = reap_n(&mut dev, 2);
        let c = done.iter().find(|c| c.tag == tag + 1).unwrap();
        assert_eq!((c.status, c.actual_length), (0, len as u32));
        let buf = c.buf.as_slice().unwrap();
        assert!(buf[..len].iter().all(|&b| b == byte));
        assert!(buf[len..].iter().all(|&b| b == 0));
    }
}

#[test]
fn loopback_echoes_interrupt_apart_from_bulk() {
    let (_tmp, mut dev, _) = open(loopback());
    let int = |tag, ep, buf| HostUrb::new(tag, XferKind::Interrupt, ep, UrbFlags::empty(), buf);
    dev.submit(bulk(
        1,
        0x01,
        UrbFlags::empty(),
        UrbBuf::from_vec(vec![1; 64]),
    ))
    .unwrap();
    dev.submit(int(2, 0x02, UrbBuf::from_vec(vec![2; 8])))
        .unwrap();
    dev.submit(int(3, 0x82, UrbBuf::zeroed(64))).unwrap();
    dev.submit(bulk(4, 0x81, UrbFlags::empty(), UrbBuf::zeroed(64)))
        .unwrap();
    let mut done = reap_n(&mut dev, 4);
    done.sort_by_key(|c| c.tag);
    let got = |c: &Completion| c.buf.as_slice().unwrap()[..c.actual_length as usize].to_vec();
    assert_eq!(
        got(&done[2]),
        vec![2; 8],
        "interrupt IN echoes interrupt OUT"
    );
    assert_eq!(got(&done[3]), vec![1; 64], "bulk IN echoes bulk OUT");
}

#[test]
fn discard_completes_once_with_econnreset() {
    let (_tmp, mut dev, _) = open(loopback());
    dev.submit(bulk(1, 0x81, UrbFlags::empty(), UrbBuf::zeroed(64)))
        .unwrap();
    let refused = dev
        .submit(bulk(1, 0x81, UrbFlags::empty(), UrbBuf::zeroed(64)))
        .unwrap_err();
    assert_eq!(refused.error, SubmitError::DuplicateTag(1));
    dev.discard(1).unwrap();
    assert_eq!(dev.discard(1), Err(DiscardError::NotInFlight(1)));
    let c = reap_n(&mut dev, 1);
    assert_eq!((c[0].tag, c[0].status), (1, -errno::ECONNRESET));
    assert!(dev.reap().is_none());
    assert_eq!(dev.discard(1), Err(DiscardError::NotInFlight(1)));
}

#[test]
fn bulk_continuation_cancels_followers_and_refuses_until_new_transfer() {
    let (_tmp, mut dev, _) = open(loopback());
    let cont = UrbFlags::BULK_CONTINUATION;
    dev.submit(bulk(1, 0x81, UrbFlags::SHORT_NOT_OK, UrbBuf::zeroed(512)))
        .unwrap();
    dev.submit(bulk(
        2,
        0x81,
        cont | UrbFlags::SHORT_NOT_OK,
        UrbBuf::zeroed(512),
    ))
    .unwrap();
    dev.submit(bulk(3, 0x81, cont, UrbBuf::zeroed(512)))
        .unwrap();
    dev.submit(bulk(4, 0x81, UrbFlags::empty(), UrbBuf::zeroed(512)))
        .unwrap();
    dev.submit(bulk(
        10,
        0x01,
        UrbFlags::empty(),
        UrbBuf::from_vec(vec![5; 100]),
    ))
    .unwrap();
    let done = reap_n(&mut dev, 4);
    let st: Vec<(u64, i32, u32)> = done
        .iter()
        .map(|c| (c.tag, c.status, c.actual_length))
        .collect();
    assert!(st.contains(&(1, -errno::EREMOTEIO, 100)), "{st:?}");
    assert!(st.contains(&(2, -errno::ECONNRESET, 0)));
    assert!(st.contains(&(3, -errno::ECONNRESET, 0)));
    assert!(st.contains(&(10, 0, 100)));
    // URB 4 started a new transfer: not cancelled, continuations not refused.
    dev.submit(bulk(5, 0x81, cont, UrbBuf::zeroed(512)))
        .unwrap();
    dev.submit(bulk(
        11,
        0x01,
        UrbFlags::empty(),
        UrbBuf::from_vec(vec![6; 512]),
    ))
    .unwrap();
    let done = reap_n(&mut dev, 2);
    assert!(done
        .iter()
        .any(|c| (c.tag, c.status, c.actual_length) == (4, 0, 512)));
    // Now fail a lone transfer: the next continuation is refused, a fresh one re-enables.
    dev.discard(5).unwrap();
    reap_n(&mut dev, 1);
    dev.submit(bulk(6, 0x81, UrbFlags::SHORT_NOT_OK, UrbBuf::zeroed(512)))
        .unwrap();
    dev.submit(bulk(
        12,
        0x01,
        UrbFlags::empty(),
        UrbBuf::from_vec(vec![7; 10]),
    ))
    .unwrap();
    let done = reap_n(&mut dev, 2);
    assert!(done
        .iter()
        .any(|c| (c.tag, c.status) == (6, -errno::EREMOTEIO)));
    let r = dev
        .submit(bulk(7, 0x81, cont, UrbBuf::zeroed(512)))
        .unwrap_err();
    assert_eq!(r.error, SubmitError::ContinuationRefused);
    assert_eq!(r.error.to_errno(), -errno::EREMOTEIO);
    assert_eq!(r.urb.buf.len(), 512);
    dev.submit(bulk(8, 0x81, UrbFlags::empty(), UrbBuf::zeroed(512)))
        .unwrap();
    dev.submit(bulk(9, 0x81, cont, UrbBuf::zeroed(512)))
        .unwrap();
    assert_eq!(dev.drain().len(), 2);
    assert_eq!(dev.in_flight(), 0);
}

#[test]
fn stall_persists_until_clear_halt() {
    let mut spec = loopback();
    spec.faults.stall = vec![0x81];
    let (_tmp, mut dev, _) = open(spec);
    for tag in 1..=2 {
        dev.submit(bulk(tag, 0x81, UrbFlags::empty(), UrbBuf::zeroed(64)))
            .unwrap();
        assert_eq!(reap_n(&mut dev, 1)[0].status, -errno::EPIPE);
    }
    // GET_STATUS(endpoint) reports the halt.
    let setup = vec![0x82, 0, 0, 0, 0x81, 0, 2, 0, 0, 0];
    dev.submit(HostUrb::new(
        3,
        XferKind::Control,
        0,
        UrbFlags::empty(),
        UrbBuf::from_vec(setup),
    ))
    .unwrap();
    let c = reap_n(&mut dev, 1).pop().unwrap();
    assert_eq!(
        (c.status, c.actual_length, c.buf.as_slice().unwrap()[8]),
        (0, 2, 1)
    );
    dev.clear_halt(0x81).unwrap();
    assert!(dev.clear_halt(0x85).is_err());
    dev.submit(bulk(
        4,
        0x01,
        UrbFlags::empty(),
        UrbBuf::from_vec(vec![1; 8]),
    ))
    .unwrap();
    dev.submit(bulk(5, 0x81, UrbFlags::empty(), UrbBuf::zeroed(64)))
        .unwrap();
    let done = reap_n(&mut dev, 2);
    assert!(done.iter().all(|c| c.status == 0));
}

#[test]
fn unplug_with_urbs_in_flight_completes_each_exactly_once() {
    let (tmp, mut dev, busid) = open(loopback());
    for tag in 0..8 {
        dev.submit(bulk(tag, 0x81, UrbFlags::empty(), UrbBuf::zeroed(512)))
            .unwrap();
    }
    unplug(tmp.path(), &busid).unwrap();
    let done = reap_n(&mut dev, 8);
    assert!(done.iter().all(|c| c.status == -errno::ESHUTDOWN));
    assert_eq!(done.iter().map(|c| c.tag).collect::<HashSet<_>>().len(), 8);
    assert!(dev.is_gone());
    let r = dev
        .submit(bulk(99, 0x81, UrbFlags::empty(), UrbBuf::zeroed(8)))
        .unwrap_err();
    assert_eq!(r.error, SubmitError::Gone);
    std::thread::sleep(Duration::from_millis(50));
    assert!(dev.reap().is_none());
    assert_eq!(dev.in_flight(), 0);
    assert!(dev.set_interface(0, 0).is_err());
}

#[test]
fn quick_replug_at_the_same_busid_is_still_an_unplug() {
    let (tmp, mut dev, busid) = open(loopback());
    dev.submit(bulk(1, 0x81, UrbFlags::empty(), UrbBuf::zeroed(8)))
        .unwrap();
    unplug(tmp.path(), &busid).unwrap();
    let mut spec = loopback();
    spec.busid = Some(busid.clone());
    assert_eq!(plug(tmp.path(), &spec).unwrap(), busid);
    let c = reap_n(&mut dev, 1);
    assert_eq!(c[0].status, -errno::ESHUTDOWN);
    assert!(dev.is_gone());
    drop(dev);
    let mut again = SimDevice::open_busid(tmp.path(), &busid).unwrap();
    assert!(!again.is_gone());
    again
        .submit(bulk(2, 0x01, UrbFlags::empty(), UrbBuf::zeroed(8)))
        .unwrap();
}

#[test]
fn unplug_of_an_idle_device_wakes_the_poll_fd() {
    let (tmp, mut dev, busid) = open(loopback());
    unplug(tmp.path(), &busid).unwrap();
    let fd = dev.poll_fd();
    let mut fds = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::IN,
    )];
    let n = rustix::event::poll(
        &mut fds,
        Some(&rustix::time::Timespec {
            tv_sec: 2,
            tv_nsec: 0,
        }),
    )
    .unwrap();
    assert_eq!(n, 1);
    assert!(dev.reap().is_none());
    assert!(dev.is_gone());
}

#[test]
fn fault_unplug_after_n_urbs_removes_the_device() {
    let mut spec = loopback();
    spec.faults.unplug_after = Some(2);
    let (tmp, mut dev, busid) = open(spec);
    for tag in 0..3 {
        dev.submit(bulk(tag, 0x81, UrbFlags::empty(), UrbBuf::zeroed(8)))
            .unwrap();
    }
    dev.submit(bulk(10, 0x01, UrbFlags::empty(), UrbBuf::zeroed(8)))
        .unwrap();
    let r = dev
        .submit(bulk(11, 0x01, UrbFlags::empty(), UrbBuf::zeroed(8)))
        .unwrap_err();
    assert_eq!(r.error, SubmitError::Gone);
    let done = reap_n(&mut dev, 4);
    let st: Vec<(u64, i32)> = done.iter().map(|c| (c.tag, c.status)).collect();
    assert_eq!(
        st,
        vec![
            (10, 0),
            (0, 0),
            (1, -errno::ESHUTDOWN),
            (2, -errno::ESHUTDOWN)
        ]
    );
    // Everything reaped, the device gone: its fd still polls readable (usbfs's POLLHUP), so
    // a poller learns of the unplug even when the last completion was reaped unprompted.
    assert!(dev.reap().is_none());
    let fd = dev.poll_fd();
    let mut fds = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::IN,
    )];
    let zero = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    assert_eq!(rustix::event::poll(&mut fds, Some(&zero)).unwrap(), 1);
    let deadline = Instant::now() + Duration::from_secs(2);
    while UsbRoots::sim(tmp.path())
        .devices_dir()
        .join(&busid)
        .exists()
    {
        assert!(
            Instant::now() < deadline,
            "device not removed from the tree"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn runtime_faults_latency_fail_nth_and_short_read() {
    let (tmp, mut dev, busid) = open(loopback());
    let faults = Faults {
        latency_us: 30_000,
        fail_nth: Some(FailNth {
            n: 2,
            errno: 71,
            endpoint: Some(0x01),
        }),
        short_read: Some(ShortRead {
            max_bytes: 3,
            endpoint: None,
            count: Some(1),
        }),
        ..Faults::default()
    };
    set_faults(tmp.path(), &busid, &faults).unwrap();
    std::thread::sleep(Duration::from_millis(80));
    let t0 = Instant::now();
    dev.submit(bulk(
        1,
        0x01,
        UrbFlags::empty(),
        UrbBuf::from_vec(vec![9; 10]),
    ))
    .unwrap();
    dev.submit(bulk(
        2,
        0x01,
        UrbFlags::empty(),
        UrbBuf::from_vec(vec![9; 10]),
    ))
    .unwrap();
    dev.submit(bulk(3, 0x81, UrbFlags::empty(), UrbBuf::zeroed(10)))
        .unwrap();
    dev.submit(bulk(4, 0x81, UrbFlags::empty(), UrbBuf::zeroed(10)))
        .unwrap();
    let done = reap_n(&mut dev, 4);
    assert!(t0.elapsed() >= Duration::from_millis(30));
    let st: Vec<(u64, i32, u32)> = done
        .iter()
        .map(|c| (c.tag, c.status, c.actual_length))
        .collect();
    assert!(st.contains(&(1, 0, 10)), "{st:?}");
    assert!(st.contains(&(2, -errno::EPROTO, 0)));
    assert!(st.contains(&(3, 0, 3)));
    assert!(st.contains(&(4, 0, 7)));
    assert!(matches!(
        set_faults(tmp.path(), "1-9", &faults),
        Err(BusError::NotPlugged(_))
    ));
}

#[test]
fn control_requests_standard_and_refused() {
    let (_tmp, mut dev, _) = open(loopback());
    let get_dev = vec![0x80, 6, 0, 1, 0, 0, 18, 0]
        .into_iter()
        .chain([0; 18])
        .collect();
    dev.submit(HostUrb::new(
        1,
        XferKind::Control,
        0,
        UrbFlags::empty(),
        UrbBuf::from_vec(get_dev),
    ))
    .unwrap();
    let c = reap_n(&mut dev, 1).pop().unwrap();
    assert_eq!((c.status, c.actual_length), (0, 18));
    assert_eq!(
        &c.buf.as_slice().unwrap()[8..],
        &dev.descriptors().device_raw[..]
    );
    let short = UrbBuf::from_vec(vec![0x80, 6, 0, 1, 0, 0, 18, 0]);
    let r = dev
        .submit(HostUrb::new(
            2,
            XferKind::Control,
            0,
            UrbFlags::empty(),
            short,
        ))
        .unwrap_err();
    assert!(matches!(r.error, SubmitError::Invalid(_)));
    let r = dev
        .submit(bulk(3, 0x83, UrbFlags::empty(), UrbBuf::zeroed(8)))
        .unwrap_err();
    assert_eq!(r.error, SubmitError::NoEndpoint(0x83));
    let r = dev
        .submit(HostUrb::new(
            4,
            XferKind::Iso,
            0x81,
            UrbFlags::empty(),
            UrbBuf::zeroed(8),
        ))
        .unwrap_err();
    assert!(matches!(r.error, SubmitError::Invalid(_)));
    // Vendor request the model does not know: STALL on ep0 (-EPIPE), ep0 still usable.
    let vendor = UrbBuf::from_vec(vec![0x40, 1, 0, 0, 0, 0, 0, 0]);
    dev.submit(HostUrb::new(
        5,
        XferKind::Control,
        0,
        UrbFlags::empty(),
        vendor,
    ))
    .unwrap();
    assert_eq!(reap_n(&mut dev, 1)[0].status, -errno::EPIPE);
    dev.set_configuration(0).unwrap();
    assert_eq!(dev.active_config(), 0);
    let r = dev
        .submit(bulk(6, 0x81, UrbFlags::empty(), UrbBuf::zeroed(8)))
        .unwrap_err();
    assert_eq!(r.error, SubmitError::NoEndpoint(0x81));
    assert!(dev.set_configuration(7).is_err());
    dev.set_configuration(1).unwrap();
    dev.submit(bulk(7, 0x81, UrbFlags::empty(), UrbBuf::zeroed(8)))
        .unwrap();
    dev.reset().unwrap();
    assert_eq!(reap_n(&mut dev, 1)[0].status, -errno::ESHUTDOWN);
}

#[test]
fn keyboard_types_its_text() {
    let (_tmp, mut dev, _) = open(DeviceSpec::new(ModelSpec::Keyboard { text: "Ab".into() }));
    let get_report_desc: Vec<u8> = vec![0x81, 6, 0, 0x22, 0, 0, 100, 0]
        .into_iter()
        .chain([0; 100])
        .collect();
    dev.submit(HostUrb::new(
        1,
        XferKind::Control,
        0,
        UrbFlags::empty(),
        UrbBuf::from_vec(get_report_desc),
    ))
    .unwrap();
    let c = reap_n(&mut dev, 1).pop().unwrap();
    assert_eq!(
        c.actual_length as usize,
        model::hid::REPORT_DESCRIPTOR.len()
    );
    let set_idle = UrbBuf::from_vec(vec![0x21, 0x0a, 0, 0, 0, 0, 0, 0]);
    dev.submit(HostUrb::new(
        2,
        XferKind::Control,
        0,
        UrbFlags::empty(),
        set_idle,
    ))
    .unwrap();
    assert_eq!(reap_n(&mut dev, 1)[0].status, 0);
    let mut reports = Vec::new();
    for tag in 10..14 {
        dev.submit(HostUrb::new(
            tag,
            XferKind::Interrupt,
            0x81,
            UrbFlags::empty(),
            UrbBuf::zeroed(8),
        ))
        .unwrap();
        let c = reap_n(&mut dev, 1).pop().unwrap();
        reports.push(c.buf.as_slice().unwrap().to_vec());
    }
    assert_eq!(reports[0], vec![2, 0, 4, 0, 0, 0, 0, 0]);
    assert_eq!(reports[1], vec![0; 8]);
    assert_eq!(reports[2], vec![0, 0, 5, 0, 0, 0, 0, 0]);
    // Nothing left to type and idle 0: the next report stays pending.
    dev.submit(HostUrb::new(
        20,
        XferKind::Interrupt,
        0x81,
        UrbFlags::empty(),
        UrbBuf::zeroed(8),
    ))
    .unwrap();
    std::thread::sleep(Duration::from_millis(40));
    assert!(dev.reap().is_none());
    dev.discard(20).unwrap();
}

#[test]
fn iso_source_streams_counter_frames_on_alt_1() {
    let (_tmp, mut dev, _) = open(DeviceSpec::new(ModelSpec::IsoSource { packet_size: 100 }));
    let iso = |tag, packets: Vec<u32>| HostUrb {
        buf: UrbBuf::zeroed(packets.iter().sum::<u32>() as usize),
        iso_packets: packets,
        ..HostUrb::new(
            tag,
            XferKind::Iso,
            0x81,
            UrbFlags::ISO_ASAP,
            UrbBuf::zeroed(0),
        )
    };
    assert_eq!(
        dev.submit(iso(1, vec![100])).unwrap_err().error,
        SubmitError::NoEndpoint(0x81)
    );
    dev.set_interface(0, 1).unwrap();
    assert!(dev.set_interface(0, 2).is_err());
    // usb_submit_urb: a packet longer than wMaxPacketSize never reaches the device.
    let refused = dev.submit(iso(9, vec![100, 101])).unwrap_err();
    assert_eq!(refused.error, SubmitError::Errno(errno::EMSGSIZE));
    assert_eq!(refused.error.to_errno(), -90);
    dev.submit(iso(2, vec![100, 100, 50, 100])).unwrap();
    dev.submit(iso(3, vec![100, 100, 50, 100])).unwrap();
    let done = reap_n(&mut dev, 2);
    assert_eq!(done[0].tag, 2);
    assert_eq!(done[1].start_frame, done[0].start_frame + 4);
    for c in &done {
        let lens: Vec<u32> = c.iso_packets.iter().map(|p| p.actual_length).collect();
        assert_eq!(lens, vec![100, 100, 50, 100]);
        assert_eq!(c.actual_length, 350);
        let data = c.buf.as_slice().unwrap();
        let f = c.start_frame as u64;
        assert_eq!(data[0], model::iso::sample(f, 0));
        assert_eq!(data[100 + 5], model::iso::sample(f + 1, 5));
        assert_eq!(data[250 + 99], model::iso::sample(f + 3, 99));
    }
}

#[test]
fn a_replugged_device_gets_a_new_device_number() {
    let tmp = tempfile::tempdir().unwrap();
    let roots = UsbRoots::sim(tmp.path());
    let busid = plug(tmp.path(), &loopback()).unwrap();
    let first = resolve(&roots, &busid).unwrap().devnum;
    let other = plug(tmp.path(), &loopback()).unwrap();
    unplug(tmp.path(), &busid).unwrap();
    let mut spec = loopback();
    spec.busid = Some(busid.clone());
    assert_eq!(plug(tmp.path(), &spec).unwrap(), busid);
    let second = resolve(&roots, &busid).unwrap().devnum;
    assert_ne!(second, first, "a replug reused the number");
    assert_ne!(second, resolve(&roots, &other).unwrap().devnum);
    assert_eq!(
        second,
        first + 2,
        "round robin after the last number handed out"
    );
}
