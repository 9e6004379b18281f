//! Grant copy tests (compiled only under `#[cfg(test)]`, see engine/copy.rs): what is copied
//! when, what reaches the guest, and that bounce pages are given back.

use std::sync::Arc;

use pvusb_ring::wire::PAGE_SIZE;
use pvusb_xen::DomId;

use super::{Copied, ARENA_PAGES};
use crate::engine::memory::GuestMemory;
use crate::engine::payload::GuestBuf;
use crate::engine::testing::{FakeCopier, FakeMemory};

fn rig(arena: usize) -> (FakeMemory, FakeCopier, Copied<FakeMemory>) {
    let mem = FakeMemory::new(32);
    let copier = FakeCopier::new(mem.clone());
    let copied = Copied::new(mem.clone(), Arc::new(copier.clone()), DomId(1), arena).unwrap();
    (mem, copier, copied)
}

fn fill(mem: &FakeMemory, gref: u32, byte: u8) {
    mem.arena()
        .fill(gref as usize * PAGE_SIZE, PAGE_SIZE, byte)
        .unwrap();
}

fn page(mem: &FakeMemory, gref: u32) -> Vec<u8> {
    let mut b = vec![0u8; PAGE_SIZE];
    mem.arena().read(gref as usize * PAGE_SIZE, &mut b).unwrap();
    b
}

#[test]
fn out_pages_are_copied_in_and_read_only() {
    let (mem, copier, c) = rig(ARENA_PAGES);
    fill(&mem, 4, 0xa4);
    fill(&mem, 5, 0xa5);
    let view = c.map(&[4, 5], false).unwrap().into_data().unwrap();
    let mut b = vec![0u8; 2 * PAGE_SIZE];
    view.read(0, &mut b).unwrap();
    assert!(b[..PAGE_SIZE].iter().all(|&x| x == 0xa4));
    assert!(b[PAGE_SIZE..].iter().all(|&x| x == 0xa5));
    assert!(view.write(0, &[1]).is_err(), "an OUT copy is read-only");
    // A later guest write does not reach a copy already made.
    fill(&mem, 4, 0);
    view.read(0, &mut b[..1]).unwrap();
    assert_eq!(b[0], 0xa4);
    assert_eq!(copier.calls(), 1);
    assert_eq!(c.pages_in_use(), 2);
    drop(view);
    assert_eq!(c.pages_in_use(), 0);
    assert_eq!(mem.live_mappings(), 0, "nothing was mapped");
}

#[test]
fn in_bytes_reach_the_guest_only_when_written_and_flushed() {
    let (mem, copier, c) = rig(ARENA_PAGES);
    fill(&mem, 8, 0x11);
    fill(&mem, 9, 0x11);
    let m = c.map(&[8, 9], true).unwrap();
    assert_eq!(copier.calls(), 0, "IN pages are not fetched");
    let g = GuestBuf::new(m, [(0u16, 4096u16), (0, 4096)].into_iter(), 8192).unwrap();
    assert!(g.scatter(4000, &[0x77; 200]));
    assert_eq!(page(&mem, 8)[4000], 0x11, "nothing before the flush");
    g.written(4000, 150);
    drop(g);
    assert_eq!(c.pages_in_use(), 2, "held until its bytes left");
    assert_eq!(c.flush(), 0);
    assert_eq!(c.pages_in_use(), 0);
    let (p8, p9) = (page(&mem, 8), page(&mem, 9));
    assert!(p8[..4000].iter().all(|&x| x == 0x11));
    assert!(p8[4000..].iter().all(|&x| x == 0x77));
    assert!(p9[..54].iter().all(|&x| x == 0x77));
    assert!(
        p9[54..].iter().all(|&x| x == 0x11),
        "past the written bytes: untouched"
    );
    assert_eq!(c.flush(), 0, "nothing left to flush");
}

#[test]
fn a_reused_bounce_page_leaks_nothing_of_its_last_request() {
    let (mem, _copier, c) = rig(1);
    fill(&mem, 3, 0x5e);
    // OUT request: its bytes land in the one bounce page.
    drop(c.map(&[3], false).unwrap());
    fill(&mem, 6, 0);
    let m = c.map(&[6], true).unwrap();
    let g = GuestBuf::new(m, [(0u16, 4096u16)].into_iter(), 4096).unwrap();
    assert!(g.scatter(0, &[1, 2, 3]));
    g.written(0, 3);
    drop(g);
    c.flush();
    let p = page(&mem, 6);
    assert_eq!(&p[..3], &[1, 2, 3]);
    assert!(
        p[3..].iter().all(|&x| x == 0),
        "the earlier request's 0x5e stayed behind"
    );
}

#[test]
fn a_full_arena_falls_back_to_mapping() {
    let (mem, copier, c) = rig(2);
    let a = c.map(&[4, 5], false).unwrap();
    let b = c.map(&[6], false).unwrap();
    assert_eq!(mem.live_mappings(), 1, "mapped: no bounce page left");
    assert_eq!(copier.calls(), 1);
    drop((a, b));
    assert_eq!(mem.live_mappings(), 0);
    assert_eq!(c.pages_in_use(), 0);
}

#[test]
fn a_batch_is_fetched_in_one_call() {
    let (mem, copier, c) = rig(ARENA_PAGES);
    for g in 2..10 {
        fill(&mem, g, g as u8);
    }
    let maps: Vec<(Vec<u32>, bool)> = (0..4)
        .map(|i| (vec![2 + 2 * i, 3 + 2 * i], i % 2 == 0))
        .collect();
    c.prefetch(&maps);
    assert_eq!(copier.calls(), 1);
    for (refs, w) in &maps {
        let v = c.map(refs, *w).unwrap().into_data().unwrap();
        if !*w {
            let mut b = [0u8; 1];
            v.read(PAGE_SIZE, &mut b).unwrap();
            assert_eq!(b[0], refs[1] as u8);
        }
    }
    assert_eq!(copier.calls(), 1, "served from the batch");
    c.end_prefetch();
    assert_eq!(c.pages_in_use(), 0);
}

#[test]
fn bad_grants_fail_like_a_map_and_give_the_pages_back() {
    let (_mem, copier, c) = rig(ARENA_PAGES);
    assert!(c.map(&[40], false).is_err(), "outside the guest's grants");
    copier.revoke(7);
    assert!(c.map(&[6, 7], false).is_err());
    assert!(c.map(&[], false).is_err());
    c.prefetch(&[(vec![7], false), (vec![6], false)]);
    assert!(
        c.map(&[6], false).is_ok(),
        "the good one of a batch is kept"
    );
    c.end_prefetch();
    assert_eq!(c.pages_in_use(), 0);
}

#[test]
fn in_bytes_to_a_read_only_or_revoked_grant_are_counted_lost() {
    let (mem, copier, c) = rig(ARENA_PAGES);
    fill(&mem, 10, 0x22);
    let m = c.map(&[10, 11], true).unwrap();
    copier.set_read_only(10);
    copier.revoke(11);
    let g = GuestBuf::new(m, [(0u16, 4096u16), (0, 4096)].into_iter(), 8192).unwrap();
    assert!(g.scatter(0, &[0x99; 8192]));
    g.written(0, 8192);
    assert!(!g.lost());
    assert_eq!(c.flush(), 2);
    assert!(g.lost(), "its answer must not be a success");
    drop(g);
    assert!(page(&mem, 10).iter().all(|&x| x == 0x22));
    assert_eq!(c.pages_in_use(), 0);
}

#[test]
fn frame_descriptors_are_fetched_and_written_back() {
    let (mem, _copier, c) = rig(ARENA_PAGES);
    mem.arena().write(12 * PAGE_SIZE, &[1, 2, 3, 4]).unwrap();
    let m = c.map_update(&[12]).unwrap();
    let g = GuestBuf::new(m, [(0u16, 32u16)].into_iter(), 32).unwrap();
    let mut b = [0u8; 4];
    assert!(g.gather(0, &mut b));
    assert_eq!(b, [1, 2, 3, 4]);
    assert!(g.scatter(8, &[9; 8]));
    g.written(0, 32);
    drop(g);
    c.flush();
    let p = page(&mem, 12);
    assert_eq!(&p[..4], &[1, 2, 3, 4]);
    assert_eq!(&p[8..16], &[9; 8]);
}
