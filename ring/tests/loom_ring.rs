//! Model checks of the ring.h protocol under loom (`RUSTFLAGS="--cfg loom"`, see ci/test.sh).
//!
//! A front and a back ring on one modelled page, each side sleeping on a modelled event
//! channel only after its final check said "no work" — exactly how the daemons use them.
//! Loom explores the interleavings and reports: a lost wake-up as a deadlock, a slot read
//! not ordered after the write that filled it as a causality violation (slot bytes are loom
//! cells), and any assertion below.
#![cfg(loom)]

use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;
use pvusb_ring::shm::Shm;
use pvusb_ring::sring::{BackRing, ConsumeError, FrontRing};

/// An event channel: `notify` sets the pending bit and wakes the waiter; `wait` blocks
/// until the bit is set, then clears it (evtchn semantics: events coalesce).
#[derive(Default)]
struct EvtChn {
    pending: Mutex<bool>,
    cv: Condvar,
}

impl EvtChn {
    fn notify(&self) {
        *self.pending.lock().unwrap() = true;
        self.cv.notify_one();
    }
    fn wait(&self) {
        let mut p = self.pending.lock().unwrap();
        while !*p {
            p = self.cv.wait(p).unwrap();
        }
        *p = false;
    }
}

/// A ring of `u32` entries with `slots` entries (a header plus `slots` words).
fn rings(slots: usize) -> (FrontRing<u32, u32>, BackRing<u32, u32>) {
    let page = Shm::heap(64 + 4 * slots);
    let front = FrontRing::init(page.clone()).unwrap();
    let back = BackRing::new(page).unwrap();
    assert_eq!(front.size() as usize, slots);
    (front, back)
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(3);
    }
    b.check(f);
}

/// Requests only: the frontend publishes two requests with notification hold-off; the
/// backend consumes and sleeps after each empty final check. It must see both, in order.
#[test]
fn loom_requests_no_lost_wakeup() {
    model(|| {
        let (mut front, mut back) = rings(2);
        let to_back = Arc::new(EvtChn::default());
        let evt = to_back.clone();
        let producer = thread::spawn(move || {
            for v in [10u32, 11] {
                front.push_request(&v).unwrap();
                if front.push_requests_and_check_notify() {
                    evt.notify();
                }
            }
        });
        let mut seen = Vec::new();
        while seen.len() < 2 {
            while let Some(v) = back.pop_request().unwrap() {
                seen.push(v);
            }
            if seen.len() < 2 && !back.final_check_for_requests().unwrap() {
                to_back.wait();
            }
        }
        assert_eq!(seen, [10, 11]);
        producer.join().unwrap();
    });
}

/// Both directions on a one-slot ring, so every slot is reused: request, response, request.
/// The frontend sleeps for responses, the backend for requests; both use hold-off.
#[test]
fn loom_round_trip_one_slot_no_lost_wakeup() {
    model(|| {
        let (mut front, mut back) = rings(1);
        let to_back = Arc::new(EvtChn::default());
        let to_front = Arc::new(EvtChn::default());
        let (tb, tf) = (to_back.clone(), to_front.clone());
        let backend = thread::spawn(move || {
            let mut served = 0;
            while served < 2 {
                while let Some(v) = back.pop_request().unwrap() {
                    back.push_response(&(v + 100)).unwrap();
                    served += 1;
                    if back.push_responses_and_check_notify() {
                        tf.notify();
                    }
                }
                if served < 2 && !back.final_check_for_requests().unwrap() {
                    tb.wait();
                }
            }
        });
        let mut got = Vec::new();
        let mut sent = 0u32;
        while got.len() < 2 {
            if sent < 2 && !front.is_full() {
                front.push_request(&sent).unwrap();
                sent += 1;
                if front.push_requests_and_check_notify() {
                    to_back.notify();
                }
                continue;
            }
            while let Some(r) = front.pop_response().unwrap() {
                got.push(r);
            }
            if got.len() < 2
                && (sent == 2 || front.is_full())
                && !front.final_check_for_responses().unwrap()
            {
                to_front.wait();
            }
        }
        assert_eq!(got, [100, 101]);
        backend.join().unwrap();
    });
}

/// A hostile frontend publishes one request, then a `req_prod` a full ring ahead. The
/// backend gets the one real request at most, then a typed overflow error — never a read of
/// slots that were not published.
#[test]
fn loom_request_overflow_detected() {
    model(|| {
        let (mut front, mut back) = rings(2);
        let sring = front.sring().clone();
        let producer = thread::spawn(move || {
            front.push_request(&7).unwrap();
            front.push_requests();
            sring
                .req_prod()
                .store(4, loom::sync::atomic::Ordering::Release);
        });
        let mut got = Vec::new();
        let mut overflow = false;
        for _ in 0..4 {
            match back.pop_request() {
                Ok(Some(v)) => got.push(v),
                Ok(None) => thread::yield_now(),
                Err(ConsumeError::RequestProdOverflow { req_prod, .. }) => {
                    assert_eq!(req_prod, 4);
                    overflow = true;
                    break;
                }
                Err(e) => panic!("unexpected {e}"),
            }
        }
        producer.join().unwrap();
        assert!(
            got.len() <= 1 && got.iter().all(|&v| v == 7),
            "read unpublished slots: {got:?}"
        );
        if !overflow {
            assert!(
                back.pop_request().is_err(),
                "overflow must be reported once visible"
            );
        }
    });
}
