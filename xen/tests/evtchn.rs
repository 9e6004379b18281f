//! Simulated event channels: the mask/pending handshake through the shared channel page.

mod common;

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{readable, Sim};
use pvusb_xen::{DomId, EventChannel, EventChannels};

const SHORT: Duration = Duration::from_millis(50);
const LONG: Duration = Duration::from_secs(5);

/// A frontend port (dom1) and the backend (dom0) bound to it, with the platform that must
/// outlive them.
fn bound() -> (Sim, Box<dyn EventChannel>, Box<dyn EventChannel>) {
    let sim = Sim::new();
    let (dom0, dom1) = (sim.dom0(), sim.domain(1));
    let fe = dom1.alloc_unbound(DomId(0)).unwrap();
    let be = dom0.bind_interdomain(DomId(1), fe.port()).unwrap();
    (sim, fe, be)
}

#[test]
fn events_sent_while_masked_coalesce_into_one_delivery_on_unmask() {
    let (_sim, fe, be) = bound();
    fe.notify().unwrap();
    assert!(be.take_pending().unwrap());
    for _ in 0..5 {
        fe.notify().unwrap();
    }
    assert!(!readable(be.as_fd(), SHORT), "masked: no wake-up");
    be.unmask().unwrap();
    assert!(readable(be.as_fd(), LONG), "re-raised on unmask");
    assert!(be.take_pending().unwrap());
    be.unmask().unwrap();
    assert!(!readable(be.as_fd(), SHORT), "five sends, one delivery");
    assert!(!be.take_pending().unwrap());
}

#[test]
fn a_new_binder_is_woken_although_the_old_one_died_masked_with_events_pending() {
    let sim = Sim::new();
    let (dom0, dom1) = (sim.dom0(), sim.domain(1));
    let fe = dom1.alloc_unbound(DomId(0)).unwrap();
    let be = dom0.bind_interdomain(DomId(1), fe.port()).unwrap();
    fe.notify().unwrap();
    assert!(be.take_pending().unwrap());
    fe.notify().unwrap();
    drop(be); // masked, an event pending: its state word says so
    let be = dom0.bind_interdomain(DomId(1), fe.port()).unwrap();
    assert!(
        !readable(be.as_fd(), SHORT),
        "events before the bind are dropped"
    );
    fe.notify().unwrap();
    assert!(
        readable(be.as_fd(), LONG),
        "the restarted backend hears the frontend"
    );
    assert!(be.take_pending().unwrap());
}

/// A sender publishes a counter then notifies; the receiver looks at the counter only after
/// a delivered event, as a ring consumer does. If unmask ever failed to re-raise an event
/// that arrived while masked, the receiver would wait for the last value in vain.
#[test]
fn no_notification_is_lost_under_contention() {
    const N: u32 = 20_000;
    let (_sim, fe, be) = bound();
    let counter = Arc::new(AtomicU32::new(0));
    let sender = {
        let counter = counter.clone();
        std::thread::spawn(move || {
            for i in 1..=N {
                counter.store(i, Ordering::SeqCst);
                fe.notify().unwrap();
                if i % 64 == 0 {
                    std::thread::yield_now();
                }
            }
            fe
        })
    };
    let mut seen = 0;
    let mut deliveries = 0u32;
    while seen < N {
        assert!(
            readable(be.as_fd(), LONG),
            "lost wake-up: saw {seen} of {N} after {deliveries} deliveries"
        );
        if be.take_pending().unwrap() {
            deliveries += 1;
            seen = counter.load(Ordering::SeqCst);
            be.unmask().unwrap();
        }
    }
    let _fe = sender.join().unwrap();
    assert!(deliveries <= N, "at most one delivery per send");
}
