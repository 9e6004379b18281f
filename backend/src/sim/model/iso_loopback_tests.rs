//! Unit tests for the iso loopback model (compiled only under `#[cfg(test)]`, see the end of
//! iso_loopback.rs), driven through the `Model` trait as the bus does.

use super::*;
use crate::host::{UrbBuf, XferKind};
use crate::sim::model::Poll;

/// Runs an OUT URB of `packets` starting at `frame`; returns the per-packet results.
fn out(m: &mut IsoLoopback, frame: u64, packets: &[Vec<u8>]) -> Vec<IsoPacketResult> {
    let lengths: Vec<u32> = packets.iter().map(|p| p.len() as u32).collect();
    let mut buf = UrbBuf::from_vec(packets.concat());
    let mut io = Io::new(&mut buf, 0, usize::MAX);
    let r = m.iso(EP_OUT, frame, &lengths, &mut io);
    assert_eq!(
        io.actual(),
        r.iter().map(|p| p.actual_length as usize).sum()
    );
    r
}

/// Runs an IN URB of packets of `lengths` starting at `frame`; returns each packet's
/// result and the bytes it carries (taken at the packet's place in the packed buffer).
fn inp(m: &mut IsoLoopback, frame: u64, lengths: &[u32]) -> Vec<(IsoPacketResult, Vec<u8>)> {
    let total: u32 = lengths.iter().sum();
    let mut buf = UrbBuf::zeroed(total as usize);
    let mut io = Io::new(&mut buf, 0, usize::MAX);
    let r = m.iso(EP_IN, frame, lengths, &mut io);
    let bytes = buf.into_vec().unwrap();
    let mut off = 0;
    r.into_iter()
        .zip(lengths)
        .map(|(p, &len)| {
            let data = bytes[off..off + p.actual_length as usize].to_vec();
            off += len as usize;
            (p, data)
        })
        .collect()
}

fn packet(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_mul(31).wrapping_add(i as u8))
        .collect()
}

#[test]
fn descriptors_put_both_iso_endpoints_on_alt_1_only() {
    let d = descriptors(HostSpeed::Full, 1023);
    assert_eq!(d.device.bcd_usb, 0x0110);
    let cfg = &d.configs[0];
    assert_eq!(cfg.alts.len(), 2);
    assert!(cfg.find_endpoint(|_| 0, EP_OUT).is_none());
    assert!(cfg.find_endpoint(|_| 0, EP_IN).is_none());
    for ep in [EP_OUT, EP_IN] {
        let (iface, e) = cfg.find_endpoint(|_| 1, ep).unwrap();
        assert_eq!(iface, 0);
        assert_eq!(e.kind(), XferKind::Iso);
        assert_eq!((e.max_packet(), e.interval), (1023, 1));
    }
}

#[test]
fn out_packets_come_back_one_per_in_packet_with_their_lengths() {
    let mut m = IsoLoopback::new();
    let sent: Vec<Vec<u8>> = [17, 0, 192, 1, 100]
        .iter()
        .enumerate()
        .map(|(i, &n)| packet(n, i as u8))
        .collect();
    let r = out(&mut m, 10, &sent);
    assert!(r
        .iter()
        .zip(&sent)
        .all(|(p, s)| p.status == 0 && p.actual_length as usize == s.len()));
    assert_eq!(m.queued(), 5);
    // Six IN packets of the full size: five come back, the sixth finds nothing.
    let got = inp(&mut m, 20, &[192; 6]);
    for (i, s) in sent.iter().enumerate() {
        assert_eq!(got[i].0.status, 0, "packet {i}");
        assert_eq!(&got[i].1, s, "packet {i}");
    }
    assert_eq!(
        got[5].0,
        IsoPacketResult::default(),
        "zero-length when empty"
    );
    assert_eq!(m.queued(), 0);
}

#[test]
fn in_packet_never_returns_data_from_its_own_frame_or_later() {
    let mut m = IsoLoopback::new();
    out(&mut m, 10, &[packet(8, 1), packet(8, 2), packet(8, 3)]);
    // IN over frames 10..13: frame 10 has nothing older, 11 gets frame 10's packet,
    // 12 gets frame 11's; frame 12's packet waits.
    let got = inp(&mut m, 10, &[8; 3]);
    let lens: Vec<u32> = got.iter().map(|g| g.0.actual_length).collect();
    assert_eq!(lens, [0, 8, 8]);
    assert_eq!(got[1].1, packet(8, 1));
    assert_eq!(got[2].1, packet(8, 2));
    assert_eq!(m.queued(), 1);
}

#[test]
fn full_buffer_overwrites_the_oldest_packet() {
    let mut m = IsoLoopback::new();
    let first: Vec<Vec<u8>> = (0..100u8).map(|i| packet(4, i)).collect();
    let second: Vec<Vec<u8>> = (100..130u8).map(|i| packet(4, i)).collect();
    out(&mut m, 0, &first);
    // OUT still succeeds per packet: iso has no handshake to refuse with.
    assert!(out(&mut m, 100, &second).iter().all(|p| p.status == 0));
    assert_eq!((m.queued(), m.dropped()), (QUEUE_PACKETS, 2));
    let got = inp(&mut m, 200, &[4]);
    assert_eq!(got[0].1, packet(4, 2), "packets 0 and 1 were overwritten");
}

#[test]
fn queued_packet_longer_than_the_in_packet_is_babble() {
    let mut m = IsoLoopback::new();
    out(&mut m, 0, &[packet(100, 7), packet(10, 8)]);
    let got = inp(&mut m, 5, &[50, 50]);
    assert_eq!(got[0].0.status, -errno::EOVERFLOW);
    assert_eq!(got[0].1, packet(100, 7)[..50]);
    // The babbling packet is gone; the next one is intact.
    assert_eq!((got[1].0.status, &got[1].1), (0, &packet(10, 8)));
}

#[test]
fn alt_change_and_reset_empty_the_buffer() {
    let mut m = IsoLoopback::new();
    out(&mut m, 0, &[packet(4, 1)]);
    m.set_interface(0, 0);
    assert_eq!(m.queued(), 0);
    out(&mut m, 0, &[packet(4, 1)]);
    m.reset();
    assert_eq!(m.queued(), 0);
}

#[test]
fn other_endpoints_fail_every_packet_and_bulk_stalls() {
    let mut m = IsoLoopback::new();
    let mut buf = UrbBuf::zeroed(8);
    let mut io = Io::new(&mut buf, 0, usize::MAX);
    let r = m.iso(0x81, 0, &[4, 4], &mut io);
    assert!(r.iter().all(|p| p.status == -errno::EPROTO));
    assert_eq!(
        m.transfer(EP_OUT, &mut io, std::time::Instant::now()),
        Poll::Stall
    );
}

#[test]
fn out_packet_outside_the_buffer_fails_alone() {
    let mut m = IsoLoopback::new();
    let mut buf = UrbBuf::from_vec(vec![1, 2, 3, 4]);
    let mut io = Io::new(&mut buf, 0, usize::MAX);
    let r = m.iso(EP_OUT, 0, &[2, 4, 2], &mut io);
    assert_eq!(r[0].actual_length, 2);
    assert_eq!(r[1].status, -errno::EPROTO);
    assert_eq!(m.queued(), 1);
}

/// Through the simulated device (the bus layer's checks, frame scheduling, completions).
#[test]
fn device_loops_back_on_alt_1_and_refuses_what_linux_refuses() {
    use crate::host::{HostDevice, HostUrb, SubmitError, UrbFlags};
    use crate::sim::tests::{open, reap_n};
    use crate::sim::{DeviceSpec, ModelSpec};
    let (_tmp, mut dev, _) = open(DeviceSpec::new(ModelSpec::IsoLoopback { packet_size: 64 }));
    let urb = |tag, ep, lengths: Vec<u32>, data: Vec<u8>| HostUrb {
        iso_packets: lengths,
        ..HostUrb::new(
            tag,
            XferKind::Iso,
            ep,
            UrbFlags::ISO_ASAP,
            UrbBuf::from_vec(data),
        )
    };
    // Alt 0 has no endpoints: usbfs finds none (-ENOENT).
    let r = dev.submit(urb(1, EP_OUT, vec![4], vec![1; 4])).unwrap_err();
    assert_eq!(r.error, SubmitError::NoEndpoint(EP_OUT));
    assert_eq!(r.error.to_errno(), -errno::ENOENT);
    dev.set_interface(0, 1).unwrap();
    // Longer than wMaxPacketSize: usb_submit_urb's -EMSGSIZE, the URB handed back.
    let r = dev
        .submit(urb(2, EP_OUT, vec![64, 65], vec![0; 129]))
        .unwrap_err();
    assert_eq!(r.error.to_errno(), -errno::EMSGSIZE);
    assert_eq!(r.urb.buf.len(), 129);
    // Iso transfers on a bulk-style URB kind are refused too (usbfs: -EINVAL).
    let bulk = HostUrb::new(
        3,
        XferKind::Bulk,
        EP_OUT,
        UrbFlags::empty(),
        UrbBuf::zeroed(4),
    );
    assert_eq!(
        dev.submit(bulk).unwrap_err().error.to_errno(),
        -errno::EINVAL
    );
    let sent = [packet(64, 1), packet(0, 2), packet(5, 3)];
    dev.submit(urb(4, EP_OUT, vec![64, 0, 5], sent.concat()))
        .unwrap();
    let c = reap_n(&mut dev, 1).remove(0);
    assert_eq!(
        (c.tag, c.status, c.actual_length, c.error_count),
        (4, 0, 69, 0)
    );
    dev.submit(urb(5, EP_IN, vec![64; 4], vec![0; 256]))
        .unwrap();
    let c = reap_n(&mut dev, 1).remove(0);
    let lens: Vec<u32> = c.iso_packets.iter().map(|p| p.actual_length).collect();
    assert_eq!(lens, [64, 0, 5, 0]);
    assert!(c.iso_packets.iter().all(|p| p.status == 0));
    let data = c.buf.into_vec().unwrap();
    assert_eq!(data[..64], sent[0]);
    assert_eq!(data[128..133], sent[2]);
}
