//! usbfs semantics over a device model, without threads or files: per-endpoint queues,
//! validation, halts, BULK_CONTINUATION cancellation, standard requests, faults, disconnect.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use super::model::{Identity, Io, Model, Poll, Setup};
use super::spec::Faults;
use crate::host::{errno, Completion, DiscardError, HostUrb, Refused, UrbFlags, XferKind};

mod standard;
mod trace;
mod validate;

pub use trace::{TraceSink, TRACE_FILE};

#[derive(Debug)]
struct Queued {
    urb: HostUrb,
    /// When the host submitted it.
    queued_at: Instant,
    /// When the device answers it at the earliest (the fault's latency, iso frames).
    ready_at: Instant,
    /// Iso: first frame.
    frame: u64,
}

#[derive(Debug, Default)]
struct EpState {
    queue: VecDeque<Queued>,
    halted: bool,
    /// usbfs `disabled_bulk_eps`: continuation URBs refused with -EREMOTEIO.
    cont_refused: bool,
    next_frame: u64,
}

/// One simulated device's URB state. Every method is non-blocking; the owner calls
/// [`Core::process`] after `submit` and whenever [`Core::next_deadline`] passes.
#[derive(Debug)]
pub struct Core {
    model: Box<dyn Model>,
    ident: Identity,
    config: u8,
    alts: BTreeMap<u8, u8>,
    eps: BTreeMap<u8, EpState>,
    done: VecDeque<Completion>,
    tags: HashSet<u64>,
    gone: bool,
    origin: Instant,
    faults: Faults,
    processed: u64,
    matched_fail: u64,
    shorted: u64,
    /// Set when an `unplug_after` fault fired: the owner removes the device from the tree.
    pub unplug_requested: bool,
    /// URB trace (tests' device-side ledger), if enabled.
    pub trace: Option<TraceSink>,
    /// The host controller does not stop an endpoint at a short packet
    /// (`DeviceSpec::no_stop_on_short`): the continuation URB queued behind a bulk IN URB
    /// that ended short under SHORT_NOT_OK runs before usbfs's cancel reaches it.
    pub no_stop_on_short: bool,
}

/// How a URB that ran ended, as far as its endpoint's queue is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ended {
    /// Anything but a failed bulk URB.
    Other,
    /// A bulk URB failed (error, stall, injected fault).
    BulkFailed,
    /// A bulk IN URB ended short under SHORT_NOT_OK (-EREMOTEIO).
    BulkShort,
}

fn complete(urb: HostUrb, status: i32, actual: usize) -> Completion {
    Completion {
        tag: urb.tag,
        status,
        actual_length: u32::try_from(actual).unwrap_or(u32::MAX),
        iso_packets: Vec::new(),
        error_count: 0,
        start_frame: 0,
        buf: urb.buf,
    }
}

impl Core {
    /// A configured device (configuration 1 active, every interface at alt 0), as the host
    /// kernel leaves a device it enumerated.
    pub fn new(model: Box<dyn Model>, ident: Identity, faults: Faults, now: Instant) -> Self {
        let config = ident.descriptors.configs.first().map_or(0, |c| c.value);
        let mut core = Core {
            model,
            ident,
            config,
            alts: BTreeMap::new(),
            eps: BTreeMap::new(),
            done: VecDeque::new(),
            tags: HashSet::new(),
            gone: false,
            origin: now,
            faults: Faults::default(),
            processed: 0,
            matched_fail: 0,
            shorted: 0,
            unplug_requested: false,
            trace: None,
            no_stop_on_short: false,
        };
        core.apply_faults(faults);
        core
    }

    /// The model's identity (descriptors, strings, speed).
    pub fn identity(&self) -> &Identity {
        &self.ident
    }

    /// Replaces the fault settings; counters restart and `stall` endpoints halt now.
    pub fn apply_faults(&mut self, faults: Faults) {
        for &ep in &faults.stall {
            if ep & 0x7f != 0 {
                self.eps.entry(ep).or_default().halted = true;
            }
        }
        self.faults = faults;
        self.processed = 0;
        self.matched_fail = 0;
        self.shorted = 0;
    }

    /// True once disconnected.
    pub fn is_gone(&self) -> bool {
        self.gone
    }

    /// Accepted and not yet reaped.
    pub fn in_flight(&self) -> usize {
        self.tags.len()
    }

    /// Active configuration value.
    pub fn active_config(&self) -> u8 {
        self.config
    }

    fn alt_of(&self, iface: u8) -> u8 {
        self.alts.get(&iface).copied().unwrap_or(0)
    }

    /// Accepts or refuses an URB (like SUBMITURB). Accepted URBs run in `process`.
    pub fn submit(&mut self, urb: HostUrb, now: Instant) -> Result<(), Refused> {
        if let Err(error) = self.validate(&urb) {
            return Err(Refused { error, urb });
        }
        let key = if urb.kind == XferKind::Control {
            0
        } else {
            urb.endpoint
        };
        let latency = Duration::from_micros(self.faults.latency_us);
        let frame_now = self.frame_at(now);
        let ep = self.eps.entry(key).or_default();
        if urb.kind == XferKind::Bulk && !urb.flags.contains(UrbFlags::BULK_CONTINUATION) {
            ep.cont_refused = false;
        }
        let (ready_at, frame) = if urb.kind == XferKind::Iso {
            let asked = u64::try_from(urb.start_frame).unwrap_or(0);
            let start = if urb.flags.contains(UrbFlags::ISO_ASAP) || asked <= frame_now {
                ep.next_frame.max(frame_now + 1)
            } else {
                asked
            };
            let end = start + urb.iso_packets.len() as u64;
            ep.next_frame = end;
            (self.origin + Duration::from_millis(end) + latency, start)
        } else {
            (now + latency, 0)
        };
        self.tags.insert(urb.tag);
        ep.queue.push_back(Queued {
            urb,
            queued_at: now,
            ready_at,
            frame,
        });
        Ok(())
    }

    fn frame_at(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.origin).as_millis()).unwrap_or(u64::MAX)
    }

    /// Runs every endpoint's queue as far as it goes; true if anything completed.
    pub fn process(&mut self, now: Instant) -> bool {
        let mut any = false;
        loop {
            let mut progress = false;
            let keys: Vec<u8> = self.eps.keys().copied().collect();
            for key in keys {
                while !self.gone && self.run_head(key, now) {
                    progress = true;
                }
            }
            any |= progress;
            if !progress || self.gone {
                return any;
            }
        }
    }

    /// Earliest time something queued may progress on its own.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let heads = self
            .eps
            .values()
            .filter_map(|e| e.queue.front().map(|q| q.ready_at))
            .filter(|&t| t > now);
        heads.chain(self.model.next_wakeup()).min()
    }

    /// Pops one completion.
    pub fn reap(&mut self) -> Option<Completion> {
        let c = self.done.pop_front()?;
        self.tags.remove(&c.tag);
        Some(c)
    }

    /// True if `reap` has something.
    pub fn has_done(&self) -> bool {
        !self.done.is_empty()
    }

    /// Runs the head of `key`'s queue if it is ready; true if an URB completed. A failed
    /// bulk URB cancels its continuations (devio.c calls `cancel_bulk_urbs` from its
    /// completion), but on a `no_stop_on_short` bus the controller has already started the
    /// next URB when the cancel comes after a short packet: a continuation already queued
    /// runs first, whatever the device's latency (and, if it ends short too, the one behind
    /// it).
    fn run_head(&mut self, key: u8, now: Instant) -> bool {
        let Some(mut ended) = self.run_one(key, now, false) else {
            return false;
        };
        let mut ran = 1;
        let failed = ended != Ended::Other;
        while ended == Ended::BulkShort && self.no_stop_on_short && self.continuation_next(key, now)
        {
            let Some(next) = self.run_one(key, now, true) else {
                break;
            };
            ended = next;
            ran += 1;
        }
        if failed {
            self.cancel_continuations(key);
        }
        self.processed += ran;
        if self
            .faults
            .unplug_after
            .is_some_and(|n| self.processed >= n)
        {
            self.unplug_requested = true;
            self.disconnect();
        }
        true
    }

    /// True if `key`'s queue starts with a BULK_CONTINUATION URB submitted by `now`.
    fn continuation_next(&self, key: u8, now: Instant) -> bool {
        self.eps
            .get(&key)
            .and_then(|e| e.queue.front())
            .is_some_and(|q| {
                q.urb.flags.contains(UrbFlags::BULK_CONTINUATION) && q.queued_at <= now
            })
    }

    /// Runs the head of `key`'s queue if it is ready (`started`: if the controller already
    /// started it, latency or not) and the device takes it now, completing it (without
    /// cancelling anything).
    fn run_one(&mut self, key: u8, now: Instant, started: bool) -> Option<Ended> {
        let ep = self.eps.get_mut(&key)?;
        let waits = |q: &Queued| {
            if started {
                q.queued_at > now
            } else {
                q.ready_at > now
            }
        };
        if ep.queue.front().is_none_or(waits) {
            return None;
        }
        let halted = ep.halted;
        let mut q = ep.queue.pop_front()?;
        let kind = q.urb.kind;
        let is_in = q.urb.is_in();
        let addr = q.urb.endpoint;
        let mut fail = None;
        // Counters only advance for attempts that complete (a NAKed attempt is retried).
        let (fail_before, short_before) = (self.matched_fail, self.shorted);
        if let Some(f) = self.faults.fail_nth {
            if f.endpoint.is_none_or(|e| e == addr) {
                self.matched_fail += 1;
                if self.matched_fail == f.n {
                    fail = Some(-f.errno.abs());
                }
            }
        }
        let (status, actual, iso) = match (fail, kind) {
            (Some(status), _) => (status, 0, None),
            (None, XferKind::Iso) => {
                let mut io = Io::new(&mut q.urb.buf, 0, usize::MAX);
                let r = self.model.iso(addr, q.frame, &q.urb.iso_packets, &mut io);
                (0, r.iter().map(|p| p.actual_length as usize).sum(), Some(r))
            }
            (None, XferKind::Control) => {
                let mut raw = [0u8; 8];
                q.urb.buf.read_at(0, &mut raw);
                let setup = Setup::parse(raw);
                let mut io = Io::new(&mut q.urb.buf, 8, usize::from(setup.length));
                match self.control(setup, &mut io) {
                    Poll::Pending => {
                        (self.matched_fail, self.shorted) = (fail_before, short_before);
                        self.requeue(key, q);
                        return None;
                    }
                    Poll::Ok => (0, io.actual(), None),
                    Poll::Stall => (-errno::EPIPE, io.actual(), None),
                    Poll::Error(e) => (-e.abs(), io.actual(), None),
                }
            }
            (None, _) if halted => (-errno::EPIPE, 0, None),
            (None, _) => {
                let mut len = usize::MAX;
                if let Some(s) = self.faults.short_read {
                    let applies = is_in
                        && s.endpoint.is_none_or(|e| e == addr)
                        && s.count.is_none_or(|c| self.shorted < c);
                    if applies {
                        self.shorted += 1;
                        len = s.max_bytes as usize;
                    }
                }
                let mut io = Io::new(&mut q.urb.buf, 0, len);
                match self.model.transfer(addr, &mut io, now) {
                    Poll::Pending => {
                        (self.matched_fail, self.shorted) = (fail_before, short_before);
                        self.requeue(key, q);
                        return None;
                    }
                    Poll::Ok => (0, io.actual(), None),
                    Poll::Stall => {
                        if let Some(ep) = self.eps.get_mut(&key) {
                            ep.halted = true;
                        }
                        (-errno::EPIPE, io.actual(), None)
                    }
                    Poll::Error(e) => (-e.abs(), io.actual(), None),
                }
            }
        };
        let requested = match kind {
            XferKind::Control => q.urb.buf.len().saturating_sub(8),
            _ => q.urb.buf.len(),
        };
        let mut status = status;
        let mut ended = if kind == XferKind::Bulk && status < 0 {
            Ended::BulkFailed
        } else {
            Ended::Other
        };
        if status == 0
            && is_in
            && kind != XferKind::Iso
            && q.urb.flags.contains(UrbFlags::SHORT_NOT_OK)
            && actual < requested
        {
            status = -errno::EREMOTEIO;
            if kind == XferKind::Bulk {
                ended = Ended::BulkShort;
            }
        }
        if let Some(sink) = &mut self.trace {
            sink.record(&q.urb, requested, actual, status);
        }
        let mut c = complete(q.urb, status, actual);
        if let Some(packets) = iso {
            c.error_count = packets.iter().filter(|p| p.status != 0).count() as u32;
            c.iso_packets = packets;
            c.start_frame = i32::try_from(q.frame & 0x7fff_ffff).unwrap_or(0);
        }
        self.done.push_back(c);
        Some(ended)
    }

    fn requeue(&mut self, key: u8, q: Queued) {
        if let Some(ep) = self.eps.get_mut(&key) {
            ep.queue.push_front(q);
        }
    }

    /// devio.c `cancel_bulk_urbs`: unlink the continuation URBs queued behind a failed one,
    /// up to the first non-continuation URB; with none, refuse further continuations.
    fn cancel_continuations(&mut self, key: u8) {
        let Some(ep) = self.eps.get_mut(&key) else {
            return;
        };
        let mut new_transfer = false;
        while let Some(q) = ep.queue.front() {
            if !q.urb.flags.contains(UrbFlags::BULK_CONTINUATION) {
                new_transfer = true;
                break;
            }
            if let Some(q) = ep.queue.pop_front() {
                self.done.push_back(complete(q.urb, -errno::ECONNRESET, 0));
            }
        }
        if !new_transfer {
            ep.cont_refused = true;
        }
    }

    /// Discards one queued URB: it completes with -ECONNRESET.
    pub fn discard(&mut self, tag: u64) -> Result<(), DiscardError> {
        for ep in self.eps.values_mut() {
            if let Some(pos) = ep.queue.iter().position(|q| q.urb.tag == tag) {
                if let Some(q) = ep.queue.remove(pos) {
                    self.done.push_back(complete(q.urb, -errno::ECONNRESET, 0));
                    return Ok(());
                }
            }
        }
        Err(DiscardError::NotInFlight(tag))
    }

    /// The device went away: every queued URB completes with -ESHUTDOWN, submits fail.
    pub fn disconnect(&mut self) {
        self.gone = true;
        for ep in self.eps.values_mut() {
            while let Some(q) = ep.queue.pop_front() {
                self.done.push_back(complete(q.urb, -errno::ESHUTDOWN, 0));
            }
        }
    }

    /// Kills everything queued (-ENOENT) and returns every outstanding completion.
    pub fn drain(&mut self) -> Vec<Completion> {
        for ep in self.eps.values_mut() {
            while let Some(q) = ep.queue.pop_front() {
                self.done.push_back(complete(q.urb, -errno::ENOENT, 0));
            }
        }
        self.tags.clear();
        self.done.drain(..).collect()
    }
}
