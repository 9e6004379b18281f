//! Issue 8 benchmarks: the whole stack (guest USB/IP client → pvusb-frontend → usbif ring
//! → pvusb-backend → simulated bulk loopback, and back) against the same device model
//! driven directly in this process, measured in one run. Prints a table and one JSON line;
//! asserts nothing.
//!
//! Next to both, the "socket floor" ([`pvusb_tests::floor`]): the guest's transport alone,
//! which a real guest cannot avoid (vhci_hcd speaks USB/IP over an AF_UNIX stream socket).
//! This binary re-executes itself as an echo process; 48-byte headers + payloads go over
//! such a socket and come back, the same bytes each way as a bulk OUT + IN pair. Its
//! throughput cells sit next to direct (with stack / floor ratios) and its 64-byte round
//! trip, with the echo process blocking in `read` or busy-polling like the daemons'
//! `poll-us`, is subtracted from the stack's latency rows ("fl+": added over the floor).
//!
//! `cargo bench -p pvusb-tests` · `PVUSB_BENCH_SECS` (per cell, default 1) ·
//! `PVUSB_BENCH_SKIP=throughput,map,xhci,scaling,floor` to leave sections out ·
//! `PVUSB_BENCH_REPEAT=3` for the median of three interleaved runs of each throughput cell ·
//! `PVUSB_BENCH_BACKEND_CONFIG` adds lines to the backend's configuration file ·
//! `PVUSB_BENCH_PROFILE=persistent|stock|broker|map`: only the stack's 64 KiB QD16 cell
//! (`PVUSB_BENCH_PROFILE_SIZE` bytes, `PVUSB_BENCH_PROFILE_QD` transfers in flight,
//! `PVUSB_BENCH_PROFILE_POLL_US` both daemons' `poll-us`) with a per-process CPU split and
//! its CPU ceiling (to run under `perf record`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pvusb_backend::sim::{DeviceSpec, ModelSpec};
use pvusb_tests::cpu::cpu_time;
use pvusb_tests::floor::Floor;
use pvusb_tests::platform::Platform;
use pvusb_tests::usbip::{bulk_in, bulk_out, control, Answer, UsbipClient};
use serde_json::json;

const CAPACITY: usize = 64 << 20;
const SIZES: [usize; 3] = [16 << 10, 64 << 10, 1 << 20];
const DEPTHS: [usize; 3] = [1, 4, 16];
const LAT_N: usize = 3000;
/// The loopback's endpoint pairs: bulk EP 1, interrupt EP 2.
const BULK_EP: u8 = 1;
const INT_EP: u8 = 2;
/// GET_DESCRIPTOR(configuration), wLength 64.
const CTRL_SETUP: [u8; 8] = [0x80, 6, 0, 2, 0, 0, 64, 0];

/// `PVUSB_BENCH_REPEAT=N`: each throughput cell N times (interleaved), the median kept.
fn repeats() -> usize {
    std::env::var("PVUSB_BENCH_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1usize)
        .max(1)
}

/// The cell with the median throughput.
/// The most a cell could move if every core were busy with it all the time: cores ×
/// (GiB per CPU second). What the cell measured below it was lost to idle cores (waiting
/// for wake-ups) and to other load; what it would take beyond it has to come off the CPU
/// cost per GiB.
fn cpu_ceiling_mb_s(cpu_s_per_gib: f64) -> f64 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores as f64 * f64::from(1u32 << 30) / 1e6 / cpu_s_per_gib.max(1e-9)
}

/// The throughput target cell: 64 KiB transfers at queue depth 16.
const TARGET_CELL: (usize, usize) = (64 << 10, 16);

fn median(mut cells: Vec<Cell>) -> Cell {
    cells.sort_by(|a, b| a.mb_s.total_cmp(&b.mb_s));
    cells[cells.len() / 2]
}

/// `PVUSB_BENCH_SKIP=throughput,map,xhci,scaling,floor` leaves those sections out.
fn skip(section: &str) -> bool {
    std::env::var("PVUSB_BENCH_SKIP").is_ok_and(|v| v.split(',').any(|s| s == section))
}

fn secs() -> Duration {
    let s: f64 = std::env::var("PVUSB_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    Duration::from_secs_f64(s)
}

/// One throughput cell.
#[derive(Clone, Copy, Default)]
struct Cell {
    mb_s: f64,
    urbs_s: f64,
    cpu_s_per_gib: f64,
}

/// Latency percentiles, µs.
#[derive(Clone, Copy, Default)]
struct Lat {
    p50: f64,
    p99: f64,
    p999: f64,
}

fn lat(mut v: Vec<Duration>) -> Lat {
    v.sort_unstable();
    let q = |q: f64| {
        let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        v[i].as_secs_f64() * 1e6
    };
    Lat {
        p50: q(0.5),
        p99: q(0.99),
        p999: q(0.999),
    }
}

#[path = "stack/direct.rs"]
mod direct;
#[path = "stack/floor_cell.rs"]
mod floor_cell;

use direct::Direct;
use floor_cell::FloorCell;

// ---------------------------------------------------------------- stack

struct Stack {
    p: Platform,
    c: UsbipClient,
    /// CPU of the last throughput cell's measured window: this process (the guest client),
    /// the frontend(s), the backend.
    split: [Duration; 3],
}

/// `c` after SET_CONFIGURATION(1).
fn configured(mut c: UsbipClient) -> UsbipClient {
    let a = c
        .transfer(
            control([0, 9, 1, 0, 0, 0, 0, 0], vec![]),
            Duration::from_secs(10),
        )
        .unwrap();
    assert_eq!(a.status(), 0, "SET_CONFIGURATION");
    c
}

/// How the backend reaches the guest's data pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    /// Stock usbif, each request's pages copied by the hypervisor (grant copy, the default);
    /// the simulated hypercall runs on the backend's CPU.
    Copy,
    /// [`Proto::Copy`] with each simulated hypercall a round trip to the broker process
    /// (`PVUSB_SIM_COPY=broker`), the simulation's model before.
    CopyViaBroker,
    /// Stock usbif, each request's pages mapped and unmapped (`grant-copy = false`).
    Map,
    /// The negotiated persistent-grant extension.
    Persistent,
}

impl Proto {
    fn backend_config(self, poll_us: u32) -> String {
        let persistent = self == Proto::Persistent;
        let copy = matches!(self, Proto::Copy | Proto::CopyViaBroker);
        // PVUSB_BENCH_BACKEND_CONFIG: more lines for the backend's file (A/B runs of a knob).
        let extra = std::env::var("PVUSB_BENCH_BACKEND_CONFIG").unwrap_or_default();
        format!(
            "feature-persistent = {persistent}\ngrant-copy = {copy}\npoll-us = {poll_us}\n{extra}\n"
        )
    }
}

/// The loopback's bus and the backend's split chains (the xHCI section).
#[derive(Clone, Copy, Debug, Default)]
struct Bus {
    /// xHCI-like: no stop at a short packet.
    no_stop_on_short: bool,
    /// Each URB answered this long after it was submitted, at the earliest.
    latency_us: u64,
    /// `feature-split-chain = false`: the frontend sends a read's pieces one at a time.
    no_split_chain: bool,
}

/// Busy polling of the latency rows marked "poll" (both daemons' `poll-us`).
const POLL_US: u32 = 100;

/// `PVUSB_BENCH_TCP=1`: reach the frontend over `--usbip-listen` (TCP) instead of the
/// AF_UNIX socket it hands to vhci_hcd in a guest (the production path, the default).
fn over_tcp() -> bool {
    std::env::var("PVUSB_BENCH_TCP").is_ok_and(|v| v == "1")
}

impl Stack {
    fn new(proto: Proto) -> Stack {
        Stack::with_poll(proto, 0)
    }

    /// A stack whose daemons keep polling `poll_us` after each event (0: off, the default).
    fn with_poll(proto: Proto, poll_us: u32) -> Stack {
        Self::build(proto, poll_us, Bus::default())
    }

    /// A stack whose loopback sits on `bus`.
    fn on_bus(proto: Proto, bus: Bus) -> Stack {
        Self::build(proto, 0, bus)
    }

    fn build(proto: Proto, poll_us: u32, bus: Bus) -> Stack {
        let mut p = Platform::new(&[1]);
        let mut spec = DeviceSpec::new(ModelSpec::Loopback { capacity: CAPACITY });
        spec.no_stop_on_short = bus.no_stop_on_short;
        spec.faults.latency_us = bus.latency_us;
        let busid = p.plug_as_is(&spec);
        let id = p.add_controller(1, 0, 4);
        p.assign(&id, 1, Some(&busid));
        let mut config = proto.backend_config(poll_us);
        if bus.no_split_chain {
            config.push_str("feature-split-chain = false\n");
        }
        let env: &[(&str, &str)] = match proto {
            Proto::CopyViaBroker => &[(pvusb_xen::sim::COPY_VIA_ENV, "broker")],
            _ => &[],
        };
        p.start_backend_env(&config, env);
        let c = if over_tcp() {
            let addr = p.start_frontend(1);
            UsbipClient::import_when_ready(addr, "1-1", Duration::from_secs(30), || p.logs())
        } else {
            let poll = poll_us.to_string();
            let (attach, sock) = p.start_frontend_vhci_with(1, &["--poll-us", &poll]);
            UsbipClient::attached(sock, attach.devid, &busid)
        };
        let c = configured(c);
        Stack {
            p,
            c,
            split: [Duration::ZERO; 3],
        }
    }

    /// CPU time so far of the daemons and of the broker (the simulated hypervisor does the
    /// grant maps, as Xen does on the backend's behalf in hypercalls).
    fn cpu_children(&self) -> Duration {
        let (be, fe) = self.cpu_daemons();
        let hyp = self
            .p
            .simhyp_pid()
            .map_or(Duration::ZERO, |pid| cpu_time(&pid.to_string()));
        be + fe + hyp
    }

    /// CPU time so far of this process, the frontend(s) and the backend.
    fn split_now(&self) -> [Duration; 3] {
        let (be, fe) = self.cpu_daemons();
        [cpu_time("self"), fe, be]
    }

    /// CPU time so far of the backend and of the frontend(s).
    fn cpu_daemons(&self) -> (Duration, Duration) {
        let of = |d: &pvusb_tests::proc::Daemon| {
            d.pid()
                .map_or(Duration::ZERO, |pid| cpu_time(&pid.to_string()))
        };
        let be = self.p.backend.as_ref().map_or(Duration::ZERO, of);
        let fe = self.p.frontends.values().map(|(d, _)| of(d)).sum();
        (be, fe)
    }

    fn echo(&mut self, size: usize, qd: usize, dur: Duration) -> Cell {
        let data = vec![0x5a; size];
        let mut dir_of = HashMap::new();
        for _ in 0..qd {
            dir_of.insert(self.c.submit(bulk_in(1, size as u32)), true);
            dir_of.insert(self.c.submit(bulk_out(1, data.clone())), false);
        }
        let warm = Instant::now() + dur / 5;
        let mut start = Instant::now();
        let mut cpu0 = cpu_time("self") + self.cpu_children();
        let mut split0 = self.split_now();
        let (mut bytes, mut urbs, mut measuring) = (0u64, 0u64, false);
        loop {
            let a = self.c.next(Duration::from_secs(20)).unwrap();
            let Answer::Done(r) = a else {
                panic!("cancelled")
            };
            assert_eq!(r.status, 0, "stack URB failed");
            let is_in = dir_of.remove(&r.seqnum).unwrap();
            if !measuring && Instant::now() >= warm {
                measuring = true;
                start = Instant::now();
                cpu0 = cpu_time("self") + self.cpu_children();
                split0 = self.split_now();
                (bytes, urbs) = (0, 0);
            }
            urbs += 1;
            if is_in {
                bytes += u64::from(r.actual_length);
            }
            if measuring && start.elapsed() >= dur {
                break;
            }
            let s = if is_in {
                self.c.submit(bulk_in(1, size as u32))
            } else {
                // The OUT buffer written out earlier (holding `data`), as a guest reuses
                // its URBs' buffers.
                let buf = self.c.spent_out_buffer().filter(|b| b.len() == size);
                self.c
                    .submit(bulk_out(1, buf.unwrap_or_else(|| data.clone())))
            };
            dir_of.insert(s, is_in);
        }
        let el = start.elapsed().as_secs_f64();
        let cpu = (cpu_time("self") + self.cpu_children() - cpu0).as_secs_f64();
        let split1 = self.split_now();
        self.split = [0, 1, 2].map(|i| split1[i].saturating_sub(split0[i]));
        // Cancel the rest (an IN may wait for data that never comes), then empty the
        // loopback (SET_CONFIGURATION resets the model) for the next cell.
        for &s in dir_of.keys() {
            self.c.unlink(s);
        }
        while !dir_of.is_empty() {
            let a = self.c.next(Duration::from_secs(20)).unwrap();
            dir_of.remove(&a.seqnum());
        }
        let a = self
            .c
            .transfer(
                control([0, 9, 1, 0, 0, 0, 0, 0], vec![]),
                Duration::from_secs(10),
            )
            .unwrap();
        assert_eq!(a.status(), 0, "SET_CONFIGURATION");
        Cell {
            mb_s: bytes as f64 / el / 1e6,
            urbs_s: urbs as f64 / el,
            cpu_s_per_gib: cpu / (bytes as f64 / (1u64 << 30) as f64),
        }
    }

    /// As [`Direct::ping`]; the frontend takes the transfer type from the endpoint.
    fn ping(&mut self, n: usize, ep: u8) -> Lat {
        let t = Duration::from_secs(10);
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let t0 = Instant::now();
            let a = self.c.transfer(bulk_out(ep, vec![7; 64]), t).unwrap();
            assert_eq!(a.status(), 0);
            let a = self.c.transfer(bulk_in(ep, 64), t).unwrap();
            assert_eq!(a.status(), 0);
            v.push(t0.elapsed() / 2);
        }
        lat(v)
    }

    fn control(&mut self, n: usize) -> Lat {
        let t = Duration::from_secs(10);
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let t0 = Instant::now();
            let a = self.c.transfer(control(CTRL_SETUP, vec![]), t).unwrap();
            v.push(t0.elapsed());
            assert_eq!(a.status(), 0);
        }
        lat(v)
    }
}

#[path = "stack/scaling.rs"]
mod scaling;
#[path = "stack/xhci.rs"]
mod xhci;

use scaling::scaling;

/// The stock protocol with grant copy (`stock`) against grant copy done as a broker round
/// trip and against grant map (fresh stacks: `PVUSB_SIM_COPY=broker`, `grant-copy =
/// false`) at 64 KiB, interleaved repeats: what copying instead of mapping each request's
/// pages buys, and what the simulated hypercall costs where it runs.
fn copy_vs_map(stock: &mut Stack, dur: Duration) -> serde_json::Value {
    let mut broker = Stack::new(Proto::CopyViaBroker);
    let mut map = Stack::new(Proto::Map);
    println!(
        "stock usbif at 64K: grant copy (default) vs grant copy as a broker round trip \
         (PVUSB_SIM_COPY=broker) vs grant map (grant-copy = false)"
    );
    println!(
        "{:>3} | {:>8} {:>8} {:>8} {:>6} {:>6} | {:>8} {:>8} {:>8}",
        "qd", "copy", "broker", "map", "c/b", "c/m", "copy c/G", "brkr c/G", "map c/G"
    );
    let mut rows = Vec::new();
    for &qd in &DEPTHS {
        let (mut cs, mut bs, mut ms) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..repeats() {
            cs.push(stock.echo(64 << 10, qd, dur));
            bs.push(broker.echo(64 << 10, qd, dur));
            ms.push(map.echo(64 << 10, qd, dur));
        }
        let (c, b, m) = (median(cs), median(bs), median(ms));
        println!(
            "{qd:>3} | {:>8.0} {:>8.0} {:>8.0} {:>6.2} {:>6.2} | {:>7.2}s {:>7.2}s {:>7.2}s",
            c.mb_s,
            b.mb_s,
            m.mb_s,
            c.mb_s / b.mb_s,
            c.mb_s / m.mb_s,
            c.cpu_s_per_gib,
            b.cpu_s_per_gib,
            m.cpu_s_per_gib
        );
        rows.push(
            json!({"qd": qd, "copy_mb_s": c.mb_s, "broker_copy_mb_s": b.mb_s,
            "map_mb_s": m.mb_s, "copy_cpu_s_per_gib": c.cpu_s_per_gib,
            "broker_copy_cpu_s_per_gib": b.cpu_s_per_gib, "map_cpu_s_per_gib": m.cpu_s_per_gib}),
        );
    }
    json!(rows)
}

fn main() {
    // Re-executed as the socket floor's echo process: serve, then exit.
    pvusb_tests::floor::echo_if_asked();
    // `cargo bench` passes `--bench`; a `cargo test --benches` run passes nothing useful
    // either: run only when benchmarking.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let dur = secs();
    // PVUSB_BENCH_PROFILE=stock: only the stack's 64 KiB QD16 cell (to run under `perf
    // record`); `persistent` for the persistent-grant backend, `map` for grant map,
    // `broker` for grant copy as a broker round trip.
    if let Some(v) = std::env::var_os("PVUSB_BENCH_PROFILE") {
        let proto = match v.to_str() {
            Some("persistent") => Proto::Persistent,
            Some("map") => Proto::Map,
            Some("broker") => Proto::CopyViaBroker,
            _ => Proto::Copy,
        };
        let size = std::env::var("PVUSB_BENCH_PROFILE_SIZE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(64 << 10);
        let knob = |name: &str, default| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        let qd = knob("PVUSB_BENCH_PROFILE_QD", 16);
        let poll_us = knob("PVUSB_BENCH_PROFILE_POLL_US", 0);
        let mut stack = Stack::with_poll(proto, u32::try_from(poll_us).unwrap_or(u32::MAX));
        let c = stack.echo(size, qd, dur);
        let gib = c.mb_s * dur.as_secs_f64() * 1e6 / f64::from(1u32 << 30);
        let [me, fe, be] = stack.split.map(|d| d.as_secs_f64() / gib.max(1e-9));
        let cap = cpu_ceiling_mb_s(c.cpu_s_per_gib);
        println!(
            "stack {size} B QD{qd} ({proto:?}): {:.0} MB/s, {:.0} URB/s, {:.2} s CPU/GiB \
             (split: client {me:.2}, frontend {fe:.2}, backend {be:.2}; the rest is the broker); \
             CPU ceiling {cap:.0} MB/s, cores busy {:.0} %",
            c.mb_s,
            c.urbs_s,
            c.cpu_s_per_gib,
            100.0 * c.mb_s / cap,
        );
        return;
    }
    let mut direct = Direct::new();
    let mut stock = Stack::new(Proto::Copy);
    let mut pgnt = Stack::new(Proto::Persistent);
    let mut floor = (!skip("floor")).then(|| Floor::spawn(0));
    println!("pvusb issue-8 benchmark: {dur:?} per cell, sim bulk loopback, echoed MB/s (10^6 B)");
    println!(
        "guest transport: {}",
        if over_tcp() {
            "USB/IP over TCP (--usbip-listen)"
        } else {
            "USB/IP over the AF_UNIX socket vhci_hcd holds (--vhci)"
        }
    );
    println!("stock = usbif as specified (the backend has every request's pages grant-copied);");
    println!("pgnt = negotiated feature-persistent (each run of granted pages mapped once per connection)");
    println!(
        "floor = the guest's socket alone: 48-byte header + payload echoed by another process \
         over an AF_UNIX stream socket (as the frontend's); stk/fl, pg/fl = stack / floor"
    );
    println!(
        "c/G = CPU seconds per GiB echoed (stack: guest client + frontend + backend + broker; \
         floor: client + echo process)"
    );
    println!(
        "{:>8} {:>3} | {:>8} {:>8} {:>8} {:>6} {:>8} {:>6} | {:>6} {:>6} | {:>8} {:>8} {:>8} | {:>7} {:>7} {:>7} {:>7}",
        "size",
        "qd",
        "direct",
        "floor",
        "stock",
        "ratio",
        "pgnt",
        "ratio",
        "stk/fl",
        "pg/fl",
        "dir URB/s",
        "stk URB/s",
        "pg URB/s",
        "dir c/G",
        "fl c/G",
        "stk c/G",
        "pg c/G"
    );
    let mut rows = Vec::new();
    for &size in SIZES.iter().filter(|_| !skip("throughput")) {
        for &qd in &DEPTHS {
            // Interleaved repeats, median of each: all see the same background load.
            let (mut ds, mut fs, mut ss, mut gs) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for _ in 0..repeats() {
                ds.push(direct.echo(size, qd, dur));
                if let Some(f) = floor.as_mut() {
                    fs.push(FloorCell::of(f.echo(size, qd, dur)));
                }
                ss.push(stock.echo(size, qd, dur));
                gs.push(pgnt.echo(size, qd, dur));
            }
            let (d, s, g) = (median(ds), median(ss), median(gs));
            let f = FloorCell::median(fs);
            let fmb = f.map(|f| f.cell.mb_s);
            let pct = |x: f64| fmb.map_or("-".into(), |o| format!("{:.1}%", 100.0 * x / o));
            println!(
                "{:>7}K {:>3} | {:>8.0} {:>8} {:>8.0} {:>5.1}% {:>8.0} {:>5.1}% | {:>6} {:>6} | {:>8.0} {:>8.0} {:>8.0} | {:>6.2}s {:>7} {:>6.2}s {:>6.2}s",
                size >> 10,
                qd,
                d.mb_s,
                fmb.map_or("-".into(), |v| format!("{v:.0}")),
                s.mb_s,
                100.0 * s.mb_s / d.mb_s,
                g.mb_s,
                100.0 * g.mb_s / d.mb_s,
                pct(s.mb_s),
                pct(g.mb_s),
                d.urbs_s,
                s.urbs_s,
                g.urbs_s,
                d.cpu_s_per_gib,
                f.map_or("-".into(), |f| format!("{:.2}s", f.cell.cpu_s_per_gib)),
                s.cpu_s_per_gib,
                g.cpu_s_per_gib
            );
            let mut row = json!({"size": size, "qd": qd, "direct_mb_s": d.mb_s,
                "stock_mb_s": s.mb_s, "stock_ratio": s.mb_s / d.mb_s,
                "persistent_mb_s": g.mb_s, "persistent_ratio": g.mb_s / d.mb_s,
                "direct_cpu_s_per_gib": d.cpu_s_per_gib,
                "stock_cpu_s_per_gib": s.cpu_s_per_gib,
                "persistent_cpu_s_per_gib": g.cpu_s_per_gib,
                "stock_cpu_ceiling_mb_s": cpu_ceiling_mb_s(s.cpu_s_per_gib),
                "persistent_cpu_ceiling_mb_s": cpu_ceiling_mb_s(g.cpu_s_per_gib)});
            if (size, qd) == TARGET_CELL {
                let cap = cpu_ceiling_mb_s(s.cpu_s_per_gib);
                println!(
                    "  (target cell, stock: its {:.2} s of CPU per GiB caps it at {cap:.0} MB/s on \
                     {} cores with none idle; it reached {:.0} %)",
                    s.cpu_s_per_gib,
                    std::thread::available_parallelism().map_or(1, |n| n.get()),
                    100.0 * s.mb_s / cap
                );
            }
            if let Some(f) = f {
                row["floor_mb_s"] = json!(f.cell.mb_s);
                row["floor_ratio"] = json!(f.cell.mb_s / d.mb_s);
                row["stock_over_floor"] = json!(s.mb_s / f.cell.mb_s);
                row["persistent_over_floor"] = json!(g.mb_s / f.cell.mb_s);
                row["floor_cpu_s_per_gib"] = json!(f.cell.cpu_s_per_gib);
                row["floor_client_cpu_s_per_gib"] = json!(f.client);
                row["floor_echo_cpu_s_per_gib"] = json!(f.echo);
            }
            rows.push(row);
        }
    }
    let copy_vs_map = (!skip("map")).then(|| copy_vs_map(&mut stock, dur));
    let xhci = (!skip("xhci")).then(|| xhci::ehci_vs_xhci(dur));
    let mut lat_json = serde_json::Map::new();
    // The latency rows' floor: a 64-byte round trip on the socket alone (one URB's worth of
    // guest transport), the echo process blocking in read, then polling as the daemons do.
    let floor_lat = (!skip("floor")).then(|| {
        let block = lat(floor
            .take()
            .unwrap_or_else(|| Floor::spawn(0))
            .ping(LAT_N, 64));
        let poll = lat(Floor::spawn(POLL_US).ping(LAT_N, 64));
        lat_json.insert(
            "floor64_block".into(),
            json!([block.p50, block.p99, block.p999]),
        );
        lat_json.insert(
            "floor64_poll".into(),
            json!([poll.p50, poll.p99, poll.p999]),
        );
        (block, poll)
    });
    drop(floor);
    // Latency with the defaults, then with both daemons busy-polling (`poll-us`).
    let mut spoll = Stack::with_poll(Proto::Copy, POLL_US);
    let mut gpoll = Stack::with_poll(Proto::Persistent, POLL_US);
    let mut stacks = [&mut stock, &mut pgnt, &mut spoll, &mut gpoll];
    let names = ["stock", "pgnt", "stock+poll", "pgnt+poll"];
    println!(
        "latency, QD1, µs (poll = both daemons poll-us {POLL_US}; \
         over floor: the stack's p50/p99 minus the socket floor's)"
    );
    println!(
        "{:<42} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9}",
        "", "p50", "p99", "p999", "added p50", "added p99", "fl+ p50", "fl+ p99"
    );
    if let Some((block, poll)) = floor_lat {
        for (name, l) in [("echo blocks", block), ("echo polls", poll)] {
            let label = format!("64 B socket floor, {name}");
            println!("{label:<42} {:>8.1} {:>8.1} {:>8.1}", l.p50, l.p99, l.p999);
        }
    }
    for (what, ep) in [
        ("bulk", Some(BULK_EP)),
        ("interrupt", Some(INT_EP)),
        ("control", None),
    ] {
        let base = match ep {
            Some(ep) => direct.ping(LAT_N, ep),
            None => direct.control(LAT_N),
        };
        let mut rows = vec![("direct", base, None)];
        for (st, name) in stacks.iter_mut().zip(names) {
            let l = match ep {
                Some(ep) => st.ping(LAT_N, ep),
                None => st.control(LAT_N),
            };
            let fl = floor_lat.map(|(b, p)| if name.ends_with("poll") { p } else { b });
            rows.push((name, l, fl));
        }
        for (name, l, fl) in rows {
            let label = format!("64 B {what}, {name}");
            let over =
                |f: fn(&Lat) -> f64| fl.map_or("-".into(), |b| format!("{:.1}", f(&l) - f(&b)));
            println!(
                "{label:<42} {:>8.1} {:>8.1} {:>8.1} {:>9.1} {:>9.1} {:>9} {:>9}",
                l.p50,
                l.p99,
                l.p999,
                l.p50 - base.p50,
                l.p99 - base.p99,
                over(|l| l.p50),
                over(|l| l.p99)
            );
            lat_json.insert(format!("{what}64_{name}"), json!([l.p50, l.p99, l.p999]));
            if let Some(b) = fl {
                lat_json.insert(
                    format!("{what}64_{name}_over_floor"),
                    json!([l.p50 - b.p50, l.p99 - b.p99]),
                );
            }
        }
    }
    drop((spoll, gpoll));
    drop((stock, pgnt));
    println!("scaling: controllers × 31 ports, a loopback on every port");
    let mut scale = Vec::new();
    for ctrls in [1u32, 2, 4, 8].into_iter().filter(|_| !skip("scaling")) {
        let r = scaling(ctrls, 31, dur);
        println!(
            "  {ctrls} controller(s), {:>3} devices: {:>9.0} URB/s, {:>6.1} µs CPU per URB \
             ({:.1} of it in the two daemons)",
            ctrls * 31,
            r.urbs_s,
            r.cpu_us,
            r.daemons_us
        );
        scale.push(
            json!({"controllers": ctrls, "devices": ctrls * 31, "urbs_s": r.urbs_s,
            "cpu_us_per_urb": r.cpu_us, "daemons_cpu_us_per_urb": r.daemons_us}),
        );
    }
    let j = json!({"bench": "pvusb-stack", "secs_per_cell": dur.as_secs_f64(), "throughput": rows,
        "stock_copy_vs_map": copy_vs_map,
        "persistent_ehci_vs_xhci": xhci,
        "latency_us": lat_json,
        "scaling": scale});
    println!("{j}");
}
