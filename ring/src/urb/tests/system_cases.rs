//! Whole-vusb cases: the seeds' scenarios through client, frontend, ring, backend and host.

use super::sim::{Outcome, Sim, CONTAINED, EPS};
use crate::wire::Status;

/// Simulated bulk OUT endpoint of port 1.
const OUT: usize = 1;
/// Simulated bulk IN endpoint of port 1.
const IN: usize = 2;

/// The handles whose data the device accepted on `ep`, in the order it wrote them: with a
/// disk behind a bulk OUT endpoint, position = LBA.
fn written(sim: &Sim, ep: usize) -> Vec<u64> {
    sim.execs
        .iter()
        .filter(|e| e.ep == ep && e.status.is_ok())
        .map(|e| e.req.handle)
        .collect()
}

fn status(sim: &Sim, h: u64) -> Status {
    sim.xfers[&h].completes[0].1.status
}

/// Seed 004: W1, W2, W3 pipelined on one bulk OUT endpoint; W1 fails; W2 and W3 must not
/// reach the device; the client retries from W1 and the data lands in order.
#[test]
fn seed004_wrong_lba_write_is_contained() {
    let mut sim = Sim::new(true, 16);
    let w: Vec<u64> = (0..3).map(|_| sim.submit(OUT, 512, 0, false)).collect();
    sim.deliver_requests(usize::MAX);
    sim.run(OUT, Outcome::Fail(Status::IoError));
    sim.reap(usize::MAX);
    sim.deliver_responses(usize::MAX);
    assert_eq!(status(&sim, w[0]), Status::IoError);
    assert_eq!(status(&sim, w[1]), CONTAINED);
    assert_eq!(status(&sim, w[2]), CONTAINED);
    // The client saw the failure: it retries the whole sequence.
    let r: Vec<u64> = (0..3).map(|_| sim.submit(OUT, 512, 0, false)).collect();
    sim.settle();
    assert_eq!(written(&sim, OUT), r);
    for h in &r {
        assert_eq!(status(&sim, *h), Status::Ok);
    }
    sim.check_at_rest();
}

/// The same, when W2 and W3 are still on the ring as the backend learns of the failure.
#[test]
fn seed004_followers_still_on_the_ring_are_contained() {
    let mut sim = Sim::new(true, 16);
    let w: Vec<u64> = (0..3).map(|_| sim.submit(OUT, 512, 0, false)).collect();
    sim.deliver_requests(1);
    sim.run(OUT, Outcome::Fail(Status::Stall));
    sim.reap(usize::MAX);
    sim.deliver_requests(usize::MAX);
    sim.settle();
    assert_eq!(status(&sim, w[0]), Status::Stall);
    assert_eq!(status(&sim, w[1]), CONTAINED);
    assert_eq!(status(&sim, w[2]), CONTAINED);
    assert!(written(&sim, OUT).is_empty());
    sim.check_at_rest();
}

/// Seed 004's question, answered by counter-example: a stock peer (no containment) lets
/// W2 reach the device after W1 failed, so the retried W1 lands one block too late.
#[test]
fn seed004_stock_peer_writes_at_the_wrong_lba() {
    let mut sim = Sim::new(false, 16);
    let w: Vec<u64> = (0..3).map(|_| sim.submit(OUT, 512, 0, false)).collect();
    sim.deliver_requests(usize::MAX);
    sim.run(OUT, Outcome::Fail(Status::IoError));
    sim.run(OUT, Outcome::Full);
    sim.settle();
    assert_eq!(written(&sim, OUT), vec![w[1], w[2]]);
    sim.check_at_rest();
}

/// A client that keeps two URBs queued and resubmits each as it completes (usbnet rx)
/// gets going again after a failure instead of being contained for ever.
#[test]
fn resubmitting_client_makes_progress_after_failure() {
    let mut sim = Sim::new(true, 16);
    sim.submit(IN, 64, 0, false);
    sim.submit(IN, 64, 0, false);
    sim.deliver_requests(usize::MAX);
    sim.run(IN, Outcome::Fail(Status::IoError));
    sim.reap(usize::MAX);
    // Each completion is followed by a resubmission before the next answer arrives.
    for _ in 0..2 {
        sim.deliver_responses(1);
        sim.submit(IN, 64, 0, false);
    }
    sim.settle();
    let last = *sim.xfers.keys().last().unwrap();
    assert_eq!(status(&sim, last), Status::Ok);
    sim.check_at_rest();
}

/// Seed 001: a large IN transfer split in packet multiples; a short piece ends it and the
/// client sees one completion with the summed length; the next transfer is not chained.
#[test]
fn seed001_short_piece_ends_split_transfer() {
    let mut sim = Sim::new(true, 16);
    let big = sim.submit(IN, 200_000, 3584, false);
    let next = sim.submit(IN, 13, 0, false);
    sim.deliver_requests(usize::MAX);
    sim.run(IN, Outcome::Full);
    sim.reap(usize::MAX);
    sim.deliver_responses(usize::MAX);
    sim.deliver_requests(usize::MAX);
    sim.run(IN, Outcome::Short(128));
    sim.settle();
    let first = sim.execs[0].req.piece;
    let second = sim.execs[1].req.piece;
    assert_eq!(first.len % 512, 0);
    assert!(first.segs <= 16 && second.segs <= 16);
    let result = sim.xfers[&big].completes[0].1;
    assert_eq!(result.status, Status::Ok);
    assert_eq!(result.actual_length, first.len + second.len / 2);
    assert_eq!(status(&sim, next), Status::Ok);
    assert_eq!(sim.execs.len(), 3);
    sim.check_at_rest();
}

/// Seed 001 with split chains: all of the large transfer's pieces are on the host at once;
/// the second one is short, the rest are cancelled before the device runs them, and the
/// transfer queued behind waits for the chain, then runs and reads the next answer.
#[test]
fn seed001_split_chain_short_piece_cancels_the_rest_only() {
    for aca in [false, true] {
        let mut sim = Sim::with_chains(aca, true, 16);
        let big = sim.submit(IN, 200_000, 3584, false);
        let next = sim.submit(IN, 13, 0, false);
        sim.deliver_requests(usize::MAX);
        let on_host = sim.submits.len();
        assert_eq!(
            on_host, 4,
            "every piece at once, nothing of the next transfer"
        );
        sim.run(IN, Outcome::Full);
        sim.run(IN, Outcome::Short(128));
        assert_second_piece_ended_it(&mut sim, big, next);
    }
}

/// Settles a seed 001 run whose `big` transfer's second piece was short (128/256): `big`
/// has the bytes of its first two pieces, nothing else of it ran, and `next` ran after it.
pub(super) fn assert_second_piece_ended_it(sim: &mut Sim, big: u64, next: u64) {
    sim.settle();
    let first = sim.execs[0].req.piece;
    let second = sim.execs[1].req.piece;
    let result = sim.xfers[&big].completes[0].1;
    assert_eq!(result.status, Status::Ok);
    assert_eq!(result.actual_length, first.len + second.len / 2);
    assert_eq!(status(sim, next), Status::Ok);
    assert_eq!(sim.execs.len(), 3, "aca {}: {:?}", sim.aca, sim.execs);
    assert_eq!(sim.execs[2].req.handle, next);
    sim.check_at_rest();
}

/// Seed 003: unplug with URBs in flight and queued; all complete with an error, later
/// submissions are refused, and the other port is untouched.
#[test]
fn seed003_unplug_completes_everything_and_refuses_later() {
    let mut sim = Sim::new(true, 4);
    let a: Vec<u64> = (0..6).map(|_| sim.submit(OUT, 100, 0, false)).collect();
    let other = sim.submit(EPS + OUT, 100, 0, false);
    sim.deliver_requests(2);
    sim.run(OUT, Outcome::Full);
    sim.device_gone(1);
    let late = sim.submit(OUT, 100, 0, false);
    assert!(sim.refused.contains(&late));
    sim.settle();
    for h in &a {
        let s = status(&sim, *h);
        assert!(s == Status::NoDev || s == Status::Ok, "{h}: {s:?}");
    }
    assert!(a.iter().skip(1).all(|h| status(&sim, *h) == Status::NoDev));
    assert_eq!(status(&sim, other), Status::Ok);
    sim.check_at_rest();
}

#[test]
fn disconnect_with_everything_in_flight() {
    let mut sim = Sim::new(true, 4);
    let a: Vec<u64> = (0..6).map(|_| sim.submit(IN, 100_000, 0, false)).collect();
    sim.deliver_requests(usize::MAX);
    sim.run(IN, Outcome::Full);
    let u = sim.unlink(a[0]);
    sim.disconnect();
    let late = sim.submit(IN, 1, 0, false);
    assert!(sim.refused.contains(&late));
    sim.settle();
    assert!(a.iter().all(|h| status(&sim, *h) == Status::Shutdown));
    assert!(sim.unlink_answered(u));
    sim.check_at_rest();
}

/// A retry submitted after the client saw one failure must not clear a second failure it
/// has not seen yet: the mark waits until the endpoint is idle.
#[test]
fn retry_does_not_clear_a_failure_it_has_not_seen() {
    let mut sim = Sim::new(true, 16);
    let a = sim.submit(OUT, 512, 0, false);
    let b = sim.submit(OUT, 512, 0, false);
    sim.deliver_requests(usize::MAX);
    // The client unlinks A; the backend cancels it (-EPROTO): not a device failure, so the
    // endpoint stays open and B runs, and fails.
    sim.unlink(a);
    sim.deliver_requests(usize::MAX);
    sim.reap(usize::MAX);
    sim.deliver_responses(usize::MAX);
    assert_eq!(status(&sim, a), Status::IoError);
    let retry = sim.submit(OUT, 512, 0, false);
    sim.run(OUT, Outcome::Fail(Status::Stall));
    sim.reap(usize::MAX);
    sim.deliver_requests(usize::MAX);
    sim.settle();
    assert_eq!(status(&sim, b), Status::Stall);
    // The retry was submitted before the client saw B fail: it must not have run.
    assert_eq!(status(&sim, retry), CONTAINED);
    assert!(written(&sim, OUT).is_empty());
    sim.check_at_rest();
}
