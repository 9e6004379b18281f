//! Grant copy on the simulated platform: bytes move between granted pages and the
//! backend's local pages only as the grant allows, each segment on its own, and registered
//! local memory is released when dropped or when its process dies (`kill -9`).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;

use common::{idle, say, wait_for_sigkill, wait_until, Sim};
use pvusb_xen::sim::{CopyVia, Counters, SimPlatform};

/// Both ways a simulated copy runs: on the caller's CPU (the default) and in the broker.
const VIAS: [CopyVia; 2] = [CopyVia::Caller, CopyVia::Broker];
use pvusb_xen::{
    Access, CopyDir, CopyError, CopySeg, DomId, GrantAllocator, GrantCopier, GrantRef,
    GrantedPages, LocalPages, SegError, PAGE_SIZE,
};

fn seg(gref: GrantRef, offset: u16, len: u16, local: usize, dir: CopyDir) -> CopySeg {
    CopySeg {
        gref,
        offset,
        len,
        local,
        dir,
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn read_local(local: &Arc<LocalPages>, off: usize, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    local.shm().read(off, &mut buf).unwrap();
    buf
}

fn read_pages(pages: &GrantedPages, off: usize, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    pages.read_at(off, &mut buf).unwrap();
    buf
}

/// dom1 granting `n` pages to dom0 (the backend), filled with a pattern.
fn granted(sim: &Sim, n: usize, access: Access) -> (SimPlatform, GrantedPages) {
    let dom1 = sim.domain(1);
    let pages = dom1.alloc(DomId::DOM0, n, access).unwrap();
    pages.write_at(0, &pattern(7, n * PAGE_SIZE)).unwrap();
    (dom1, pages)
}

/// dom0 and dom1 exist, dom1 grants one page.
fn counters(connections: u32, locals: u32) -> Counters {
    Counters {
        grants: 1,
        domains: 2,
        locals,
        ..idle(connections)
    }
}

#[test]
fn copies_are_byte_exact_both_ways_at_any_offset() {
    for via in VIAS {
        say(&format!("copying {via:?}"));
        copies_are_byte_exact_both_ways_at_any_offset_via(via);
    }
}

fn copies_are_byte_exact_both_ways_at_any_offset_via(via: CopyVia) {
    let sim = Sim::new();
    let (_dom1, pages) = granted(&sim, 2, Access::Writable);
    let g = pages.grefs().to_vec();
    let dom0 = sim.dom0_via(via);
    let local = Arc::new(dom0.alloc_local(3).unwrap());
    assert_eq!(local.len(), 3 * PAGE_SIZE);
    assert!(read_local(&local, 0, local.len()).iter().all(|&b| b == 0));
    let from = [
        seg(g[0], 100, 3000, 5000, CopyDir::FromGrant),
        seg(g[1], 0, 4096, 2 * PAGE_SIZE, CopyDir::FromGrant),
        seg(g[1], 4095, 1, 17, CopyDir::FromGrant),
        seg(g[0], 0, 0, 0, CopyDir::FromGrant),
    ];
    assert_eq!(dom0.copy(DomId(1), &local, &from).unwrap(), vec![Ok(()); 4]);
    let src = pattern(7, 2 * PAGE_SIZE);
    assert_eq!(read_local(&local, 5000, 3000), src[100..3100]);
    assert_eq!(
        read_local(&local, 2 * PAGE_SIZE, PAGE_SIZE),
        src[PAGE_SIZE..]
    );
    assert_eq!(read_local(&local, 17, 1), [src[2 * PAGE_SIZE - 1]]);
    assert_eq!(
        read_local(&local, 4999, 1),
        [0],
        "nothing before the segment"
    );
    assert_eq!(
        read_local(&local, 8000, 1),
        [0],
        "nothing after the segment"
    );

    let data = pattern(99, 4000);
    local.shm().write(1234, &data).unwrap();
    let to = [
        seg(g[1], 7, 4000, 1234, CopyDir::ToGrant),
        seg(g[0], 0, 10, 1234, CopyDir::ToGrant),
    ];
    assert_eq!(dom0.copy(DomId(1), &local, &to).unwrap(), vec![Ok(()); 2]);
    assert_eq!(read_pages(&pages, PAGE_SIZE + 7, 4000), data);
    assert_eq!(
        read_pages(&pages, PAGE_SIZE, 7),
        src[PAGE_SIZE..PAGE_SIZE + 7]
    );
    assert_eq!(read_pages(&pages, 0, 10), data[..10]);
    assert_eq!(read_pages(&pages, 10, 100), src[10..110]);
}

#[test]
fn one_call_copies_segments_of_several_grant_allocations_in_any_order() {
    for via in VIAS {
        say(&format!("copying {via:?}"));
        one_call_copies_segments_of_several_grant_allocations_in_any_order_via(via);
    }
}

/// Two allocations of dom1 are two files; segments alternate between them (and a
/// read-only one) within one call, both ways.
fn one_call_copies_segments_of_several_grant_allocations_in_any_order_via(via: CopyVia) {
    let sim = Sim::new();
    let (dom1, a) = granted(&sim, 2, Access::Writable);
    let b = dom1.alloc(DomId::DOM0, 1, Access::Writable).unwrap();
    b.write_at(0, &pattern(50, PAGE_SIZE)).unwrap();
    let r = dom1.alloc(DomId::DOM0, 1, Access::ReadOnly).unwrap();
    r.write_at(0, &pattern(90, PAGE_SIZE)).unwrap();
    let (ga, gb, gr) = (a.grefs().to_vec(), b.grefs()[0], r.grefs()[0]);
    let dom0 = sim.dom0_via(via);
    let local = Arc::new(dom0.alloc_local(2).unwrap());
    let from = [
        seg(ga[0], 0, 100, 0, CopyDir::FromGrant),
        seg(gb, 0, 100, 100, CopyDir::FromGrant),
        seg(ga[1], 0, 100, 200, CopyDir::FromGrant),
        seg(gr, 0, 100, 300, CopyDir::FromGrant),
        seg(gb, 200, 100, 400, CopyDir::FromGrant),
        seg(gr, 1, 1, 500, CopyDir::ToGrant),
        seg(ga[0], 300, 100, 600, CopyDir::FromGrant),
    ];
    let out = dom0.copy(DomId(1), &local, &from).unwrap();
    assert_eq!(
        out,
        vec![
            Ok(()),
            Ok(()),
            Ok(()),
            Ok(()),
            Ok(()),
            Err(SegError::ReadOnly),
            Ok(())
        ]
    );
    let (pa, pb, pr) = (
        pattern(7, 2 * PAGE_SIZE),
        pattern(50, PAGE_SIZE),
        pattern(90, PAGE_SIZE),
    );
    assert_eq!(read_local(&local, 0, 100), pa[..100]);
    assert_eq!(read_local(&local, 100, 100), pb[..100]);
    assert_eq!(read_local(&local, 200, 100), pa[PAGE_SIZE..PAGE_SIZE + 100]);
    assert_eq!(read_local(&local, 300, 100), pr[..100]);
    assert_eq!(read_local(&local, 400, 100), pb[200..300]);
    assert_eq!(read_local(&local, 600, 100), pa[300..400]);

    let data = pattern(120, 300);
    local.shm().write(PAGE_SIZE, &data).unwrap();
    let to = [
        seg(gb, 1000, 100, PAGE_SIZE, CopyDir::ToGrant),
        seg(ga[1], 1000, 100, PAGE_SIZE + 100, CopyDir::ToGrant),
        seg(gb, 2000, 100, PAGE_SIZE + 200, CopyDir::ToGrant),
    ];
    assert_eq!(dom0.copy(DomId(1), &local, &to).unwrap(), vec![Ok(()); 3]);
    assert_eq!(read_pages(&b, 1000, 100), data[..100]);
    assert_eq!(read_pages(&a, PAGE_SIZE + 1000, 100), data[100..200]);
    assert_eq!(read_pages(&b, 2000, 100), data[200..]);
    assert_eq!(
        read_pages(&r, 1, 1),
        pr[1..2],
        "a read-only grant is never written"
    );
}

#[test]
fn a_read_only_grant_is_copied_from_but_never_into() {
    for via in VIAS {
        say(&format!("copying {via:?}"));
        a_read_only_grant_is_copied_from_but_never_into_via(via);
    }
}

fn a_read_only_grant_is_copied_from_but_never_into_via(via: CopyVia) {
    let sim = Sim::new();
    let (_dom1, pages) = granted(&sim, 1, Access::ReadOnly);
    let g = pages.grefs()[0];
    let dom0 = sim.dom0_via(via);
    let local = Arc::new(dom0.alloc_local(1).unwrap());
    local.shm().write(0, &[0xee; PAGE_SIZE]).unwrap();
    let out = dom0
        .copy(
            DomId(1),
            &local,
            &[
                seg(g, 0, 4096, 0, CopyDir::ToGrant),
                seg(g, 10, 20, 100, CopyDir::FromGrant),
            ],
        )
        .unwrap();
    assert_eq!(out, vec![Err(SegError::ReadOnly), Ok(())]);
    assert_eq!(read_pages(&pages, 0, PAGE_SIZE), pattern(7, PAGE_SIZE));
    assert_eq!(read_local(&local, 100, 20), pattern(7, PAGE_SIZE)[10..30]);
}

#[test]
fn only_live_grants_to_us_from_that_domain_are_copied() {
    for via in VIAS {
        say(&format!("copying {via:?}"));
        only_live_grants_to_us_from_that_domain_are_copied_via(via);
    }
}

fn only_live_grants_to_us_from_that_domain_are_copied_via(via: CopyVia) {
    let sim = Sim::new();
    let (dom1, pages) = granted(&sim, 1, Access::Writable);
    let dom2 = sim.domain(2);
    let to_dom2 = dom1.alloc(DomId(2), 1, Access::Writable).unwrap();
    let ended = dom1.alloc(DomId::DOM0, 1, Access::Writable).unwrap();
    let ended_ref = ended.grefs()[0];
    ended.end_access().unwrap();
    let dom0 = sim.dom0_via(via);
    let local = dom0.alloc_local(1).unwrap();
    let g = pages.grefs()[0];
    let segs = [
        seg(GrantRef(9999), 0, 1, 0, CopyDir::FromGrant),
        seg(ended_ref, 0, 1, 0, CopyDir::FromGrant),
        seg(to_dom2.grefs()[0], 0, 1, 0, CopyDir::FromGrant),
        seg(g, 0, 1, 0, CopyDir::FromGrant),
    ];
    let out = dom0.copy(DomId(1), &local, &segs).unwrap();
    assert_eq!(
        out,
        vec![
            Err(SegError::BadGref),
            Err(SegError::BadGref),
            Err(SegError::BadGref),
            Ok(())
        ]
    );
    // The right reference named with the wrong granting domain, or one that does not exist.
    for d in [DomId(2), DomId(77)] {
        assert_eq!(
            dom0.copy(d, &local, &segs[3..]).unwrap(),
            vec![Err(SegError::BadGref)]
        );
    }
    // dom2 can copy what dom1 granted it.
    let local2 = dom2.alloc_local(1).unwrap();
    assert_eq!(
        dom2.copy(
            DomId(1),
            &local2,
            &[seg(to_dom2.grefs()[0], 0, 8, 0, CopyDir::ToGrant)]
        )
        .unwrap(),
        vec![Ok(())]
    );
}

#[test]
fn out_of_range_segments_fail_alone() {
    for via in VIAS {
        say(&format!("copying {via:?}"));
        out_of_range_segments_fail_alone_via(via);
    }
}

fn out_of_range_segments_fail_alone_via(via: CopyVia) {
    let sim = Sim::new();
    let (_dom1, pages) = granted(&sim, 1, Access::Writable);
    let g = pages.grefs()[0];
    let dom0 = sim.dom0_via(via);
    let local = Arc::new(dom0.alloc_local(1).unwrap());
    let segs = [
        seg(g, 4000, 97, 0, CopyDir::FromGrant),
        seg(g, 0, 4096, 1, CopyDir::FromGrant),
        seg(g, 0, 8, 64, CopyDir::FromGrant),
        seg(g, 0, 1, usize::MAX, CopyDir::ToGrant),
        seg(g, 0, 5000, 0, CopyDir::ToGrant),
        seg(g, 4000, 96, 4000, CopyDir::FromGrant),
    ];
    let out = dom0.copy(DomId(1), &local, &segs).unwrap();
    assert_eq!(
        out,
        vec![
            Err(SegError::OutOfRange),
            Err(SegError::OutOfRange),
            Ok(()),
            Err(SegError::OutOfRange),
            Err(SegError::OutOfRange),
            Ok(())
        ]
    );
    let src = pattern(7, PAGE_SIZE);
    assert_eq!(read_local(&local, 64, 8), src[..8]);
    assert_eq!(read_local(&local, 4000, 96), src[4000..]);
    assert_eq!(
        read_pages(&pages, 0, PAGE_SIZE),
        src,
        "the bad ToGrant wrote nothing"
    );
}

#[test]
fn local_pages_of_another_connection_or_plain_memory_are_refused() {
    for via in VIAS {
        say(&format!("copying {via:?}"));
        local_pages_of_another_connection_or_plain_memory_are_refused_via(via);
    }
}

fn local_pages_of_another_connection_or_plain_memory_are_refused_via(via: CopyVia) {
    let sim = Sim::new();
    let (_dom1, pages) = granted(&sim, 1, Access::Writable);
    let g = pages.grefs()[0];
    let (a, b) = (sim.dom0_via(via), sim.dom0_via(via));
    let theirs = a.alloc_local(1).unwrap();
    let s = [seg(g, 0, 1, 0, CopyDir::FromGrant)];
    assert!(matches!(
        b.copy(DomId(1), &theirs, &s),
        Err(CopyError::ForeignLocal)
    ));
    let plain = LocalPages::anonymous(1).unwrap();
    assert!(matches!(
        b.copy(DomId(1), &plain, &s),
        Err(CopyError::ForeignLocal)
    ));
    assert_eq!(a.copy(DomId(1), &theirs, &s).unwrap(), vec![Ok(())]);
}

#[test]
fn too_many_segments_are_refused_whole() {
    for via in VIAS {
        say(&format!("copying {via:?}"));
        too_many_segments_are_refused_whole_via(via);
    }
}

fn too_many_segments_are_refused_whole_via(via: CopyVia) {
    let sim = Sim::new();
    let (_dom1, pages) = granted(&sim, 1, Access::Writable);
    let dom0 = sim.dom0_via(via);
    let local = dom0.alloc_local(1).unwrap();
    let s = seg(pages.grefs()[0], 0, 1, 0, CopyDir::FromGrant);
    let max = vec![s; pvusb_xen::copy::MAX_COPY_SEGS];
    assert_eq!(dom0.copy(DomId(1), &local, &max).unwrap().len(), max.len());
    let over = vec![s; pvusb_xen::copy::MAX_COPY_SEGS + 1];
    assert!(matches!(
        dom0.copy(DomId(1), &local, &over),
        Err(CopyError::TooMany(n)) if n == over.len()
    ));
    assert!(dom0.copy(DomId(1), &local, &[]).unwrap().is_empty());
}

#[test]
fn dropping_local_pages_makes_the_broker_forget_them() {
    let sim = Sim::new();
    let (_dom1, pages) = granted(&sim, 1, Access::Writable);
    let dom0 = sim.dom0();
    let a = Arc::new(dom0.alloc_local(4).unwrap());
    let b = dom0.alloc_local(1).unwrap();
    assert_eq!(sim.broker.counters(), counters(2, 2));
    let view = a.shm();
    drop(a);
    assert_eq!(
        sim.broker.counters(),
        counters(2, 2),
        "a live view keeps them registered"
    );
    drop(view);
    drop(b);
    assert_eq!(sim.broker.counters(), counters(2, 0));
    assert!(matches!(
        dom0.alloc_local(0),
        Err(pvusb_xen::AllocError::BadCount(0))
    ));
    assert!(matches!(
        dom0.alloc_local(pvusb_xen::sim::wire::MAX_LOCAL_PAGES + 1),
        Err(pvusb_xen::AllocError::BadCount(_))
    ));
    drop(pages);
}

const ROLE: &str = "PVUSB_XEN_COPY_TEST_ROLE";
const DIR: &str = "PVUSB_XEN_COPY_TEST_DIR";

/// Entry point of the child process; does nothing when run as a normal test. The child
/// (dom0, a backend) registers local pages, copies once, says so and waits to be killed.
#[test]
fn child_entry() {
    let Ok(gref) = std::env::var(ROLE) else {
        return;
    };
    let dir = std::path::PathBuf::from(std::env::var(DIR).unwrap());
    let hyp = SimPlatform::connect(&dir, DomId::DOM0).unwrap();
    let local = hyp.alloc_local(8).unwrap();
    let g = GrantRef(gref.parse().unwrap());
    let out = hyp
        .copy(DomId(1), &local, &[seg(g, 0, 4096, 0, CopyDir::FromGrant)])
        .unwrap();
    assert_eq!(out, vec![Ok(())]);
    say("copied");
    wait_for_sigkill();
}

#[test]
fn a_killed_backend_process_leaves_no_local_memory_registered() {
    let sim = Sim::new();
    let (_dom1, pages) = granted(&sim, 1, Access::Writable);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(ROLE, pages.grefs()[0].0.to_string())
        .env(DIR, sim.dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    loop {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "child exited early");
        if line.contains("@@ copied") {
            break;
        }
    }
    assert_eq!(sim.broker.counters(), counters(2, 1));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    wait_until(
        || sim.broker.counters() == counters(1, 0),
        "the dead backend's local memory to be forgotten",
    );
}

/// Not a check: prints what moving one batch of 64 requests × 16 pages into this process
/// costs on the sim through map_batch (map, copy out, unmap) and through one grant copy.
/// Debug builds exaggerate both.
#[test]
#[ignore = "measurement, no assertion on time: cargo test -p pvusb-xen --test copy -- --ignored --nocapture"]
fn measure_map_batch_against_copy() {
    use pvusb_xen::{GrantMapper, MapRequest};
    const REQS: usize = 64;
    const PAGES: usize = 16;
    const ROUNDS: u32 = 50;
    let sim = Sim::new();
    let dom1 = sim.domain(1);
    let grants: Vec<GrantedPages> = (0..REQS)
        .map(|_| dom1.alloc(DomId::DOM0, PAGES, Access::Writable).unwrap())
        .collect();
    let dom0 = sim.dom0();
    let reqs: Vec<MapRequest<'_>> = grants
        .iter()
        .map(|g| MapRequest {
            refs: g.grefs(),
            access: Access::Writable,
        })
        .collect();
    let mut buf = vec![0u8; PAGES * PAGE_SIZE];
    let start = std::time::Instant::now();
    for _ in 0..ROUNDS {
        let maps: Vec<_> = dom0
            .map_batch(DomId(1), &reqs)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        for m in &maps {
            m.read_at(0, &mut buf).unwrap();
        }
    }
    let map_us = start.elapsed().as_micros() / u128::from(ROUNDS);
    let local = dom0.alloc_local(REQS * PAGES).unwrap();
    let segs: Vec<CopySeg> = grants
        .iter()
        .flat_map(|g| g.grefs().iter().copied())
        .enumerate()
        .map(|(i, gref)| seg(gref, 0, 4096, i * PAGE_SIZE, CopyDir::FromGrant))
        .collect();
    let start = std::time::Instant::now();
    for _ in 0..ROUNDS {
        let out = dom0.copy(DomId(1), &local, &segs).unwrap();
        assert!(out.iter().all(Result::is_ok));
    }
    let copy_us = start.elapsed().as_micros() / u128::from(ROUNDS);
    println!(
        "{REQS} requests x {PAGES} pages: map_batch+unmap {map_us} us, copy {copy_us} us per batch"
    );
}

#[test]
fn a_copier_follows_a_domain_whose_id_is_reused() {
    let sim = Sim::new();
    let dom0 = sim.dom0();
    let local = dom0.alloc_local(1).unwrap();
    let (dom1, pages) = granted(&sim, 1, Access::Writable);
    let old = pages.grefs()[0];
    let s = |g| [seg(g, 0, 8, 0, CopyDir::FromGrant)];
    assert_eq!(dom0.copy(DomId(1), &local, &s(old)).unwrap(), vec![Ok(())]);
    drop(pages);
    drop(dom1);
    wait_until(|| sim.released().contains(&DomId(1)), "dom1 released");
    assert_eq!(
        dom0.copy(DomId(1), &local, &s(old)).unwrap(),
        vec![Err(SegError::BadGref)],
        "a dead domain's grants"
    );
    // A new domain 1: its grants are found in its own table, not the dead one's.
    let (_dom1, pages) = granted(&sim, 1, Access::Writable);
    let new = pages.grefs()[0];
    assert_eq!(dom0.copy(DomId(1), &local, &s(new)).unwrap(), vec![Ok(())]);
    assert_eq!(read_local(&Arc::new(local), 0, 8), pattern(7, 8));
}
