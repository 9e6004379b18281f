//! Tests for `usbip` (compiled only under `#[cfg(test)]`, see `mod prop_tests` in usbip/mod.rs).
//!
//! Properties: the decoders are total and chunking-independent, decode(encode(x)) == x,
//! and a session answers every URB exactly once under any order of events.

use proptest::prelude::*;

use super::decode::*;
use super::device::*;
use super::fuzzing;
use super::op;
use super::pdu::*;
use super::tx::TxBuf;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    ProptestConfig::with_cases(cases)
}

const LIMITS: Limits = Limits {
    max_transfer_len: 4096,
    max_iso_packets: 16,
};

/// Packets laid out back to back (as drivers do), each at most a third of the buffer,
/// with a gap of up to 3 bytes after each.
fn arb_iso(max_len: u32) -> impl Strategy<Value = Vec<IsoPacket>> {
    let third = max_len / 3;
    prop::collection::vec((0..=third, 0u32..=3), 0..4).prop_map(move |lens| {
        let mut offset = 0;
        let mut out = Vec::new();
        for (length, gap) in lens {
            if offset + length > max_len {
                break;
            }
            out.push(IsoPacket {
                offset,
                length,
                ..Default::default()
            });
            offset = (offset + length + gap).min(max_len);
        }
        out
    })
}

fn arb_submit(
    devid: impl Strategy<Value = u32>,
    seqnum: impl Strategy<Value = u32>,
) -> impl Strategy<Value = CmdSubmit> {
    (
        seqnum,
        devid,
        any::<bool>(),
        0u8..16,
        any::<u32>(),
        0u32..300,
        any::<i32>(),
        any::<i32>(),
        any::<[u8; 8]>(),
    )
        .prop_flat_map(
            |(seqnum, devid, is_in, ep, flags, length, start_frame, interval, setup)| {
                let dir = if is_in { Direction::In } else { Direction::Out };
                let data = if is_in {
                    Just(vec![]).boxed()
                } else {
                    prop::collection::vec(any::<u8>(), length as usize).boxed()
                };
                (data, arb_iso(length)).prop_map(move |(data, iso)| CmdSubmit {
                    seqnum,
                    devid,
                    dir,
                    ep,
                    flags: TransferFlags::from_bits_truncate(flags),
                    length,
                    start_frame,
                    interval,
                    setup,
                    data,
                    iso,
                })
            },
        )
}

fn arb_command(
    devid: impl Strategy<Value = u32> + Clone,
    seqnum: impl Strategy<Value = u32> + Clone,
) -> impl Strategy<Value = Command> {
    prop_oneof![
        3 => arb_submit(devid.clone(), seqnum.clone()).prop_map(Command::Submit),
        1 => (seqnum.clone(), devid, seqnum).prop_map(|(seqnum, devid, victim)| Command::Unlink(CmdUnlink { seqnum, devid, victim })),
    ]
}

/// Valid PDUs, sometimes with a few bytes flipped, plus raw noise.
fn arb_stream() -> impl Strategy<Value = Vec<u8>> {
    let pieces = prop::collection::vec(
        prop_oneof![
            4 => arb_command(any::<u32>(), any::<u32>()).prop_map(|c| { let mut v = Vec::new(); c.encode(&mut v); v }),
            1 => prop::collection::vec(any::<u8>(), 0..64),
        ],
        0..6,
    );
    (
        pieces,
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
    )
        .prop_map(|(pieces, flips)| {
            let mut v: Vec<u8> = pieces.concat();
            if !v.is_empty() {
                for (i, b) in flips {
                    let at = i.index(v.len());
                    v[at] ^= b;
                }
            }
            v
        })
}

fn decode_all(bytes: &[u8], chunks: &[usize]) -> (Vec<Command>, Option<DecodeError>) {
    decode_all_with(bytes, chunks, false)
}

/// With `direct`, payload bytes go in through [`CmdDecoder::read_payload`] whenever it takes
/// them (appending whole chunks, possibly past the payload), as a shell reading a socket
/// straight into the payload buffer does.
fn decode_all_with(
    bytes: &[u8],
    chunks: &[usize],
    direct: bool,
) -> (Vec<Command>, Option<DecodeError>) {
    let mut d = CmdDecoder::new(LIMITS);
    let mut out = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    while pos < bytes.len() {
        let n = chunks
            .get(i % chunks.len().max(1))
            .copied()
            .unwrap_or(bytes.len())
            .max(1);
        i += 1;
        let end = (pos + n).min(bytes.len());
        let piece = &bytes[pos..end];
        let took = direct
            && d.read_payload(|buf, _| {
                buf.extend_from_slice(piece);
                Ok::<_, ()>(piece.len())
            })
            .is_some();
        if !took {
            d.push(piece);
        }
        pos = end;
        loop {
            match d.next_command() {
                Ok(Some(c)) => out.push(c),
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
    }
    (out, None)
}

fn arb_device() -> impl Strategy<Value = ExportedDevice> {
    (
        "[ -~]{0,255}",
        "[0-9.-]{1,31}",
        (any::<u32>(), any::<u32>(), 0u32..=6),
        (any::<u16>(), any::<u16>(), any::<u16>()),
        any::<[u8; 5]>(),
        prop::collection::vec(any::<[u8; 3]>(), 0..5),
    )
        .prop_map(
            |(path, busid, (busnum, devnum, speed), (v, p, bcd), b, ifs)| ExportedDevice {
                path,
                busid,
                busnum,
                devnum,
                speed: Speed::from_wire(speed).unwrap_or_default(),
                id_vendor: v,
                id_product: p,
                bcd_device: bcd,
                device_class: b[0],
                device_sub_class: b[1],
                device_protocol: b[2],
                configuration_value: b[3],
                num_configurations: b[4],
                interfaces: ifs
                    .into_iter()
                    .map(|[class, sub_class, protocol]| InterfaceClass {
                        class,
                        sub_class,
                        protocol,
                    })
                    .collect(),
            },
        )
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn cmd_decoder_is_total_and_chunking_independent(bytes in arb_stream(), chunks in prop::collection::vec(1usize..80, 1..8)) {
        let whole = decode_all(&bytes, &[bytes.len().max(1)]);
        let chunked = decode_all(&bytes, &chunks);
        prop_assert_eq!(whole, chunked);
    }

    #[test]
    fn direct_payload_reads_decode_the_same(bytes in arb_stream(), chunks in prop::collection::vec(1usize..80, 1..8)) {
        let pushed = decode_all(&bytes, &[bytes.len().max(1)]);
        let direct = decode_all_with(&bytes, &chunks, true);
        prop_assert_eq!(pushed, direct);
    }

    #[test]
    fn queued_encoding_equals_plain_encoding(cmd in arb_submit(any::<u32>(), any::<u32>()), big in 0usize..6000, status in any::<i32>(), steps in prop::collection::vec(1usize..3000, 1..6)) {
        let mut cmd = cmd;
        if cmd.dir == Direction::Out && cmd.iso.is_empty() {
            cmd.data = (0..big).map(|i| i as u8).collect();
        }
        let ret = RetSubmit { seqnum: cmd.seqnum, status, actual_length: big as u32, data: vec![9; big], ..RetSubmit::default() };
        let mut want = Vec::new();
        cmd.encode(&mut want);
        ret.encode(&mut want);
        let mut tx = TxBuf::default();
        cmd.encode_to(&mut tx);
        ret.encode_to(&mut tx);
        // Written in arbitrary steps, sometimes gathered, sometimes one run at a time.
        let mut got = Vec::new();
        for (i, step) in steps.iter().cycle().enumerate().take(64) {
            let mut iov = [std::io::IoSlice::new(&[]); 4];
            let n = tx.slices(&mut iov);
            if n == 0 {
                break;
            }
            let run: Vec<u8> = if i % 2 == 0 { iov[..n].iter().flat_map(|s| s.iter().copied()).collect() } else { tx.pending().to_vec() };
            let k = (*step).min(run.len());
            got.extend_from_slice(&run[..k]);
            tx.consume(k);
        }
        while !tx.is_empty() {
            let k = tx.pending().len();
            got.extend_from_slice(tx.pending());
            tx.consume(k);
        }
        prop_assert_eq!(got, want);
    }

    #[test]
    fn commands_roundtrip(cmds in prop::collection::vec(arb_command(any::<u32>(), any::<u32>()), 0..5), chunks in prop::collection::vec(1usize..100, 1..5)) {
        let mut bytes = Vec::new();
        for c in &cmds {
            c.encode(&mut bytes);
        }
        prop_assert_eq!(decode_all(&bytes, &chunks), (cmds, None));
    }

    #[test]
    fn ret_submit_roundtrips(cmd in arb_submit(any::<u32>(), any::<u32>()), status in any::<i32>(), fill in any::<u8>(), sf in any::<i32>(), ec in any::<i32>(), chunk in 1usize..64) {
        let iso: Vec<IsoPacket> = cmd.iso.iter().map(|p| IsoPacket { actual_length: p.length / 2, status, ..*p }).collect();
        let actual = if iso.is_empty() { cmd.length / 3 } else { iso.iter().map(|p| p.actual_length).sum() };
        let data = if cmd.dir == Direction::In { vec![fill; actual as usize] } else { vec![] };
        let r = RetSubmit { seqnum: cmd.seqnum, status, actual_length: actual, start_frame: sf, error_count: ec, data, iso };
        let shape = ReplyShape { dir: cmd.dir, length: cmd.length, iso_packets: r.iso.len() as u32 };
        let mut bytes = Vec::new();
        r.encode(&mut bytes);
        RetUnlink { seqnum: status as u32, status }.encode(&mut bytes);
        let mut d = RetDecoder::new(LIMITS);
        let mut got = Vec::new();
        for (i, piece) in bytes.chunks(chunk).enumerate() {
            // Every other chunk as a direct payload read where one is awaited.
            let took = i % 2 == 1 && d.read_payload(|buf, _| { buf.extend_from_slice(piece); Ok::<_, ()>(piece.len()) }).is_some();
            if !took {
                d.push(piece);
            }
            while let Some(x) = d.next_reply(|s| (s == cmd.seqnum).then_some(shape)).unwrap() {
                got.push(x);
            }
        }
        prop_assert_eq!(got, vec![Reply::Submit(r), Reply::Unlink(RetUnlink { seqnum: status as u32, status })]);
    }

    #[test]
    fn ret_decoder_is_total(bytes in prop::collection::vec(any::<u8>(), 0..400), len in any::<u32>(), np in 0u32..4, is_in in any::<bool>()) {
        let dir = if is_in { Direction::In } else { Direction::Out };
        let mut d = RetDecoder::new(LIMITS);
        d.push(&bytes);
        while let Ok(Some(_)) = d.next_reply(|_| Some(ReplyShape { dir, length: len, iso_packets: np })) {}
    }

    #[test]
    fn devlist_and_import_roundtrip(devs in prop::collection::vec(arb_device(), 0..4)) {
        let mut bytes = Vec::new();
        op::encode_rep_devlist(&devs, &mut bytes);
        prop_assert_eq!(op::decode_rep_devlist(&bytes), Ok(Some((devs.clone(), bytes.len()))));
        for d in &devs {
            let mut b = Vec::new();
            op::encode_rep_import(Ok(d), &mut b);
            let want = ExportedDevice { interfaces: vec![], ..d.clone() };
            prop_assert_eq!(op::decode_rep_import(&b), Ok(Some((Ok(want), b.len()))));
            let mut r = Vec::new();
            op::encode_req_import(&d.busid, &mut r);
            prop_assert_eq!(op::decode_request(&r), Ok(Some((op::OpRequest::Import { busid: d.busid.clone() }, 40))));
        }
    }

    #[test]
    fn op_decoders_are_total(bytes in prop::collection::vec(any::<u8>(), 0..700)) {
        let _ = op::decode_request(&bytes);
        let _ = op::decode_rep_import(&bytes);
        let _ = op::decode_rep_devlist(&bytes);
    }

    /// The session against vhci's receive side, with client seqnums from a small range
    /// (so unlinks hit live, answered and unknown URBs, and seqnums get reused) and the
    /// engine completing, failing, deferring, cancelling or racing as `steer` says.
    #[test]
    fn session_answers_every_urb_exactly_once(
        cmds in prop::collection::vec(arb_command(prop_oneof![15 => Just(fuzzing::FUZZ_DEVID), 1 => any::<u32>()], 0u32..12), 0..24),
        chunks in prop::collection::vec(any::<u8>(), 1..6),
        steer in prop::collection::vec(any::<u8>(), 0..32),
    ) {
        let mut stream = Vec::new();
        for c in &cmds {
            c.encode(&mut stream);
        }
        let r = fuzzing::run_session(&stream, &chunks, &steer);
        prop_assert!(r.is_ok(), "{:?}", r);
    }

    #[test]
    fn fuzz_driver_never_panics(data in prop::collection::vec(any::<u8>(), 0..600)) {
        fuzzing::drive(&data);
    }

    #[test]
    fn decoder_fuzz_body_never_panics(data in prop::collection::vec(any::<u8>(), 0..600)) {
        fuzzing::decoders(&data);
    }
}
