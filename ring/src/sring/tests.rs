//! Plain (non-loom) ring tests: index arithmetic across u32 wrap-around, notification
//! hold-off in sequential runs, and overflow detection against an independent model.

use std::collections::VecDeque;

use proptest::prelude::*;

use super::*;
use crate::shm::Shm;
use crate::sync::Ordering;

/// 64-byte header + 8 entries of 8 bytes: a ring of 8.
const SMALL: usize = 64 + 8 * 8;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    ProptestConfig::with_cases(cases)
}

/// A front and back ring of `u64` entries whose indices all start at `start`.
fn pair(start: u32) -> (FrontRing<u64, u64>, BackRing<u64, u64>) {
    let shm = Shm::heap(SMALL);
    let sr = SharedRing::new(shm.clone(), 8).unwrap();
    sr.init().unwrap();
    for w in [sr.req_prod(), sr.rsp_prod()] {
        w.store(start, Ordering::Relaxed);
    }
    for w in [sr.req_event(), sr.rsp_event()] {
        w.store(start.wrapping_add(1), Ordering::Relaxed);
    }
    (
        FrontRing::attach(shm.clone(), start).unwrap(),
        BackRing::attach(shm, start).unwrap(),
    )
}

#[derive(Clone, Debug)]
enum Op {
    FrontPush(u8),
    FrontPublish,
    BackConsume(u8),
    BackRespond(u8),
    BackPublish,
    FrontConsume(u8),
    BackFinalCheck,
    FrontFinalCheck,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1..10u8).prop_map(Op::FrontPush),
        Just(Op::FrontPublish),
        (1..10u8).prop_map(Op::BackConsume),
        (1..10u8).prop_map(Op::BackRespond),
        Just(Op::BackPublish),
        (1..10u8).prop_map(Op::FrontConsume),
        Just(Op::BackFinalCheck),
        Just(Op::FrontFinalCheck),
    ]
}

fn start_index() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0u32), u32::MAX - 20..=u32::MAX, any::<u32>()]
}

/// Runs `ops` against a sequential model: FIFO delivery both ways, exact free-slot and
/// full accounting, and "a side that went to sleep after its final check is notified
/// by the next publish".
fn run(start: u32, ops: &[Op]) {
    let (mut front, mut back) = pair(start);
    let size = front.size();
    let mut next = 0u64;
    let mut staged = 0u32; // pushed by front, not yet published
    let mut published: VecDeque<u64> = VecDeque::new(); // visible to back, unconsumed
    let mut unanswered: VecDeque<u64> = VecDeque::new(); // consumed by back
    let mut rsp_staged = 0u32;
    let mut responses: VecDeque<u64> = VecDeque::new(); // expected at the front, in order
    let mut rsp_published = 0usize; // how many of `responses` are published
    let mut outstanding = 0u32; // requests pushed minus responses consumed
    let mut back_asleep = false;
    let mut front_asleep = false;

    for op in ops {
        match *op {
            Op::FrontPush(n) => {
                for _ in 0..n {
                    assert_eq!(front.free_requests(), size - outstanding);
                    if outstanding == size {
                        assert_eq!(front.push_request(&next), Err(ProduceError::Full { size }));
                        break;
                    }
                    front.push_request(&next).unwrap();
                    next += 1;
                    staged += 1;
                    outstanding += 1;
                }
            }
            Op::FrontPublish => {
                let notify = front.push_requests_and_check_notify();
                if staged > 0 && back_asleep {
                    assert!(
                        notify,
                        "lost wake-up: backend slept, front published, no event"
                    );
                    back_asleep = false;
                }
                for k in 0..staged {
                    published.push_back(next - u64::from(staged - k));
                }
                staged = 0;
            }
            Op::BackConsume(n) => {
                for _ in 0..n {
                    let got = back.pop_request().unwrap();
                    assert_eq!(got, published.pop_front());
                    match got {
                        Some(v) => unanswered.push_back(v),
                        None => break,
                    }
                }
            }
            Op::BackRespond(n) => {
                for _ in 0..n {
                    match unanswered.pop_front() {
                        Some(v) => {
                            back.push_response(&(v ^ 0xa5a5)).unwrap();
                            responses.push_back(v ^ 0xa5a5);
                            rsp_staged += 1;
                        }
                        None => {
                            assert_eq!(
                                back.push_response(&0),
                                Err(ProduceError::NoRequestToAnswer)
                            );
                            break;
                        }
                    }
                }
            }
            Op::BackPublish => {
                let notify = back.push_responses_and_check_notify();
                if rsp_staged > 0 && front_asleep {
                    assert!(
                        notify,
                        "lost wake-up: frontend slept, back published, no event"
                    );
                    front_asleep = false;
                }
                rsp_published += rsp_staged as usize;
                rsp_staged = 0;
            }
            Op::FrontConsume(n) => {
                for _ in 0..n {
                    let got = front.pop_response().unwrap();
                    if rsp_published == 0 {
                        assert_eq!(got, None);
                        break;
                    }
                    assert_eq!(got, responses.pop_front());
                    rsp_published -= 1;
                    outstanding -= 1;
                }
            }
            Op::BackFinalCheck => {
                let work = back.final_check_for_requests().unwrap();
                assert_eq!(work, !published.is_empty());
                back_asleep = !work;
            }
            Op::FrontFinalCheck => {
                let work = front.final_check_for_responses().unwrap();
                assert_eq!(work, rsp_published > 0);
                front_asleep = !work;
            }
        }
        assert_eq!(front.req_prod_pvt().wrapping_sub(start), next as u32);
        assert_eq!(back.unanswered() as usize, unanswered.len());
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn ring_fifo_and_wakeups_across_wrap(start in start_index(), ops in prop::collection::vec(op(), 1..120)) {
        run(start, &ops);
    }

    /// A hostile frontend writes any `req_prod`: refused exactly when it is not in
    /// `[req_cons, rsp_prod_pvt + size]`.
    #[test]
    fn request_prod_overflow_detected(start in start_index(), done in 0u32..8, answered in 0u32..8, bogus in any::<u32>(), near in -12i64..12) {
        let answered = answered.min(done);
        let (mut front, mut back) = pair(start);
        for i in 0..done { front.push_request(&u64::from(i)).unwrap(); }
        front.push_requests();
        for _ in 0..done { back.pop_request().unwrap().unwrap(); }
        for _ in 0..answered { back.push_response(&0).unwrap(); }
        let size = back.size();
        for req_prod in [bogus, back.req_cons().wrapping_add(near as u32)] {
            back.sring().req_prod().store(req_prod, Ordering::Relaxed);
            let room = size - back.req_cons().wrapping_sub(back.rsp_prod_pvt());
            let legal = req_prod.wrapping_sub(back.req_cons()) <= room;
            let r = back.unconsumed_requests();
            prop_assert_eq!(r.is_ok(), legal, "req_prod {} req_cons {} rsp_prod_pvt {}", req_prod, back.req_cons(), back.rsp_prod_pvt());
            if legal {
                prop_assert_eq!(r.unwrap(), req_prod.wrapping_sub(back.req_cons()));
            } else {
                prop_assert!(back.pop_request().is_err());
                prop_assert!(back.final_check_for_requests().is_err());
            }
        }
    }

    /// A hostile backend writes any `rsp_prod`: refused exactly when it claims more
    /// responses than requests outstanding, or moves behind `rsp_cons`.
    #[test]
    fn response_prod_overflow_detected(start in start_index(), pushed in 0u32..=8, consumed in 0u32..=8, bogus in any::<u32>(), near in -12i64..12) {
        let consumed = consumed.min(pushed);
        let (mut front, mut back) = pair(start);
        for i in 0..pushed { front.push_request(&u64::from(i)).unwrap(); }
        front.push_requests();
        for _ in 0..pushed { back.pop_request().unwrap().unwrap(); back.push_response(&1).unwrap(); }
        back.push_responses();
        for _ in 0..consumed { front.pop_response().unwrap().unwrap(); }
        for rsp_prod in [bogus, front.rsp_cons().wrapping_add(near as u32)] {
            front.sring().rsp_prod().store(rsp_prod, Ordering::Relaxed);
            let legal = rsp_prod.wrapping_sub(front.rsp_cons()) <= pushed - consumed;
            let r = front.pop_response();
            prop_assert_eq!(r.is_ok(), legal);
            if !legal {
                let overflow = matches!(r, Err(ConsumeError::ResponseProdOverflow { .. }));
                prop_assert!(overflow);
                prop_assert!(front.final_check_for_responses().is_err());
            }
        }
    }
}

#[test]
fn full_ring_then_drain_at_wrap() {
    let (mut front, mut back) = pair(u32::MAX - 3);
    for i in 0..8 {
        front.push_request(&i).unwrap();
    }
    assert!(front.is_full());
    assert_eq!(front.push_request(&9), Err(ProduceError::Full { size: 8 }));
    assert!(
        front.push_requests_and_check_notify(),
        "first publish reaches req_event"
    );
    assert_eq!(back.unconsumed_requests(), Ok(8));
    for i in 0..8 {
        assert_eq!(back.pop_request(), Ok(Some(i)));
        back.push_response(&(i + 100)).unwrap();
    }
    assert_eq!(back.pop_request(), Ok(None));
    assert!(back.push_responses_and_check_notify());
    for i in 0..8 {
        assert_eq!(front.pop_response(), Ok(Some(i + 100)));
    }
    assert_eq!(front.free_requests(), 8);
    assert_eq!(front.req_prod_pvt(), 4);
}

#[test]
fn second_publish_without_rearm_is_held_off() {
    let (mut front, mut back) = pair(0);
    front.push_request(&1).unwrap();
    assert!(front.push_requests_and_check_notify());
    front.push_request(&2).unwrap();
    assert!(
        !front.push_requests_and_check_notify(),
        "backend did not re-arm req_event"
    );
    assert_eq!(back.pop_request(), Ok(Some(1)));
    assert_eq!(back.pop_request(), Ok(Some(2)));
    assert!(!back.final_check_for_requests().unwrap());
    front.push_request(&3).unwrap();
    assert!(front.push_requests_and_check_notify());
}

#[test]
fn usbif_rings_have_stock_sizes() {
    let (front, back) = crate::test_utils::urb_ring_pair().unwrap();
    assert_eq!((front.size(), back.size()), (16, 16));
    let conn = ConnFrontRing::init(Shm::heap(4096)).unwrap();
    assert_eq!(conn.size(), 512);
}

#[test]
fn multi_page_rings_grow_by_order() {
    for order in 0..=header::MAX_RING_ORDER {
        let page = Shm::heap(crate::wire::PAGE_SIZE << order);
        let mut front = UrbFrontRing::init(page.clone()).unwrap();
        let mut back = UrbBackRing::new(page).unwrap();
        assert_eq!(front.size(), 16 << order);
        let raw = crate::wire::RawUrbRequest::default();
        for _ in 0..front.size() {
            front.push_request(&raw).unwrap();
        }
        front.push_requests();
        assert_eq!(back.unconsumed_requests(), Ok(16 << order));
        while back.pop_request().unwrap().is_some() {}
        assert_eq!(back.req_cons(), 16 << order);
    }
}
