//! Tests for `usbip::client` (compiled only under `#[cfg(test)]`, see usbip/mod.rs).
//!
//! The client's contract-4 checks: each way a server can answer an unlink wrongly.

use super::client::*;
use super::decode::Limits;
use super::pdu::*;
use super::wire::ECONNRESET;

fn attached_with_one_in() -> ClientConn {
    let mut c = ClientConn::attached(0x10002, Limits::default());
    let cmd = CmdSubmit {
        dir: Direction::In,
        ep: 1,
        length: 8,
        ..Default::default()
    };
    assert_eq!(c.submit(cmd).unwrap(), 1);
    assert_eq!(c.unlink(1).unwrap(), 2);
    assert_eq!(c.pending_tx().len(), 96);
    c
}

fn bytes(pdus: &[Reply]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in pdus {
        p.encode(&mut v);
    }
    v
}

fn ret_submit(seqnum: u32) -> Reply {
    Reply::Submit(RetSubmit {
        seqnum,
        ..Default::default()
    })
}

fn ret_unlink(seqnum: u32, status: i32) -> Reply {
    Reply::Unlink(RetUnlink { seqnum, status })
}

#[test]
fn accepts_the_two_legal_answers() {
    let mut c = attached_with_one_in();
    c.feed(&bytes(&[ret_submit(1), ret_unlink(2, 0)])).unwrap();
    assert!(matches!(c.poll_event(), Some(ClientEvent::Completed(r)) if r.seqnum == 1));
    assert_eq!(
        c.poll_event(),
        Some(ClientEvent::Unlinked {
            seqnum: 2,
            victim: 1,
            status: 0
        })
    );
    assert_eq!((c.outstanding(), c.outstanding_unlinks()), (0, 0));

    let mut c = attached_with_one_in();
    c.feed(&bytes(&[ret_unlink(2, ECONNRESET)])).unwrap();
    assert_eq!(
        c.poll_event(),
        Some(ClientEvent::Unlinked {
            seqnum: 2,
            victim: 1,
            status: ECONNRESET
        })
    );
    assert_eq!((c.outstanding(), c.outstanding_unlinks()), (0, 0));
}

#[test]
fn rejects_ret_submit_after_cancel() {
    let mut c = attached_with_one_in();
    let e = c
        .feed(&bytes(&[ret_unlink(2, ECONNRESET), ret_submit(1)]))
        .unwrap_err();
    assert_eq!(e, ClientError::Decode(super::DecodeError::UnknownSeqnum(1)));
}

#[test]
fn rejects_cancel_after_completion() {
    let mut c = attached_with_one_in();
    let e = c
        .feed(&bytes(&[ret_submit(1), ret_unlink(2, ECONNRESET)]))
        .unwrap_err();
    assert_eq!(e, ClientError::CancelAfterCompletion { victim: 1 });
}

#[test]
fn rejects_unlink_zero_before_completion() {
    let mut c = attached_with_one_in();
    let e = c.feed(&bytes(&[ret_unlink(2, 0)])).unwrap_err();
    assert_eq!(e, ClientError::UnlinkBeforeCompletion { victim: 1 });
}

#[test]
fn rejects_unknown_unlink_and_odd_status() {
    let mut c = attached_with_one_in();
    assert_eq!(
        c.feed(&bytes(&[ret_unlink(7, 0)])),
        Err(ClientError::UnknownUnlink(7))
    );
    let mut c = attached_with_one_in();
    let e = c.feed(&bytes(&[ret_unlink(2, -2)])).unwrap_err();
    assert_eq!(
        e,
        ClientError::BadUnlinkStatus {
            seqnum: 2,
            status: -2
        }
    );
}

#[test]
fn submit_before_import_is_refused() {
    let mut c = ClientConn::import("1-1", Limits::default());
    assert_eq!(
        c.submit(CmdSubmit::default()),
        Err(ClientError::NotImported)
    );
    assert_eq!(c.unlink(1), Err(ClientError::NotImported));
}

#[test]
fn written_out_buffers_come_back_for_reuse() {
    let mut c = ClientConn::attached(0x10002, Limits::default());
    let out = |data: Vec<u8>| CmdSubmit {
        dir: Direction::Out,
        ep: 1,
        data,
        ..Default::default()
    };
    c.submit(out(vec![9; 4096])).unwrap();
    c.submit(out(vec![8; 16])).unwrap();
    assert_eq!(c.take_spent(), None, "nothing written yet");
    let pending: usize = {
        let mut s = [std::io::IoSlice::new(&[]); 8];
        let n = c.pending_tx_slices(&mut s);
        s[..n].iter().map(|s| s.len()).sum()
    };
    assert_eq!(pending, 48 + 4096 + 48 + 16);
    c.consume_tx(48 + 4095);
    assert_eq!(c.take_spent(), None, "partly written");
    c.consume_tx(1 + 48 + 16);
    assert_eq!(c.take_spent(), Some(vec![9; 4096]));
    assert_eq!(c.take_spent(), None, "the small one was copied inline");
}
