//! Isochronous OUT end to end through the backend process: a ring-level guest sends iso
//! OUT data with its frame descriptors to the iso loopback device and reads it back with
//! iso IN; oversize packets, a non-selected alt setting and an all-empty OUT transfer.

mod common;

use common::*;
use pvusb_backend::sim::ModelSpec;
use pvusb_ring::wire::{Setup, Status};
use xenstore_cfg::vusb::UsbVer;

const PORT: u8 = 1;
const ADDR: u8 = 3;

/// A guest with the iso loopback of `packet_size` enumerated on port 1 at address 3.
fn loopback(h: &mut Harness, packet_size: u16) -> Guest {
    loopback_with(h, packet_size, false)
}

/// As [`loopback`], negotiating persistent grants when `persistent`.
fn loopback_with(h: &mut Harness, packet_size: u16, persistent: bool) -> Guest {
    let id = h.add_controller(1, 0, UsbVer::Usb20, 4);
    let busid = h.plug(ModelSpec::IsoLoopback { packet_size });
    h.assign(&id, PORT, Some(&busid));
    let mut g = Guest::connect_with(h, id, false, persistent);
    assert_eq!(g.wait_event().port.get(), PORT);
    g.enumerate(PORT, ADDR);
    g
}

fn set_alt(g: &mut Guest, alt: u16) {
    let (r, _) = g.control(PORT, ADDR, Setup::new(0x01, 0x0b, alt, 0, 0), &[]);
    assert_eq!(r.status, 0, "SET_INTERFACE alt {alt}");
}

/// One iso request on the loopback's `ep` (see [`common::iso`]).
fn iso(g: &mut Guest, ep: u8, packets: &[(u32, u32)], buf_len: usize, out: &[u8]) -> IsoDone {
    common::iso(g, PORT, ADDR, ep, packets, buf_len, out)
}

/// Byte `i` of OUT packet `p`.
fn byte(p: usize, i: usize) -> u8 {
    (p * 37 + i * 3 + 1) as u8
}

/// Packets of `lengths` at `stride`-byte slots; the buffer's gaps hold 0xee.
fn layout(lengths: &[u32], stride: u32) -> (Vec<(u32, u32)>, Vec<u8>) {
    let packets: Vec<(u32, u32)> = lengths
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32 * stride, l))
        .collect();
    let mut buf = vec![0xeeu8; lengths.len() * stride as usize];
    for (p, &(off, len)) in packets.iter().enumerate() {
        for i in 0..len as usize {
            buf[off as usize + i] = byte(p, i);
        }
    }
    (packets, buf)
}

/// OUT `lengths` at `stride` slots, then IN as many full packets; checks every field.
fn out_then_in(g: &mut Guest, lengths: &[u32], packet_size: u32) {
    let (packets, buf) = layout(lengths, packet_size);
    let sent: u32 = lengths.iter().sum();
    let o = iso(g, 0x01, &packets, buf.len(), &buf);
    assert_eq!(
        (o.resp.status, o.resp.actual_length, o.resp.error_count),
        (0, sent, 0),
        "iso OUT response"
    );
    for (i, (&d, &len)) in o.descs.iter().zip(lengths).enumerate() {
        assert_eq!(d, (len, 0), "OUT descriptor {i}");
    }
    let want: Vec<(u32, u32)> = (0..lengths.len() as u32)
        .map(|i| (i * packet_size, packet_size))
        .collect();
    let r = iso(g, 0x82, &want, buf.len(), &[]);
    assert_eq!(
        (r.resp.status, r.resp.actual_length, r.resp.error_count),
        (0, sent, 0),
        "iso IN response"
    );
    // The IN transfer ran in later frames than the OUT transfer it echoes.
    let ahead = r.resp.start_frame.wrapping_sub(o.resp.start_frame);
    assert!(
        (lengths.len() as u16..1000).contains(&ahead),
        "start frames OUT {} IN {}",
        o.resp.start_frame,
        r.resp.start_frame
    );
    for (p, (&d, &len)) in r.descs.iter().zip(lengths).enumerate() {
        assert_eq!(d, (len, 0), "IN descriptor {p}");
        let at = p * packet_size as usize;
        let got = &r.data[at..at + len as usize];
        assert!(
            got.iter().enumerate().all(|(i, &b)| b == byte(p, i)),
            "IN packet {p} differs"
        );
    }
}

#[test]
fn iso_out_comes_back_byte_exact_through_iso_in() {
    let mut h = Harness::new(&[1]);
    let mut g = loopback(&mut h, 192);
    set_alt(&mut g, 1);
    out_then_in(&mut g, &[192, 0, 1, 100, 192, 37, 0, 150], 192);
    // Nothing left: every IN packet is zero-length, and still succeeds.
    let r = iso(&mut g, 0x82, &[(0, 192), (192, 192)], 384, &[]);
    assert_eq!((r.resp.status, r.resp.actual_length), (0, 0));
    assert_eq!(r.descs, [(0, 0), (0, 0)]);
    // Packets back to back in the buffer (what a driver usually sends) work too.
    let (packets, buf) = layout(&[10, 20, 30], 192);
    let packed: Vec<(u32, u32)> = vec![(0, 10), (10, 20), (30, 30)];
    let mut data = Vec::new();
    for &(off, len) in &packets {
        data.extend_from_slice(&buf[off as usize..(off + len) as usize]);
    }
    assert_eq!(iso(&mut g, 0x01, &packed, data.len(), &data).resp.status, 0);
    let r = iso(&mut g, 0x82, &[(0, 192), (192, 192), (384, 192)], 576, &[]);
    assert_eq!(r.resp.actual_length, 60);
    assert_eq!(&r.data[192..212], &buf[192..212]);
}

#[test]
fn iso_out_across_pages_with_full_size_packets() {
    let mut h = Harness::new(&[1]);
    let mut g = loopback(&mut h, 1023);
    set_alt(&mut g, 1);
    // 8 × 1023 bytes: two data pages, packets straddling the page boundary.
    out_then_in(&mut g, &[1023; 8], 1023);
    // 24 packets: six data pages, mixed lengths.
    let lengths: Vec<u32> = (0..24u32).map(|i| (i * 331) % 1024).collect();
    out_then_in(&mut g, &lengths, 1023);
}

#[test]
fn iso_on_a_non_selected_alt_setting_is_refused() {
    let mut h = Harness::new(&[1]);
    let mut g = loopback(&mut h, 192);
    let (packets, buf) = layout(&[8, 8], 192);
    let r = iso(&mut g, 0x01, &packets, buf.len(), &buf);
    assert_eq!(r.resp.status, Status::Inval.to_wire());
    assert_eq!(r.resp.error_count, 2);
    set_alt(&mut g, 1);
    out_then_in(&mut g, &[8, 8], 192);
    // Back to alt 0: the endpoints are gone again.
    set_alt(&mut g, 0);
    let r = iso(&mut g, 0x82, &[(0, 192)], 192, &[]);
    assert_eq!(r.resp.status, Status::Inval.to_wire());
}

#[test]
fn iso_out_with_persistent_grants() {
    let mut h = Harness::new(&[1]);
    let mut g = loopback_with(&mut h, 1023, true);
    set_alt(&mut g, 1);
    // The backend writes results into descriptor pages it keeps mapped past the response.
    out_then_in(&mut g, &[1023, 0, 512, 1, 1023, 1023, 700, 1023], 1023);
    out_then_in(&mut g, &[3, 1023], 1023);
}

#[test]
fn oversize_iso_packet_is_refused_and_the_stream_goes_on() {
    let mut h = Harness::new(&[1]);
    let mut g = loopback(&mut h, 192);
    set_alt(&mut g, 1);
    let (packets, buf) = layout(&[192, 193, 10], 256);
    let r = iso(&mut g, 0x01, &packets, buf.len(), &buf);
    // usb_submit_urb says -EMSGSIZE, which usbif cannot carry: -EINVAL, the usbif code
    // for a request refused as malformed. Nothing was sent, so every packet failed.
    assert_eq!(r.resp.status, Status::Inval.to_wire(), "{}", h.log());
    assert_eq!(r.resp.actual_length, 0);
    assert_eq!(r.resp.error_count, 3);
    assert!(r.descs.iter().all(|&d| d == (0, Status::Inval.to_wire())));
    // The device got none of it.
    let r = iso(&mut g, 0x82, &[(0, 192)], 192, &[]);
    assert_eq!((r.resp.status, r.resp.actual_length), (0, 0));
    out_then_in(&mut g, &[5, 192], 192);
}

#[test]
fn iso_out_of_only_zero_length_packets_needs_no_data_pages() {
    let mut h = Harness::new(&[1]);
    let mut g = loopback(&mut h, 192);
    set_alt(&mut g, 1);
    // buffer_length 0, no data segments: a valid URB (usbfs takes it, xen-hcd sends it).
    let r = iso(&mut g, 0x01, &[(0, 0), (0, 0)], 0, &[]);
    assert_eq!(
        (r.resp.status, r.resp.actual_length, r.resp.error_count),
        (0, 0, 0),
        "{}",
        h.log()
    );
    assert_eq!(r.descs, [(0, 0), (0, 0)]);
}
