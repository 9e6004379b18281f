//! Tests for the USB/IP codec (compiled only under `#[cfg(test)]`, see usbip/mod.rs).
//!
//! Byte fixtures for every PDU, laid out by hand from usbip_protocol.rst's tables (and as
//! the kernel's vhci_tx.c / stub_tx.c and PyPI usbip 0.7.0's protocol.py build them).

use super::decode::*;
use super::device::*;
use super::op::*;
use super::pdu::*;

/// vhci's GET_DESCRIPTOR(DEVICE, 18) on ep0: seqnum 1, devid 1-2, IN. transfer_flags carry
/// URB_SHORT_NOT_OK | URB_DIR_IN plus the kernel-internal URB_DMA_MAP_SG (0x40000), which
/// must be masked away.
const CMD_SUBMIT_GET_DESCRIPTOR: [u8; 48] = [
    0, 0, 0, 1, // command CMD_SUBMIT
    0, 0, 0, 1, // seqnum
    0, 1, 0, 2, // devid (busnum 1 << 16 | devnum 2)
    0, 0, 0, 1, // direction IN
    0, 0, 0, 0, // ep 0
    0, 4, 2, 1, // transfer_flags 0x40201
    0, 0, 0, 18, // transfer_buffer_length
    0, 0, 0, 0, // start_frame
    0, 0, 0, 0, // number_of_packets (vhci sends 0 for non-iso)
    0, 0, 0, 0, // interval
    0x80, 0x06, 0x00, 0x01, 0x00, 0x00, 0x12, 0x00, // setup
];

/// The answer: RET_SUBMIT with an 18-byte device descriptor.
const RET_SUBMIT_DEVICE_DESCRIPTOR: [u8; 66] = [
    0, 0, 0, 3, // command RET_SUBMIT
    0, 0, 0, 1, // seqnum
    0, 0, 0, 0, // devid (0 in replies)
    0, 0, 0, 0, // direction
    0, 0, 0, 0, // ep
    0, 0, 0, 0, // status
    0, 0, 0, 18, // actual_length
    0, 0, 0, 0, // start_frame
    0, 0, 0, 0, // number_of_packets
    0, 0, 0, 0, // error_count
    0, 0, 0, 0, 0, 0, 0, 0, // setup (unused)
    18, 1, 0x00, 0x02, 0, 0, 0, 64, 0x09, 0x12, 0x01, 0x00, 0x00, 0x01, 1, 2, 3, 1,
];

/// Bulk OUT of "ABCD" on ep 1 with URB_ZERO_PACKET, seqnum 2.
const CMD_SUBMIT_BULK_OUT: [u8; 52] = [
    0, 0, 0, 1, 0, 0, 0, 2, 0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1, // basic
    0, 0, 0, 0x40, 0, 0, 0, 4, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0, // np = -1
    0, 0, 0, 0, 0, 0, 0, 0, // setup
    b'A', b'B', b'C', b'D',
];

/// CMD_UNLINK seqnum 5 cancelling seqnum 3.
const CMD_UNLINK_5_OF_3: [u8; 48] = [
    0, 0, 0, 2, 0, 0, 0, 5, 0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, // basic
    0, 0, 0, 3, // victim
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // pad
];

/// RET_UNLINK seqnum 5, status -ECONNRESET (-104).
const RET_UNLINK_5_ECONNRESET: [u8; 48] = [
    0, 0, 0, 4, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // basic
    0xFF, 0xFF, 0xFF, 0x98, // status
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // pad
];

/// Iso IN on ep 2: 2 packets of 192 bytes, seqnum 7, ISO_ASAP.
const CMD_SUBMIT_ISO_IN: [u8; 80] = [
    0, 0, 0, 1, 0, 0, 0, 7, 0, 1, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2, // basic
    0, 0, 2, 2, 0, 0, 1, 128, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0,
    1, // flags, 384, sf, np 2, interval 1
    0, 0, 0, 0, 0, 0, 0, 0, // setup
    0, 0, 0, 0, 0, 0, 0, 192, 0, 0, 0, 0, 0, 0, 0, 0, // packet 0
    0, 0, 0, 192, 0, 0, 0, 192, 0, 0, 0, 0, 0, 0, 0, 0, // packet 1
];

fn decode_commands(bytes: &[u8]) -> Result<Vec<Command>, DecodeError> {
    let mut d = CmdDecoder::new(Limits::default());
    d.push(bytes);
    let mut out = Vec::new();
    while let Some(c) = d.next_command()? {
        out.push(c);
    }
    Ok(out)
}

fn one_command(bytes: &[u8]) -> Result<Command, DecodeError> {
    let mut v = decode_commands(bytes)?;
    assert_eq!(v.len(), 1, "{v:?}");
    Ok(v.remove(0))
}

fn encoded(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut v = Vec::new();
    f(&mut v);
    v
}

#[test]
fn cmd_submit_get_descriptor_fixture() {
    let Command::Submit(c) = one_command(&CMD_SUBMIT_GET_DESCRIPTOR).unwrap() else {
        panic!()
    };
    assert_eq!(
        (c.seqnum, c.devid, c.dir, c.ep, c.length),
        (1, 0x10002, Direction::In, 0, 18)
    );
    assert_eq!(c.flags, TransferFlags::SHORT_NOT_OK | TransferFlags::DIR_IN);
    assert_eq!(c.setup, [0x80, 6, 0, 1, 0, 0, 0x12, 0]);
    assert!(c.data.is_empty() && c.iso.is_empty());
    // Re-encoding drops only the masked kernel flag.
    let mut expect = CMD_SUBMIT_GET_DESCRIPTOR;
    expect[21] = 0;
    assert_eq!(encoded(|o| c.encode(o)), expect);
}

#[test]
fn ret_submit_device_descriptor_fixture() {
    let r = RetSubmit {
        seqnum: 1,
        actual_length: 18,
        data: RET_SUBMIT_DEVICE_DESCRIPTOR[48..].to_vec(),
        ..Default::default()
    };
    assert_eq!(encoded(|o| r.encode(o)), RET_SUBMIT_DEVICE_DESCRIPTOR);
    let mut d = RetDecoder::new(Limits::default());
    d.push(&RET_SUBMIT_DEVICE_DESCRIPTOR);
    let shape = ReplyShape {
        dir: Direction::In,
        length: 18,
        iso_packets: 0,
    };
    assert_eq!(
        d.next_reply(|s| (s == 1).then_some(shape)).unwrap(),
        Some(Reply::Submit(r))
    );
}

#[test]
fn cmd_submit_bulk_out_fixture_and_minus_one_packets() {
    let Command::Submit(c) = one_command(&CMD_SUBMIT_BULK_OUT).unwrap() else {
        panic!()
    };
    assert_eq!(
        (c.dir, c.ep, c.flags, c.data.as_slice()),
        (Direction::Out, 1, TransferFlags::ZERO_PACKET, &b"ABCD"[..])
    );
    assert!(c.iso.is_empty());
}

#[test]
fn cmd_unlink_fixture() {
    let u = CmdUnlink {
        seqnum: 5,
        devid: 0x10002,
        victim: 3,
    };
    assert_eq!(one_command(&CMD_UNLINK_5_OF_3).unwrap(), Command::Unlink(u));
    assert_eq!(encoded(|o| u.encode(o)), CMD_UNLINK_5_OF_3);
}

#[test]
fn ret_unlink_fixture() {
    let r = RetUnlink {
        seqnum: 5,
        status: -104,
    };
    assert_eq!(encoded(|o| r.encode(o)), RET_UNLINK_5_ECONNRESET);
    let mut d = RetDecoder::new(Limits::default());
    d.push(&RET_UNLINK_5_ECONNRESET);
    assert_eq!(d.next_reply(|_| None).unwrap(), Some(Reply::Unlink(r)));
}

#[test]
fn cmd_submit_iso_fixture() {
    let Command::Submit(c) = one_command(&CMD_SUBMIT_ISO_IN).unwrap() else {
        panic!()
    };
    assert_eq!(
        (c.length, c.interval, c.flags),
        (384, 1, TransferFlags::ISO_ASAP | TransferFlags::DIR_IN)
    );
    assert_eq!(
        c.iso,
        vec![
            IsoPacket {
                offset: 0,
                length: 192,
                ..Default::default()
            },
            IsoPacket {
                offset: 192,
                length: 192,
                ..Default::default()
            },
        ]
    );
    assert_eq!(encoded(|o| c.encode(o)), CMD_SUBMIT_ISO_IN);
}

#[test]
fn ret_submit_iso_in_is_packed_then_descriptors() {
    let iso = vec![
        IsoPacket {
            offset: 0,
            length: 192,
            actual_length: 192,
            status: 0,
        },
        IsoPacket {
            offset: 192,
            length: 192,
            actual_length: 108,
            status: -18,
        },
    ];
    let r = RetSubmit {
        seqnum: 7,
        actual_length: 300,
        data: vec![0x5A; 300],
        iso,
        ..Default::default()
    };
    let bytes = encoded(|o| r.encode(o));
    assert_eq!(bytes.len(), 48 + 300 + 32);
    assert_eq!(&bytes[32..36], &[0, 0, 0, 2]);
    assert_eq!(
        &bytes[348 + 16..348 + 32],
        &[0, 0, 0, 192, 0, 0, 0, 192, 0, 0, 0, 108, 0xFF, 0xFF, 0xFF, 0xEE]
    );
    let mut d = RetDecoder::new(Limits::default());
    d.push(&bytes);
    let shape = ReplyShape {
        dir: Direction::In,
        length: 384,
        iso_packets: 2,
    };
    assert_eq!(
        d.next_reply(|_| Some(shape)).unwrap(),
        Some(Reply::Submit(r))
    );
}

#[test]
fn partial_input_waits_for_the_rest() {
    let mut d = CmdDecoder::new(Limits::default());
    d.push(&CMD_SUBMIT_BULK_OUT[..47]);
    assert_eq!(d.next_command(), Ok(None));
    d.push(&CMD_SUBMIT_BULK_OUT[47..50]);
    assert_eq!(d.next_command(), Ok(None));
    assert_eq!(d.buffered(), 2);
    d.push(&CMD_SUBMIT_BULK_OUT[50..]);
    assert!(matches!(d.next_command(), Ok(Some(Command::Submit(_)))));
    assert_eq!(d.next_command(), Ok(None));
}

fn with(base: &[u8], at: usize, word: [u8; 4]) -> Vec<u8> {
    let mut v = base.to_vec();
    v[at..at + 4].copy_from_slice(&word);
    v
}

#[test]
fn decode_rejects_unknown_command() {
    let bad = with(&CMD_UNLINK_5_OF_3, 0, [0, 0, 0, 9]);
    assert_eq!(decode_commands(&bad), Err(DecodeError::UnknownCommand(9)));
}

#[test]
fn decode_rejects_reply_sent_to_server() {
    assert_eq!(
        decode_commands(&RET_UNLINK_5_ECONNRESET),
        Err(DecodeError::WrongWay(4))
    );
    let mut d = RetDecoder::new(Limits::default());
    d.push(&CMD_UNLINK_5_OF_3);
    assert_eq!(d.next_reply(|_| None), Err(DecodeError::WrongWay(2)));
}

#[test]
fn decode_rejects_bad_direction() {
    let bad = with(&CMD_SUBMIT_GET_DESCRIPTOR, 12, [0, 0, 0, 2]);
    assert_eq!(
        decode_commands(&bad),
        Err(DecodeError::BadDirection {
            seqnum: 1,
            direction: 2
        })
    );
}

#[test]
fn decode_rejects_bad_endpoint() {
    let bad = with(&CMD_SUBMIT_GET_DESCRIPTOR, 16, [0, 0, 0, 16]);
    assert_eq!(
        decode_commands(&bad),
        Err(DecodeError::BadEndpoint { seqnum: 1, ep: 16 })
    );
}

#[test]
fn decode_rejects_negative_length() {
    let bad = with(&CMD_SUBMIT_GET_DESCRIPTOR, 24, [0xFF, 0xFF, 0xFF, 0xFE]);
    assert_eq!(
        decode_commands(&bad),
        Err(DecodeError::NegativeLength { seqnum: 1, len: -2 })
    );
}

#[test]
fn decode_rejects_length_over_limit_before_buffering() {
    let bad = with(&CMD_SUBMIT_BULK_OUT[..48], 24, [0x7F, 0, 0, 0]);
    let err = decode_commands(&bad).unwrap_err();
    assert_eq!(
        err,
        DecodeError::TooLong {
            seqnum: 2,
            len: 0x7F00_0000,
            max: 16 << 20
        }
    );
}

#[test]
fn decode_rejects_bad_packet_count() {
    let too_many = with(&CMD_SUBMIT_ISO_IN, 32, [0, 0, 4, 1]);
    assert_eq!(
        decode_commands(&too_many),
        Err(DecodeError::BadPacketCount {
            seqnum: 7,
            count: 1025
        })
    );
    let negative = with(&CMD_SUBMIT_ISO_IN, 32, [0xFF, 0xFF, 0xFF, 0xFE]);
    assert_eq!(
        decode_commands(&negative),
        Err(DecodeError::BadPacketCount {
            seqnum: 7,
            count: -2
        })
    );
}

#[test]
fn decode_rejects_iso_packet_outside_buffer() {
    let bad = with(&CMD_SUBMIT_ISO_IN, 64, [0, 0, 0, 193]);
    let err = decode_commands(&bad).unwrap_err();
    assert_eq!(
        err,
        DecodeError::IsoOutsideBuffer {
            seqnum: 7,
            index: 1,
            offset: 193,
            length: 192,
            buffer: 384
        }
    );
}

#[test]
fn decode_rejects_ret_submit_for_unknown_seqnum() {
    let mut d = RetDecoder::new(Limits::default());
    d.push(&RET_SUBMIT_DEVICE_DESCRIPTOR);
    assert_eq!(d.next_reply(|_| None), Err(DecodeError::UnknownSeqnum(1)));
}

#[test]
fn decode_rejects_ret_submit_longer_than_request() {
    let mut d = RetDecoder::new(Limits::default());
    d.push(&RET_SUBMIT_DEVICE_DESCRIPTOR);
    let shape = ReplyShape {
        dir: Direction::In,
        length: 8,
        iso_packets: 0,
    };
    assert_eq!(
        d.next_reply(|_| Some(shape)),
        Err(DecodeError::ActualTooLong {
            seqnum: 1,
            actual: 18,
            requested: 8
        })
    );
}

#[test]
fn decode_rejects_ret_submit_iso_count_and_sum_mismatch() {
    let r = RetSubmit {
        seqnum: 7,
        actual_length: 10,
        iso: vec![IsoPacket {
            offset: 0,
            length: 8,
            actual_length: 4,
            status: 0,
        }],
        ..Default::default()
    };
    let bytes = encoded(|o| r.encode(o));
    let mut d = RetDecoder::new(Limits::default());
    d.push(&bytes);
    let two = ReplyShape {
        dir: Direction::Out,
        length: 16,
        iso_packets: 2,
    };
    assert_eq!(
        d.next_reply(|_| Some(two)),
        Err(DecodeError::IsoCountMismatch {
            seqnum: 7,
            expected: 2,
            got: 1
        })
    );
    let mut d = RetDecoder::new(Limits::default());
    d.push(&bytes);
    let one = ReplyShape {
        iso_packets: 1,
        ..two
    };
    assert_eq!(
        d.next_reply(|_| Some(one)),
        Err(DecodeError::IsoSumMismatch {
            seqnum: 7,
            sum: 4,
            actual: 10
        })
    );
}

#[test]
fn decoder_stays_failed_after_an_error() {
    let mut d = CmdDecoder::new(Limits::default());
    d.push(&with(&CMD_UNLINK_5_OF_3, 0, [0, 0, 0, 0]));
    assert!(d.next_command().is_err());
    d.push(&CMD_UNLINK_5_OF_3);
    assert_eq!(d.next_command(), Err(DecodeError::UnknownCommand(0)));
}

// ---- management ops -----------------------------------------------------------------

const OP_REQ_DEVLIST_BYTES: [u8; 8] = [0x01, 0x11, 0x80, 0x05, 0, 0, 0, 0];

fn sample_device() -> ExportedDevice {
    ExportedDevice {
        path: "/sys/devices/pci0000:00/0000:00:1d.0/usb2/2-1".into(),
        busid: "2-1".into(),
        busnum: 2,
        devnum: 3,
        speed: Speed::High,
        id_vendor: 0x0781,
        id_product: 0x5567,
        bcd_device: 0x0100,
        device_class: 0,
        device_sub_class: 0,
        device_protocol: 0,
        configuration_value: 1,
        num_configurations: 1,
        interfaces: vec![InterfaceClass {
            class: 8,
            sub_class: 6,
            protocol: 0x50,
        }],
    }
}

#[test]
fn op_req_devlist_fixture() {
    assert_eq!(
        decode_request(&OP_REQ_DEVLIST_BYTES),
        Ok(Some((OpRequest::Devlist, 8)))
    );
    assert_eq!(encoded(encode_req_devlist), OP_REQ_DEVLIST_BYTES);
    assert_eq!(decode_request(&OP_REQ_DEVLIST_BYTES[..7]), Ok(None));
}

#[test]
fn op_req_import_fixture() {
    let mut bytes = vec![0x01, 0x11, 0x80, 0x03, 0, 0, 0, 0];
    bytes.extend_from_slice(b"1-1.4");
    bytes.resize(40, 0);
    assert_eq!(
        decode_request(&bytes),
        Ok(Some((
            OpRequest::Import {
                busid: "1-1.4".into()
            },
            40
        )))
    );
    assert_eq!(encoded(|o| encode_req_import("1-1.4", o)), bytes);
    assert_eq!(decode_request(&bytes[..39]), Ok(None));
}

#[test]
fn op_rep_import_layout() {
    let d = sample_device();
    let bytes = encoded(|o| encode_rep_import(Ok(&d), o));
    assert_eq!(bytes.len(), 8 + 312);
    assert_eq!(&bytes[..8], &[0x01, 0x11, 0x00, 0x03, 0, 0, 0, 0]);
    assert_eq!(&bytes[8..12], b"/sys");
    assert_eq!(&bytes[264..268], b"2-1\0");
    // busnum, devnum, speed, idVendor, idProduct, bcdDevice, class x3, cfg, ncfg, nif
    assert_eq!(
        &bytes[296..],
        &[
            0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 3, 0x07, 0x81, 0x55, 0x67, 0x01, 0x00, 0, 0, 0, 1, 1,
            1
        ]
    );
    let (got, used) = decode_rep_import(&bytes).unwrap().unwrap();
    assert_eq!(used, bytes.len());
    assert_eq!(
        got,
        Ok(ExportedDevice {
            interfaces: vec![],
            ..d
        })
    );
}

#[test]
fn op_rep_import_refusal_is_header_only() {
    let bytes = encoded(|o| encode_rep_import(Err(OpStatus::NoDev), o));
    assert_eq!(bytes, [0x01, 0x11, 0x00, 0x03, 0, 0, 0, 4]);
    assert_eq!(
        decode_rep_import(&bytes),
        Ok(Some((Err(OpStatus::NoDev), 8)))
    );
}

#[test]
fn op_rep_devlist_layout_and_roundtrip() {
    let devs = vec![
        sample_device(),
        ExportedDevice {
            busid: "1-1".into(),
            interfaces: vec![],
            ..sample_device()
        },
    ];
    let bytes = encoded(|o| encode_rep_devlist(&devs, o));
    assert_eq!(
        &bytes[..12],
        &[0x01, 0x11, 0x00, 0x05, 0, 0, 0, 0, 0, 0, 0, 2]
    );
    assert_eq!(&bytes[12 + 312..12 + 316], &[8, 6, 0x50, 0]);
    assert_eq!(bytes.len(), 12 + 316 + 312);
    assert_eq!(decode_rep_devlist(&bytes), Ok(Some((devs, bytes.len()))));
    assert_eq!(decode_rep_devlist(&bytes[..bytes.len() - 1]), Ok(None));
}

#[test]
fn op_rejects_bad_version_and_unknown_code() {
    assert_eq!(
        decode_request(&[0x01, 0x06, 0x80, 0x05, 0, 0, 0, 0]),
        Err(OpError::BadVersion(0x0106))
    );
    assert_eq!(
        decode_request(&[0x01, 0x11, 0x80, 0x06, 0, 0, 0, 0]),
        Err(OpError::UnexpectedOp(0x8006))
    );
}

#[test]
fn op_rejects_refused_and_oversized_devlist() {
    assert_eq!(
        decode_rep_devlist(&[0x01, 0x11, 0, 5, 0, 0, 0, 1]),
        Err(OpError::Refused(OpStatus::NotAvailable))
    );
    let huge = [0x01, 0x11, 0, 5, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF];
    assert_eq!(
        decode_rep_devlist(&huge),
        Err(OpError::TooManyDevices(u32::MAX))
    );
}
