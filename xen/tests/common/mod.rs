//! Helpers shared by the integration tests: an in-process broker in a temp directory.
#![allow(dead_code)]

use std::io::Write;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pvusb_xen::sim::{Broker, CopyVia, Counters, SimPlatform};
use pvusb_xen::DomId;

pub struct Sim {
    pub broker: Broker,
    pub released: Arc<Mutex<Vec<DomId>>>,
    pub dir: tempfile::TempDir,
}

impl Sim {
    pub fn new() -> Sim {
        let dir = tempfile::tempdir().unwrap();
        let released = Arc::new(Mutex::new(Vec::new()));
        let r = released.clone();
        let hook = Box::new(move |d: DomId| r.lock().unwrap().push(d));
        let broker = Broker::start_with_hook(dir.path(), Some(hook)).unwrap();
        Sim {
            broker,
            released,
            dir,
        }
    }

    /// Connects as dom0.
    pub fn dom0(&self) -> SimPlatform {
        SimPlatform::connect(self.dir.path(), DomId::DOM0).unwrap()
    }

    /// Connects as dom0, grant copies running as `via` says.
    #[allow(dead_code)]
    pub fn dom0_via(&self, via: CopyVia) -> SimPlatform {
        SimPlatform::connect_with(self.dir.path(), DomId::DOM0, via).unwrap()
    }

    /// Creates domain `n` (through the library call) and connects as it.
    pub fn domain(&self, n: u16) -> SimPlatform {
        self.broker.create_domain(DomId(n)).unwrap();
        SimPlatform::connect(self.dir.path(), DomId(n)).unwrap()
    }

    pub fn released(&self) -> Vec<DomId> {
        self.released.lock().unwrap().clone()
    }

    /// Waits until the counters equal `want` (connection closes are processed asynchronously).
    pub fn wait_counters(&self, want: Counters) {
        wait_until(|| self.broker.counters() == want, "counters");
    }
}

/// Counters with only dom0 and `connections` open connections.
pub fn idle(connections: u32) -> Counters {
    Counters {
        grants: 0,
        mappings: 0,
        channels: 0,
        domains: 1,
        connections,
        locals: 0,
    }
}

pub fn wait_until(mut cond: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Polls one fd for readability.
pub fn readable(fd: impl AsFd, timeout: Duration) -> bool {
    let ts = rustix::time::Timespec {
        tv_sec: timeout.as_secs() as i64,
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    let mut fds = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::IN,
    )];
    rustix::event::poll(&mut fds, Some(&ts)).unwrap() == 1
}

/// Tells the parent something; written straight to fd 1, which libtest does not capture.
pub fn say(msg: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "@@ {msg}").unwrap();
    out.flush().unwrap();
}

/// Sleeps until the parent kills us; gives up after a minute, or if the parent died (so a
/// failed parent leaves no process behind).
pub fn wait_for_sigkill() {
    let parent = std::os::unix::process::parent_id();
    for _ in 0..600 {
        if std::os::unix::process::parent_id() != parent {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::process::exit(1);
}
