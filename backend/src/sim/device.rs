//! `SimDevice`: a device model opened through its node, behind the `HostDevice` trait.
//!
//! The model runs in the process that opens the device. URBs are processed inline in
//! `submit` when they can run at once; a small worker thread handles whatever has to wait
//! (latency faults, iso frame pacing, a NAKing endpoint that a timer unblocks) and watches
//! the tree every 20 ms for unplug and run-time fault changes. Completions are signalled
//! on an eventfd (POLLIN).

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::{eventfd, EventfdFlags};
use rustix::fs::{flock, FlockOperation};

use super::bus::{self, BusError, FAULTS_FILE, INSTANCE_FILE};
use super::core::Core;
use super::model::{identity, instantiate, ModelError};
use crate::host::{
    Completion, CtrlError, Descriptors, DiscardError, HostDevice, HostSpeed, HostUrb, Readiness,
    Refused, ResolvedDevice, UsbRoots,
};

/// How often the worker looks at the tree (unplug, run-time faults).
const WATCH_PERIOD: Duration = Duration::from_millis(20);

/// Why a simulated device could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SimOpenError {
    #[error("device node {path}: {source}")]
    Node {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("device {0} is already open in another process or handle")]
    Busy(String),
    #[error(transparent)]
    Spec(#[from] BusError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("starting the device thread: {0}")]
    Thread(std::io::Error),
}

#[derive(Debug)]
struct Shared {
    core: Mutex<Core>,
    wake: Condvar,
    efd: OwnedFd,
    stop: std::sync::atomic::AtomicBool,
    /// When the worker's current wait ends, in nanoseconds after `epoch`. Written by the
    /// worker and read by submitters only under the `core` lock, so a submitter knows
    /// whether the worker would wake too late for the core's new deadline.
    worker_until: AtomicU64,
    epoch: Instant,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Core> {
        // A panic while holding the lock leaves consistent-enough state for teardown.
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn signal(&self) {
        let _ = rustix::io::write(&self.efd, &1u64.to_ne_bytes());
    }

    fn nanos(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }
}

/// An opened simulated device.
#[derive(Debug)]
pub struct SimDevice {
    shared: Arc<Shared>,
    worker: Option<JoinHandle<()>>,
    descriptors: Descriptors,
    speed: HostSpeed,
    busid: String,
    instance: u32,
    no_stop_on_short: bool,
    /// Holds the flock: the device is "claimed" while this is open.
    _node: File,
}

struct Watch {
    simdir: PathBuf,
    sysdir: PathBuf,
    busid: String,
    instance: Option<String>,
    faults_text: Option<String>,
}

impl SimDevice {
    /// Opens the simulated device `dev` (resolved under `roots`, i.e. `UsbRoots::sim`).
    pub fn open(roots: &UsbRoots, dev: &ResolvedDevice) -> Result<Self, SimOpenError> {
        let node_err = |source| SimOpenError::Node {
            path: dev.node.clone(),
            source,
        };
        let node = File::open(&dev.node).map_err(node_err)?;
        if flock(&node, FlockOperation::NonBlockingLockExclusive).is_err() {
            return Err(SimOpenError::Busy(dev.busid.clone()));
        }
        let simdir = roots
            .sysfs
            .parent()
            .and_then(Path::parent)
            .unwrap_or(Path::new("/"))
            .to_path_buf();
        let spec = bus::read_spec(&dev.sysdir)?;
        let serial = spec.serial.clone().unwrap_or_else(|| dev.busid.clone());
        let ident = identity(&spec, &serial);
        let state = bus::state_dir(&simdir, &serial);
        std::fs::create_dir_all(&state).map_err(|source| BusError::Io {
            what: "creating",
            path: state.clone(),
            source,
        })?;
        let model = instantiate(&spec, &ident, &state)?;
        let descriptors = ident.descriptors.clone();
        let speed = ident.speed;
        let mut core = Core::new(model, ident, spec.faults.clone(), Instant::now());
        core.no_stop_on_short = spec.no_stop_on_short;
        if spec.trace {
            let path = state.join(super::core::TRACE_FILE);
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|source| BusError::Io {
                    what: "opening",
                    path,
                    source,
                })?;
            core.trace = Some(super::core::TraceSink(Box::new(file)));
        }
        let efd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map_err(|e| SimOpenError::Thread(e.into()))?;
        let shared = Arc::new(Shared {
            core: Mutex::new(core),
            wake: Condvar::new(),
            efd,
            stop: std::sync::atomic::AtomicBool::new(false),
            worker_until: AtomicU64::new(0),
            epoch: Instant::now(),
        });
        let watch = Watch {
            faults_text: std::fs::read_to_string(dev.sysdir.join(FAULTS_FILE)).ok(),
            simdir,
            sysdir: dev.sysdir.clone(),
            busid: dev.busid.clone(),
            instance: std::fs::read_to_string(dev.sysdir.join(INSTANCE_FILE)).ok(),
        };
        let worker = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("sim-usb-{}", dev.busid))
                .spawn(move || run_worker(&shared, watch))
                .map_err(SimOpenError::Thread)?
        };
        tracing::debug!(busid = dev.busid, "simulated device opened");
        Ok(SimDevice {
            shared,
            worker: Some(worker),
            descriptors,
            speed,
            busid: dev.busid.clone(),
            instance: dev.instance(),
            no_stop_on_short: spec.no_stop_on_short,
            _node: node,
        })
    }

    /// Resolves `busid` on the simulated bus of `simdir` and opens it.
    pub fn open_busid(simdir: &Path, busid: &str) -> Result<Self, SimOpenError> {
        let roots = UsbRoots::sim(simdir);
        let dev = crate::host::resolve(&roots, busid).map_err(|e| SimOpenError::Node {
            path: roots.devices_dir().join(busid),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, e.to_string()),
        })?;
        Self::open(&roots, &dev)
    }

    /// The bus id this device was opened as.
    pub fn busid(&self) -> &str {
        &self.busid
    }

    /// Runs `f` on the core, then signals completions and wakes the worker if the core
    /// now needs it earlier than it would wake anyway (a futex wake and a thread switch
    /// per URB otherwise: most transfers complete right here).
    fn with_core<T>(&self, f: impl FnOnce(&mut Core, Instant) -> T) -> T {
        let mut core = self.shared.lock();
        let now = Instant::now();
        let r = f(&mut core, now);
        core.process(now);
        let signal = core.has_done();
        // The worker recomputes its deadline every time it takes the lock, so only a
        // waiting worker can oversleep; it published when its wait ends before waiting.
        let until = self.shared.worker_until.load(Ordering::Relaxed);
        let wake = core.unplug_requested
            || core
                .next_deadline(now)
                .is_some_and(|d| self.shared.nanos(d) < until);
        drop(core);
        if signal {
            self.shared.signal();
        }
        if wake {
            self.shared.wake.notify_one();
        }
        r
    }
}

fn run_worker(shared: &Shared, mut watch: Watch) {
    let mut next_watch = Instant::now() + WATCH_PERIOD;
    let mut unplugged = false;
    let mut core = shared.lock();
    while !shared.stop.load(std::sync::atomic::Ordering::Acquire) {
        let now = Instant::now();
        if now >= next_watch {
            next_watch = now + WATCH_PERIOD;
            drop(core);
            let present = watch.instance.is_some()
                && std::fs::read_to_string(watch.sysdir.join(INSTANCE_FILE)).ok() == watch.instance;
            let faults = std::fs::read_to_string(watch.sysdir.join(FAULTS_FILE)).ok();
            core = shared.lock();
            if !present && !core.is_gone() {
                tracing::info!(busid = watch.busid, "simulated device gone");
                core.disconnect();
                // Wake the engine even with nothing in flight, as usbfs's POLLHUP does.
                shared.signal();
            }
            if faults.is_some() && faults != watch.faults_text {
                match faults.as_deref().map(toml::from_str) {
                    Some(Ok(f)) => core.apply_faults(f),
                    Some(Err(e)) => tracing::warn!(busid = watch.busid, "bad faults file: {e}"),
                    None => {}
                }
                watch.faults_text = faults;
            }
        }
        if core.unplug_requested && !unplugged {
            unplugged = true;
            drop(core);
            if let Err(e) = bus::unplug(&watch.simdir, &watch.busid) {
                tracing::warn!(busid = watch.busid, "fault-injected unplug: {e}");
            }
            core = shared.lock();
        }
        core.process(now);
        if core.has_done() {
            shared.signal();
        }
        let deadline = core
            .next_deadline(now)
            .map_or(next_watch, |d| d.min(next_watch));
        let timeout = deadline.saturating_duration_since(Instant::now());
        shared
            .worker_until
            .store(shared.nanos(deadline), Ordering::Relaxed);
        core = match shared.wake.wait_timeout(core, timeout) {
            Ok((g, _)) => g,
            Err(p) => p.into_inner().0,
        };
    }
}

impl HostDevice for SimDevice {
    fn submit(&mut self, urb: HostUrb) -> Result<(), Refused> {
        self.with_core(|core, now| core.submit(urb, now))
    }

    fn reap(&mut self) -> Option<Completion> {
        let mut core = self.shared.lock();
        if let Some(c) = core.reap() {
            return Some(c);
        }
        // A gone device stays readable, as a usbfs fd keeps polling POLLHUP: whoever reaps
        // its last completion (the engine also reaps right after submitting) must not hide
        // the unplug from the poller.
        if core.is_gone() {
            return None;
        }
        // Reset the eventfd, then look again: a completion signalled between the first
        // look and the read must not be lost.
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&self.shared.efd, &mut buf);
        core.reap()
    }

    fn discard(&mut self, tag: u64) -> Result<(), DiscardError> {
        self.with_core(|core, _| core.discard(tag))
    }

    fn drain(&mut self) -> Vec<Completion> {
        self.shared.lock().drain()
    }

    fn in_flight(&self) -> usize {
        self.shared.lock().in_flight()
    }

    fn poll_fd(&self) -> BorrowedFd<'_> {
        self.shared.efd.as_fd()
    }

    fn readiness(&self) -> Readiness {
        Readiness::Readable
    }

    fn is_gone(&self) -> bool {
        self.shared.lock().is_gone()
    }

    fn instance(&self) -> u32 {
        self.instance
    }

    fn speed(&self) -> HostSpeed {
        self.speed
    }

    fn descriptors(&self) -> &Descriptors {
        &self.descriptors
    }

    fn active_config(&self) -> u8 {
        self.shared.lock().active_config()
    }

    fn set_configuration(&mut self, value: u8) -> Result<(), CtrlError> {
        self.with_core(|core, _| core.set_configuration(value))
    }

    fn set_interface(&mut self, interface: u8, alt: u8) -> Result<(), CtrlError> {
        self.with_core(|core, _| core.set_interface(interface, alt))
    }

    fn clear_halt(&mut self, endpoint: u8) -> Result<(), CtrlError> {
        self.with_core(|core, _| core.clear_halt(endpoint))
    }

    fn reset(&mut self) -> Result<(), CtrlError> {
        self.with_core(|core, _| core.reset())
    }

    fn bulk_continuation(&self) -> bool {
        !self.no_stop_on_short
    }

    fn release(&mut self) {
        // Nothing is bound to a simulated device besides us; the flock goes with the node
        // file when the device is dropped.
    }
}

impl Drop for SimDevice {
    fn drop(&mut self) {
        {
            // Set under the lock: the worker tests `stop` holding it, so it either sees the
            // flag or is already waiting and gets the notification.
            let _core = self.shared.lock();
            self.shared
                .stop
                .store(true, std::sync::atomic::Ordering::Release);
        }
        self.shared.wake.notify_all();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}
