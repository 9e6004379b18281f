//! Hosts that do not stop an endpoint at a short packet (xHCI): what the backend holds back,
//! and what it answers for held requests (see `chain`'s module doc).

use super::sim::{Outcome, Sim};
use super::system_cases::assert_second_piece_ended_it;
use crate::urb::aca::CONTAINED;
use crate::urb::backend::{Action, Backend, BackendConfig, Disposition, HostResult, SubmitFlags};
use crate::wire::{Ep, Pipe, Port, Status, XferType};

/// Simulated endpoint: port 1's bulk IN.
const IN: usize = 2;

fn bulk_in(port: u8) -> Pipe {
    Pipe::new(port, 3, Ep::new(1, true), XferType::Bulk)
}

/// A backend whose port 1 is on a host that does not stop at a short packet and port 2 on
/// one that does.
fn backend(aca: bool) -> Backend<u32> {
    let mut be = Backend::new(BackendConfig {
        num_ports: 2,
        ring_size: 16,
        aca,
    });
    be.handle_device_attached_with(Port::new(1).unwrap(), false);
    be.handle_device_attached_with(Port::new(2).unwrap(), true);
    be
}

/// The (id, continuation) of every Submit and the (id, status) of every Respond.
type Summary = (Vec<(u16, bool)>, Vec<(u16, Status)>);

fn drain(be: &mut Backend<u32>) -> Summary {
    let mut out = (Vec::new(), Vec::new());
    while let Some(a) = be.poll_action() {
        match a {
            Action::Submit {
                id, continuation, ..
            } => out.0.push((id, continuation)),
            Action::Respond { id, result, .. } => out.1.push((id, result.status)),
            Action::Cancel { .. } => {}
        }
    }
    out
}

fn piece(more: bool, cont: bool) -> SubmitFlags {
    SubmitFlags {
        split_more: more,
        split_cont: cont,
        ..SubmitFlags::default()
    }
}

/// Ids 1 and 2: the two pieces of a chain on port 1 (xHCI).
fn two_pieces(be: &mut Backend<u32>) {
    be.handle_submit_with(1, bulk_in(1), piece(true, false), 1)
        .unwrap();
    be.handle_submit_with(2, bulk_in(1), piece(false, true), 2)
        .unwrap();
}

/// Seed 001 with split chains on xHCI: only the first piece goes out; each next one waits
/// for the one before it; the piece behind the short one is refused by usbfs (the sim's
/// host), and the device never runs anything of the transfer after the short piece.
#[test]
fn seed001_split_chain_waits_piece_by_piece_where_the_host_does_not_stop() {
    for aca in [false, true] {
        let mut sim = Sim::with_host(aca, true, 16, false);
        let big = sim.submit(IN, 200_000, 3584, false);
        let next = sim.submit(IN, 13, 0, false);
        sim.deliver_requests(usize::MAX);
        assert_eq!(sim.submits.len(), 1, "one piece at a time");
        assert_eq!(sim.be.held(), 3);
        sim.run(IN, Outcome::Full);
        sim.reap(usize::MAX);
        assert_eq!(
            sim.submits.len(),
            2,
            "the next piece once the first is back"
        );
        sim.run(IN, Outcome::Short(128));
        assert_second_piece_ended_it(&mut sim, big, next);
    }
}

/// The same transfer on a host that stops: every piece goes out at once.
#[test]
fn split_chain_goes_out_at_once_where_the_host_stops() {
    let mut sim = Sim::with_host(false, true, 16, true);
    sim.submit(IN, 200_000, 3584, false);
    sim.deliver_requests(usize::MAX);
    assert_eq!((sim.submits.len(), sim.be.held()), (4, 0));
    sim.settle();
    sim.check_at_rest();
}

/// With containment, a bulk IN request behind a `SHORT_NOT_OK` one waits on xHCI: a short
/// read fails its predecessor, and the device must not run it before the client saw that.
#[test]
fn contained_follower_waits_behind_short_not_ok_where_the_host_does_not_stop() {
    let mut sim = Sim::with_host(true, false, 16, false);
    let first = sim.submit(IN, 512, 0, true);
    let second = sim.submit(IN, 512, 0, false);
    sim.deliver_requests(usize::MAX);
    assert_eq!((sim.submits.len(), sim.be.held()), (1, 1));
    sim.run(IN, Outcome::Short(64));
    sim.settle();
    assert_eq!(sim.xfers[&first].completes[0].1.status, Status::IoError);
    assert_eq!(sim.xfers[&second].completes[0].1.status, CONTAINED);
    assert_eq!(sim.execs.len(), 1);
    sim.check_at_rest();
    // Without containment nothing is chained, so nothing waits: the follower takes the
    // next data, as on native Linux.
    let mut sim = Sim::with_host(false, false, 16, false);
    sim.submit(IN, 512, 0, true);
    sim.submit(IN, 512, 0, false);
    sim.deliver_requests(usize::MAX);
    assert_eq!((sim.submits.len(), sim.be.held()), (2, 0));
}

/// A held piece that completes in full releases the next; an unlinked held piece is
/// answered at once without reaching the host, and what waited behind it goes on.
#[test]
fn held_requests_are_released_in_order_and_answered_when_unlinked() {
    let mut be = backend(false);
    be.handle_submit_with(1, bulk_in(1), piece(true, false), 1)
        .unwrap();
    be.handle_submit_with(2, bulk_in(1), piece(true, true), 2)
        .unwrap();
    be.handle_submit_with(3, bulk_in(1), piece(false, true), 3)
        .unwrap();
    // The next transfer is not chained, but must not overtake the held pieces.
    assert_eq!(
        be.handle_submit_with(4, bulk_in(1), SubmitFlags::default(), 4)
            .unwrap(),
        Disposition::Submitted
    );
    assert_eq!(drain(&mut be), (vec![(1, false)], vec![]));
    assert_eq!((be.in_flight(), be.held()), (4, 3));
    be.handle_host_done(1, HostResult::done(Status::Ok, 512), 1)
        .unwrap();
    assert_eq!(drain(&mut be), (vec![(2, true)], vec![(1, Status::Ok)]));
    // The client gives up on the last piece while it is held: the next transfer, which is
    // not chained, goes behind the piece still out, as it would have on a host that stops.
    be.handle_unlink(5, 3).unwrap();
    assert_eq!(
        drain(&mut be),
        (
            vec![(4, false)],
            vec![(3, Status::IoError), (5, Status::Ok)]
        )
    );
    assert_eq!(be.held(), 0);
    assert_eq!(be.held_total(Port::new(1).unwrap()), 3);
    // A host that stops needs none of this.
    be.handle_submit_with(6, bulk_in(2), piece(true, false), 6)
        .unwrap();
    be.handle_submit_with(7, bulk_in(2), piece(false, true), 7)
        .unwrap();
    assert_eq!(drain(&mut be), (vec![(6, false), (7, true)], vec![]));
    assert_eq!(be.held_total(Port::new(2).unwrap()), 0);
}

/// Held requests are answered at once when their endpoint is contained, their device goes
/// or the controller disconnects; the host never sees them.
#[test]
fn held_requests_are_answered_for_containment_unplug_and_disconnect() {
    let mut be = backend(true);
    two_pieces(&mut be);
    assert_eq!(drain(&mut be).0, vec![(1, true)]);
    be.handle_host_done(1, HostResult::done(Status::Stall, 0), 1)
        .unwrap();
    assert_eq!(
        drain(&mut be),
        (vec![], vec![(1, Status::Stall), (2, CONTAINED)])
    );
    assert!(be.is_contained(bulk_in(1)));

    let mut be = backend(false);
    two_pieces(&mut be);
    drain(&mut be);
    be.handle_device_gone(Port::new(1).unwrap());
    assert_eq!(drain(&mut be).1, vec![(2, Status::NoDev)]);
    be.handle_host_done(1, HostResult::cancelled(), 1).unwrap();
    assert_eq!(drain(&mut be).1, vec![(1, Status::NoDev)]);

    let mut be = backend(false);
    two_pieces(&mut be);
    drain(&mut be);
    be.handle_disconnect();
    assert_eq!(drain(&mut be).1, vec![(2, Status::Shutdown)]);
    // Its id stays taken until answered, and the host never gets it.
    be.handle_host_done(1, HostResult::cancelled(), 1).unwrap();
    assert_eq!(drain(&mut be), (vec![], vec![(1, Status::Shutdown)]));
    assert_eq!(be.in_flight(), 0);
}

/// A held request is not on the host: a completion naming it is a shell bug.
#[test]
fn host_done_for_a_held_request_is_refused() {
    let mut be = backend(false);
    two_pieces(&mut be);
    drain(&mut be);
    let err = be
        .handle_host_done(2, HostResult::done(Status::Ok, 1), 9)
        .unwrap_err();
    assert_eq!((err.id, err.payload), (2, 9));
    assert_eq!(be.held(), 1);
}
