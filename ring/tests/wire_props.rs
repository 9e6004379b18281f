//! Properties of the wire codecs: parse is total, `parse(emit(x)) == x`, and the fuzz
//! target's body (back-ring copy-out + parse) never panics on any page.

use proptest::prelude::*;
use pvusb_ring::test_utils::fuzz_back_ring;
use pvusb_ring::wire::*;
use zerocopy::{FromBytes, IntoBytes};

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    ProptestConfig::with_cases(cases)
}

const NUM_PORTS: u8 = 8;
const EXT: u16 = 0x0040;

fn limits() -> Limits {
    Limits {
        num_ports: NUM_PORTS,
        ext_flags: EXT,
    }
}

fn pipe(ty: XferType) -> impl Strategy<Value = Pipe> {
    (1..=NUM_PORTS, 0u8..128, 0u8..16, any::<bool>())
        .prop_map(move |(port, dev, ep, is_in)| Pipe::new(port, dev, Ep::new(ep, is_in), ty))
}

fn seg(min_len: u16) -> impl Strategy<Value = Seg> {
    (any::<u32>(), 0u16..=(4096 - min_len)).prop_flat_map(move |(gref, offset)| {
        (min_len..=4096 - offset).prop_map(move |length| Seg {
            gref,
            offset,
            length,
        })
    })
}

/// Data segments plus a buffer length that parse reads back unchanged.
fn data(max_segs: usize) -> impl Strategy<Value = (Vec<Seg>, u32)> {
    prop::collection::vec(seg(1), 0..=max_segs).prop_flat_map(|segs| {
        let total: u32 = segs.iter().map(|s| u32::from(s.length)).sum();
        let lo = u32::from(total == MAX_BUFFER);
        (Just(segs), lo..=total)
    })
}

fn flags() -> impl Strategy<Value = (bool, u16)> {
    (any::<bool>(), prop_oneof![Just(0u16), Just(EXT)])
}

fn submit(
    ty: XferType,
    xfer: impl Strategy<Value = Transfer>,
    max_segs: usize,
) -> impl Strategy<Value = UrbRequest> {
    (any::<u16>(), pipe(ty), xfer, data(max_segs), flags()).prop_map(
        |(id, pipe, xfer, (segs, buffer_length), (short_not_ok, ext_flags))| {
            UrbRequest::Submit(Submit {
                id,
                pipe,
                xfer,
                segs: Segments::from_slice(&segs).unwrap(),
                buffer_length,
                short_not_ok,
                ext_flags,
            })
        },
    )
}

fn isoc() -> impl Strategy<Value = UrbRequest> {
    (0usize..=15)
        .prop_flat_map(|n| {
            (
                data(n).prop_filter("exactly n", move |(s, _)| s.len() == n),
                prop::collection::vec(seg(16), 1..=16 - n),
            )
        })
        .prop_flat_map(|((segs, buffer_length), desc)| {
            let desc_total: u32 = desc.iter().map(|s| u32::from(s.length)).sum();
            let max_pk = (desc_total / 16).min(u32::from(u16::MAX)) as u16;
            (
                any::<u16>(),
                pipe(XferType::Isoc),
                (any::<u16>(), any::<u16>(), 1..=max_pk),
                flags(),
                Just((segs, buffer_length, desc)),
            )
        })
        .prop_map(
            |(
                id,
                pipe,
                (interval, start_frame, number_of_packets),
                (short_not_ok, ext_flags),
                (segs, buffer_length, desc),
            )| {
                let mut all = Segments::from_slice(&segs).unwrap();
                for d in &desc {
                    all.push(*d).unwrap();
                }
                UrbRequest::Submit(Submit {
                    id,
                    pipe,
                    xfer: Transfer::Isoc(Isoc {
                        interval,
                        start_frame,
                        number_of_packets,
                        nr_frame_desc_segs: desc.len() as u16,
                    }),
                    segs: all,
                    buffer_length,
                    short_not_ok,
                    ext_flags,
                })
            },
        )
}

fn unlink() -> impl Strategy<Value = UrbRequest> {
    (
        any::<u16>(),
        any::<u16>(),
        prop_oneof![
            pipe(XferType::Bulk),
            pipe(XferType::Int),
            pipe(XferType::Ctrl),
            pipe(XferType::Isoc)
        ],
    )
        .prop_filter("victim differs", |(id, victim, _)| id != victim)
        .prop_map(|(id, victim, pipe)| UrbRequest::Unlink(Unlink { id, pipe, victim }))
}

fn valid_request() -> impl Strategy<Value = UrbRequest> {
    prop_oneof![
        submit(
            XferType::Ctrl,
            any::<[u8; 8]>().prop_map(|setup| Transfer::Ctrl { setup }),
            16
        ),
        submit(
            XferType::Int,
            any::<u16>().prop_map(|interval| Transfer::Int { interval }),
            16
        ),
        submit(XferType::Bulk, Just(Transfer::Bulk), 16),
        isoc(),
        unlink(),
    ]
}

/// A URB ring page: a header with a small `req_prod`, so the entries get parsed, then
/// entries that are either valid requests or noise.
fn ring_page() -> impl Strategy<Value = (Vec<u8>, u32)> {
    let entry = prop_oneof![
        valid_request().prop_map(|r| r.to_raw().as_bytes().to_vec()),
        prop::collection::vec(any::<u8>(), 148),
    ];
    (
        prop_oneof![0u32..=17, any::<u32>()],
        prop::collection::vec(entry, 16),
        prop_oneof![Just(0u32), any::<u32>()],
    )
        .prop_map(|(req_prod, entries, start)| {
            let mut page = vec![0u8; 4096];
            page[..4].copy_from_slice(&start.wrapping_add(req_prod).to_le_bytes());
            for (i, e) in entries.iter().enumerate() {
                let slot = (start.wrapping_add(i as u32) % 16) as usize;
                page[64 + slot * 148..64 + (slot + 1) * 148].copy_from_slice(e);
            }
            (page, start)
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn parse_is_total(bytes in prop::collection::vec(any::<u8>(), 148), num_ports in any::<u8>(), ext_flags in any::<u16>()) {
        let raw = RawUrbRequest::read_from_bytes(&bytes).unwrap();
        let limits = Limits { num_ports, ext_flags };
        if let Ok(req) = UrbRequest::parse(&raw, &limits) {
            // Whatever parse accepts, emit reproduces.
            prop_assert_eq!(UrbRequest::parse(&req.to_raw(), &limits), Ok(req));
        }
    }

    #[test]
    fn parse_emit_roundtrip(req in valid_request()) {
        prop_assert_eq!(UrbRequest::parse(&req.to_raw(), &limits()), Ok(req));
    }

    #[test]
    fn response_roundtrip(id in any::<u16>(), start_frame in any::<u16>(), status in any::<i32>(), actual_length in 0..=i32::MAX as u32, error_count in 0..=i32::MAX as u32) {
        let rsp = UrbResponse { id, start_frame, status, actual_length, error_count };
        prop_assert_eq!(UrbResponse::parse(&rsp.to_raw()), Ok(rsp));
    }

    #[test]
    fn response_parse_is_total(bytes in prop::collection::vec(any::<u8>(), 16)) {
        let raw = RawUrbResponse::read_from_bytes(&bytes).unwrap();
        if let Ok(rsp) = UrbResponse::parse(&raw) {
            prop_assert_eq!(rsp.to_raw(), raw);
        }
    }

    #[test]
    fn conn_roundtrip(id in any::<u16>(), port in 1..=31u8, speed in 0u8..4) {
        let ev = ConnEvent { id, port: Port::new(port).unwrap(), speed: Speed::from_wire(speed).unwrap() };
        prop_assert_eq!(ConnEvent::parse(&ev.to_raw(), 31), Ok(ev));
        let req = ConnRequest { id };
        prop_assert_eq!(ConnRequest::parse(&req.to_raw()), req);
    }

    #[test]
    fn conn_parse_is_total(bytes in any::<[u8; 4]>(), num_ports in any::<u8>()) {
        let raw = RawConnResponse::read_from_bytes(&bytes).unwrap();
        if let Ok(ev) = ConnEvent::parse(&raw, num_ports) {
            prop_assert_eq!(ev.to_raw(), raw);
        }
    }
}

proptest! {
    // Whole pages are slow to generate in debug builds; the fuzz target covers them in
    // depth, these keep `cargo test` exercising the same body.
    #![proptest_config(ProptestConfig::with_cases(config().cases / 8 + 1))]

    #[test]
    fn back_ring_fuzz_body_never_panics((page, start) in ring_page()) {
        let n = fuzz_back_ring(&page, start, &limits());
        prop_assert!(n <= 16);
    }

    #[test]
    fn back_ring_fuzz_body_on_raw_bytes(page in prop::collection::vec(any::<u8>(), 0..4200), start in any::<u32>()) {
        fuzz_back_ring(&page, start, &limits());
    }
}
