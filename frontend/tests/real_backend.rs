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
    let s = stack(0, ModelSpec::IsoSource { packet_size: 192 });
    let mut c = s.import();
    let set = |setup: [u8; 8]| CmdSubmit {
        ep: 0,
        setup,
        ..CmdSubmit::default()
    };
    assert_eq!(c.transfer(set([0, 9, 1, 0, 0, 0, 0, 0])).status, 0);
    // SET_INTERFACE(0, alt 1): the iso endpoint appears.
    assert_eq!(
        c.transfer(set([1, 0x0b, 1, 0, 0, 0, 0, 0])).status,
        0,
        "{}",
        s.logs()
    );
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
