use pvusb_ring::shm::Shm;

use super::*;

const RING: RingId = RingId {
    urb_gref: 8,
    evtchn: 3,
};

fn page() -> Shm {
    Shm::heap(JOURNAL_BYTES)
}

/// What a process taking the rings over at `rsp_prod` finds in `shm` (no port announced).
fn assert_recovers(shm: Shm, rsp_prod: u32, ids: &[u16], req_cons: u32) {
    let (_, rec) = Journal::recover(shm, RING, rsp_prod, 32).expect("a journal of these rings");
    assert_eq!(
        rec,
        Recovered {
            ids: ids.to_vec(),
            req_cons,
            ports: [0; PORTS],
        }
    );
}

/// Requests 0..4 taken; 1 and 3 answered and published (out of ring order), 0 and 2 still
/// in flight: those are what a takeover answers, and it takes requests again from 4.
#[test]
fn out_of_order_answers_leave_exactly_the_requests_in_flight() {
    let shm = page();
    let mut j = Journal::start(shm.clone(), RING, 0, 32).unwrap();
    for (pos, id) in [(0, 10), (1, 11), (2, 12), (3, 13)] {
        j.taken(id, pos);
    }
    j.answered(11, 0);
    j.answered(13, 1);
    j.published();
    drop(j);
    assert_recovers(shm, 2, &[10, 12], 4);
}

/// Killed after a response was written but before it was published: the frontend never
/// saw it, so it is in flight; one that was published but not yet freed is not.
#[test]
fn a_response_counts_once_published() {
    let shm = page();
    let mut j = Journal::start(shm.clone(), RING, 100, 32).unwrap();
    j.taken(1, 100);
    j.taken(2, 101);
    j.answered(1, 100);
    // Published as rsp_prod 101, but the entry not freed yet.
    j.answered(2, 101);
    drop(j);
    assert_recovers(shm, 101, &[2], 102);
}

/// Killed between taking an entry and moving `req_cons` past it: the entry says where.
#[test]
fn a_taken_entry_moves_req_cons() {
    let shm = page();
    let mut j = Journal::start(shm.clone(), RING, 7, 32).unwrap();
    j.taken(4, 7);
    // As if the store of req_cons = 8 never happened.
    shm.atomic_u32(W_REQ_CONS * 4)
        .unwrap()
        .store(7, Ordering::Release);
    drop(j);
    assert_recovers(shm, 7, &[4], 8);
}

/// Positions wrap at 2^32 and are stored modulo 2^14.
#[test]
fn positions_wrap() {
    let shm = page();
    let start = u32::MAX - 1;
    let mut j = Journal::start(shm.clone(), RING, start, 32).unwrap();
    for k in 0..4u32 {
        j.taken(u16::try_from(k).unwrap(), start.wrapping_add(k));
    }
    j.answered(0, start);
    j.published();
    drop(j);
    assert_recovers(
        shm,
        start.wrapping_add(1),
        &[1, 2, 3],
        start.wrapping_add(4),
    );
}

/// The recovered journal goes on: the ids are taken, and answering them frees them.
#[test]
fn recovery_continues_the_journal() {
    let shm = page();
    let mut j = Journal::start(shm.clone(), RING, 0, 32).unwrap();
    j.taken(5, 0);
    j.taken(6, 1);
    j.answered(6, 0);
    j.published();
    drop(j);
    let (mut j, rec) = Journal::recover(shm.clone(), RING, 1, 32).unwrap();
    assert_eq!(rec.ids, [5]);
    j.answered(5, 1);
    j.taken(9, 2);
    j.published();
    drop(j);
    assert_recovers(shm, 2, &[9], 3);
}

/// Another connection's journal, a page never written, or one that lost track is not used.
#[test]
fn a_journal_of_other_rings_or_broken_is_refused() {
    let shm = page();
    assert!(Journal::recover(shm.clone(), RING, 0, 32).is_none());
    let mut j = Journal::start(shm.clone(), RING, 0, 32).unwrap();
    j.taken(1, 0);
    let other = RingId {
        urb_gref: 9,
        ..RING
    };
    assert!(Journal::recover(shm.clone(), other, 0, 32).is_none());
    // An answer for an id it never took (a guest reusing ids): it no longer vouches.
    j.answered(2, 0);
    assert!(Journal::recover(shm, RING, 0, 32).is_none());
}

/// A journal whose entries do not account for every request between rsp_prod and
/// req_cons (a rsp_prod the journal never reached) is refused.
#[test]
fn an_unaccounted_window_is_refused() {
    let shm = page();
    let mut j = Journal::start(shm.clone(), RING, 0, 32).unwrap();
    j.taken(1, 0);
    j.taken(2, 1);
    drop(j);
    assert!(Journal::recover(shm.clone(), RING, 1, 32).is_none());
    assert!(Journal::recover(shm, RING, 0, 32).is_some());
}

/// The devices the guest was told of outlive the process; fresh rings start with none.
#[test]
fn announced_ports_are_kept() {
    let shm = page();
    let mut j = Journal::start(shm.clone(), RING, 0, 32).unwrap();
    j.announced(1, Some(0x1_0005));
    j.announced(31, Some(0x2_0003));
    j.announced(2, Some(0x1_0006));
    j.announced(2, None);
    j.announced(0, Some(9));
    j.announced(32, Some(9));
    drop(j);
    let (_, rec) = Journal::recover(shm.clone(), RING, 0, 32).unwrap();
    let mut want = [0; PORTS];
    want[0] = 0x1_0005;
    want[30] = 0x2_0003;
    assert_eq!(rec.ports, want);
    Journal::start(shm.clone(), RING, 0, 32).unwrap();
    let (_, rec) = Journal::recover(shm, RING, 0, 32).unwrap();
    assert_eq!(rec.ports, [0; PORTS]);
}
