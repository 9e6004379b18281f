//! The request engine of one vusb controller: ring in, host URBs out, answers back.
//!
//! Protocol decisions live in `pvusb_ring::urb::backend::Backend` (exactly one answer, ring
//! order, containment, disconnect); this module feeds it and performs its actions:
//! copy each request off the ring, parse it with the controller's [`Limits`], answer the
//! requests the backend emulates ([`request`]), map grants and build host URBs
//! ([`payload`]), reap completions, and push responses after the grants are unmapped.
//! No file descriptor or xenstore here: the daemon's loop calls in when something is
//! ready. Everything read from the rings is untrusted: a malformed request gets a usbif
//! error status, a protocol violation (ring index overflow, a duplicate live id) makes
//! [`Engine::on_ring_event`] return a [`Fatal`] and the caller closes that controller.

pub mod copy;
mod guest_side;
mod host_side;
pub mod journal;
pub mod memory;
pub mod payload;
pub mod persistent;
pub mod port;
pub mod request;
mod takeover;
#[cfg(any(test, feature = "fuzzing"))]
pub mod testing;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::os::fd::BorrowedFd;

use pvusb_ring::sring::{ConnBackRing, ConsumeError, ProduceError, UrbBackRing};
use pvusb_ring::urb::aca::ACA_CLEAR;
use pvusb_ring::urb::backend::{Action, Backend, BackendConfig, ProtocolError};
use pvusb_ring::urb::chain::{SPLIT_CONT, SPLIT_MORE};
use pvusb_ring::wire::{Limits, Port, Speed, UrbResponse, UsbVer, URB_RING_SIZE};
use tracing::{debug, info, Span};

use crate::host::{HostDevice, HostUrb, Readiness};
use crate::logging::RateLimit;
use journal::{Journal, PORTS};
use memory::{GuestMemory, Notify};
use payload::{Payload, Piece};
use port::{announce_speed, PortSlot, SpeedError};

/// Why a controller must be closed.
#[derive(Debug, thiserror::Error)]
pub enum Fatal {
    /// The frontend published an impossible ring index.
    #[error("ring: {0}")]
    Ring(#[from] ConsumeError),
    /// The frontend broke the request protocol (e.g. a duplicate live id).
    #[error("protocol: {0}")]
    Protocol(#[from] ProtocolError),
    /// We could not answer (cannot happen while each request is answered once).
    #[error("answering: {0}")]
    Produce(#[from] ProduceError),
}

/// Controller settings fixed at creation.
#[derive(Clone, Copy, Debug)]
pub struct EngineConfig {
    /// `num-ports`.
    pub num_ports: u8,
    /// `usb-ver`.
    pub usb_ver: UsbVer,
    /// Largest bulk URB the daemon's configuration allows.
    pub max_bulk_urb: usize,
}

/// The protocol extensions both sides offered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    /// Error containment (`feature-aca`).
    pub aca: bool,
    /// Split chains (`feature-split-chain`).
    pub split_chain: bool,
}

/// A connected frontend: the mapped rings, the event channel and the URB state.
#[derive(Debug)]
pub struct Link {
    urb: UrbBackRing,
    conn: ConnBackRing,
    notify: Box<dyn Notify>,
    mem: Box<dyn GuestMemory>,
    backend: Backend<Payload>,
    limits: Limits,
    /// Requests on the host: their pieces and payload, by request id.
    running: HashMap<u16, Running>,
    /// Host tag → request id.
    tags: HashMap<u64, u16>,
    /// Hotplug events waiting for a conn ring slot.
    conn_queue: VecDeque<(Port, Speed)>,
    /// Answers waiting for [`Engine::publish`], with their payloads: a copied IN buffer's
    /// bytes reach the guest there first, and a response whose bytes could not is failed.
    answered: Vec<(UrbResponse, Option<Payload>)>,
    /// Responses pushed but not yet published.
    unpublished: bool,
    /// Requests still to be taken off the ring that a previous backend process left there
    /// (see [`Link::fail_left_over`]).
    left_over: u32,
    /// The rings were taken over from a dead backend process (see [`Engine::connect`]).
    adopted: bool,
    /// What this process has taken and not had answered, for the next one (see
    /// [`journal`]).
    journal: Option<Journal>,
    /// Taken over with a journal: the device the guest was told of on each port.
    told: Option<[u32; PORTS]>,
}

#[derive(Debug)]
struct Running {
    port: Port,
    payload: Payload,
    pieces: Vec<Piece>,
    /// Host URBs of a split bulk IN request not submitted yet: on a device whose host does
    /// not stop at a short packet, each goes once the one before it came back in full
    /// (see `pvusb_ring::urb::chain`).
    queued: VecDeque<HostUrb>,
}

impl Link {
    /// A link over freshly mapped rings, with the extensions negotiated.
    pub fn new(
        urb: UrbBackRing,
        conn: ConnBackRing,
        notify: Box<dyn Notify>,
        mem: Box<dyn GuestMemory>,
        num_ports: u8,
        features: Features,
    ) -> Self {
        let Features { aca, split_chain } = features;
        let mut ext_flags = if aca { ACA_CLEAR } else { 0 };
        if split_chain {
            ext_flags |= SPLIT_MORE | SPLIT_CONT;
        }
        let ring_size = u16::try_from(urb.size()).unwrap_or(u16::MAX);
        Link {
            urb,
            conn,
            notify,
            mem,
            backend: Backend::new(BackendConfig {
                num_ports,
                ring_size,
                aca,
            }),
            limits: Limits {
                num_ports,
                ext_flags,
            },
            running: HashMap::new(),
            tags: HashMap::new(),
            conn_queue: VecDeque::new(),
            answered: Vec::new(),
            unpublished: false,
            left_over: 0,
            adopted: false,
            journal: None,
            told: None,
        }
    }
}

/// One controller's ports and, while connected, its link.
#[derive(Debug)]
pub struct Engine {
    cfg: EngineConfig,
    ports: Vec<PortSlot>,
    link: Option<Link>,
    next_tag: u64,
    /// Ports (bit `port - 1`) given URBs since the last look at their completions.
    submitted: u32,
    warn: RateLimit,
    span: Span,
    /// Busy polling: serving leaves the request event index alone (no notifications while
    /// the daemon polls); [`Engine::arm`] re-arms before it sleeps.
    quiet: bool,
}

/// What [`Engine::on_device_ready`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum DeviceState {
    /// Still there.
    Present,
    /// Gone (unplugged): call [`Engine::detach`].
    Gone,
}

impl Engine {
    /// A controller with every port empty and no frontend.
    pub fn new(cfg: EngineConfig, span: Span) -> Self {
        let n = usize::from(cfg.num_ports.clamp(1, 31));
        Engine {
            cfg,
            ports: (0..n).map(|_| PortSlot::empty()).collect(),
            link: None,
            next_tag: 0,
            submitted: 0,
            warn: RateLimit::default(),
            span,
            quiet: false,
        }
    }

    /// See the `quiet` field.
    pub fn set_quiet(&mut self, quiet: bool) {
        self.quiet = quiet;
    }

    /// `RING_FINAL_CHECK_FOR_REQUESTS` before sleeping: true if requests wait (or the ring
    /// is broken), so the caller serves instead of sleeping.
    pub fn arm(&mut self) -> bool {
        self.link
            .as_mut()
            .is_some_and(|l| l.urb.final_check_for_requests().unwrap_or(true))
    }

    /// The settings.
    pub fn config(&self) -> EngineConfig {
        self.cfg
    }

    /// Whether a frontend is connected.
    pub fn is_connected(&self) -> bool {
        self.link.is_some()
    }

    /// Whether the URB ring holds requests [`Engine::on_ring_event`] would take: a shared
    /// index read, no system call, for a daemon that busy-polls its rings. A ring whose
    /// indices are invalid also counts, so that serving it reports the error.
    pub fn has_requests(&self) -> bool {
        self.link
            .as_ref()
            .is_some_and(|l| l.urb.unconsumed_requests().map_or(true, |n| n > 0))
    }

    fn slot(&self, port: Port) -> Option<&PortSlot> {
        self.ports.get(usize::from(port.get() - 1))
    }

    /// The bus id on `port`, if a device is attached.
    pub fn busid(&self, port: Port) -> Option<&str> {
        self.slot(port)
            .filter(|s| s.device.is_some())
            .and_then(|s| s.busid.as_deref())
    }

    /// The pollable fd of the device on `port`.
    pub fn device_fd(&self, port: Port) -> Option<(BorrowedFd<'_>, Readiness)> {
        let dev = self.slot(port)?.device.as_ref()?;
        Some((dev.poll_fd(), dev.readiness()))
    }

    /// Puts an opened host device on `port` and announces it if connected. Refused (the
    /// device handed back) when it is too fast for the controller or the port is taken.
    pub fn attach(
        &mut self,
        port: Port,
        busid: &str,
        dev: Box<dyn HostDevice>,
    ) -> Result<Speed, (SpeedError, Box<dyn HostDevice>)> {
        let (speed, fix_ep0) = match announce_speed(dev.speed(), self.cfg.usb_ver) {
            Ok(s) => s,
            Err(e) => return Err((e, dev)),
        };
        let span = tracing::info_span!(parent: &self.span, "port", port = port.get(), busid);
        let Some(slot) = self.ports.get_mut(usize::from(port.get() - 1)) else {
            return Ok(Speed::None);
        };
        *slot = PortSlot {
            device: Some(dev),
            busid: Some(busid.to_owned()),
            speed,
            fix_ep0,
            addr: None,
            adopted: false,
            span,
        };
        info!(parent: &slot.span, ?speed, "device attached");
        let stops_on_short = slot.device.as_ref().is_none_or(|d| d.bulk_continuation());
        if let Some(link) = &mut self.link {
            link.backend
                .handle_device_attached_with(port, stops_on_short);
            link.conn_queue.push_back((port, speed));
            self.flush();
        }
        Ok(speed)
    }

    /// Takes the device off `port`: everything it has in flight is answered (-ENODEV), the
    /// guest is told the port is empty, and the device is handed back to be released.
    pub fn detach(&mut self, port: Port) -> Option<Box<dyn HostDevice>> {
        let idx = usize::from(port.get() - 1);
        if let Some(link) = &mut self.link {
            link.backend.handle_device_gone(port);
        }
        self.perform();
        let mut dev = self.ports.get_mut(idx)?.device.take()?;
        for c in dev.drain() {
            self.complete(port, c);
        }
        self.perform();
        let held = self.link.as_ref().map_or(0, |l| l.backend.held_total(port));
        let slot = self.ports.get_mut(idx)?;
        // held: split pieces that waited for the one before them (a bus that does not stop
        // at a short packet, pvusb_ring::urb::chain).
        info!(parent: &slot.span, held, "device detached");
        *slot = PortSlot::empty();
        if let Some(link) = &mut self.link {
            link.conn_queue.push_back((port, Speed::None));
        }
        self.publish();
        self.flush();
        Some(dev)
    }

    /// A frontend connected: serve its rings and announce every attached port.
    ///
    /// Rings taken over from a dead backend process ([`Link::fail_taken`],
    /// [`Link::fail_left_over`]) are the guest's live connection: its devices stay as it
    /// knows them. An attached port is not announced again (a port status change makes the
    /// guest's hub driver drop the device and enumerate it anew, which breaks whatever the
    /// guest had open on it); the first address the guest then uses on it is taken as the
    /// one it set through the dead process. A port without a device is announced empty, in
    /// case the guest saw one there. With the dead process's journal, a port is kept only
    /// if it still has the very device the guest was told of: one the guest never heard of
    /// is announced, and another device (swapped, or unplugged and plugged again while no
    /// backend ran) is announced gone and then present, so the guest enumerates it anew
    /// instead of taking it for the one it knew.
    pub fn connect(&mut self, mut link: Link) {
        let adopted = link.adopted;
        for (i, slot) in self.ports.iter_mut().enumerate() {
            slot.addr = None;
            slot.adopted = false;
            let Some(port) = u8::try_from(i + 1).ok().and_then(Port::new) else {
                continue;
            };
            let told = link.told.map(|t| t.get(i).copied().unwrap_or(0));
            match &slot.device {
                Some(dev) => {
                    link.backend
                        .handle_device_attached_with(port, dev.bulk_continuation());
                    match told {
                        _ if !adopted => link.conn_queue.push_back((port, slot.speed)),
                        None => slot.adopted = true,
                        Some(t) if t == dev.instance() => slot.adopted = true,
                        Some(0) => link.conn_queue.push_back((port, slot.speed)),
                        Some(_) => {
                            link.conn_queue.push_back((port, Speed::None));
                            link.conn_queue.push_back((port, slot.speed));
                        }
                    }
                }
                None if adopted => link.conn_queue.push_back((port, Speed::None)),
                None => {}
            }
        }
        self.link = Some(link);
        // Requests a dead process left are answered at once (`Link::fail_taken`).
        self.perform();
        self.publish();
        self.flush();
    }

    /// The frontend went away (or broke the protocol): every URB on the host is cancelled
    /// and answered, then the rings are unmapped. Devices stay attached.
    pub fn disconnect(&mut self) {
        let Some(link) = &mut self.link else { return };
        link.backend.handle_disconnect();
        self.perform();
        for i in 0..self.ports.len() {
            let Some(port) = u8::try_from(i + 1).ok().and_then(Port::new) else {
                continue;
            };
            let drained = match self.ports.get_mut(i).and_then(|s| s.device.as_mut()) {
                Some(dev) => dev.drain(),
                None => continue,
            };
            for c in drained {
                self.complete(port, c);
            }
        }
        self.perform();
        self.publish();
        if let Some(link) = self.link.take() {
            debug!(parent: &self.span, in_flight = link.backend.in_flight(), "rings released");
        }
    }

    /// The device on `port` has completions (or went away): reap them.
    pub fn on_device_ready(&mut self, port: Port) -> DeviceState {
        let idx = usize::from(port.get() - 1);
        self.reap(port);
        self.publish();
        let gone = self
            .ports
            .get(idx)
            .and_then(|s| s.device.as_ref())
            .is_none_or(|d| d.is_gone());
        if gone {
            DeviceState::Gone
        } else {
            DeviceState::Present
        }
    }

    /// Performs the state machine's actions until there are none.
    fn perform(&mut self) {
        loop {
            let Some(link) = &mut self.link else { return };
            let Some(action) = link.backend.poll_action() else {
                return;
            };
            match action {
                Action::Submit {
                    id,
                    pipe,
                    continuation,
                    payload,
                } => self.submit(id, pipe, continuation, payload),
                Action::Cancel { id } => {
                    let Some(run) = link.running.get(&id) else {
                        continue;
                    };
                    let tags: Vec<u64> = run
                        .pieces
                        .iter()
                        .filter(|p| p.done.is_none())
                        .map(|p| p.tag)
                        .collect();
                    let port = run.port;
                    if let Some(dev) = self
                        .ports
                        .get_mut(usize::from(port.get() - 1))
                        .and_then(|s| s.device.as_mut())
                    {
                        for tag in tags {
                            // Not in flight any more: its completion is already reapable.
                            let _ = dev.discard(tag);
                        }
                    }
                }
                Action::Respond {
                    id,
                    result,
                    payload,
                } => {
                    let rsp = UrbResponse {
                        id,
                        start_frame: result.start_frame,
                        status: result.status.to_wire(),
                        actual_length: result.actual_length.min(i32::MAX as u32),
                        error_count: result.error_count.min(i32::MAX as u32),
                    };
                    let span = &self.span;
                    debug!(parent: span, id, status = ?result.status, len = result.actual_length, "giveback");
                    link.answered.push((rsp, payload));
                    link.unpublished = true;
                }
            }
        }
    }
}

/// Requests one [`Engine::on_ring_event`] call serves before yielding to other controllers.
pub const RING_BUDGET: usize = 64;

/// Ring size of a stock controller (what `Link::new` gets from a one-page ring).
pub const STOCK_RING_SIZE: u32 = URB_RING_SIZE;
