//! Malformed-request corpus: one const fixture per `BadRequest` variant, plus accepted forms.

use super::*;
use crate::wire::Ep;

/// Builds request bytes in a const context: header fields, the union, then `nsegs`
/// segments each `(gref, offset, length)`.
const fn req(
    id: u16,
    nr_buffer_segs: u16,
    pipe: u32,
    flags: u16,
    buffer_length: u16,
    u: [u8; 8],
    segs: &[(u32, u16, u16)],
) -> [u8; 148] {
    let mut b = [0u8; 148];
    let id = id.to_le_bytes();
    b[0] = id[0];
    b[1] = id[1];
    let n = nr_buffer_segs.to_le_bytes();
    b[2] = n[0];
    b[3] = n[1];
    let p = pipe.to_le_bytes();
    b[4] = p[0];
    b[5] = p[1];
    b[6] = p[2];
    b[7] = p[3];
    let f = flags.to_le_bytes();
    b[8] = f[0];
    b[9] = f[1];
    let l = buffer_length.to_le_bytes();
    b[10] = l[0];
    b[11] = l[1];
    let mut i = 0;
    while i < 8 {
        b[12 + i] = u[i];
        i += 1;
    }
    let mut s = 0;
    while s < segs.len() {
        let base = 20 + 8 * s;
        let g = segs[s].0.to_le_bytes();
        let o = segs[s].1.to_le_bytes();
        let len = segs[s].2.to_le_bytes();
        b[base] = g[0];
        b[base + 1] = g[1];
        b[base + 2] = g[2];
        b[base + 3] = g[3];
        b[base + 4] = o[0];
        b[base + 5] = o[1];
        b[base + 6] = len[0];
        b[base + 7] = len[1];
        s += 1;
    }
    b
}

const fn isoc_u(interval: u16, start: u16, npk: u16, ndesc: u16) -> [u8; 8] {
    let a = interval.to_le_bytes();
    let b = start.to_le_bytes();
    let c = npk.to_le_bytes();
    let d = ndesc.to_le_bytes();
    [a[0], a[1], b[0], b[1], c[0], c[1], d[0], d[1]]
}

/// Bulk IN, port 1, device 2, endpoint 1 (xen-hcd's `usb_rcvbulkpipe` with port 1).
const BULK_IN_P1: u32 = 0xc000_8281;
/// Control OUT endpoint 0, port 2, device 3.
const CTRL_P2: u32 = 0x8000_0302;
/// Isochronous IN endpoint 3, port 1, device 2.
const ISOC_IN_P1: u32 = 0x0001_8281;
/// Interrupt IN endpoint 2, port 1, device 2.
const INT_IN_P1: u32 = 0x4001_0281;
const FULL: (u32, u16, u16) = (0x100, 0, 4096);
const STALE: [u8; 8] = [0xde, 0xad, 0xbe, 0xef, 0xde, 0xad, 0xbe, 0xef];

// Accepted forms.
const BULK_2_SEGS: [u8; 148] = req(
    3,
    2,
    BULK_IN_P1,
    1,
    5000,
    STALE,
    &[(7, 100, 3996), (8, 0, 1004)],
);
const BULK_64K: [u8; 148] = req(4, 16, BULK_IN_P1, 0, 0, [0; 8], &[FULL; 16]);
const CTRL_NO_DATA: [u8; 148] = req(0, 0, CTRL_P2, 0, 0, [0, 5, 4, 0, 0, 0, 0, 0], &[]);
const ISOC_1_DESC: [u8; 148] = req(
    9,
    1,
    ISOC_IN_P1,
    0,
    192,
    isoc_u(1, 77, 3, 1),
    &[(1, 0, 192), (2, 8, 48)],
);
const INT_STALE_PAD: [u8; 148] = req(
    1,
    1,
    INT_IN_P1,
    0,
    8,
    [8, 0, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff],
    &[(5, 0, 8)],
);
const UNLINK_OK: [u8; 148] = req(
    5,
    0,
    BULK_IN_P1 | 0x20,
    1,
    512,
    [3, 0, 9, 9, 9, 9, 9, 9],
    &[],
);

// One per `BadRequest` variant.
const RESERVED_PIPE_BIT6: [u8; 148] = req(3, 0, BULK_IN_P1 | 0x40, 0, 0, [0; 8], &[]);
const PORT_ZERO: [u8; 148] = req(3, 0, BULK_IN_P1 & !0x1f, 0, 0, [0; 8], &[]);
const PORT_PAST_NUM_PORTS: [u8; 148] = req(3, 0, (BULK_IN_P1 & !0x1f) | 9, 0, 0, [0; 8], &[]);
const UNKNOWN_FLAG_ZERO_PACKET: [u8; 148] = req(3, 0, BULK_IN_P1, 0x0041, 0, [0; 8], &[]);
const SEVENTEEN_SEGS: [u8; 148] = req(3, 17, BULK_IN_P1, 0, 0, [0; 8], &[FULL; 16]);
const ISO_DESC_SEGS_OVERFLOW: [u8; 148] =
    req(9, 15, ISOC_IN_P1, 0, 0, isoc_u(1, 0, 1, 2), &[FULL; 16]);
const SEG_PAST_PAGE: [u8; 148] = req(
    3,
    2,
    BULK_IN_P1,
    0,
    100,
    [0; 8],
    &[(7, 0, 50), (8, 4000, 97)],
);
const SEG_EMPTY: [u8; 148] = req(3, 2, BULK_IN_P1, 0, 100, [0; 8], &[(7, 0, 100), (8, 0, 0)]);
const BUFFER_PAST_SEGS: [u8; 148] = req(3, 1, BULK_IN_P1, 0, 4097, [0; 8], &[FULL]);
const ISO_NO_PACKETS: [u8; 148] = req(
    9,
    1,
    ISOC_IN_P1,
    0,
    192,
    isoc_u(1, 0, 0, 1),
    &[(1, 0, 192), (2, 8, 48)],
);
const ISO_DESC_TOO_SMALL: [u8; 148] = req(
    9,
    1,
    ISOC_IN_P1,
    0,
    192,
    isoc_u(1, 0, 4, 1),
    &[(1, 0, 192), (2, 8, 48)],
);
const UNLINK_WITH_SEGS: [u8; 148] = req(
    5,
    1,
    BULK_IN_P1 | 0x20,
    0,
    0,
    [3, 0, 0, 0, 0, 0, 0, 0],
    &[FULL],
);
const UNLINK_SELF: [u8; 148] = req(5, 0, BULK_IN_P1 | 0x20, 0, 0, [5, 0, 0, 0, 0, 0, 0, 0], &[]);

const LIMITS: Limits = Limits::stock(8);

fn parse(bytes: &[u8; 148]) -> Result<UrbRequest, BadRequest> {
    let raw = RawUrbRequest::read_from_bytes(bytes).unwrap();
    UrbRequest::parse(&raw, &LIMITS)
}

fn submit(bytes: &[u8; 148]) -> Submit {
    match parse(bytes) {
        Ok(UrbRequest::Submit(s)) => s,
        other => panic!("expected submit, got {other:?}"),
    }
}

#[test]
fn parse_accepts_bulk_and_ignores_stale_union() {
    let s = submit(&BULK_2_SEGS);
    assert_eq!(s.id, 3);
    assert_eq!(s.pipe.endpoint(), Ep::from_address(0x81));
    assert_eq!(s.xfer, Transfer::Bulk);
    assert_eq!(s.buffer_length, 5000);
    assert!(s.short_not_ok);
    assert_eq!(s.data_segs().len(), 2);
    assert!(s.frame_desc_segs().is_empty());
}

#[test]
fn parse_reads_64k_buffer_length_zero_from_segments() {
    let s = submit(&BULK_64K);
    assert_eq!(s.buffer_length, 65536);
    assert_eq!(UrbRequest::Submit(s).to_raw().as_bytes(), &BULK_64K);
}

#[test]
fn parse_accepts_control_without_data() {
    let s = submit(&CTRL_NO_DATA);
    assert_eq!(
        s.xfer,
        Transfer::Ctrl {
            setup: [0, 5, 4, 0, 0, 0, 0, 0]
        }
    );
    assert_eq!(s.buffer_length, 0);
    assert!(s.segs.is_empty());
}

#[test]
fn parse_splits_iso_data_and_descriptor_segments() {
    let s = submit(&ISOC_1_DESC);
    let Transfer::Isoc(i) = s.xfer else {
        panic!("not isoc")
    };
    assert_eq!(
        (
            i.interval,
            i.start_frame,
            i.number_of_packets,
            i.nr_frame_desc_segs
        ),
        (1, 77, 3, 1)
    );
    assert_eq!(
        s.data_segs(),
        &[Seg {
            gref: 1,
            offset: 0,
            length: 192
        }]
    );
    assert_eq!(
        s.frame_desc_segs(),
        &[Seg {
            gref: 2,
            offset: 8,
            length: 48
        }]
    );
    assert_eq!(UrbRequest::Submit(s).to_raw().as_bytes(), &ISOC_1_DESC);
}

#[test]
fn parse_ignores_interrupt_pad() {
    let s = submit(&INT_STALE_PAD);
    assert_eq!(s.xfer, Transfer::Int { interval: 8 });
}

#[test]
fn parse_accepts_unlink_with_stale_flags_and_length() {
    let r = parse(&UNLINK_OK).unwrap();
    assert_eq!(
        r,
        UrbRequest::Unlink(Unlink {
            id: 5,
            pipe: Pipe(BULK_IN_P1),
            victim: 3
        })
    );
    assert_eq!(r.pipe(), Pipe(BULK_IN_P1));
}

#[test]
fn parse_rejects_reserved_pipe_bits() {
    assert_eq!(
        parse(&RESERVED_PIPE_BIT6),
        Err(BadRequest::ReservedPipeBits {
            pipe: BULK_IN_P1 | 0x40,
            bits: 0x40
        })
    );
}

#[test]
fn parse_rejects_port_zero() {
    assert_eq!(parse(&PORT_ZERO), Err(BadRequest::PortZero));
}

#[test]
fn parse_rejects_port_past_num_ports() {
    let e = parse(&PORT_PAST_NUM_PORTS).unwrap_err();
    assert_eq!(
        e,
        BadRequest::NoSuchPort {
            port: 9,
            num_ports: 8
        }
    );
    assert_eq!(e.status(), Status::NoDev);
}

#[test]
fn parse_rejects_unknown_transfer_flags_unless_negotiated() {
    assert_eq!(
        parse(&UNKNOWN_FLAG_ZERO_PACKET),
        Err(BadRequest::UnknownTransferFlags { bits: 0x40 })
    );
    let raw = RawUrbRequest::read_from_bytes(&UNKNOWN_FLAG_ZERO_PACKET).unwrap();
    let ext = Limits {
        num_ports: 8,
        ext_flags: 0x40,
    };
    let Ok(UrbRequest::Submit(s)) = UrbRequest::parse(&raw, &ext) else {
        panic!()
    };
    assert_eq!((s.short_not_ok, s.ext_flags), (true, 0x40));
}

#[test]
fn parse_rejects_seventeen_segments() {
    assert_eq!(
        parse(&SEVENTEEN_SEGS),
        Err(BadRequest::TooManySegments { nr_segs: 17 })
    );
}

#[test]
fn parse_rejects_iso_descriptor_segments_overflow() {
    assert_eq!(
        parse(&ISO_DESC_SEGS_OVERFLOW),
        Err(BadRequest::FrameDescSegsOverflow {
            nr_buffer_segs: 15,
            nr_frame_desc_segs: 2
        })
    );
}

#[test]
fn parse_rejects_seg_past_page() {
    assert_eq!(
        parse(&SEG_PAST_PAGE),
        Err(BadRequest::SegmentPastPage {
            index: 1,
            end: 4097
        })
    );
}

#[test]
fn parse_rejects_empty_segment() {
    assert_eq!(
        parse(&SEG_EMPTY),
        Err(BadRequest::EmptySegment { index: 1 })
    );
}

#[test]
fn parse_rejects_buffer_past_segments() {
    assert_eq!(
        parse(&BUFFER_PAST_SEGS),
        Err(BadRequest::BufferPastSegments {
            buffer_length: 4097,
            seg_total: 4096
        })
    );
}

#[test]
fn parse_rejects_iso_without_packets() {
    assert_eq!(parse(&ISO_NO_PACKETS), Err(BadRequest::IsoWithoutPackets));
}

#[test]
fn parse_rejects_iso_descriptors_too_small() {
    assert_eq!(
        parse(&ISO_DESC_TOO_SMALL),
        Err(BadRequest::IsoDescTooSmall {
            number_of_packets: 4,
            desc_bytes: 48
        })
    );
}

#[test]
fn parse_rejects_unlink_with_segments() {
    assert_eq!(
        parse(&UNLINK_WITH_SEGS),
        Err(BadRequest::UnlinkWithSegments { nr_buffer_segs: 1 })
    );
}

#[test]
fn parse_rejects_unlink_of_itself() {
    assert_eq!(parse(&UNLINK_SELF), Err(BadRequest::UnlinkSelf { id: 5 }));
}

#[test]
fn every_refusal_answers_inval_except_missing_port() {
    for f in [
        &RESERVED_PIPE_BIT6,
        &PORT_ZERO,
        &SEVENTEEN_SEGS,
        &SEG_EMPTY,
        &UNLINK_SELF,
    ] {
        assert_eq!(parse(f).unwrap_err().status(), Status::Inval);
    }
}

#[test]
fn num_ports_above_31_is_clamped() {
    let raw = RawUrbRequest::read_from_bytes(&BULK_2_SEGS).unwrap();
    assert!(UrbRequest::parse(&raw, &Limits::stock(255)).is_ok());
}

#[test]
fn response_roundtrip_and_rejects_negative_lengths() {
    let r = UrbResponse {
        id: 9,
        start_frame: 3,
        status: -104,
        actual_length: 17,
        error_count: 2,
    };
    assert_eq!(UrbResponse::parse(&r.to_raw()), Ok(r));
    assert_eq!(r.status(), None);
    assert_eq!(r.status_lossy(), Status::Shutdown);
    let mut raw = r.to_raw();
    raw.actual_length.set(-1);
    assert_eq!(
        UrbResponse::parse(&raw),
        Err(BadResponse::NegativeActualLength(-1))
    );
    let mut raw = r.to_raw();
    raw.error_count.set(-2);
    assert_eq!(
        UrbResponse::parse(&raw),
        Err(BadResponse::NegativeErrorCount(-2))
    );
}
