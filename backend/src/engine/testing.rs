//! In-process stand-ins for the engine's surroundings (feature `fuzzing`, and unit tests):
//! guest memory as a heap arena of pages, a thread-free simulated device, a counting event
//! channel, and [`fuzz_controller`], which drives a whole controller from arbitrary bytes.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use pvusb_ring::shm::Shm;
use pvusb_ring::sring::{ConnBackRing, ConnFrontRing, UrbBackRing, UrbFrontRing};
use pvusb_ring::wire::{
    ConnEvent, ConnRequest, Port, RawUrbRequest, UrbResponse, UsbVer, PAGE_SIZE, RING_PAGE_SIZE,
};
use pvusb_xen::{DomId, GrantRef, MapError};
use tracing::Span;
use zerocopy::FromBytes;

mod copier;
pub use copier::FakeCopier;

use super::copy::Copied;
use super::journal::{Journal, Recovered, RingId, JOURNAL_BYTES};
use super::memory::{GuestMemory, Mapped, Notify};
use super::{Engine, EngineConfig, Features, Link};
use crate::host::{
    Completion, CtrlError, Descriptors, DiscardError, HostDevice, HostSpeed, HostUrb, Readiness,
    Refused,
};
use crate::sim::core::Core;
use crate::sim::spec::{DeviceSpec, Faults, ModelSpec};

/// A guest's pages: grant ref `n` is page `n` of the arena. Mappings copy the pages in and
/// (writable ones) back when dropped; a one-page ring mapping is a direct view.
#[derive(Clone, Debug)]
pub struct FakeMemory {
    arena: Shm,
    pages: u32,
    live: Arc<AtomicUsize>,
}

impl FakeMemory {
    /// An arena of `pages` zeroed pages.
    pub fn new(pages: u32) -> Self {
        FakeMemory {
            arena: Shm::heap(pages as usize * PAGE_SIZE),
            pages,
            live: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The whole arena (the guest's side of every page).
    pub fn arena(&self) -> &Shm {
        &self.arena
    }

    /// Page `gref` as a shared view.
    pub fn page(&self, gref: u32) -> Shm {
        self.arena
            .slice(gref as usize * PAGE_SIZE, PAGE_SIZE)
            .unwrap_or_else(|_| Shm::heap(PAGE_SIZE))
    }

    /// Data mappings not yet dropped.
    pub fn live_mappings(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }
}

impl GuestMemory for FakeMemory {
    fn map(&self, refs: &[u32], writable: bool) -> Result<Box<dyn Mapped>, MapError> {
        if refs.is_empty() || refs.len() > pvusb_xen::MAX_PAGES_PER_CALL {
            return Err(MapError::BadCount(refs.len()));
        }
        if refs.iter().any(|&r| r >= self.pages) {
            return Err(MapError::NotGranted {
                domid: DomId(1),
                refs: refs.iter().copied().map(GrantRef).collect(),
            });
        }
        let copy = Shm::heap(refs.len() * PAGE_SIZE);
        let mut page = vec![0u8; PAGE_SIZE];
        for (i, &r) in refs.iter().enumerate() {
            let _ = self.arena.read(r as usize * PAGE_SIZE, &mut page);
            let _ = copy.write(i * PAGE_SIZE, &page);
        }
        self.live.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(FakeMap {
            copy,
            mem: self.clone(),
            refs: refs.to_vec(),
            writable,
        }))
    }
}

#[derive(Debug)]
struct FakeMap {
    copy: Shm,
    mem: FakeMemory,
    refs: Vec<u32>,
    writable: bool,
}

impl Mapped for FakeMap {
    fn into_shm(mut self: Box<Self>) -> Option<Shm> {
        let first = *self.refs.first()?;
        // A ring is a live view of the guest's page, not a copy.
        self.writable = false;
        Some(self.mem.page(first))
    }
    fn len(&self) -> usize {
        self.copy.len()
    }
    fn into_data(self: Box<Self>) -> Option<Shm> {
        // A read-only copy for read-only mappings, so writes are refused as by the kernel.
        let view = if self.writable {
            self.copy.clone()
        } else {
            self.copy.read_only()
        };
        // Written back to the guest's pages when the last view drops the mapping.
        let owner: Arc<dyn Send + Sync> = Arc::new(*self);
        Some(view.with_owner(owner))
    }
}

impl Drop for FakeMap {
    fn drop(&mut self) {
        if self.writable {
            let mut page = vec![0u8; PAGE_SIZE];
            for (i, &r) in self.refs.iter().enumerate() {
                let _ = self.copy.read(i * PAGE_SIZE, &mut page);
                let _ = self.mem.arena.write(r as usize * PAGE_SIZE, &page);
            }
        }
        self.mem.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An event channel that counts kicks.
#[derive(Debug, Default, Clone)]
pub struct CountNotify(pub Arc<AtomicUsize>);

impl Notify for CountNotify {
    fn notify(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A simulated device model run inline (no worker thread, no files): everything that can
/// run does so during the call that made it possible.
#[derive(Debug)]
pub struct InProcDevice {
    core: Core,
    descriptors: Descriptors,
    speed: HostSpeed,
    efd: std::os::fd::OwnedFd,
    /// Unique per device made (as a host's bus and device number per plug).
    instance: u32,
}

/// The next [`InProcDevice`]'s instance.
static NEXT_INSTANCE: AtomicU32 = AtomicU32::new(1);

impl InProcDevice {
    /// A device of `model` (storage gets a 16-block in-memory disk).
    pub fn new(model: ModelSpec) -> Option<Self> {
        Self::on_bus(model, Bus::default())
    }

    /// A device of `model` on `bus`.
    pub fn on_bus(model: ModelSpec, bus: Bus) -> Option<Self> {
        let spec = DeviceSpec::new(model.clone());
        let ident = crate::sim::model::identity(&spec, "FAKE");
        let m: Box<dyn crate::sim::model::Model> = match model {
            ModelSpec::Storage { .. } => {
                let fd =
                    rustix::fs::memfd_create("pvusb-disk", rustix::fs::MemfdFlags::CLOEXEC).ok()?;
                let file = std::fs::File::from(fd);
                file.set_len(16 * 512).ok()?;
                let lun = crate::sim::model::scsi::Lun::new(file, 16, "FAKE");
                Box::new(crate::sim::model::storage::Storage::with_lun(
                    lun,
                    ident.speed,
                ))
            }
            _ => {
                crate::sim::model::instantiate(&spec, &ident, std::path::Path::new("/nonexistent"))
                    .ok()?
            }
        };
        let descriptors = ident.descriptors.clone();
        let speed = ident.speed;
        let efd = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).ok()?;
        let mut core = Core::new(m, ident, bus.faults, Instant::now());
        core.no_stop_on_short = bus.no_stop_on_short;
        Some(InProcDevice {
            core,
            descriptors,
            speed,
            efd,
            instance: NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// Unplugs the device: everything in flight completes, later submits are refused.
    pub fn unplug(&mut self) {
        self.core.disconnect();
    }
}

impl HostDevice for InProcDevice {
    fn submit(&mut self, urb: HostUrb) -> Result<(), Refused> {
        let now = Instant::now();
        let r = self.core.submit(urb, now);
        self.core.process(now);
        r
    }
    fn reap(&mut self) -> Option<Completion> {
        self.core.process(Instant::now());
        self.core.reap()
    }
    fn discard(&mut self, tag: u64) -> Result<(), DiscardError> {
        let r = self.core.discard(tag);
        self.core.process(Instant::now());
        r
    }
    fn drain(&mut self) -> Vec<Completion> {
        self.core.drain()
    }
    fn in_flight(&self) -> usize {
        self.core.in_flight()
    }
    fn poll_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.efd)
    }
    fn readiness(&self) -> Readiness {
        Readiness::Readable
    }
    fn is_gone(&self) -> bool {
        self.core.is_gone()
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
        self.core.active_config()
    }
    fn set_configuration(&mut self, value: u8) -> Result<(), CtrlError> {
        self.core.set_configuration(value)
    }
    fn set_interface(&mut self, interface: u8, alt: u8) -> Result<(), CtrlError> {
        self.core.set_interface(interface, alt)
    }
    fn clear_halt(&mut self, endpoint: u8) -> Result<(), CtrlError> {
        self.core.clear_halt(endpoint)
    }
    fn reset(&mut self) -> Result<(), CtrlError> {
        self.core.reset()
    }
    fn release(&mut self) {}
    fn bulk_continuation(&self) -> bool {
        !self.core.no_stop_on_short
    }
}

/// The host controller an [`InProcDevice`] sits on, and the faults it injects from the
/// start.
#[derive(Clone, Debug, Default)]
pub struct Bus {
    /// xHCI-like: no stop at a short packet (`DeviceSpec::no_stop_on_short`).
    pub no_stop_on_short: bool,
    /// Faults applied at plug time.
    pub faults: Faults,
}

/// Pages of the fuzzed guest: 0 urb ring, 1 conn ring, the rest data.
const PAGES: u32 = 24;

/// A controller with a loopback (port 1), a keyboard (port 2) and a disk (port 3), and
/// a guest whose rings live in a [`FakeMemory`].
#[derive(Debug)]
pub struct Rig {
    /// The controller.
    pub engine: Engine,
    /// The guest's memory.
    pub mem: FakeMemory,
    /// The guest's half of the URB ring.
    pub front: UrbFrontRing,
    /// The guest's half of the conn ring.
    pub conn: ConnFrontRing,
    /// Responses the guest read, in order.
    pub responses: Vec<UrbResponse>,
    /// Hotplug events the guest read, in order.
    pub events: Vec<ConnEvent>,
    /// Whether the controller was closed for a protocol error.
    pub closed: bool,
    /// Containment as asked; split chains always negotiated (they change nothing for a
    /// guest that does not use the flags).
    features: Features,
    /// Set when data moves by grant copy instead of mappings.
    pub copier: Option<FakeCopier>,
    /// The backend's journal page (see [`super::journal`]).
    journal: Shm,
}

/// How [`Rig::connect`] takes the rings.
enum Takeover {
    /// Fresh rings, journaled.
    No(Journal),
    /// From a dead process, with its journal and what it recovered.
    Journal(Journal, Recovered),
    /// From a dead process without a journal (a fresh one is started).
    Positional(Journal),
}

/// The rig's rings, as its journal names them.
const RIG_RINGS: RingId = RingId {
    urb_gref: 0,
    evtchn: 1,
};

impl Rig {
    /// A connected controller (`aca`: containment negotiated).
    pub fn new(max_bulk_urb: usize, aca: bool) -> Option<Self> {
        Self::with_conn_slots(max_bulk_urb, aca, u16::MAX)
    }

    /// Like [`Rig::new`], but data moves by grant copy ([`super::copy::Copied`]).
    pub fn copying(max_bulk_urb: usize, aca: bool) -> Option<Self> {
        let mut rig = Self::new(max_bulk_urb, aca)?;
        rig.copier = Some(FakeCopier::new(rig.mem.clone()));
        rig.engine.disconnect();
        rig.reconnect()?;
        Some(rig)
    }

    /// Like [`Rig::new`], but the guest posts only `slots` conn ring requests.
    pub fn with_conn_slots(max_bulk_urb: usize, aca: bool, slots: u16) -> Option<Self> {
        Self::build(max_bulk_urb, aca, slots, Bus::default())
    }

    /// Like [`Rig::new`], with the loopback (port 1) on `bus`.
    pub fn with_loopback_on(max_bulk_urb: usize, aca: bool, bus: Bus) -> Option<Self> {
        Self::build(max_bulk_urb, aca, u16::MAX, bus)
    }

    fn build(max_bulk_urb: usize, aca: bool, slots: u16, bus: Bus) -> Option<Self> {
        let mem = FakeMemory::new(PAGES);
        let mut engine = Engine::new(
            EngineConfig {
                num_ports: 4,
                usb_ver: UsbVer::Usb20,
                max_bulk_urb,
            },
            Span::none(),
        );
        let models = [
            ModelSpec::Loopback { capacity: 8192 },
            ModelSpec::Keyboard { text: "hi".into() },
            ModelSpec::Storage { size_bytes: 8192 },
        ];
        for (i, m) in models.into_iter().enumerate() {
            let port = Port::new(u8::try_from(i + 1).ok()?)?;
            let dev = if i == 0 {
                InProcDevice::on_bus(m, bus.clone())?
            } else {
                InProcDevice::new(m)?
            };
            engine.attach(port, "1-1", Box::new(dev)).ok()?;
        }
        let (front, conn) = Self::fresh_rings(&mem, slots)?;
        let mut rig = Rig {
            engine,
            mem,
            front,
            conn,
            responses: Vec::new(),
            events: Vec::new(),
            closed: false,
            features: Features {
                aca,
                split_chain: true,
            },
            copier: None,
            journal: Shm::heap(JOURNAL_BYTES),
        };
        rig.link()?;
        Some(rig)
    }

    fn fresh_rings(mem: &FakeMemory, slots: u16) -> Option<(UrbFrontRing, ConnFrontRing)> {
        let _ = mem.arena().fill(0, 2 * RING_PAGE_SIZE, 0);
        let front = UrbFrontRing::init(mem.page(0)).ok()?;
        let mut conn = ConnFrontRing::init(mem.page(1)).ok()?;
        let mut id = 0u16;
        while !conn.is_full() && id < slots {
            conn.push_request(&ConnRequest { id }.to_raw()).ok()?;
            id = id.wrapping_add(1);
        }
        conn.push_requests();
        Some((front, conn))
    }

    fn link(&mut self) -> Option<()> {
        let urb = UrbBackRing::new(self.mem.page(0)).ok()?;
        let conn = ConnBackRing::new(self.mem.page(1)).ok()?;
        let journal = Journal::start(self.journal.clone(), RIG_RINGS, 0, urb.size()).ok()?;
        self.connect(urb, conn, Takeover::No(journal)).map(|_| ())
    }

    /// A backend process dies (nothing it had is answered) and the next one takes the
    /// live rings over as `xenbus` does for a frontend that was already connected: past
    /// what the dead one's journal says it took. Returns how many requests it fails.
    pub fn restart_backend(&mut self) -> Option<u32> {
        self.engine.die();
        let ring = UrbBackRing::new(self.mem.page(0)).ok()?;
        let (rsp_prod, size) = (ring.sring().rsp_prod().load(Ordering::Acquire), ring.size());
        let (journal, rec) = Journal::recover(self.journal.clone(), RIG_RINGS, rsp_prod, size)?;
        let urb = UrbBackRing::attach_taken(self.mem.page(0), rsp_prod, rec.req_cons).ok()?;
        let conn = self.conn_taken_over()?;
        self.connect(urb, conn, Takeover::Journal(journal, rec))
    }

    /// [`Rig::restart_backend`] without a journal (a first start, or a runtime directory
    /// lost): the rings are taken over at their published index and what lies between that
    /// and `req_prod` is failed. Returns how many.
    pub fn restart_backend_unjournaled(&mut self) -> Option<u32> {
        self.engine.die();
        let at = |ring: &UrbBackRing| ring.sring().rsp_prod().load(Ordering::Acquire);
        let urb = UrbBackRing::new(self.mem.page(0)).ok()?;
        let urb = UrbBackRing::attach(self.mem.page(0), at(&urb)).ok()?;
        let conn = self.conn_taken_over()?;
        let journal =
            Journal::start(self.journal.clone(), RIG_RINGS, urb.req_cons(), urb.size()).ok()?;
        self.connect(urb, conn, Takeover::Positional(journal))
    }

    fn conn_taken_over(&self) -> Option<ConnBackRing> {
        let conn = ConnBackRing::new(self.mem.page(1)).ok()?;
        let idx = conn.sring().rsp_prod().load(Ordering::Acquire);
        ConnBackRing::attach(self.mem.page(1), idx).ok()
    }

    /// Puts a request on the ring without telling the backend (it is not served).
    pub fn push_unseen(&mut self, raw: &RawUrbRequest) {
        if self.front.push_request(raw).is_ok() {
            self.front.push_requests();
        }
    }

    fn connect(&mut self, urb: UrbBackRing, conn: ConnBackRing, how: Takeover) -> Option<u32> {
        let mem: Box<dyn GuestMemory> = match &self.copier {
            Some(c) => Box::new(
                Copied::new(
                    self.mem.clone(),
                    Arc::new(c.clone()),
                    DomId(1),
                    super::copy::ARENA_PAGES,
                )
                .ok()?,
            ),
            None => Box::new(self.mem.clone()),
        };
        let mut link = Link::new(
            urb,
            conn,
            Box::new(CountNotify::default()),
            mem,
            4,
            self.features,
        );
        let left_over = match how {
            Takeover::No(journal) => {
                link.set_journal(journal);
                0
            }
            Takeover::Journal(journal, rec) => {
                link.set_journal(journal);
                link.fail_taken(&rec)
            }
            Takeover::Positional(journal) => {
                link.set_journal(journal);
                link.fail_left_over()
            }
        };
        self.engine.connect(link);
        Some(left_over)
    }

    /// Pushes raw request bytes and lets the controller serve them.
    pub fn push(&mut self, raw: &RawUrbRequest) {
        if self.front.push_request(raw).is_ok() {
            self.front.push_requests();
        }
        self.kick();
    }

    /// The event channel fired.
    pub fn kick(&mut self) {
        if self.closed {
            return;
        }
        loop {
            match self.engine.on_ring_event() {
                Ok(true) => continue,
                Ok(false) => break,
                Err(_) => {
                    self.engine.disconnect();
                    self.closed = true;
                    break;
                }
            }
        }
    }

    /// Reaps every device (the daemon does on their fds), then reads responses and
    /// hotplug events as the guest.
    pub fn collect(&mut self) {
        for p in 1..=4 {
            if let Some(port) = Port::new(p) {
                if self.engine.on_device_ready(port) == super::DeviceState::Gone {
                    drop(self.engine.detach(port));
                }
            }
        }
        while let Ok(Some(raw)) = self.front.pop_response() {
            if let Ok(r) = UrbResponse::parse(&raw) {
                self.responses.push(r);
            }
        }
        while let Ok(Some(raw)) = self.conn.pop_response() {
            if let Ok(ev) = ConnEvent::parse(&raw, 4) {
                self.events.push(ev);
            }
            let _ = self
                .conn
                .push_request(&ConnRequest { id: raw.id.get() }.to_raw());
        }
        self.conn.push_requests();
    }

    /// Disconnects and reconnects with fresh rings (a frontend reload).
    pub fn reconnect(&mut self) -> Option<()> {
        self.engine.disconnect();
        let (front, conn) = Self::fresh_rings(&self.mem, u16::MAX)?;
        self.front = front;
        self.conn = conn;
        self.closed = false;
        self.link()
    }
}

/// Reads `n` bytes of fuzz input (zero-padded).
fn take(input: &mut &[u8], n: usize) -> Vec<u8> {
    let k = n.min(input.len());
    let (head, tail) = input.split_at(k);
    *input = tail;
    let mut v = head.to_vec();
    v.resize(n, 0);
    v
}

/// Drives a whole controller from arbitrary bytes: raw and steered requests, ring page
/// scribbles, device completions, unplugs and reconnects. Panics only if the engine
/// breaks an invariant: a panic inside it, a grant mapping left alive after the controller
/// disconnected, or a response to a request that was never pushed.
pub fn fuzz_controller(data: &[u8]) {
    let mut input = data;
    let head = take(&mut input, 2);
    let max_bulk = 1024 * (1 + usize::from(head[0] % 8));
    let aca = head[1] & 1 != 0;
    let rig = if head[1] & 4 != 0 {
        let bus = Bus {
            no_stop_on_short: true,
            ..Bus::default()
        };
        Rig::with_loopback_on(max_bulk, aca, bus)
    } else if head[1] & 2 != 0 {
        Rig::copying(max_bulk, aca)
    } else {
        Rig::new(max_bulk, aca)
    };
    let Some(mut rig) = rig else {
        return;
    };
    let mut pushed = 0usize;
    while let Some((&op, rest)) = input.split_first() {
        input = rest;
        match op % 8 {
            0 => {
                let b = take(&mut input, 148);
                if let Ok(raw) = RawUrbRequest::read_from_bytes(&b) {
                    rig.push(&raw);
                    pushed += 1;
                }
            }
            1 | 2 => {
                // A request steered towards valid: small port, known address, data pages.
                let b = take(&mut input, 12);
                let mut raw = RawUrbRequest::default();
                raw.id.set(u16::from(b[0] % 20));
                let port = u32::from(b[1] % 4) + 1;
                let dev = u32::from(b[2] % 3);
                let ep = u32::from(b[3] & 0x8f);
                let ty = u32::from(b[4] % 4);
                raw.pipe
                    .set(port | (dev << 8) | ((ep & 0xf) << 15) | (ep & 0x80) | (ty << 30));
                let nsegs = u16::from(b[5] % 4);
                raw.nr_buffer_segs.set(nsegs);
                let seg_len = u16::from(b[6]) * 16 + 1;
                raw.buffer_length.set(seg_len.saturating_mul(nsegs));
                // SHORT_NOT_OK, ACA_CLEAR, SPLIT_MORE, SPLIT_CONT.
                let flags = [(1, 0x0001), (2, 0x8000), (4, 0x4000), (8, 0x2000)];
                raw.transfer_flags.set(
                    flags
                        .iter()
                        .filter(|(bit, _)| b[7] & bit != 0)
                        .fold(0, |f, (_, flag)| f | flag),
                );
                raw.u.copy_from_slice(&b[4..12]);
                for (i, s) in raw.seg.iter_mut().take(usize::from(nsegs)).enumerate() {
                    s.gref.set(2 + (u32::from(b[8]) + i as u32) % (PAGES - 1));
                    s.offset.set(u16::from(b[9] % 8) * 64);
                    s.length.set(seg_len);
                }
                if op % 8 == 2 {
                    // Unlink instead.
                    raw.pipe.set(raw.pipe.get() | 0x20);
                    raw.nr_buffer_segs.set(0);
                    raw.u[0] = b[10] % 20;
                    raw.u[1] = 0;
                }
                rig.push(&raw);
                pushed += 1;
            }
            3 => {
                let b = take(&mut input, 1);
                if let Some(port) = Port::new(b[0] % 4 + 1) {
                    if rig.engine.on_device_ready(port) == super::DeviceState::Gone {
                        drop(rig.engine.detach(port));
                    }
                }
            }
            4 => {
                let b = take(&mut input, 6);
                let off = usize::from(u16::from_le_bytes([b[0], b[1]])) % RING_PAGE_SIZE;
                let _ = rig.mem.page(0).write(off, &b[2..]);
                rig.kick();
            }
            5 => rig.collect(),
            6 => {
                let b = take(&mut input, 1);
                if let Some(port) = Port::new(b[0] % 3 + 1) {
                    drop(rig.engine.detach(port));
                }
            }
            _ => {
                if rig.reconnect().is_none() {
                    return;
                }
            }
        }
    }
    rig.engine.disconnect();
    assert_eq!(
        rig.mem.live_mappings(),
        0,
        "a grant mapping outlived its request"
    );
    rig.collect();
    // Scribbles can publish requests too, but never more than a ring's worth at a time.
    let _ = pushed;
}
