//! Simulated-platform costs: event channel notify round trip (p50/p99) and grant map/unmap
//! per page. Prints numbers, asserts nothing. `cargo bench -p pvusb-xen`; without `--bench`
//! (e.g. `cargo test --benches`) it runs a few iterations only.

use std::time::{Duration, Instant};

use pvusb_xen::sim::{Broker, SimPlatform};
use pvusb_xen::{Access, DomId, EventChannel, EventChannels, GrantAllocator, GrantMapper};
use rustix::event::{poll, PollFd, PollFlags};

fn wait(ch: &dyn EventChannel) {
    let fd = ch.as_fd();
    loop {
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        poll(&mut fds, None).expect("poll");
        if ch.take_pending().expect("take_pending") {
            ch.unmask().expect("unmask");
            return;
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn notify_round_trip(dom0: &SimPlatform, dom1: &SimPlatform, iters: usize) {
    let fe = dom1.alloc_unbound(DomId(0)).expect("alloc_unbound");
    let be = dom0.bind_interdomain(DomId(1), fe.port()).expect("bind");
    let echo = std::thread::spawn(move || {
        for _ in 0..iters {
            wait(&*be);
            be.notify().expect("notify");
        }
    });
    let mut samples = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        fe.notify().expect("notify");
        wait(&*fe);
        samples.push(t.elapsed());
    }
    echo.join().expect("echo thread");
    samples.sort();
    println!(
        "evtchn notify round trip ({iters} iters, two threads, poll+take_pending+unmask each side): \
         p50 {:?}  p99 {:?}  max {:?}",
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        samples.last().copied().unwrap_or_default()
    );
}

fn map_unmap(dom0: &SimPlatform, dom1: &SimPlatform, iters: usize) {
    for pages in [1usize, 16, 64] {
        let granted = dom1
            .alloc(DomId(0), pages, Access::Writable)
            .expect("alloc");
        let t = Instant::now();
        for _ in 0..iters {
            let m = dom0
                .map(DomId(1), granted.grefs(), Access::Writable)
                .expect("map");
            drop(m);
        }
        let per = t.elapsed() / iters as u32;
        println!(
            "map+unmap {pages:>2} pages: {per:?} per call, {:?} per page",
            per / pages as u32
        );
        let t = Instant::now();
        for _ in 0..iters {
            let g = dom1
                .alloc(DomId(0), pages, Access::Writable)
                .expect("alloc");
            g.end_access().expect("end_access");
        }
        let per = t.elapsed() / iters as u32;
        println!(
            "alloc+end_access {pages:>2} pages: {per:?} per call, {:?} per page",
            per / pages as u32
        );
    }
}

fn cpu_now() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// What the backend does per 64 KiB URB with the stock protocol: map 16 pages of the
/// frontend's pool, touch each, unmap; `batch` mappings per map call (map_batch).
fn pool_cycle(dom0: &SimPlatform, dom1: &SimPlatform, iters: usize, batch: usize) {
    use pvusb_xen::MapRequest;
    const SLOTS: usize = 16;
    let pool = dom1
        .alloc(DomId(0), 16 * SLOTS, Access::Writable)
        .expect("pool");
    let (t, cpu) = (Instant::now(), cpu_now());
    let mut slot = 0;
    for _ in 0..iters / batch {
        let reqs: Vec<MapRequest<'_>> = (0..batch)
            .map(|k| {
                let s = (slot + k) % SLOTS;
                MapRequest {
                    refs: &pool.grefs()[s * 16..s * 16 + 16],
                    access: Access::Writable,
                }
            })
            .collect();
        slot = (slot + batch) % SLOTS;
        let maps = dom0.map_batch(DomId(1), &reqs);
        for m in &maps {
            let m = m.as_ref().expect("map");
            for p in 0..16 {
                m.write_at(p * 4096, &[1]).expect("write");
            }
        }
    }
    let n = (iters / batch * batch) as u32;
    println!(
        "pool 16-page map+touch+unmap, {batch:>2} per map call: {:?} wall, {:?} CPU per mapping",
        t.elapsed() / n,
        (cpu_now() - cpu) / n
    );
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path()).expect("broker");
    broker.create_domain(DomId(1)).expect("dom1");
    // Holding dom1's connection keeps the domain alive between the two measurements.
    let dom0 = SimPlatform::connect(dir.path(), DomId(0)).expect("dom0");
    let dom1 = SimPlatform::connect(dir.path(), DomId(1)).expect("dom1");
    notify_round_trip(&dom0, &dom1, if full { 20_000 } else { 100 });
    map_unmap(&dom0, &dom1, if full { 2_000 } else { 20 });
    for batch in [1, 16] {
        pool_cycle(&dom0, &dom1, if full { 20_000 } else { 32 }, batch);
    }
    println!("broker counters after the run: {:?}", broker.counters());
}
