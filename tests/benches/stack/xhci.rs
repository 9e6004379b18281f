//! The xHCI section: what holding split pieces costs where the host does not stop at a
//! short packet (`pvusb_ring::urb::chain`), against the same stack on a bus that does.
//!
//! A request carries at most 65535 bytes, so a 64 KiB read is already a chain of two
//! pieces. Held pieces wait for their predecessor in the backend, not in the guest: the
//! cost is one device round trip per piece, which the simulated device makes free unless
//! it is given a latency. The rows therefore run twice: answering at once, and each URB
//! answered `SLOW_US` after it was submitted (a stand-in for a real host controller's
//! completion latency). The last column is the xHCI stack without split chains, where the
//! frontend sends a read's pieces one at a time (the backend's default before pieces were
//! held).

use std::time::Duration;

use serde_json::json;

use super::{median, repeats, Bus, Proto, Stack};

const SIZES: [usize; 2] = [64 << 10, 1 << 20];
const DEPTHS: [usize; 2] = [1, 4];
const SLOW_US: u64 = 100;

/// Echo throughput with persistent grants, a loopback on an EHCI-like bus against one on
/// an xHCI-like bus, interleaved repeats.
pub fn ehci_vs_xhci(dur: Duration) -> serde_json::Value {
    println!(
        "persistent grants: loopback on a bus that stops at a short packet (EHCI) vs one that \
         does not (xHCI: each piece of a split read waits for the one before it)"
    );
    println!(
        "{:>6} {:>8} {:>3} | {:>8} {:>8} {:>6} | {:>8} {:>8} | {:>8}",
        "lat µs", "size", "qd", "ehci", "xhci", "x/e", "ehci c/G", "xhci c/G", "xhci -sc"
    );
    let mut rows = Vec::new();
    for latency_us in [0, SLOW_US] {
        let bus = |no_stop_on_short, no_split_chain| Bus {
            no_stop_on_short,
            latency_us,
            no_split_chain,
        };
        let mut ehci = Stack::on_bus(Proto::Persistent, bus(false, false));
        let mut xhci = Stack::on_bus(Proto::Persistent, bus(true, false));
        let mut plain = Stack::on_bus(Proto::Persistent, bus(true, true));
        for &size in &SIZES {
            for &qd in &DEPTHS {
                let (mut es, mut xs, mut ps) = (Vec::new(), Vec::new(), Vec::new());
                for _ in 0..repeats() {
                    es.push(ehci.echo(size, qd, dur));
                    xs.push(xhci.echo(size, qd, dur));
                    ps.push(plain.echo(size, qd, dur));
                }
                let (e, x, p) = (median(es), median(xs), median(ps));
                println!(
                    "{latency_us:>6} {:>7}K {qd:>3} | {:>8.0} {:>8.0} {:>6.2} | {:>7.2}s {:>7.2}s | {:>8.0}",
                    size >> 10,
                    e.mb_s,
                    x.mb_s,
                    x.mb_s / e.mb_s,
                    e.cpu_s_per_gib,
                    x.cpu_s_per_gib,
                    p.mb_s
                );
                rows.push(json!({"latency_us": latency_us, "size": size, "qd": qd,
                    "ehci_mb_s": e.mb_s, "xhci_mb_s": x.mb_s, "xhci_no_split_chain_mb_s": p.mb_s,
                    "ehci_cpu_s_per_gib": e.cpu_s_per_gib, "xhci_cpu_s_per_gib": x.cpu_s_per_gib}));
            }
        }
    }
    json!(rows)
}
