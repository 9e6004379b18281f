//! The guest side of the demo, tests and benchmarks: a USB/IP client for the frontend's
//! `--usbip-listen` socket ([`client`]) and a USB mass-storage driver on top of it
//! ([`storage`]) that writes a pattern over a whole disk and reads it back, pipelined.

pub mod client;
pub mod storage;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pvusb_frontend::usbip::ExportedDevice;
use serde::Serialize;

pub use client::{devlist, Client, ClientError};
pub use storage::{Inquiry, MassStorage, StorageError};

/// How to exercise a disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskTest {
    /// Blocks per READ(10)/WRITE(10).
    pub chunk_blocks: u32,
    /// Commands in flight.
    pub window: usize,
    /// Pattern seed.
    pub seed: u8,
    /// Test only the first this many bytes (the whole disk if `None`).
    pub limit: Option<u64>,
}

impl Default for DiskTest {
    /// 32 KiB commands, 4 in flight, whole disk.
    fn default() -> Self {
        DiskTest {
            chunk_blocks: 64,
            window: 4,
            seed: 0x5a,
            limit: None,
        }
    }
}

/// What a disk test measured.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DiskReport {
    /// USB/IP bus id of the device.
    pub busid: String,
    /// INQUIRY vendor and product.
    pub inquiry: String,
    /// Block size.
    pub block_size: u32,
    /// Bytes written, then read back and verified.
    pub bytes: u64,
    /// Write throughput, MB/s (10^6 bytes).
    pub write_mb_s: f64,
    /// Read-and-verify throughput, MB/s.
    pub read_mb_s: f64,
    /// URBs timed.
    pub urbs: usize,
    /// Median URB latency, µs.
    pub p50_us: u64,
    /// 99th percentile URB latency, µs.
    pub p99_us: u64,
    /// Failed URBs or commands (the test stops at the first, so 0 or 1).
    pub errors: u64,
}

/// The `q`-quantile (0..=1) of `samples`, nearest rank; zero if empty.
pub fn percentile(samples: &[Duration], q: f64) -> Duration {
    let mut v = samples.to_vec();
    v.sort_unstable();
    if v.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q.clamp(0.0, 1.0) * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v.get(rank - 1).copied().unwrap_or_default()
}

fn mb_s(bytes: u64, t: Duration) -> f64 {
    bytes as f64 / 1e6 / t.as_secs_f64().max(1e-9)
}

/// The first exported device with a mass-storage interface (class 8), waiting up to
/// `wait` for one to appear.
pub fn find_storage(addr: SocketAddr, wait: Duration) -> Result<ExportedDevice, ClientError> {
    let deadline = Instant::now() + wait;
    loop {
        let found = devlist(addr).map(|devs| {
            devs.into_iter()
                .find(|d| d.device_class == 8 || d.interfaces.iter().any(|i| i.class == 8))
        });
        match found {
            Ok(Some(d)) => return Ok(d),
            Ok(None) | Err(ClientError::Closed(_)) if Instant::now() < deadline => {}
            Ok(None) => return Err(ClientError::Timeout(0, wait)),
            Err(e) => return Err(e),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Imports `busid`, identifies the disk, writes the pattern over it and verifies it.
/// `progress(done, total)` is called as bytes complete (write then read: total = 2×).
/// Returns the open device (for further use, e.g. watching it go away) and the report.
pub fn disk_test(
    addr: SocketAddr,
    busid: &str,
    cfg: &DiskTest,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(MassStorage, DiskReport), StorageError> {
    let client = Client::import(addr, busid)?;
    let mut disk = MassStorage::open(client)?;
    let inq = disk.inquiry()?;
    disk.test_unit_ready()?;
    let (blocks, bs) = disk.read_capacity()?;
    let count = match cfg.limit {
        Some(l) => blocks.min(l / u64::from(bs)),
        None => blocks,
    };
    let bytes = count * u64::from(bs);
    let total = 2 * bytes;
    let mut done = 0u64;
    disk.client.latencies.clear();
    let t0 = Instant::now();
    disk.write_pattern(count, cfg.chunk_blocks, cfg.window, cfg.seed, &mut |n| {
        done += n;
        progress(done, total);
    })?;
    let t_write = t0.elapsed();
    let t1 = Instant::now();
    disk.verify_pattern(count, cfg.chunk_blocks, cfg.window, cfg.seed, &mut |n| {
        done += n;
        progress(done, total);
    })?;
    let t_read = t1.elapsed();
    let lat = &disk.client.latencies;
    let report = DiskReport {
        busid: busid.to_owned(),
        inquiry: format!("{} {}", inq.vendor, inq.product),
        block_size: bs,
        bytes,
        write_mb_s: mb_s(bytes, t_write),
        read_mb_s: mb_s(bytes, t_read),
        urbs: lat.len(),
        p50_us: u64::try_from(percentile(lat, 0.5).as_micros()).unwrap_or(u64::MAX),
        p99_us: u64::try_from(percentile(lat, 0.99).as_micros()).unwrap_or(u64::MAX),
        errors: 0,
    };
    Ok((disk, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert_eq!(percentile(&v, 0.5), Duration::from_micros(50));
        assert_eq!(percentile(&v, 0.99), Duration::from_micros(99));
        assert_eq!(percentile(&v, 1.0), Duration::from_micros(100));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }
}
