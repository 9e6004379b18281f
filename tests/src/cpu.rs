//! CPU time of processes from `/proc/<pid>/stat` (user + system, all threads).

use std::time::Duration;

/// User + system CPU time of process `pid` ("self" for this one); zero if unreadable.
pub fn cpu_time(pid: &str) -> Duration {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let Some(rest) = text.rsplit_once(')').map(|(_, r)| r) else {
        return Duration::ZERO;
    };
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    let ticks = rustix::param::clock_ticks_per_second().max(1);
    let t: u64 = f.iter().sum();
    Duration::from_nanos(t.saturating_mul(1_000_000_000) / ticks)
}
