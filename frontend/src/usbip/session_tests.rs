//! Tests for `usbip::session` (compiled only under `#[cfg(test)]`, see usbip/mod.rs).
//!
//! The unlink rule in every order, duplicate seqnums, wrong devid, and the import handshake.

use super::fuzzing::VhciModel;
use super::op::{self, OpStatus};
use super::pdu::*;
use super::server::{ConnError, ConnEvent, ServerConn};
use super::session::*;
use super::wire::ECONNRESET;
use super::{decode::Limits, device::ExportedDevice, Reply, ReplyShape, RetDecoder};

const DEVID: u32 = 0x0001_0002;

fn submit(seqnum: u32, dir: Direction, len: u32) -> CmdSubmit {
    let data = if dir == Direction::Out {
        vec![0xAB; len as usize]
    } else {
        vec![]
    };
    CmdSubmit {
        seqnum,
        devid: DEVID,
        dir,
        ep: 1,
        length: len,
        data,
        ..Default::default()
    }
}

/// A session plus the vhci model checking everything it sends.
struct Rig {
    s: Session,
    vhci: VhciModel,
}

impl Rig {
    fn new() -> Self {
        Rig {
            s: Session::new(SessionConfig::new(DEVID)),
            vhci: VhciModel::default(),
        }
    }

    fn send_submit(&mut self, c: CmdSubmit) -> Event {
        self.vhci.submitted(&c);
        let mut b = Vec::new();
        c.encode(&mut b);
        self.s.feed(&b).unwrap();
        self.flush();
        self.s.poll_event().unwrap()
    }

    fn send_unlink(&mut self, seqnum: u32, victim: u32) -> Option<Event> {
        let u = CmdUnlink {
            seqnum,
            devid: DEVID,
            victim,
        };
        self.vhci.unlink_sent(&u);
        let mut b = Vec::new();
        u.encode(&mut b);
        self.s.feed(&b).unwrap();
        self.flush();
        self.s.poll_event()
    }

    fn flush(&mut self) {
        let tx = self.s.take_tx();
        self.vhci.accept(&tx).unwrap();
    }

    fn done(&mut self) {
        self.flush();
        assert_eq!((self.vhci.open_urbs(), self.vhci.open_unlinks()), (0, 0));
    }
}

fn replies(bytes: &[u8], shape: ReplyShape) -> Vec<Reply> {
    let mut d = RetDecoder::new(Limits::default());
    d.push(bytes);
    let mut out = Vec::new();
    while let Some(r) = d.next_reply(|_| Some(shape)).unwrap() {
        out.push(r);
    }
    out
}

const IN8: ReplyShape = ReplyShape {
    dir: Direction::In,
    length: 8,
    iso_packets: 0,
};

#[test]
fn submit_then_complete_sends_ret_submit_with_data() {
    let mut r = Rig::new();
    assert!(
        matches!(r.send_submit(submit(1, Direction::In, 8)), Event::Submit(c) if c.seqnum == 1)
    );
    let c = Completion {
        actual_length: 3,
        data: vec![1, 2, 3, 9],
        ..Default::default()
    };
    r.s.complete(1, c).unwrap();
    let got = replies(r.s.pending_tx(), IN8);
    assert_eq!(
        got,
        vec![Reply::Submit(RetSubmit {
            seqnum: 1,
            actual_length: 3,
            data: vec![1, 2, 3],
            ..Default::default()
        })]
    );
    r.done();
    assert!(r.vhci.completed.contains(&1));
}

#[test]
fn unlink_before_completion_gives_econnreset_and_no_ret_submit() {
    let mut r = Rig::new();
    r.send_submit(submit(1, Direction::In, 8));
    assert_eq!(
        r.send_unlink(2, 1),
        Some(Event::Unlink {
            seqnum: 2,
            victim: 1
        })
    );
    r.s.unlinked(1).unwrap();
    assert_eq!(
        replies(r.s.pending_tx(), IN8),
        vec![Reply::Unlink(RetUnlink {
            seqnum: 2,
            status: ECONNRESET
        })]
    );
    // The backend's late answer for the cancelled original is refused, nothing is sent.
    r.flush();
    assert_eq!(
        r.s.complete(1, Completion::default()),
        Err(CompleteError::NotInFlight(1))
    );
    assert!(r.s.pending_tx().is_empty());
    r.done();
    assert!(r.vhci.cancelled.contains(&1));
}

#[test]
fn unlink_after_completion_gives_status_zero_at_once() {
    let mut r = Rig::new();
    r.send_submit(submit(1, Direction::Out, 4));
    r.s.complete(
        1,
        Completion {
            actual_length: 4,
            ..Default::default()
        },
    )
    .unwrap();
    r.flush();
    assert_eq!(r.send_unlink(2, 1), None);
    r.done();
}

#[test]
fn unlink_of_unknown_seqnum_gives_status_zero() {
    let mut r = Rig::new();
    assert_eq!(r.send_unlink(9, 1234), None);
    r.done();
}

#[test]
fn completion_racing_unlink_sends_ret_submit_then_ret_unlink_zero() {
    let mut r = Rig::new();
    r.send_submit(submit(1, Direction::In, 8));
    r.send_unlink(2, 1);
    // The transfer finished before the cancel reached the device.
    r.s.complete(
        1,
        Completion {
            actual_length: 2,
            data: vec![7, 7],
            ..Default::default()
        },
    )
    .unwrap();
    let got = replies(r.s.pending_tx(), IN8);
    assert!(
        matches!(&got[..], [Reply::Submit(s), Reply::Unlink(RetUnlink { seqnum: 2, status: 0 })] if s.seqnum == 1)
    );
    // ...and usbif's answer to the unlink request itself arrives afterwards: refused.
    assert_eq!(r.s.unlinked(1), Err(CompleteError::NotInFlight(1)));
    r.done();
}

#[test]
fn cancelled_status_while_unlinking_counts_as_unlinked() {
    let mut r = Rig::new();
    r.send_submit(submit(1, Direction::In, 8));
    r.send_unlink(2, 1);
    r.s.complete(
        1,
        Completion {
            status: ECONNRESET,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        replies(r.s.pending_tx(), IN8),
        vec![Reply::Unlink(RetUnlink {
            seqnum: 2,
            status: ECONNRESET
        })]
    );
    r.done();
}

#[test]
fn second_unlink_of_same_victim_is_answered_zero_after_the_first() {
    let mut r = Rig::new();
    r.send_submit(submit(1, Direction::In, 8));
    assert!(r.send_unlink(2, 1).is_some());
    assert_eq!(r.send_unlink(3, 1), None);
    // Held back: vhci would give the URB back on any RET_UNLINK naming it.
    assert!(r.s.pending_tx().is_empty());
    r.s.unlinked(1).unwrap();
    let got = replies(r.s.pending_tx(), IN8);
    assert_eq!(
        got,
        vec![
            Reply::Unlink(RetUnlink {
                seqnum: 2,
                status: ECONNRESET
            }),
            Reply::Unlink(RetUnlink {
                seqnum: 3,
                status: 0
            })
        ]
    );
    r.done();
}

#[test]
fn unlinked_without_unlink_request_is_refused_and_urb_stays() {
    let mut r = Rig::new();
    r.send_submit(submit(1, Direction::In, 8));
    assert_eq!(r.s.unlinked(1), Err(CompleteError::NotUnlinking(1)));
    assert!(r.s.is_in_flight(1) && r.s.pending_tx().is_empty());
    r.s.complete(1, Completion::default()).unwrap();
    r.done();
}

#[test]
fn double_completion_is_refused() {
    let mut r = Rig::new();
    r.send_submit(submit(1, Direction::Out, 1));
    r.s.complete(1, Completion::default()).unwrap();
    assert_eq!(
        r.s.complete(1, Completion::default()),
        Err(CompleteError::NotInFlight(1))
    );
    r.done();
}

#[test]
fn inconsistent_completion_is_answered_with_eproto() {
    let mut r = Rig::new();
    r.send_submit(submit(1, Direction::In, 8));
    let too_long = Completion {
        actual_length: 9,
        data: vec![0; 9],
        ..Default::default()
    };
    assert!(matches!(
        r.s.complete(1, too_long),
        Err(CompleteError::BadCompletion { seqnum: 1, .. })
    ));
    let got = replies(r.s.pending_tx(), IN8);
    assert!(matches!(&got[..], [Reply::Submit(s)] if s.status == -71 && s.data.is_empty()));
    r.done();
}

#[test]
fn iso_in_completion_is_packed() {
    let mut r = Rig::new();
    let iso = vec![
        IsoPacket {
            offset: 0,
            length: 4,
            ..Default::default()
        },
        IsoPacket {
            offset: 4,
            length: 4,
            ..Default::default()
        },
    ];
    r.send_submit(CmdSubmit {
        iso: iso.clone(),
        ..submit(1, Direction::In, 8)
    });
    let done = vec![
        IsoPacket {
            actual_length: 1,
            ..iso[0]
        },
        IsoPacket {
            actual_length: 3,
            ..iso[1]
        },
    ];
    let c = Completion {
        data: vec![1, 0, 0, 0, 2, 3, 4, 0],
        iso: done.clone(),
        ..Default::default()
    };
    r.s.complete(1, c).unwrap();
    let shape = ReplyShape {
        iso_packets: 2,
        ..IN8
    };
    let got = replies(r.s.pending_tx(), shape);
    assert_eq!(
        got,
        vec![Reply::Submit(RetSubmit {
            seqnum: 1,
            actual_length: 4,
            data: vec![1, 2, 3, 4],
            iso: done,
            ..Default::default()
        })]
    );
    r.done();
}

#[test]
fn complete_all_answers_everything_once() {
    let mut r = Rig::new();
    for seq in 1..=3 {
        r.send_submit(submit(seq, Direction::In, 8));
    }
    r.send_unlink(4, 2);
    r.s.complete_all(-108);
    r.done();
    assert!(
        r.vhci.cancelled.contains(&2)
            && r.vhci.completed.contains(&1)
            && r.vhci.completed.contains(&3)
    );
}

fn feed_err(s: &mut Session, pdu: impl FnOnce(&mut Vec<u8>)) -> SessionError {
    let mut b = Vec::new();
    pdu(&mut b);
    s.feed(&b).unwrap_err()
}

#[test]
fn duplicate_outstanding_seqnum_is_fatal() {
    let mut s = Session::new(SessionConfig::new(DEVID));
    let mut b = Vec::new();
    submit(1, Direction::In, 8).encode(&mut b);
    s.feed(&b).unwrap();
    assert_eq!(
        feed_err(&mut s, |o| submit(1, Direction::In, 8).encode(o)),
        SessionError::DuplicateSeqnum(1)
    );
    // Once failed, always failed.
    assert_eq!(s.feed(&[]), Err(SessionError::DuplicateSeqnum(1)));
}

#[test]
fn unlink_reusing_outstanding_seqnum_is_fatal() {
    let mut s = Session::new(SessionConfig::new(DEVID));
    let mut b = Vec::new();
    submit(1, Direction::In, 8).encode(&mut b);
    s.feed(&b).unwrap();
    let e = feed_err(&mut s, |o| {
        CmdUnlink {
            seqnum: 1,
            devid: DEVID,
            victim: 1,
        }
        .encode(o)
    });
    assert_eq!(e, SessionError::DuplicateSeqnum(1));
}

#[test]
fn seqnum_may_be_reused_after_its_answer() {
    let mut r = Rig::new();
    r.send_submit(submit(1, Direction::In, 8));
    r.s.complete(1, Completion::default()).unwrap();
    r.flush();
    r.send_submit(submit(1, Direction::In, 8));
    r.s.complete(1, Completion::default()).unwrap();
    r.done();
}

#[test]
fn wrong_devid_is_fatal() {
    let mut s = Session::new(SessionConfig::new(DEVID));
    let e = feed_err(&mut s, |o| {
        CmdSubmit {
            devid: 7,
            ..submit(1, Direction::In, 8)
        }
        .encode(o)
    });
    assert_eq!(
        e,
        SessionError::WrongDevid {
            seqnum: 1,
            expected: DEVID,
            got: 7
        }
    );
}

#[test]
fn too_many_in_flight_is_fatal() {
    let mut s = Session::new(SessionConfig {
        max_in_flight: 2,
        ..SessionConfig::new(DEVID)
    });
    let mut b = Vec::new();
    for seq in 1..=3 {
        submit(seq, Direction::In, 8).encode(&mut b);
    }
    assert_eq!(s.feed(&b), Err(SessionError::TooManyInFlight(2)));
}

// ---- management handshake ------------------------------------------------------------

fn device() -> ExportedDevice {
    ExportedDevice {
        busid: "1-1".into(),
        busnum: 1,
        devnum: 2,
        ..Default::default()
    }
}

#[test]
fn devlist_is_answered_then_connection_closes() {
    let mut c = ServerConn::new(Limits::default(), 16);
    let mut b = Vec::new();
    op::encode_req_devlist(&mut b);
    c.feed(&b[..3]).unwrap();
    assert_eq!(c.poll_event(), None);
    c.feed(&b[3..]).unwrap();
    assert_eq!(c.poll_event(), Some(ConnEvent::DevlistRequested));
    c.reply_devlist(&[device()]).unwrap();
    let (devs, used) = op::decode_rep_devlist(c.pending_tx()).unwrap().unwrap();
    assert_eq!((devs, used), (vec![device()], c.pending_tx().len()));
    assert!(!c.should_close());
    c.consume_tx(used);
    assert!(c.should_close());
}

#[test]
fn import_then_urbs_on_the_same_connection() {
    let mut c = ServerConn::new(Limits::default(), 16);
    let mut b = Vec::new();
    op::encode_req_import("1-1", &mut b);
    // A client that does not wait for the reply: its first CMD_SUBMIT is already here.
    submit(1, Direction::In, 8).encode(&mut b);
    c.feed(&b).unwrap();
    assert_eq!(
        c.poll_event(),
        Some(ConnEvent::ImportRequested {
            busid: "1-1".into()
        })
    );
    assert!(c.reply_devlist(&[]).is_err());
    c.accept_import(&device()).unwrap().unwrap();
    let Some(ConnEvent::Urb(Event::Submit(s))) = c.poll_event() else {
        panic!()
    };
    assert_eq!(s.seqnum, 1);
    let (dev, n) = op::decode_rep_import(c.pending_tx()).unwrap().unwrap();
    assert_eq!((dev, n), (Ok(device()), 320));
    c.consume_tx(n);
    c.session()
        .unwrap()
        .complete(1, Completion::default())
        .unwrap();
    assert_eq!(c.pending_tx().len(), 48);
    assert!(!c.should_close());
}

#[test]
fn refused_import_closes_and_wrong_devid_after_import_is_fatal() {
    let mut c = ServerConn::new(Limits::default(), 16);
    let mut b = Vec::new();
    op::encode_req_import("9-9", &mut b);
    c.feed(&b).unwrap();
    c.poll_event();
    c.refuse_import(OpStatus::NoDev).unwrap();
    assert_eq!(c.pending_tx(), &[1, 0x11, 0, 3, 0, 0, 0, 4]);
    c.consume_tx(8);
    assert!(c.should_close());

    let mut c = ServerConn::new(Limits::default(), 16);
    let mut b = Vec::new();
    op::encode_req_import("1-1", &mut b);
    c.feed(&b).unwrap();
    c.poll_event();
    c.accept_import(&device()).unwrap().unwrap();
    let mut b = Vec::new();
    CmdSubmit {
        devid: 0x0005_0005,
        ..submit(1, Direction::In, 8)
    }
    .encode(&mut b);
    assert!(matches!(
        c.feed(&b),
        Err(ConnError::Session(SessionError::WrongDevid { .. }))
    ));
}
