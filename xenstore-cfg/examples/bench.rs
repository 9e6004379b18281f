//! Read/write throughput through our client against the embedded daemon (prints, asserts
//! nothing): `cargo run --release -p xenstore-cfg --example bench [seconds-per-case]`.

use std::time::{Duration, Instant};

use xenstore_cfg::daemon;
use xenstore_cfg::{Xs, XsOps};

fn rate(name: &str, secs: f64, mut op: impl FnMut(u64)) {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs_f64(secs) {
        for _ in 0..100 {
            op(n);
            n += 1;
        }
    }
    let per_sec = n as f64 / start.elapsed().as_secs_f64();
    println!(
        "{name:<40} {per_sec:>10.0} ops/s  ({:.1} µs/op)",
        1e6 / per_sec
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1.0);
    let dir = tempfile::tempdir()?;
    let d = daemon::spawn(dir.path())?;
    let mut xs = Xs::connect(d.socket())?;
    xs.write("/bench/value", b"0123456789")?;
    rate("read (1 client)", secs, |_| {
        xs.read("/bench/value")
            .map(drop)
            .unwrap_or_else(|e| panic!("{e}"))
    });
    rate("write (1 client)", secs, |i| {
        xs.write("/bench/value", i.to_string().as_bytes())
            .unwrap_or_else(|e| panic!("{e}"))
    });
    rate("write new node (1 client)", secs, |i| {
        xs.write(&format!("/bench/n/{}/{}", i % 100, i / 100), b"x")
            .unwrap_or_else(|e| panic!("{e}"))
    });
    rate("transaction read+write+commit", secs, |i| {
        xs.transaction(|tx| {
            tx.read("/bench/value")?;
            tx.write("/bench/value", i.to_string().as_bytes())
        })
        .unwrap_or_else(|e| panic!("{e}"))
    });
    xs.watch("/bench/watched", "w")?;
    xs.wait_event(None)?;
    rate("write + own watch event", secs, |i| {
        xs.write("/bench/watched", i.to_string().as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        xs.wait_event(None).unwrap_or_else(|e| panic!("{e}"));
    });
    for clients in [4usize, 16] {
        let start = Instant::now();
        let workers: Vec<_> = (0..clients)
            .map(|c| {
                let sock = d.socket();
                std::thread::spawn(move || {
                    let mut xs = Xs::connect(sock).unwrap_or_else(|e| panic!("{e}"));
                    let path = format!("/bench/c{c}");
                    let mut n = 0u64;
                    while start.elapsed() < Duration::from_secs_f64(secs) {
                        xs.write(&path, b"v").unwrap_or_else(|e| panic!("{e}"));
                        xs.read(&path).unwrap_or_else(|e| panic!("{e}"));
                        n += 2;
                    }
                    n
                })
            })
            .collect();
        let total: u64 = workers.into_iter().map(|w| w.join().unwrap_or(0)).sum();
        let per_sec = total as f64 / start.elapsed().as_secs_f64();
        println!(
            "{:<40} {per_sec:>10.0} ops/s",
            format!("read+write ({clients} clients)")
        );
    }
    d.stop()?;
    Ok(())
}
