//! The backend's rules, one explicit case each.

use crate::urb::aca::CONTAINED;
use crate::urb::backend::{Action, Backend, BackendConfig, Disposition, HostResult, ProtocolError};
use crate::urb::UrbResult;
use crate::wire::{Ep, Pipe, Port, Status, XferType};

fn bulk_out(port: u8) -> Pipe {
    Pipe::new(port, 3, Ep::new(1, false), XferType::Bulk)
}

fn backend(aca: bool) -> Backend<u32> {
    let mut be = Backend::new(BackendConfig {
        num_ports: 2,
        ring_size: 16,
        aca,
    });
    be.handle_device_attached(Port::new(1).unwrap());
    be.handle_device_attached(Port::new(2).unwrap());
    be
}

fn drain(be: &mut Backend<u32>) -> Vec<Action<u32>> {
    std::iter::from_fn(|| be.poll_action()).collect()
}

/// The (id, continuation) of every Submit, the ids of every Cancel, the (id, status) of
/// every Respond.
type Summary = (Vec<(u16, bool)>, Vec<u16>, Vec<(u16, Status)>);

fn summary(actions: &[Action<u32>]) -> Summary {
    let mut out = (Vec::new(), Vec::new(), Vec::new());
    for a in actions {
        match a {
            Action::Submit {
                id, continuation, ..
            } => out.0.push((*id, *continuation)),
            Action::Cancel { id } => out.1.push(*id),
            Action::Respond { id, result, .. } => out.2.push((*id, result.status)),
        }
    }
    out
}

#[test]
fn submit_then_host_done_answers_once_with_payload() {
    let mut be = backend(false);
    assert_eq!(
        be.handle_submit(1, bulk_out(1), false, 77).unwrap(),
        Disposition::Submitted
    );
    let a = drain(&mut be);
    assert!(matches!(
        a.as_slice(),
        [Action::Submit {
            id: 1,
            payload: 77,
            continuation: false,
            ..
        }]
    ));
    be.handle_host_done(1, HostResult::done(Status::Ok, 512), 77)
        .unwrap();
    let a = drain(&mut be);
    assert!(matches!(
        a.as_slice(),
        [Action::Respond {
            id: 1,
            result: UrbResult {
                status: Status::Ok,
                actual_length: 512,
                ..
            },
            payload: Some(77),
        }]
    ));
    assert_eq!(be.in_flight(), 0);
    // The id is free again.
    assert!(be.handle_submit(1, bulk_out(1), false, 78).is_ok());
}

#[test]
fn duplicate_live_id_is_a_protocol_error_with_nothing_queued() {
    let mut be = backend(false);
    be.handle_submit(5, bulk_out(1), false, 1).unwrap();
    drain(&mut be);
    let err = be.handle_submit(5, bulk_out(2), false, 2).unwrap_err();
    assert_eq!(err.error, ProtocolError::DuplicateId(5));
    assert_eq!(err.payload, 2);
    assert_eq!(be.handle_unlink(5, 9), Err(ProtocolError::DuplicateId(5)));
    assert!(drain(&mut be).is_empty());
}

#[test]
fn unlink_answers_itself_and_its_victim() {
    let mut be = backend(false);
    be.handle_submit(1, bulk_out(1), false, 10).unwrap();
    drain(&mut be);
    be.handle_unlink(2, 1).unwrap();
    let (_, cancels, responds) = summary(&drain(&mut be));
    assert_eq!(cancels, vec![1]);
    assert_eq!(responds, vec![(2, Status::Ok)]);
    // A second unlink does not cancel twice.
    be.handle_unlink(3, 1).unwrap();
    let (_, cancels, responds) = summary(&drain(&mut be));
    assert!(cancels.is_empty());
    assert_eq!(responds, vec![(3, Status::Ok)]);
    be.handle_host_done(1, HostResult::cancelled(), 10).unwrap();
    let (_, _, responds) = summary(&drain(&mut be));
    assert_eq!(responds, vec![(1, Status::IoError)]);
}

#[test]
fn unlinked_urb_that_finished_first_reports_what_happened() {
    let mut be = backend(false);
    be.handle_submit(1, bulk_out(1), false, 10).unwrap();
    be.handle_unlink(2, 1).unwrap();
    drain(&mut be);
    be.handle_host_done(1, HostResult::done(Status::Ok, 64), 10)
        .unwrap();
    let (_, _, responds) = summary(&drain(&mut be));
    assert_eq!(responds, vec![(1, Status::Ok)]);
}

#[test]
fn unlink_of_unknown_victim_answers_ok() {
    let mut be = backend(false);
    be.handle_unlink(4, 9).unwrap();
    let (_, cancels, responds) = summary(&drain(&mut be));
    assert!(cancels.is_empty());
    assert_eq!(responds, vec![(4, Status::Ok)]);
}

#[test]
fn failure_contains_endpoint_until_clear_mark() {
    let mut be = backend(true);
    for id in 1..=3 {
        be.handle_submit(id, bulk_out(1), false, u32::from(id))
            .unwrap();
    }
    // Another endpoint and another port are not involved.
    be.handle_submit(
        4,
        Pipe::new(1, 3, Ep::new(2, true), XferType::Bulk),
        false,
        4,
    )
    .unwrap();
    be.handle_submit(5, bulk_out(2), false, 5).unwrap();
    let (submits, _, _) = summary(&drain(&mut be));
    // Every bulk URB of a containable endpoint is a usbfs continuation.
    assert!(submits.iter().all(|&(_, c)| c));

    be.handle_host_done(1, HostResult::done(Status::IoError, 100), 1)
        .unwrap();
    let (_, cancels, responds) = summary(&drain(&mut be));
    assert_eq!(cancels, vec![2, 3]);
    assert_eq!(responds, vec![(1, Status::IoError)]);
    assert!(be.is_contained(bulk_out(1)));
    assert!(!be.is_contained(bulk_out(2)));

    // Queued before the guest saw the failure: answered without reaching the device.
    assert_eq!(
        be.handle_submit(6, bulk_out(1), false, 6).unwrap(),
        Disposition::Refused(CONTAINED)
    );
    let (submits, _, responds) = summary(&drain(&mut be));
    assert!(submits.is_empty());
    assert_eq!(responds, vec![(6, CONTAINED)]);

    be.handle_host_done(2, HostResult::cancelled(), 2).unwrap();
    be.handle_host_done(3, HostResult::cancelled(), 3).unwrap();
    let (_, _, responds) = summary(&drain(&mut be));
    assert_eq!(responds, vec![(2, CONTAINED), (3, CONTAINED)]);

    // The mark reopens; it starts a new usbfs continuation chain.
    assert_eq!(
        be.handle_submit(7, bulk_out(1), true, 7).unwrap(),
        Disposition::Submitted
    );
    be.handle_submit(8, bulk_out(1), false, 8).unwrap();
    let (submits, _, _) = summary(&drain(&mut be));
    assert_eq!(submits, vec![(7, false), (8, true)]);
    assert!(!be.is_contained(bulk_out(1)));
}

#[test]
fn host_cancelled_continuation_is_contained_not_a_new_failure() {
    let mut be = backend(true);
    be.handle_submit(1, bulk_out(1), false, 1).unwrap();
    be.handle_submit(2, bulk_out(1), false, 2).unwrap();
    drain(&mut be);
    // usbfs refused/cancelled 2 by itself; 1's failure is reaped first.
    be.handle_host_done(1, HostResult::done(Status::Stall, 0), 1)
        .unwrap();
    be.handle_host_done(2, HostResult::cancelled(), 2).unwrap();
    let (_, _, responds) = summary(&drain(&mut be));
    assert_eq!(responds, vec![(1, Status::Stall), (2, CONTAINED)]);
}

#[test]
fn stock_peer_gets_no_containment() {
    let mut be = backend(false);
    be.handle_submit(1, bulk_out(1), false, 1).unwrap();
    be.handle_submit(2, bulk_out(1), false, 2).unwrap();
    drain(&mut be);
    be.handle_host_done(1, HostResult::done(Status::IoError, 0), 1)
        .unwrap();
    let (_, cancels, _) = summary(&drain(&mut be));
    assert!(cancels.is_empty());
    // The mark bit means nothing without negotiation.
    assert_eq!(
        be.handle_submit(3, bulk_out(1), false, 3).unwrap(),
        Disposition::Submitted
    );
    let (submits, _, _) = summary(&drain(&mut be));
    assert_eq!(submits, vec![(3, false)]);
}

#[test]
fn interrupt_is_contained_without_usbfs_continuation() {
    let mut be = backend(true);
    let intr = Pipe::new(1, 3, Ep::new(3, true), XferType::Int);
    be.handle_submit(1, intr, false, 1).unwrap();
    be.handle_submit(2, intr, false, 2).unwrap();
    let (submits, _, _) = summary(&drain(&mut be));
    assert_eq!(submits, vec![(1, false), (2, false)]);
    be.handle_host_done(1, HostResult::done(Status::IoError, 0), 1)
        .unwrap();
    let (_, cancels, _) = summary(&drain(&mut be));
    assert_eq!(cancels, vec![2]);
    assert_eq!(
        be.handle_submit(3, intr, false, 3).unwrap(),
        Disposition::Refused(CONTAINED)
    );
}

#[test]
fn control_and_iso_are_never_contained() {
    let mut be = backend(true);
    let ctrl = Pipe::new(1, 3, Ep::new(0, true), XferType::Ctrl);
    be.handle_submit(1, ctrl, false, 1).unwrap();
    drain(&mut be);
    be.handle_host_done(1, HostResult::done(Status::Stall, 0), 1)
        .unwrap();
    drain(&mut be);
    assert_eq!(
        be.handle_submit(2, ctrl, false, 2).unwrap(),
        Disposition::Submitted
    );
}

#[test]
fn device_gone_cancels_in_flight_and_refuses_later_in_one_call() {
    let mut be = backend(true);
    be.handle_submit(1, bulk_out(1), false, 1).unwrap();
    be.handle_submit(2, bulk_out(2), false, 2).unwrap();
    drain(&mut be);
    be.handle_device_gone(Port::new(1).unwrap());
    let (_, cancels, _) = summary(&drain(&mut be));
    assert_eq!(cancels, vec![1]);
    assert_eq!(
        be.handle_submit(3, bulk_out(1), false, 3).unwrap(),
        Disposition::Refused(Status::NoDev)
    );
    // Even if the host got it done, the answer is the unplug.
    be.handle_host_done(1, HostResult::done(Status::Ok, 9), 1)
        .unwrap();
    let (_, _, responds) = summary(&drain(&mut be));
    assert_eq!(responds, vec![(3, Status::NoDev), (1, Status::NoDev)]);
    // The other port goes on.
    be.handle_host_done(2, HostResult::done(Status::Ok, 9), 2)
        .unwrap();
    let (_, _, responds) = summary(&drain(&mut be));
    assert_eq!(responds, vec![(2, Status::Ok)]);
    // A new device starts with open endpoints.
    be.handle_device_attached(Port::new(1).unwrap());
    assert_eq!(
        be.handle_submit(4, bulk_out(1), false, 4).unwrap(),
        Disposition::Submitted
    );
}

#[test]
fn disconnect_cancels_everything_and_refuses_later() {
    let mut be = backend(false);
    be.handle_submit(1, bulk_out(1), false, 1).unwrap();
    be.handle_submit(2, bulk_out(2), false, 2).unwrap();
    be.handle_unlink(3, 2).unwrap();
    drain(&mut be);
    be.handle_disconnect();
    // 2 is already being cancelled: only 1 needs a Cancel.
    let (_, cancels, _) = summary(&drain(&mut be));
    assert_eq!(cancels, vec![1]);
    assert_eq!(
        be.handle_submit(4, bulk_out(1), false, 4).unwrap(),
        Disposition::Refused(Status::Shutdown)
    );
    be.handle_host_done(1, HostResult::cancelled(), 1).unwrap();
    be.handle_host_done(2, HostResult::cancelled(), 2).unwrap();
    let (_, _, responds) = summary(&drain(&mut be));
    assert_eq!(
        responds,
        vec![
            (4, Status::Shutdown),
            (1, Status::Shutdown),
            (2, Status::Shutdown)
        ]
    );
    assert!(be.is_disconnected());
}

#[test]
fn unknown_port_is_answered_nodev() {
    let mut be = backend(false);
    for port in [0, 3, 31] {
        assert_eq!(
            be.handle_submit(1, bulk_out(port), false, 1).unwrap(),
            Disposition::Refused(Status::NoDev)
        );
    }
    assert_eq!(summary(&drain(&mut be)).2.len(), 3);
}

#[test]
fn more_live_requests_than_the_ring_holds_is_a_protocol_error() {
    let mut be = Backend::new(BackendConfig {
        num_ports: 1,
        ring_size: 2,
        aca: false,
    });
    be.handle_device_attached(Port::new(1).unwrap());
    be.handle_submit(1, bulk_out(1), false, 1).unwrap();
    be.handle_submit(2, bulk_out(1), false, 2).unwrap();
    let err = be.handle_submit(3, bulk_out(1), false, 3).unwrap_err();
    assert_eq!(err.error, ProtocolError::TooManyInFlight { limit: 2 });
}

#[test]
fn host_done_for_unknown_urb_hands_payload_back() {
    let mut be = backend(false);
    let err = be
        .handle_host_done(7, HostResult::done(Status::Ok, 0), 42)
        .unwrap_err();
    assert_eq!((err.id, err.payload), (7, 42));
}

#[test]
fn locally_answered_request_is_ordered_and_checked() {
    let mut be = backend(false);
    be.handle_submit(1, bulk_out(1), false, 1).unwrap();
    be.handle_local(2, UrbResult::status(Status::Inval), Some(2))
        .unwrap();
    let err = be
        .handle_local(1, UrbResult::status(Status::Ok), None)
        .unwrap_err();
    assert_eq!(err.error, ProtocolError::DuplicateId(1));
    let a = drain(&mut be);
    assert!(matches!(
        a.as_slice(),
        [
            Action::Submit { id: 1, .. },
            Action::Respond {
                id: 2,
                payload: Some(2),
                ..
            }
        ]
    ));
}

#[test]
fn host_shutdown_on_containable_endpoint_reads_as_nodev() {
    let mut be = backend(true);
    be.handle_submit(1, bulk_out(1), false, 1).unwrap();
    drain(&mut be);
    be.handle_host_done(1, HostResult::done(Status::Shutdown, 0), 1)
        .unwrap();
    let (_, _, responds) = summary(&drain(&mut be));
    assert_eq!(responds, vec![(1, Status::NoDev)]);
    assert!(be.is_contained(bulk_out(1)));
}
