//! Direct throughput of the simulated bulk loopback device through the `HostDevice` trait:
//! the issue-8 baseline ("the same device driven directly"). Keeps `DEPTH` OUT and IN URBs
//! of `SIZE` bytes in flight for about two seconds, then prints MB/s and URBs/s.
//!
//! `cargo run --release -p pvusb-backend --example loopback_bench [size_bytes] [depth]`

use std::time::{Duration, Instant};

use pvusb_backend::host::{HostDevice, HostUrb, UrbBuf, UrbFlags, XferKind};
use pvusb_backend::sim::{plug, DeviceSpec, ModelSpec, SimDevice};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let size: usize = args.next().map_or(Ok(65536), |s| s.parse())?;
    let depth: u64 = args.next().map_or(Ok(8), |s| s.parse())?;
    let tmp = tempfile::tempdir()?;
    let spec = DeviceSpec::new(ModelSpec::Loopback {
        capacity: size * depth as usize * 2,
    });
    let busid = plug(tmp.path(), &spec)?;
    let mut dev = SimDevice::open_busid(tmp.path(), &busid)?;
    let urb = |tag: u64, ep: u8, buf: UrbBuf| {
        HostUrb::new(tag, XferKind::Bulk, ep, UrbFlags::empty(), buf)
    };
    let mut tag = 0u64;
    for _ in 0..depth {
        tag += 1;
        dev.submit(urb(tag, 0x81, UrbBuf::zeroed(size)))
            .map_err(|r| anyhow::anyhow!("{r}"))?;
        tag += 1;
        dev.submit(urb(tag, 0x01, UrbBuf::zeroed(size)))
            .map_err(|r| anyhow::anyhow!("{r}"))?;
    }
    let (start, mut bytes_in, mut urbs) = (Instant::now(), 0u64, 0u64);
    while start.elapsed() < Duration::from_secs(2) {
        let Some(c) = dev.reap() else { continue };
        anyhow::ensure!(c.status == 0, "URB failed: {}", c.status);
        urbs += 1;
        let ep = if c.tag % 2 == 1 { 0x81 } else { 0x01 };
        if ep == 0x81 {
            bytes_in += u64::from(c.actual_length);
        }
        tag += 1;
        // Re-submit with the same parity so tags keep naming the direction.
        let next = if (tag % 2 == 1) == (ep == 0x81) {
            tag
        } else {
            tag + 1
        };
        tag = next;
        dev.submit(urb(next, ep, c.buf))
            .map_err(|r| anyhow::anyhow!("{r}"))?;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "sim loopback direct: {size} B URBs, depth {depth}: {:.0} MB/s echoed, {:.0} URBs/s",
        bytes_in as f64 / secs / 1e6,
        urbs as f64 / secs
    );
    drop(dev.drain());
    Ok(())
}
