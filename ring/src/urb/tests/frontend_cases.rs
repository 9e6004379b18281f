//! The frontend's rules, one explicit case each.

use crate::urb::aca::{ACA_CLEAR, CONTAINED};
use crate::urb::frontend::{
    Action, Frontend, FrontendConfig, Refused, Request, RequestKind, UnknownId,
};
use crate::urb::split::{Shape, TOO_LARGE};
use crate::urb::UrbResult;
use crate::wire::{Ep, Pipe, Port, Status, XferType};

const BULK_OUT: Pipe = Pipe::new(1, 3, Ep::new(1, false), XferType::Bulk);
const BULK_IN: Pipe = Pipe::new(1, 3, Ep::new(1, true), XferType::Bulk);
const CTRL: Pipe = Pipe::new(1, 3, Ep::new(0, true), XferType::Ctrl);

fn shape(len: u32) -> Shape {
    Shape {
        len,
        page_offset: 0,
        max_packet: 512,
        extra_segs: 0,
    }
}

fn frontend(ring_size: u16, aca: bool) -> Frontend<u64> {
    let mut fe = Frontend::new(FrontendConfig {
        ring_size,
        aca,
        ..FrontendConfig::stock(2)
    });
    fe.handle_device_attached(Port::new(1).unwrap());
    fe
}

/// A 16-id frontend with split chains negotiated, port 1 attached.
fn chain_frontend() -> Frontend<u64> {
    let mut fe = Frontend::new(FrontendConfig {
        ring_size: 16,
        split_chain: true,
        ..FrontendConfig::stock(2)
    });
    fe.handle_device_attached(Port::new(1).unwrap());
    fe
}

fn drain(fe: &mut Frontend<u64>) -> Vec<Action<u64>> {
    std::iter::from_fn(|| fe.poll_action()).collect()
}

fn pushes(actions: &[Action<u64>]) -> Vec<Request> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Push(r) => Some(*r),
            _ => None,
        })
        .collect()
}

/// (handle, piece offset, piece len, aca_clear) of every data push.
fn data(actions: &[Action<u64>]) -> Vec<(u64, u32, u32, bool)> {
    pushes(actions)
        .into_iter()
        .filter_map(|r| match r.kind {
            RequestKind::Submit {
                handle,
                piece,
                aca_clear,
                ..
            } => Some((handle, piece.offset, piece.len, aca_clear)),
            RequestKind::Unlink { .. } => None,
        })
        .collect()
}

fn completes(actions: &[Action<u64>]) -> Vec<(u64, UrbResult)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Complete {
                handle,
                result,
                payload,
            } => {
                assert_eq!(handle, payload);
                Some((*handle, *result))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn never_more_ids_in_flight_than_the_ring_holds() {
    let mut fe = frontend(2, false);
    for h in 1..=5 {
        fe.submit(h, BULK_OUT, shape(100), false, h).unwrap();
    }
    let a = drain(&mut fe);
    let p = pushes(&a);
    assert_eq!(p.iter().map(|r| r.id).collect::<Vec<_>>(), vec![0, 1]);
    assert_eq!(fe.in_flight(), 2);
    fe.handle_response(1, UrbResult::ok(100)).unwrap();
    let a = drain(&mut fe);
    assert_eq!(completes(&a), vec![(2, UrbResult::ok(100))]);
    // The freed id carries the next transfer, in order.
    assert_eq!(data(&a), vec![(3, 0, 100, false)]);
    assert_eq!(pushes(&a)[0].id, 1);
}

#[test]
fn unknown_response_id_is_an_error() {
    let mut fe = frontend(4, false);
    assert_eq!(fe.handle_response(3, UrbResult::ok(0)), Err(UnknownId(3)));
    assert_eq!(
        fe.handle_response(999, UrbResult::ok(0)),
        Err(UnknownId(999))
    );
}

#[test]
fn unlink_of_queued_transfer_is_reset_without_completion() {
    let mut fe = frontend(1, false);
    fe.submit(1, BULK_OUT, shape(10), false, 1).unwrap();
    fe.submit(2, BULK_OUT, shape(10), false, 2).unwrap();
    drain(&mut fe);
    fe.unlink(100, 2).unwrap();
    let a = drain(&mut fe);
    assert!(matches!(
        a.as_slice(),
        [Action::UnlinkReset {
            handle: 100,
            victim: 2,
            payload: 2
        }]
    ));
    fe.handle_response(0, UrbResult::ok(10)).unwrap();
    let a = drain(&mut fe);
    // Transfer 2 never reaches the ring and never completes.
    assert_eq!(completes(&a), vec![(1, UrbResult::ok(10))]);
    assert!(pushes(&a).is_empty());
    assert_eq!(fe.pending_transfers(), 0);
}

#[test]
fn unlink_of_transfer_on_the_ring_answers_after_its_completion() {
    let mut fe = frontend(4, false);
    fe.submit(1, BULK_IN, shape(64), false, 1).unwrap();
    drain(&mut fe);
    fe.unlink(100, 1).unwrap();
    let a = drain(&mut fe);
    let p = pushes(&a);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].kind, RequestKind::Unlink { victim: 0 });
    assert!(p[0].pipe.is_unlink());
    assert_eq!(p[0].pipe.without_unlink(), BULK_IN);
    // The unlink's own answer changes nothing.
    fe.handle_response(p[0].id, UrbResult::ok(0)).unwrap();
    assert!(drain(&mut fe).is_empty());
    // The victim's answer is its completion, then RET_UNLINK 0.
    fe.handle_response(0, UrbResult::status(Status::IoError))
        .unwrap();
    let a = drain(&mut fe);
    assert!(matches!(
        a.as_slice(),
        [
            Action::Complete { handle: 1, .. },
            Action::UnlinkOk { handle: 100 }
        ]
    ));
}

#[test]
fn unlink_of_unknown_or_finished_transfer_answers_ok() {
    let mut fe = frontend(4, false);
    fe.unlink(100, 55).unwrap();
    assert!(matches!(
        drain(&mut fe).as_slice(),
        [Action::UnlinkOk { handle: 100 }]
    ));
}

#[test]
fn large_out_transfer_is_pipelined_in_packet_multiples() {
    let mut fe = frontend(16, false);
    fe.submit(1, BULK_OUT, shape(200_000), false, 1).unwrap();
    fe.submit(2, BULK_OUT, shape(10), false, 2).unwrap();
    let a = drain(&mut fe);
    let d = data(&a);
    assert_eq!(d.len(), 5);
    assert!(d[..3].iter().all(|p| p.2 % 512 == 0 && p.2 <= 65535));
    assert_eq!(d[..4].iter().map(|p| p.2).sum::<u32>(), 200_000);
    // The next transfer only after the last piece of the first.
    assert_eq!(d[4], (2, 0, 10, false));
    for id in 0..4u16 {
        let len = d[usize::from(id)].2;
        fe.handle_response(id, UrbResult::ok(len)).unwrap();
    }
    assert_eq!(
        completes(&drain(&mut fe)),
        vec![(1, UrbResult::ok(200_000))]
    );
}

#[test]
fn large_in_transfer_sends_one_piece_at_a_time_and_stops_at_short() {
    let mut fe = frontend(16, false);
    fe.submit(1, BULK_IN, shape(200_000), false, 1).unwrap();
    fe.submit(2, BULK_IN, shape(10), false, 2).unwrap();
    let d = data(&drain(&mut fe));
    // One piece; transfer 2 waits behind the rest of transfer 1.
    assert_eq!(d, vec![(1, 0, 65024, false)]);
    fe.handle_response(0, UrbResult::ok(65024)).unwrap();
    // It starts 3584 bytes into a page: 16 pages hold 61952 bytes = 121 packets.
    let d = data(&drain(&mut fe));
    assert_eq!(d, vec![(1, 65024, 61952, false)]);
    // Short: the transfer ends with the sum, and transfer 2 goes.
    fe.handle_response(0, UrbResult::ok(1000)).unwrap();
    let a = drain(&mut fe);
    assert_eq!(completes(&a), vec![(1, UrbResult::ok(65024 + 1000))]);
    assert_eq!(data(&a), vec![(2, 0, 10, false)]);
}

#[test]
fn failed_piece_unlinks_the_pieces_after_it() {
    let mut fe = frontend(16, false);
    fe.submit(1, BULK_OUT, shape(200_000), false, 1).unwrap();
    drain(&mut fe);
    let mut fail = UrbResult::status(Status::Stall);
    fail.actual_length = 512;
    fe.handle_response(1, fail).unwrap();
    let a = drain(&mut fe);
    let unlinks: Vec<_> = pushes(&a)
        .iter()
        .filter_map(|r| match r.kind {
            RequestKind::Unlink { victim } => Some((r.id, victim)),
            _ => None,
        })
        .collect();
    assert_eq!(unlinks.iter().map(|u| u.1).collect::<Vec<_>>(), vec![2, 3]);
    assert!(completes(&a).is_empty());
    fe.handle_response(0, UrbResult::ok(65024)).unwrap();
    for id in [2, 3, unlinks[0].0, unlinks[1].0] {
        fe.handle_response(id, UrbResult::ok(0)).unwrap();
    }
    // Piece 0 full, piece 1 failed after 512 bytes; pieces 2 and 3 do not count.
    let c = completes(&drain(&mut fe));
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].1.status, Status::Stall);
    assert_eq!(c[0].1.actual_length, 65024 + 512);
}

#[test]
fn oversized_control_transfer_completes_at_once() {
    let mut fe = frontend(16, false);
    fe.submit(1, CTRL, shape(70_000), false, 1).unwrap();
    let a = drain(&mut fe);
    assert!(pushes(&a).is_empty());
    assert_eq!(completes(&a), vec![(1, UrbResult::status(TOO_LARGE))]);
}

#[test]
fn clear_mark_goes_on_first_transfer_after_failure_once_idle() {
    let mut fe = frontend(16, true);
    for h in 1..=3 {
        fe.submit(h, BULK_OUT, shape(512), false, h).unwrap();
    }
    assert!(data(&drain(&mut fe)).iter().all(|p| !p.3));
    fe.handle_response(0, UrbResult::status(Status::IoError))
        .unwrap();
    assert_eq!(completes(&drain(&mut fe))[0].1.status, Status::IoError);
    // The client saw the failure and retries at once: held, W2 and W3 are still out.
    fe.submit(4, BULK_OUT, shape(512), false, 4).unwrap();
    assert!(drain(&mut fe).is_empty());
    fe.handle_response(1, UrbResult::status(CONTAINED)).unwrap();
    assert!(data(&drain(&mut fe)).is_empty());
    fe.handle_response(2, UrbResult::status(CONTAINED)).unwrap();
    let a = drain(&mut fe);
    assert_eq!(data(&a), vec![(4, 0, 512, true)]);
    let p = pushes(&a);
    assert_eq!(p[0].kind.transfer_flags(), ACA_CLEAR);
    // Only the first is marked.
    fe.submit(5, BULK_OUT, shape(512), false, 5).unwrap();
    assert_eq!(data(&drain(&mut fe)), vec![(5, 0, 512, false)]);
}

#[test]
fn no_mark_without_negotiation() {
    let mut fe = frontend(16, false);
    fe.submit(1, BULK_OUT, shape(512), false, 1).unwrap();
    drain(&mut fe);
    fe.handle_response(0, UrbResult::status(Status::IoError))
        .unwrap();
    drain(&mut fe);
    fe.submit(2, BULK_OUT, shape(512), true, 2).unwrap();
    let p = pushes(&drain(&mut fe));
    assert_eq!(p[0].kind.transfer_flags(), crate::wire::SHORT_NOT_OK);
}

#[test]
fn device_gone_fails_queued_waits_for_ring_and_refuses_later() {
    let mut fe = frontend(1, false);
    fe.submit(1, BULK_OUT, shape(10), false, 1).unwrap();
    fe.submit(2, BULK_OUT, shape(10), false, 2).unwrap();
    drain(&mut fe);
    fe.handle_device_gone(Port::new(1).unwrap());
    let a = drain(&mut fe);
    assert_eq!(completes(&a), vec![(2, UrbResult::status(Status::NoDev))]);
    let err = fe.submit(3, BULK_OUT, shape(10), false, 3).unwrap_err();
    assert_eq!((err.reason, err.payload), (Refused::NoDevice(1), 3));
    fe.handle_response(0, UrbResult::status(Status::NoDev))
        .unwrap();
    assert_eq!(
        completes(&drain(&mut fe)),
        vec![(1, UrbResult::status(Status::NoDev))]
    );
}

#[test]
fn disconnect_completes_everything_and_refuses_later() {
    let mut fe = frontend(1, false);
    fe.submit(1, BULK_OUT, shape(10), false, 1).unwrap();
    fe.submit(2, BULK_OUT, shape(10), false, 2).unwrap();
    fe.unlink(100, 1).unwrap();
    drain(&mut fe);
    fe.handle_disconnect();
    let a = drain(&mut fe);
    assert!(matches!(
        a.as_slice(),
        [
            Action::Complete { handle: 1, .. },
            Action::UnlinkOk { handle: 100 },
            Action::Complete { handle: 2, .. },
        ]
    ));
    assert!(completes(&a).iter().all(|c| c.1.status == Status::Shutdown));
    let err = fe.submit(3, BULK_OUT, shape(10), false, 3).unwrap_err();
    assert_eq!(err.reason, Refused::Disconnected);
    assert_eq!(fe.unlink(101, 2), Err(Refused::Disconnected));
    // Late answers from the dead ring are ignored.
    assert_eq!(fe.handle_response(0, UrbResult::ok(10)), Ok(()));
    assert!(drain(&mut fe).is_empty());
}

#[test]
fn separate_endpoints_do_not_wait_for_each_other() {
    let mut fe = frontend(16, false);
    fe.submit(1, BULK_IN, shape(200_000), false, 1).unwrap();
    fe.submit(2, BULK_OUT, shape(10), false, 2).unwrap();
    let d = data(&drain(&mut fe));
    assert_eq!(d.len(), 2);
    assert_eq!(d[1], (2, 0, 10, false));
}

/// Split chains: a large IN transfer's pieces go out together, flagged; the next transfer
/// of the endpoint waits for it to complete, and a short piece ends it at once.
#[test]
fn split_chain_sends_every_piece_and_holds_the_endpoint() {
    use crate::urb::chain::{SPLIT_CONT, SPLIT_MORE};
    let mut fe = chain_frontend();
    fe.submit(1, BULK_IN, shape(3 * 65536 - 4096), false, 1)
        .unwrap();
    fe.submit(2, BULK_IN, shape(512), false, 2).unwrap();
    let sent = pushes(&drain(&mut fe));
    let pieces = sent.len();
    assert!(pieces >= 3, "{sent:?}");
    assert!(sent
        .iter()
        .all(|r| matches!(r.kind, RequestKind::Submit { handle: 1, .. })));
    for (i, r) in sent.iter().enumerate() {
        let want = if i + 1 < pieces { SPLIT_MORE } else { 0 } | if i > 0 { SPLIT_CONT } else { 0 };
        assert_eq!(r.kind.transfer_flags(), want, "piece {i}");
    }
    let len = |r: &Request| match r.kind {
        RequestKind::Submit { piece, .. } => piece.len,
        RequestKind::Unlink { .. } => 0,
    };
    // The second piece is short: transfer 1 ends, the pieces after it are unlinked, and
    // transfer 2 goes out once their answers are in.
    fe.handle_response(sent[0].id, UrbResult::ok(len(&sent[0])))
        .unwrap();
    fe.handle_response(sent[1].id, UrbResult::ok(100)).unwrap();
    let mut a = drain(&mut fe);
    assert!(completes(&a).is_empty());
    assert!(data(&a).is_empty(), "transfer 2 still held");
    for r in &sent[2..] {
        fe.handle_response(r.id, UrbResult::status(Status::IoError))
            .unwrap();
        a.extend(drain(&mut fe));
    }
    for u in pushes(&a) {
        if matches!(u.kind, RequestKind::Unlink { .. }) {
            fe.handle_response(u.id, UrbResult::status(Status::Ok))
                .unwrap();
            a.extend(drain(&mut fe));
        }
    }
    assert_eq!(completes(&a), vec![(1, UrbResult::ok(len(&sent[0]) + 100))]);
    assert_eq!(data(&a), vec![(2, 0, 512, false)]);
    let last = pushes(&a)
        .into_iter()
        .find(|r| matches!(r.kind, RequestKind::Submit { .. }));
    assert_eq!(last.map(|r| r.kind.transfer_flags()), Some(0));
}

/// A chain takes at most a quarter of the ring: an IN waiting for the device must leave
/// ids for the OUT that would feed it.
#[test]
fn split_chain_leaves_most_of_the_ring_to_others() {
    let mut fe = chain_frontend();
    fe.submit(1, BULK_IN, shape(1 << 20), false, 1).unwrap();
    fe.submit(2, BULK_OUT, shape(1 << 20), false, 2).unwrap();
    let sent = pushes(&drain(&mut fe));
    let ins: Vec<&Request> = sent.iter().filter(|r| r.pipe.is_in()).collect();
    assert_eq!(ins.len(), 4);
    assert_eq!(sent.len(), 16, "the OUT gets the other twelve ids");
    fe.handle_response(ins[0].id, UrbResult::ok(65024)).unwrap();
    let more = pushes(&drain(&mut fe));
    assert_eq!(more.len(), 1);
    assert!(
        more[0].pipe.is_in(),
        "the chain's fifth piece (ids go in order)"
    );
}
