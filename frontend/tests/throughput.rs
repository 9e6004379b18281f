//! Throughput through the whole stack (USB/IP client → frontend → usbif → real backend →
//! simulated loopback device and back). A measurement, not a timed test: run with
//! `cargo test -p pvusb-frontend --release --test throughput -- --ignored --nocapture`.

#![allow(missing_debug_implementations)]

mod common;

use std::time::{Duration, Instant};

use common::client::{bulk_in, bulk_out};
use common::stack::stack;
use pvusb_backend::sim::ModelSpec;
use pvusb_frontend::usbip::{ClientEvent, CmdSubmit};

#[test]
#[ignore = "measurement; run explicitly"]
fn loopback_throughput() {
    let s = stack(0, ModelSpec::Loopback { capacity: 8 << 20 });
    let mut c = s.import();
    c.transfer(CmdSubmit {
        setup: [0, 9, 1, 0, 0, 0, 0, 0],
        ..CmdSubmit::default()
    });
    for size in [4096usize, 65536, 1 << 20] {
        let rounds = (16 << 20) / size / 8;
        let data = vec![0xa5u8; size];
        let start = Instant::now();
        for _ in 0..rounds {
            // OUT and IN pipelined, 4 of each in flight.
            let mut seqs = Vec::new();
            for _ in 0..4 {
                seqs.push(c.submit(bulk_out(1, data.clone())));
            }
            for _ in 0..4 {
                seqs.push(c.submit(bulk_in(1, size as u32)));
            }
            let mut n = 0;
            while n < seqs.len() {
                match c.event(Duration::from_secs(10)) {
                    Some(ClientEvent::Completed(r)) => {
                        assert_eq!(r.status, 0);
                        n += 1;
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
        let secs = start.elapsed().as_secs_f64();
        let bytes = (rounds * size * 8) as f64;
        println!(
            "transfer {size:>8} B: {:>7.1} MB/s ({} transfers in {secs:.2} s)",
            bytes / secs / 1e6,
            rounds * 8
        );
    }
}

/// The same against the ring-level fake backend, to tell the frontend's share.
#[test]
#[ignore = "measurement; run explicitly"]
fn fake_backend_latency() {
    use common::fakebe::{FakeBackend, Mode};
    let sim = common::Sim::new();
    sim.create_domain(1);
    let id = sim.add_controller(1, 0, 0, 4);
    let port = common::free_port();
    let _fe = common::spawn_frontend(&sim, 1, port, &[]);
    let _be = FakeBackend::start(sim.path().to_owned(), id, Mode::Good);
    common::wait_listening(port);
    let mut c = common::wait_for(15, "import", || {
        common::client::Client::import(port, "1-1").ok()
    })
    .0;
    let n = 2000;
    let start = Instant::now();
    for _ in 0..n {
        assert_eq!(c.bulk_out(2, vec![1; 4096]).status, 0);
    }
    let per = start.elapsed() / n;
    println!("fake backend: {per:?} per 4 KiB OUT round trip");
}
