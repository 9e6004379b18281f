//! One connected controller: the two rings, the event channel, the data pool and the
//! sans-I/O [`Frontend`] state machine, glued together. Client transfers go in
//! ([`Engine::submit`], [`Engine::unlink`]); ring events and completions come out of
//! [`Engine::service`] as [`Output`]s.
//!
//! Every response is checked before it is acted on: an impossible `rsp_prod`
//! (`ResponseProdOverflow`), an id not in flight, a negative length or a conn event for a
//! port the controller does not have is an [`EngineError`], after which the caller tears
//! the controller down ([`Engine::disconnect`]) and nothing else is disturbed.

mod request;

use pvusb_ring::sring::{ConnFrontRing, ConsumeError, ProduceError, UrbFrontRing};
use pvusb_ring::urb::frontend::{Action, Frontend, FrontendConfig, Handle, Refused, Rejected};
use pvusb_ring::urb::split::Shape;
use pvusb_ring::urb::UrbResult;
use pvusb_ring::wire::{
    BadConnResponse, BadResponse, ConnEvent, ConnRequest, Pipe, Port, Speed, UrbResponse,
    CONN_RING_SIZE, URB_RING_SIZE,
};
use pvusb_xen::{AllocError, DomId, EventChannel, EventChannels, EvtchnError, GrantAllocator};
use xenstore_cfg::xenbus::RingInfo;

use crate::pool::{Grants, PoolError, Probe, Retired};
use crate::xenbus::BackendOffer;
use request::Sent;
pub use request::{Kind, Payload};

/// Why the controller connection must be torn down.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The backend published an impossible ring index, or a ring copy failed.
    #[error("ring: {0}")]
    Ring(#[from] ConsumeError),
    /// We could not put a request on the ring (an engine bug).
    #[error("pushing a request: {0}")]
    Produce(#[from] ProduceError),
    /// A response with a negative length or error count.
    #[error("bad response: {0}")]
    Response(#[from] BadResponse),
    /// A response for an id that is not in flight.
    #[error("response for request id {0}, which is not in flight")]
    UnknownId(u16),
    /// A conn event for a port we do not have, or with an unknown speed.
    #[error("bad conn event: {0}")]
    Conn(#[from] BadConnResponse),
    /// The event channel failed.
    #[error("event channel: {0}")]
    Evtchn(#[from] EvtchnError),
    /// Pool bookkeeping failed (a bug).
    #[error("pool: {0}")]
    Pool(#[from] PoolError),
    /// Re-attaching the conn ring after a probe failed.
    #[error("conn ring: {0}")]
    Setup(#[from] pvusb_ring::sring::RingSetupError),
    /// Probing the conn ring page failed.
    #[error("probing the conn ring page: {0}")]
    Probe(#[from] pvusb_xen::EndAccessError),
}

/// Setting up a controller connection failed.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// Granting pages failed.
    #[error("granting pages: {0}")]
    Alloc(#[from] AllocError),
    /// The ring pages are unusable.
    #[error("ring setup: {0}")]
    Ring(#[from] pvusb_ring::sring::RingSetupError),
    /// Priming the conn ring failed.
    #[error("priming the conn ring: {0}")]
    Produce(#[from] ProduceError),
    /// Allocating the event channel failed.
    #[error("event channel: {0}")]
    Evtchn(#[from] EvtchnError),
    /// The conn ring page is missing (a bug).
    #[error("no conn ring page")]
    NoConnPage,
}

/// Posts a request in every free slot of the conn ring, slot `k` always carrying id `k`
/// (xen-hcd's scheme: id = slot, re-posted as each response is consumed).
fn fill_conn_ring(ring: &mut ConnFrontRing) -> Result<(), ProduceError> {
    while !ring.is_full() {
        let slot = ring.req_prod_pvt() & (CONN_RING_SIZE - 1);
        let id = u16::try_from(slot).unwrap_or(0);
        ring.push_request(&ConnRequest { id }.to_raw())?;
    }
    ring.push_requests();
    Ok(())
}

/// Something the daemon must act on.
#[derive(Debug)]
pub enum Output {
    /// A device of `speed` is on `port` now.
    Attached {
        /// The port.
        port: Port,
        /// Its speed.
        speed: Speed,
    },
    /// The port was emptied; its transfers are being completed with errors.
    Gone {
        /// The port.
        port: Port,
    },
    /// A transfer finished (RET_SUBMIT).
    Complete {
        /// The transfer.
        handle: Handle,
        /// How it ended.
        result: UrbResult,
        /// Its buffers, IN data filled in.
        payload: Payload,
    },
    /// A transfer was unlinked before it reached the ring (RET_UNLINK -ECONNRESET).
    UnlinkReset {
        /// The cancelled transfer.
        victim: Handle,
    },
}

/// The frontend side of one connected controller.
#[derive(Debug)]
pub struct Engine {
    fe: Frontend<Payload>,
    urb: Option<UrbFrontRing>,
    conn: Option<ConnFrontRing>,
    evtchn: Box<dyn EventChannel>,
    grants: Grants,
    sent: Vec<Option<Sent>>,
    num_ports: u8,
    /// Busy polling: serving leaves the response event index alone; [`Engine::arm`]
    /// re-arms before the daemon sleeps.
    quiet: bool,
}

impl Engine {
    /// Grants the rings and the pool to `be`, initialises both rings, primes the conn ring
    /// with every request and allocates the event channel. Returns what the frontend
    /// publishes in xenstore.
    pub fn new<P: GrantAllocator + EventChannels>(
        platform: &P,
        be: DomId,
        offer: &BackendOffer,
    ) -> Result<(Engine, RingInfo), SetupError> {
        let num_ports = offer.num_ports;
        let ids = URB_RING_SIZE as usize;
        let grants = Grants::alloc(platform, be, ids)?;
        let urb = UrbFrontRing::init(grants.urb_shm())?;
        let shm = grants.conn_shm().ok_or(SetupError::NoConnPage)?;
        let mut conn = ConnFrontRing::init(shm)?;
        fill_conn_ring(&mut conn)?;
        let evtchn = platform.alloc_unbound(be)?;
        let info = RingInfo {
            urb_ring_ref: grants.urb_ref().0,
            conn_ring_ref: grants.conn_ref().0,
            event_channel: evtchn.port().0,
        };
        // We offer both extensions; each is on when the backend offered it too.
        let cfg = FrontendConfig {
            aca: offer.aca,
            split_chain: offer.split_chain,
            ..FrontendConfig::stock(num_ports)
        };
        let engine = Engine {
            fe: Frontend::new(cfg),
            urb: Some(urb),
            conn: Some(conn),
            evtchn,
            grants,
            sent: (0..ids).map(|_| None).collect(),
            num_ports,
            quiet: false,
        };
        Ok((engine, info))
    }

    /// The event channel's pollable fd.
    pub fn evtchn(&self) -> &dyn EventChannel {
        &*self.evtchn
    }

    /// Whether a response or conn event waits on a ring: shared index reads, no system
    /// call, for a daemon that busy-polls its rings ([`Engine::service`] takes them as if
    /// the event channel had fired). A ring whose indices are invalid also counts, so that
    /// serving it reports the error.
    pub fn has_responses(&self) -> bool {
        let urb = self
            .urb
            .as_ref()
            .is_some_and(|r| r.unconsumed_responses().map_or(true, |n| n > 0));
        urb || self
            .conn
            .as_ref()
            .is_some_and(|r| r.unconsumed_responses().map_or(true, |n| n > 0))
    }

    /// See the `quiet` field.
    pub fn set_quiet(&mut self, quiet: bool) {
        self.quiet = quiet;
    }

    /// `RING_FINAL_CHECK_FOR_RESPONSES` on the URB ring before sleeping: true if responses
    /// wait (or the ring is broken).
    pub fn arm(&mut self) -> bool {
        self.urb
            .as_mut()
            .is_some_and(|r| r.final_check_for_responses().unwrap_or(true))
    }

    /// Requests on the ring without an answer.
    pub fn in_flight(&self) -> usize {
        self.fe.in_flight()
    }

    /// Client transfers taken and not answered.
    pub fn pending(&self) -> usize {
        self.fe.pending_transfers()
    }

    /// Submits a transfer; see [`Frontend::submit`]. Call [`Engine::flush`] afterwards.
    pub fn submit(
        &mut self,
        handle: Handle,
        pipe: Pipe,
        shape: Shape,
        short_not_ok: bool,
        payload: Payload,
    ) -> Result<(), Rejected<Payload>> {
        self.fe.submit(handle, pipe, shape, short_not_ok, payload)
    }

    /// Unlinks a transfer; see [`Frontend::unlink`]. Call [`Engine::flush`] afterwards.
    pub fn unlink(&mut self, handle: Handle, victim: Handle) -> Result<(), Refused> {
        self.fe.unlink(handle, victim)
    }

    /// Whether the backend still maps the conn ring (simulated platform only: there ending
    /// access is refused while the peer maps a page, so a refused end proves it alive; a
    /// successful one means the backend process is gone, and the page with it).
    ///
    /// The ring view is dropped for the probe and re-attached at the same index. The
    /// re-attach re-writes every slot's request with the id it already holds (slot `k`
    /// always carries id `k`) and publishes the same `req_prod`, so the backend cannot
    /// tell: even a slot it is answering concurrently ends up with the id it echoes.
    pub fn backend_alive(&mut self) -> Result<bool, EngineError> {
        let Some(ring) = self.conn.take() else {
            return Ok(false);
        };
        let idx = ring.rsp_cons();
        drop(ring);
        let probe = self.grants.probe_conn()?;
        if probe == Probe::Ended {
            return Ok(false);
        }
        let shm = self
            .grants
            .conn_shm()
            .ok_or(EngineError::Pool(PoolError::NoPage { id: 0, page: 0 }))?;
        let mut ring = ConnFrontRing::attach(shm, idx)?;
        fill_conn_ring(&mut ring)?;
        self.conn = Some(ring);
        Ok(true)
    }

    /// Handles the event channel: consumes every conn event and response, then performs
    /// the resulting actions.
    pub fn service(&mut self, out: &mut Vec<Output>) -> Result<(), EngineError> {
        self.serve(out, true)
    }

    /// [`Engine::service`] for a busy-polling daemon that saw responses on a ring: the
    /// event channel is left alone (an event that did come is still taken when the daemon's
    /// poller reports it).
    pub fn service_polled(&mut self, out: &mut Vec<Output>) -> Result<(), EngineError> {
        self.serve(out, false)
    }

    fn serve(&mut self, out: &mut Vec<Output>, take: bool) -> Result<(), EngineError> {
        loop {
            let fired = take && self.evtchn.take_pending()?;
            self.drain_conn(out)?;
            self.drain_urb()?;
            self.flush(out)?;
            if fired {
                self.evtchn.unmask()?;
            }
            let more_urb = match self.urb.as_mut() {
                Some(r) if self.quiet => r.unconsumed_responses()? > 0,
                Some(r) => r.final_check_for_responses()?,
                None => false,
            };
            let more_conn = match self.conn.as_mut() {
                Some(r) => r.final_check_for_responses()?,
                None => false,
            };
            if !more_urb && !more_conn {
                return Ok(());
            }
        }
    }

    fn drain_conn(&mut self, out: &mut Vec<Output>) -> Result<(), EngineError> {
        let Some(ring) = self.conn.as_mut() else {
            return Ok(());
        };
        let mut reposted = false;
        while let Some(raw) = ring.pop_response()? {
            // Re-post the slot at once, as xen-hcd does, before the event can fail.
            fill_conn_ring(ring)?;
            reposted = true;
            let ev = ConnEvent::parse(&raw, self.num_ports)?;
            tracing::debug!(port = ev.port.get(), speed = ?ev.speed, "conn event");
            if ev.is_disconnect() {
                self.fe.handle_device_gone(ev.port);
                out.push(Output::Gone { port: ev.port });
            } else {
                self.fe.handle_device_attached(ev.port);
                out.push(Output::Attached {
                    port: ev.port,
                    speed: ev.speed,
                });
            }
        }
        if reposted && ring.push_requests_and_check_notify() {
            self.evtchn.notify()?;
        }
        Ok(())
    }

    fn drain_urb(&mut self) -> Result<(), EngineError> {
        loop {
            let Some(raw) = self.urb.as_mut().map(|r| r.pop_response()).transpose()? else {
                return Ok(());
            };
            let Some(raw) = raw else { return Ok(()) };
            let rsp = UrbResponse::parse(&raw)?;
            self.on_response(rsp)?;
        }
    }

    fn on_response(&mut self, rsp: UrbResponse) -> Result<(), EngineError> {
        let sent = self
            .sent
            .get_mut(usize::from(rsp.id))
            .and_then(Option::take)
            .ok_or(EngineError::UnknownId(rsp.id))?;
        let actual = match &sent {
            Sent::Piece { piece, .. } => rsp.actual_length.min(piece.len),
            Sent::Unlink => 0,
        };
        if let Sent::Piece { handle, piece, .. } = &sent {
            if let Some(payload) = self.fe.payload_mut(*handle) {
                request::copy_back(&self.grants, rsp.id, piece, actual, payload)?;
            }
        }
        let result = UrbResult {
            status: rsp.status_lossy(),
            actual_length: actual,
            start_frame: rsp.start_frame,
            error_count: rsp.error_count,
        };
        tracing::trace!(id = rsp.id, status = rsp.status, actual, "response");
        self.fe
            .handle_response(rsp.id, result)
            .map_err(|e| EngineError::UnknownId(e.0))
    }

    /// Performs the state machine's actions: pushes requests (then notifies once) and
    /// hands answers to `out`.
    pub fn flush(&mut self, out: &mut Vec<Output>) -> Result<(), EngineError> {
        let mut pushed = false;
        while let Some(action) = self.fe.poll_action() {
            match action {
                Action::Push(req) => {
                    let (raw, sent) = request::build(&self.grants, &mut self.fe, &req)?;
                    if let Some(ring) = self.urb.as_mut() {
                        ring.push_request(&raw)?;
                        pushed = true;
                    }
                    if let Some(slot) = self.sent.get_mut(usize::from(req.id)) {
                        *slot = Some(sent);
                    }
                }
                Action::Complete {
                    handle,
                    result,
                    payload,
                } => out.push(Output::Complete {
                    handle,
                    result,
                    payload,
                }),
                // The USB/IP session answers the unlink itself right after the victim's
                // RET_SUBMIT (or at once if the victim is no longer outstanding).
                Action::UnlinkOk { .. } => {}
                Action::UnlinkReset { victim, .. } => out.push(Output::UnlinkReset { victim }),
            }
        }
        if pushed {
            if let Some(ring) = self.urb.as_mut() {
                if ring.push_requests_and_check_notify() {
                    self.evtchn.notify()?;
                }
            }
        }
        Ok(())
    }

    /// The backend went away or broke the protocol: every pending transfer completes with
    /// an error into `out`, the rings are dropped, and the grants are handed back for
    /// ending (those the backend still maps are retried later).
    pub fn disconnect(mut self, out: &mut Vec<Output>) -> Retired {
        self.fe.handle_disconnect();
        while let Some(action) = self.fe.poll_action() {
            match action {
                Action::Complete {
                    handle,
                    result,
                    payload,
                } => out.push(Output::Complete {
                    handle,
                    result,
                    payload,
                }),
                Action::UnlinkReset { victim, .. } => out.push(Output::UnlinkReset { victim }),
                Action::Push(_) | Action::UnlinkOk { .. } => {}
            }
        }
        self.urb = None;
        self.conn = None;
        let Engine { grants, evtchn, .. } = self;
        drop(evtchn);
        grants.retire()
    }
}
