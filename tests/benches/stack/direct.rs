//! The bench's baseline: the same device model (the sim bulk loopback) driven directly in
//! the bench process, URBs submitted and reaped as the backend does, no daemons, no rings.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pvusb_backend::host::{HostDevice, HostUrb, UrbBuf, UrbFlags, XferKind};
use pvusb_backend::sim::{plug, DeviceSpec, ModelSpec, SimDevice};
use pvusb_tests::cpu::cpu_time;

use super::{lat, Cell, Lat, CAPACITY, CTRL_SETUP, INT_EP};

/// The loopback, opened in this process.
pub struct Direct {
    _dir: tempfile::TempDir,
    dev: SimDevice,
    tag: u64,
}

impl Direct {
    pub fn new() -> Direct {
        let dir = tempfile::tempdir().unwrap();
        let busid = plug(
            dir.path(),
            &DeviceSpec::new(ModelSpec::Loopback { capacity: CAPACITY }),
        )
        .unwrap();
        let dev = SimDevice::open_busid(dir.path(), &busid).unwrap();
        Direct {
            _dir: dir,
            dev,
            tag: 0,
        }
    }

    fn submit(&mut self, kind: XferKind, ep: u8, buf: UrbBuf) -> u64 {
        self.tag += 1;
        let urb = HostUrb::new(self.tag, kind, ep, UrbFlags::empty(), buf);
        self.dev.submit(urb).map_err(|r| r.to_string()).unwrap();
        self.tag
    }

    fn reap_wait(&mut self) -> pvusb_backend::host::Completion {
        loop {
            if let Some(c) = self.dev.reap() {
                return c;
            }
            let fd = self.dev.poll_fd();
            let mut fds = [rustix::event::PollFd::new(
                &fd,
                rustix::event::PollFlags::IN,
            )];
            let ts = rustix::time::Timespec {
                tv_sec: 1,
                tv_nsec: 0,
            };
            let _ = rustix::event::poll(&mut fds, Some(&ts));
        }
    }

    /// `qd` OUT and `qd` IN URBs of `size` in flight; echoed bytes per second.
    pub fn echo(&mut self, size: usize, qd: usize, dur: Duration) -> Cell {
        let mut dir_of = HashMap::new();
        for _ in 0..qd {
            let t = self.submit(XferKind::Bulk, 0x81, UrbBuf::zeroed(size));
            dir_of.insert(t, 0x81u8);
            let t = self.submit(XferKind::Bulk, 0x01, UrbBuf::zeroed(size));
            dir_of.insert(t, 0x01u8);
        }
        let warm = Instant::now() + dur / 5;
        let (mut start, mut cpu0) = (Instant::now(), cpu_time("self"));
        let (mut bytes, mut urbs, mut measuring) = (0u64, 0u64, false);
        loop {
            let c = self.reap_wait();
            assert_eq!(c.status, 0, "direct URB failed");
            let ep = dir_of.remove(&c.tag).unwrap();
            if !measuring && Instant::now() >= warm {
                (measuring, start, cpu0, bytes, urbs) =
                    (true, Instant::now(), cpu_time("self"), 0, 0);
            }
            urbs += 1;
            if ep == 0x81 {
                bytes += u64::from(c.actual_length);
            }
            if measuring && start.elapsed() >= dur {
                break;
            }
            let t = self.submit(XferKind::Bulk, ep, c.buf);
            dir_of.insert(t, ep);
        }
        let el = start.elapsed().as_secs_f64();
        let cpu = (cpu_time("self") - cpu0).as_secs_f64();
        for c in self.dev.drain() {
            dir_of.remove(&c.tag);
        }
        // The loopback keeps what was written and not read: start the next cell empty.
        let _ = self.dev.reset();
        Cell {
            mb_s: bytes as f64 / el / 1e6,
            urbs_s: urbs as f64 / el,
            cpu_s_per_gib: cpu / (bytes as f64 / (1u64 << 30) as f64),
        }
    }

    /// 64-byte OUT then IN on the bulk (EP 1) or interrupt (EP 2) pair; half the pair's
    /// time per URB.
    pub fn ping(&mut self, n: usize, ep: u8) -> Lat {
        let kind = if ep == INT_EP {
            XferKind::Interrupt
        } else {
            XferKind::Bulk
        };
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let t0 = Instant::now();
            self.submit(kind, ep, UrbBuf::from_vec(vec![7; 64]));
            assert_eq!(self.reap_wait().status, 0);
            self.submit(kind, ep | 0x80, UrbBuf::zeroed(64));
            assert_eq!(self.reap_wait().status, 0);
            v.push(t0.elapsed() / 2);
        }
        lat(v)
    }

    pub fn control(&mut self, n: usize) -> Lat {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let mut b = CTRL_SETUP.to_vec();
            b.resize(8 + 64, 0);
            let t0 = Instant::now();
            self.submit(XferKind::Control, 0, UrbBuf::from_vec(b));
            let c = self.reap_wait();
            v.push(t0.elapsed());
            assert_eq!(c.status, 0);
        }
        lat(v)
    }
}
