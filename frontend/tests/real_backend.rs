//! The frontend daemon against the real `pvusb-backend` process on the simulated platform:
//! xenstored and the grant broker in the test, backend and frontend as separate
//! processes, simulated devices plugged with `pvusb_backend::sim::plug`, and USB/IP
//! clients (this crate's strict `ClientConn`) on `--usbip-listen`.

#![allow(missing_debug_implementations)]

mod common;

use std::time::Duration;

use common::bot::{read10, write10, Bot};
use common::client::{bulk_in, bulk_out};
use common::stack::stack;
use pvusb_backend::sim::ModelSpec;
use pvusb_frontend::usbip::{ClientEvent, CmdSubmit, Direction, IsoPacket};

#[test]
fn storage_write_read_verify_through_the_whole_stack() {
    let s = stack(
        0,
        ModelSpec::Storage {
            size_bytes: 4 << 20,
        },
    );
    let mut c = s.import();
    let mut bot = Bot::open(&mut c);
    let (inq, status) = bot.read(&mut c, &[0x12, 0, 0, 0, 36, 0], 36);
    assert_eq!((status, inq.len()), (0, 36), "INQUIRY\n{}", s.logs());
    // 192 KiB: each data stage is split into several usbif requests.
    let data: Vec<u8> = (0..192 * 1024u32).map(|i| (i * 13 % 253) as u8).collect();
    assert_eq!(bot.write(&mut c, &write10(64, 384), data.clone()), 0);
    let (back, status) = bot.read(&mut c, &read10(64, 384), data.len() as u32);
    assert_eq!(status, 0);
    assert!(back == data, "read back differs\n{}", s.logs());
}

#[test]
fn pipelined_loopback_transfers_and_unlinks() {
    let s = stack(0, ModelSpec::Loopback { capacity: 1 << 20 });
    let mut c = s.import();
    let _bot_cfg = c.transfer(CmdSubmit {
        ep: 0,
        setup: [0, 9, 1, 0, 0, 0, 0, 0],
        ..CmdSubmit::default()
    });
    // 24 OUT records of varied sizes, all in flight at once, then 24 INs.
    let records: Vec<Vec<u8>> = (0..24u32)
        .map(|r| {
            (0..(r * 3001 % 70_000 + 1))
                .map(|i| (i + r) as u8)
                .collect()
        })
        .collect();
    let outs: Vec<u32> = records
        .iter()
        .map(|d| c.submit(bulk_out(1, d.clone())))
        .collect();
    let ins: Vec<u32> = (0..records.len())
        .map(|_| c.submit(bulk_in(1, 80_000)))
        .collect();
    let mut done = std::collections::HashMap::new();
    while done.len() < outs.len() + ins.len() {
        match c.event(Duration::from_secs(10)) {
            Some(ClientEvent::Completed(r)) => {
                assert_eq!(r.status, 0, "seq {}\n{}", r.seqnum, s.logs());
                done.insert(r.seqnum, r);
            }
            other => panic!("{other:?}\n{}", s.logs()),
        }
    }
    for (seq, rec) in ins.iter().zip(&records) {
        assert!(done[seq].data == *rec, "IN {seq} out of order or corrupted");
    }
    // INs with nothing to read wait in the backend; unlink each: exactly one answer.
    let waiting: Vec<u32> = (0..6).map(|_| c.submit(bulk_in(1, 4096))).collect();
    std::thread::sleep(Duration::from_millis(200));
    let unlinks: Vec<u32> = waiting.iter().map(|&v| c.unlink(v)).collect();
    let mut answered = 0;
    while answered < unlinks.len() {
        match c.event(Duration::from_secs(10)) {
            Some(ClientEvent::Unlinked { .. }) => answered += 1,
            Some(ClientEvent::Completed(r)) => assert!(waiting.contains(&r.seqnum)),
            other => panic!("{other:?}\n{}", s.logs()),
        }
    }
    assert_eq!(c.conn.outstanding(), 0);
    assert_eq!(c.conn.outstanding_unlinks(), 0);
    // The endpoint still works afterwards.
    assert_eq!(c.bulk_out(1, b"after".to_vec()).status, 0);
    assert_eq!(c.bulk_in(1, 64).data, b"after");
}

#[test]
fn isochronous_in_through_frame_descriptor_pages() {
    let (s, mut c) = at_alt1(ModelSpec::IsoSource { packet_size: 192 });
    // usbfs takes at most 128 packets per URB (the backend passes them through).
    let packets = 96u32;
    let iso: Vec<IsoPacket> = (0..packets)
        .map(|i| IsoPacket {
            offset: i * 192,
            length: 192,
            ..IsoPacket::default()
        })
        .collect();
    let r = c.transfer(CmdSubmit {
        ep: 1,
        dir: Direction::In,
        length: packets * 192,
        iso,
        ..CmdSubmit::default()
    });
    assert_eq!(r.status, 0, "{}", s.logs());
    assert_eq!(r.iso.len(), packets as usize);
    assert!(
        r.iso
            .iter()
            .all(|p| p.status == 0 && p.actual_length == 192),
        "{:?}",
        &r.iso[..4]
    );
    // Inside a packet the source's bytes count up by one.
    let first = &r.data[..192];
    assert!(first.windows(2).all(|w| w[1] == w[0].wrapping_add(1)));
}

/// The iso loopback of `packet_size` on a whole stack, configured, interface 0 at alt 1.
fn iso_loopback(packet_size: u16) -> (common::stack::Stack, common::client::Client) {
    at_alt1(ModelSpec::IsoLoopback { packet_size })
}

/// `model` on a whole stack, configured, interface 0 at alt 1 (where its iso endpoints
/// appear).
fn at_alt1(model: ModelSpec) -> (common::stack::Stack, common::client::Client) {
    let s = stack(0, model);
    let mut c = s.import();
    let set = |setup: [u8; 8]| CmdSubmit {
        ep: 0,
        setup,
        ..CmdSubmit::default()
    };
    assert_eq!(c.transfer(set([0, 9, 1, 0, 0, 0, 0, 0])).status, 0);
    let r = c.transfer(set([1, 0x0b, 1, 0, 0, 0, 0, 0]));
    assert_eq!(r.status, 0, "SET_INTERFACE alt 1\n{}", s.logs());
    (s, c)
}

/// Byte `i` of OUT packet `p`.
fn iso_byte(p: usize, i: usize) -> u8 {
    (p * 37 + i * 3 + 1) as u8
}

/// An iso CMD_SUBMIT on `ep` with packets of `lengths` at `stride`-byte slots; OUT data
/// fills each packet (gaps hold 0xee), IN asks for the slot sizes.
fn iso_cmd(ep: u8, dir: Direction, lengths: &[u32], stride: u32) -> CmdSubmit {
    let length = lengths.len() as u32 * stride;
    let iso: Vec<IsoPacket> = lengths
        .iter()
        .enumerate()
        .map(|(i, &l)| IsoPacket {
            offset: i as u32 * stride,
            length: l,
            ..IsoPacket::default()
        })
        .collect();
    let mut data = Vec::new();
    if dir == Direction::Out {
        data = vec![0xee; length as usize];
        for (p, pkt) in iso.iter().enumerate() {
            for i in 0..pkt.length as usize {
                data[pkt.offset as usize + i] = iso_byte(p, i);
            }
        }
    }
    CmdSubmit {
        ep,
        dir,
        length,
        interval: 1,
        data,
        iso,
        ..CmdSubmit::default()
    }
}

/// Sends `lengths` as one iso OUT transfer, reads them back with one iso IN transfer of
/// full-size packets, and checks every RET_SUBMIT field and byte.
fn iso_out_then_in(
    s: &common::stack::Stack,
    c: &mut common::client::Client,
    lengths: &[u32],
    size: u32,
) {
    let sent: u32 = lengths.iter().sum();
    let o = c.transfer(iso_cmd(1, Direction::Out, lengths, size));
    assert_eq!(
        (o.status, o.actual_length, o.error_count),
        (0, sent, 0),
        "iso OUT\n{}",
        s.logs()
    );
    assert!(o.data.is_empty());
    for (i, (p, &len)) in o.iso.iter().zip(lengths).enumerate() {
        assert_eq!(
            (p.offset, p.length),
            (i as u32 * size, len),
            "OUT packet {i}"
        );
        assert_eq!((p.actual_length, p.status), (len, 0), "OUT packet {i}");
    }
    let r = c.transfer(iso_cmd(2, Direction::In, &vec![size; lengths.len()], size));
    assert_eq!(
        (r.status, r.actual_length, r.error_count),
        (0, sent, 0),
        "iso IN\n{}",
        s.logs()
    );
    // Later frames than the OUT transfer it echoes (usbif carries 16 bits of frame).
    let ahead = (r.start_frame - o.start_frame).rem_euclid(1 << 16);
    assert!(
        (lengths.len() as i32..1000).contains(&ahead),
        "{} {}",
        o.start_frame,
        r.start_frame
    );
    // RET_SUBMIT's IN data is packed: each packet's actual bytes, back to back.
    let mut want = Vec::new();
    for (p, (pkt, &len)) in r.iso.iter().zip(lengths).enumerate() {
        assert_eq!((pkt.actual_length, pkt.status), (len, 0), "IN packet {p}");
        want.extend((0..len as usize).map(|i| iso_byte(p, i)));
    }
    assert!(r.data == want, "iso IN data differs from what was sent");
}

#[test]
fn isochronous_out_loops_back_through_frame_descriptor_pages() {
    let (s, mut c) = iso_loopback(192);
    iso_out_then_in(&s, &mut c, &[192, 0, 1, 100, 192, 37, 0, 150], 192);
    // Nothing queued: every IN packet is zero-length and succeeds.
    let r = c.transfer(iso_cmd(2, Direction::In, &[192, 192], 192));
    assert_eq!((r.status, r.actual_length, r.error_count), (0, 0, 0));
    assert!(r.iso.iter().all(|p| p.actual_length == 0 && p.status == 0));
    // Only zero-length packets: a zero-length buffer, no data pages on the ring.
    let r = c.transfer(iso_cmd(1, Direction::Out, &[0, 0, 0], 0));
    assert_eq!(
        (r.status, r.actual_length, r.error_count),
        (0, 0, 0),
        "{}",
        s.logs()
    );
    assert!(r.iso.iter().all(|p| p.actual_length == 0 && p.status == 0));
}

#[test]
fn isochronous_out_across_data_pages() {
    let (s, mut c) = iso_loopback(1023);
    // 8 x 1023 bytes: two data pages, packets straddling the page boundary.
    iso_out_then_in(&s, &mut c, &[1023; 8], 1023);
    // 14 packets of mixed sizes over four pages.
    let lengths: Vec<u32> = (0..14u32).map(|i| (i * 331) % 1024).collect();
    iso_out_then_in(&s, &mut c, &lengths, 1023);
}

#[test]
fn unlinked_isochronous_out_answers_exactly_once() {
    let (s, mut c) = iso_loopback(192);
    // 100 packets: 100 ms of frames, still on the host when the unlink arrives.
    let victim = c.submit(iso_cmd(1, Direction::Out, &[192; 100], 192));
    let unlink = c.unlink(victim);
    let mut completed = None;
    let mut unlinked = None;
    while unlinked.is_none() {
        match c.event(Duration::from_secs(10)) {
            Some(ClientEvent::Completed(r)) if r.seqnum == victim => completed = Some(r),
            Some(ClientEvent::Unlinked { seqnum, status, .. }) if seqnum == unlink => {
                unlinked = Some(status)
            }
            other => panic!("{other:?}\n{}", s.logs()),
        }
    }
    // USB/IP: RET_SUBMIT then RET_UNLINK 0, or RET_UNLINK -ECONNRESET and no RET_SUBMIT.
    match (unlinked, &completed) {
        (Some(0), Some(r)) => assert_eq!(r.iso.len(), 100),
        (Some(-104), None) => {}
        other => panic!("{other:?}\n{}", s.logs()),
    }
    assert_eq!(c.conn.outstanding(), 0);
    // The stream still works.
    iso_out_then_in(&s, &mut c, &[7, 192], 192);
}

#[test]
fn oversize_isochronous_packet_fails_and_the_stream_goes_on() {
    let (s, mut c) = iso_loopback(192);
    let r = c.transfer(iso_cmd(1, Direction::Out, &[192, 193, 10], 256));
    // usb_submit_urb's -EMSGSIZE crosses usbif as -EINVAL; no packet was sent.
    assert_eq!(r.status, -22, "{}", s.logs());
    assert_eq!((r.actual_length, r.error_count), (0, 3));
    assert!(r
        .iso
        .iter()
        .all(|p| p.actual_length == 0 && p.status == -22));
    let r = c.transfer(iso_cmd(2, Direction::In, &[192], 192));
    assert_eq!(
        (r.status, r.actual_length),
        (0, 0),
        "the device got nothing"
    );
    iso_out_then_in(&s, &mut c, &[5, 192], 192);
}

#[test]
fn interrupt_in_reports_from_a_keyboard() {
    let s = stack(0, ModelSpec::Keyboard { text: "ab".into() });
    let mut c = s.import();
    assert_eq!(
        c.transfer(CmdSubmit {
            ep: 0,
            setup: [0, 9, 1, 0, 0, 0, 0, 0],
            ..CmdSubmit::default()
        })
        .status,
        0
    );
    // Boot-protocol reports: 8 bytes each, key usage in byte 2 ('a' = 4).
    let mut keys = Vec::new();
    for _ in 0..8 {
        let r = c.transfer(CmdSubmit {
            ep: 1,
            dir: Direction::In,
            length: 8,
            interval: 10,
            ..CmdSubmit::default()
        });
        assert_eq!((r.status, r.data.len()), (0, 8), "{}", s.logs());
        if r.data[2] != 0 {
            keys.push(r.data[2]);
        }
        if keys.len() == 2 {
            break;
        }
    }
    assert_eq!(keys, [4, 5], "'a' then 'b'");
}

#[test]
fn failed_bulk_transfer_contains_its_followers() {
    use common::stack::stack_with;
    use pvusb_backend::sim::{DeviceSpec, FailNth};
    let mut spec = DeviceSpec::new(ModelSpec::Loopback { capacity: 1 << 20 });
    // The third OUT transfer on EP 0x01 fails with -EPROTO; each takes 2 ms.
    spec.faults.fail_nth = Some(FailNth {
        n: 3,
        errno: 71,
        endpoint: Some(0x01),
    });
    spec.faults.latency_us = 2000;
    let s = stack_with(0, spec);
    let mut c = s.import();
    c.transfer(CmdSubmit {
        setup: [0, 9, 1, 0, 0, 0, 0, 0],
        ..CmdSubmit::default()
    });
    let seqs: Vec<u32> = (0..6u8)
        .map(|i| c.submit(bulk_out(1, vec![i; 64])))
        .collect();
    let mut status = std::collections::HashMap::new();
    while status.len() < seqs.len() {
        match c.event(Duration::from_secs(10)) {
            Some(ClientEvent::Completed(r)) => {
                status.insert(r.seqnum, r.status);
            }
            other => panic!("{other:?}\n{}", s.logs()),
        }
    }
    let got: Vec<i32> = seqs.iter().map(|q| status[q]).collect();
    // Seed 004: nothing queued behind the failure reaches the device.
    assert_eq!(got, [0, 0, -71, -108, -108, -108], "{}", s.logs());
    // Submitted after the failure was seen: it carries the clear mark and goes through.
    assert_eq!(c.bulk_out(1, b"fresh".to_vec()).status, 0, "{}", s.logs());
    let mut records = Vec::new();
    for _ in 0..3 {
        records.push(c.bulk_in(1, 64).data);
    }
    assert_eq!(records, [vec![0u8; 64], vec![1u8; 64], b"fresh".to_vec()]);
}
