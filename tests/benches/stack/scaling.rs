//! The scaling section: many controllers and devices at once, small URBs on each.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pvusb_backend::sim::{DeviceSpec, ModelSpec};
use pvusb_tests::cpu::cpu_time;
use pvusb_tests::platform::Platform;
use pvusb_tests::usbip::{bulk_in, bulk_out, devlist, UsbipClient};

use super::configured;

/// One scaling row: URBs/s, and CPU µs per URB of the whole run (the bench's client
/// included, which polls every connection in turn) and of the two daemons alone.
pub struct Scale {
    pub urbs_s: f64,
    pub cpu_us: f64,
    pub daemons_us: f64,
}

/// `ctrls` controllers × 31 ports with `devs` loopbacks each; every device gets a
/// 64-byte OUT/IN ping-pong at QD 4 for `dur`.
pub fn scaling(ctrls: u32, devs: u8, dur: Duration) -> Scale {
    let mut p = Platform::new(&[1]);
    for d in 0..ctrls {
        let id = p.add_controller(1, d, 31);
        for port in 1..=devs {
            let b = p.plug_as_is(&DeviceSpec::new(ModelSpec::Loopback { capacity: 1 << 20 }));
            p.assign(&id, port, Some(&b));
        }
    }
    // Eight controllers take more than gntalloc's default limit of 1024 pages.
    p.set_gntalloc_limit(1, 4096);
    p.start_backend();
    let addr = p.start_frontend(1);
    let want = (ctrls * u32::from(devs)) as usize;
    let list = pvusb_tests::wait::until(
        Duration::from_secs(60),
        "every device to be exported",
        || p.logs(),
        || {
            let l = devlist(addr);
            (l.len() >= want).then_some(l)
        },
    );
    let mut clients: Vec<UsbipClient> = list
        .iter()
        .map(|d| {
            configured(UsbipClient::import_when_ready(
                addr,
                &d.busid,
                Duration::from_secs(30),
                || p.logs(),
            ))
        })
        .collect();
    let children = |p: &Platform| {
        let mut t = Duration::ZERO;
        for pid in p
            .backend
            .iter()
            .chain(p.frontends.values().map(|(d, _)| d))
            .filter_map(|d| d.pid())
        {
            t += cpu_time(&pid.to_string());
        }
        t
    };
    let mut dirs: Vec<HashMap<u32, bool>> = vec![HashMap::new(); clients.len()];
    for (c, d) in clients.iter_mut().zip(&mut dirs) {
        for _ in 0..4 {
            d.insert(c.submit(bulk_in(1, 64)), true);
            d.insert(c.submit(bulk_out(1, vec![1; 64])), false);
        }
    }
    let start = Instant::now();
    let (self0, daemons0) = (cpu_time("self"), children(&p));
    let mut urbs = 0u64;
    while start.elapsed() < dur {
        for (c, d) in clients.iter_mut().zip(&mut dirs) {
            while let Ok(a) = c.next(Duration::from_micros(1)) {
                let is_in = d.remove(&a.seqnum()).unwrap();
                urbs += 1;
                let s = if is_in {
                    c.submit(bulk_in(1, 64))
                } else {
                    c.submit(bulk_out(1, vec![1; 64]))
                };
                d.insert(s, is_in);
            }
        }
    }
    let el = start.elapsed().as_secs_f64();
    let daemons = (children(&p) - daemons0).as_secs_f64();
    let cpu = (cpu_time("self") - self0).as_secs_f64() + daemons;
    let per_urb = |s: f64| s / urbs.max(1) as f64 * 1e6;
    Scale {
        urbs_s: urbs as f64 / el,
        cpu_us: per_urb(cpu),
        daemons_us: per_urb(daemons),
    }
}
