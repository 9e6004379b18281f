//! Backend half of one vusb controller: which request reaches the host, when, and its answer.
//!
//! One [`Backend`] serves one usbif ring, i.e. one virtual host controller with up to 31
//! ports: request ids are unique per ring, so duplicate detection must see all ports.
//! It enforces, for every request the frontend puts on the ring:
//!
//! - **exactly one answer** (contract 1): every request taken gets exactly one
//!   [`Action::Respond`], the unlink request and its victim included; a request refused as
//!   a protocol error (a duplicate live id) gets none and the caller learns why;
//! - **ring order** (contract 2): one endpoint's [`Action::Submit`]s come out in the order
//!   its requests came in, so its URBs reach the host in ring order, many in flight at
//!   once (a request may be held back behind its predecessor: see [`super::chain`]);
//! - **containment** (contract 3, when negotiated, see [`super::aca`]);
//! - **split chains** (contract 6, when negotiated, see [`super::chain`]): which URBs are
//!   chained with `BULK_CONTINUATION` so that a short piece ends its transfer and nothing
//!   else;
//! - **disconnect** (contract 5, seed 003): [`Backend::handle_device_gone`] and
//!   [`Backend::handle_disconnect`] cancel every URB in flight on the host and refuse every
//!   later request in the same call, so nothing can slip in between;
//! - **buffer ownership** (contract 7): a request's payload goes to the host with
//!   `Submit`, comes back with [`Backend::handle_host_done`] and leaves with its `Respond`,
//!   so the shell unmaps a grant only once the host has let go of it, and before the
//!   response is pushed.

use std::collections::VecDeque;

use crate::wire::{Pipe, Port, Status};

use super::aca::{self, Admission, BackendAca, CONTAINED};
use super::chain::{EpChain, Link};
use super::{clamp_ports, EpKey, UrbResult, EPS_PER_PORT};

mod hold;
mod host;

pub use host::{HostResult, HostStatus, UnknownUrb};

/// How the controller was negotiated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendConfig {
    /// `num-ports` (clamped to 31).
    pub num_ports: u8,
    /// Requests the ring holds (16 for a stock ring): the most that can be live at once.
    pub ring_size: u16,
    /// Error containment was negotiated ([`aca::FEATURE_ACA`] on both sides).
    pub aca: bool,
}

/// The `transfer_flags` of a submit request that decide how it is chained on the host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubmitFlags {
    /// [`aca::ACA_CLEAR`] (ignored unless containment was negotiated).
    pub aca_clear: bool,
    /// [`super::chain::SPLIT_MORE`] (bulk IN only; the shell refuses it unless negotiated).
    pub split_more: bool,
    /// [`super::chain::SPLIT_CONT`] (likewise).
    pub split_cont: bool,
    /// The shell will cut the request into several host URBs, adding `SHORT_NOT_OK` on its
    /// IN pieces but the last (see [`super::chain`]).
    pub host_split: bool,
    /// usbif's `USBIF_SHORT_NOT_OK`: a short read fails it.
    pub short_not_ok: bool,
}

/// What became of a submit request that was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Handed to the host with [`Action::Submit`] (at once, or once its predecessor is
    /// back: see [`super::chain`]); answered when the host gives it back.
    Submitted,
    /// Never reaches the host: already answered with this status (no device on the port,
    /// the controller is disconnected, or the endpoint is contained).
    Refused(Status),
}

/// A request the backend will not take: the frontend broke the protocol. Nothing was
/// queued for it; the shell should disconnect that guest (DESIGN.md contract 8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The id is already live (submitted and not yet answered).
    #[error("request id {0} is already in flight")]
    DuplicateId(u16),
    /// More requests live than the ring can hold.
    #[error("more than {limit} requests in flight")]
    TooManyInFlight {
        /// The ring size.
        limit: u16,
    },
}

/// A submit request refused as a protocol error, with its payload handed back.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct Rejected<P> {
    /// What was wrong.
    pub error: ProtocolError,
    /// The request's payload, for the shell to release.
    pub payload: P,
}

/// What the shell must do, in order.
#[derive(Debug)]
#[must_use]
pub enum Action<P> {
    /// Start the URB on the host.
    ///
    /// `continuation`: a usbfs shell sets `USBDEVFS_URB_BULK_CONTINUATION`. It is set on
    /// every piece of a split chain but the first, and not on the request after one that a
    /// short read can end ([`super::chain`]). Otherwise it is set on
    /// every bulk URB of a contained-capable endpoint except the one that reopens it, so
    /// when one fails the kernel cancels the URBs queued behind it from the completion
    /// handler, before the device runs them, and refuses further ones until the reopening
    /// URB; the backend's own [`Action::Cancel`]s follow when the failure is reaped. If the
    /// shell splits a request into several usbfs URBs, all but the first carry the flag.
    Submit {
        /// Request id; name the URB by it in [`Backend::handle_host_done`].
        id: u16,
        /// The request's pipe (unlink bit clear).
        pipe: Pipe,
        /// Chain it to the previous bulk URB of its endpoint (see above).
        continuation: bool,
        /// What the host needs to run it; comes back with `handle_host_done`.
        payload: P,
    },
    /// Cancel the URB on the host (usbfs `DISCARDURB`); it is still given back later.
    Cancel {
        /// The URB's request id.
        id: u16,
    },
    /// Unmap `payload` (if any), then push this response on the ring.
    Respond {
        /// Request id the response echoes.
        id: u16,
        /// The response's fields.
        result: UrbResult,
        /// The request's payload (none for an unlink request).
        payload: Option<P>,
    },
}

/// Why a URB on the host was cancelled; decides its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cancel {
    /// The guest unlinked it.
    Unlinked,
    /// An earlier URB of its endpoint failed.
    Contained,
    /// Its device went away.
    DeviceGone,
    /// The controller disconnected.
    Shutdown,
}

impl Cancel {
    /// Device gone and disconnect override whatever the URB did.
    fn is_final(self) -> bool {
        matches!(self, Cancel::DeviceGone | Cancel::Shutdown)
    }

    /// The answer of a request cancelled for this reason before it ran: on the host, or
    /// held back and never sent.
    fn status(self) -> Status {
        match self {
            Cancel::DeviceGone => Status::NoDev,
            Cancel::Shutdown => Status::Shutdown,
            Cancel::Contained => CONTAINED,
            // usbif's code for a cancelled request (QEMU answers -EPROTO too).
            Cancel::Unlinked => Status::IoError,
        }
    }
}

/// A request taken and not yet answered: on the host, or held back (see [`super::chain`]).
#[derive(Clone, Copy, Debug)]
struct Live {
    id: u16,
    port: u8,
    ep: usize,
    /// Arrival order, to tell followers from predecessors.
    seq: u64,
    /// Containment applies to its endpoint.
    contain: bool,
    cancel: Option<Cancel>,
    /// Its `Submit`, for a held request (see [`super::chain`]): the pipe and the chaining
    /// decided on arrival.
    pipe: Pipe,
    continuation: bool,
    /// A bulk IN request a short read fails (`SHORT_NOT_OK`, [`super::chain::SPLIT_MORE`],
    /// or cut by the shell): usbfs then cancels what is chained behind it.
    ends_short: bool,
}

/// Backend half of one vusb controller: requests in, host URBs and responses out.
///
/// Calling contract: for each request copied off the ring, in ring order, call
/// [`handle_submit`](Self::handle_submit), [`handle_unlink`](Self::handle_unlink) or, for
/// one the shell answers itself, [`handle_local`](Self::handle_local); for
/// each URB the host gives back call [`handle_host_done`](Self::handle_host_done); call
/// [`handle_device_attached`](Self::handle_device_attached) /
/// [`handle_device_gone`](Self::handle_device_gone) as ports gain and lose devices and
/// [`handle_disconnect`](Self::handle_disconnect) when the controller goes away. After each
/// call drain [`poll_action`](Self::poll_action) until `None` and perform the actions in
/// order. No call blocks, reads a clock or allocates beyond the tables sized at
/// construction (the action queue grows only if the shell stops draining it).
#[derive(Debug)]
pub struct Backend<P> {
    cfg: BackendConfig,
    /// Requests taken and not answered, at most `ring_size`.
    live: Vec<Option<Live>>,
    /// The payloads of held requests, in the same slots as `live`.
    parked: Vec<Option<P>>,
    /// How many of `parked` are taken.
    parked_n: usize,
    /// Containment state per endpoint of each port.
    eps: Vec<BackendAca>,
    /// Split chain state per endpoint of each port.
    chains: Vec<EpChain>,
    /// Which ports have a device.
    present: Vec<bool>,
    /// Which ports' hosts stop an endpoint at a short packet (see [`super::chain`]).
    stops_on_short: Vec<bool>,
    /// Requests held back so far, per port (diagnostics).
    held_total: Vec<u64>,
    disconnected: bool,
    seq: u64,
    actions: VecDeque<Action<P>>,
}

impl<P> Backend<P> {
    /// A controller with every port empty.
    pub fn new(cfg: BackendConfig) -> Self {
        let cfg = BackendConfig {
            num_ports: clamp_ports(cfg.num_ports),
            ring_size: cfg.ring_size.max(1),
            ..cfg
        };
        let ports = usize::from(cfg.num_ports);
        let slots = usize::from(cfg.ring_size);
        Backend {
            cfg,
            live: vec![None; slots],
            parked: (0..slots).map(|_| None).collect(),
            parked_n: 0,
            eps: vec![BackendAca::Open; ports * EPS_PER_PORT],
            chains: vec![EpChain::default(); ports * EPS_PER_PORT],
            present: vec![false; ports],
            stops_on_short: vec![true; ports],
            held_total: vec![0; ports],
            disconnected: false,
            seq: 0,
            // Each request yields a handful of actions before the shell drains them.
            actions: VecDeque::with_capacity(slots * 4),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> BackendConfig {
        self.cfg
    }

    /// The next thing to do, in order.
    pub fn poll_action(&mut self) -> Option<Action<P>> {
        self.actions.pop_front()
    }

    /// Requests taken and not yet answered: on the host, or held back.
    pub fn in_flight(&self) -> usize {
        self.live.iter().flatten().count()
    }

    /// Requests held back behind a predecessor (see [`super::chain`]).
    pub fn held(&self) -> usize {
        self.parked_n
    }

    /// Requests for `port` held back since its device was attached.
    pub fn held_total(&self, port: Port) -> u64 {
        self.held_total
            .get(usize::from(port.get() - 1))
            .copied()
            .unwrap_or(0)
    }

    /// Whether [`Backend::handle_disconnect`] was called.
    pub fn is_disconnected(&self) -> bool {
        self.disconnected
    }

    /// Whether the endpoint a pipe addresses is contained.
    pub fn is_contained(&self, pipe: Pipe) -> bool {
        EpKey::of(pipe)
            .index(self.cfg.num_ports)
            .and_then(|i| self.eps.get(i))
            .is_some_and(|ep| ep.is_contained())
    }

    /// A submit request. `aca_clear` is its [`aca::ACA_CLEAR`] bit (ignored unless
    /// negotiated); `payload` is whatever the host needs to run it.
    pub fn handle_submit(
        &mut self,
        id: u16,
        pipe: Pipe,
        aca_clear: bool,
        payload: P,
    ) -> Result<Disposition, Rejected<P>> {
        let flags = SubmitFlags {
            aca_clear,
            ..SubmitFlags::default()
        };
        self.handle_submit_with(id, pipe, flags, payload)
    }

    /// [`Backend::handle_submit`] with every flag that decides how the request is chained.
    pub fn handle_submit_with(
        &mut self,
        id: u16,
        pipe: Pipe,
        flags: SubmitFlags,
        payload: P,
    ) -> Result<Disposition, Rejected<P>> {
        let SubmitFlags {
            aca_clear,
            split_more,
            split_cont,
            host_split,
            short_not_ok,
        } = flags;
        if let Err(error) = self.check_id(id) {
            return Err(Rejected { error, payload });
        }
        let pipe = pipe.without_unlink();
        let key = EpKey::of(pipe);
        let ep = match key.index(self.cfg.num_ports) {
            Some(ep) if !self.disconnected && self.port_present(key.port) => ep,
            _ => {
                let status = if self.disconnected {
                    Status::Shutdown
                } else {
                    Status::NoDev
                };
                self.respond(id, UrbResult::status(status), Some(payload));
                return Ok(Disposition::Refused(status));
            }
        };
        let Some(slot) = self.live.iter().position(Option::is_none) else {
            let error = ProtocolError::TooManyInFlight {
                limit: self.cfg.ring_size,
            };
            return Err(Rejected { error, payload });
        };
        let contain = self.cfg.aca && aca::applies_to(pipe.xfer_type());
        let mut continuation = false;
        if contain {
            let admission = match self.eps.get_mut(ep) {
                Some(state) => state.admit(aca_clear),
                None => Admission::Pass,
            };
            match admission {
                Admission::Contain => {
                    self.respond(id, UrbResult::status(CONTAINED), Some(payload));
                    return Ok(Disposition::Refused(CONTAINED));
                }
                Admission::Reopened => continuation = false,
                Admission::Pass => continuation = pipe.is_bulk(),
            }
        }
        if pipe.is_bulk() {
            let (cont, cuts) = if pipe.is_in() {
                (split_cont, split_more || host_split)
            } else {
                (false, false)
            };
            match self.chains.get_mut(ep).map(|c| c.link(cont, cuts)) {
                Some(Link::Chained) => continuation = true,
                Some(Link::Fresh) => continuation = false,
                Some(Link::Free) | None => {}
            }
        }
        self.seq += 1;
        let live = Live {
            id,
            port: key.port,
            ep,
            seq: self.seq,
            contain,
            cancel: None,
            pipe,
            continuation,
            ends_short: pipe.is_bulk()
                && pipe.is_in()
                && (short_not_ok || split_more || host_split),
        };
        if let Some(entry) = self.live.get_mut(slot) {
            *entry = Some(live);
        }
        if self.must_wait(&live) {
            self.park(slot, payload);
            if let Some(n) = usize::from(key.port)
                .checked_sub(1)
                .and_then(|p| self.held_total.get_mut(p))
            {
                *n += 1;
            }
        } else {
            self.actions.push_back(Action::Submit {
                id,
                pipe,
                continuation,
                payload,
            });
        }
        Ok(Disposition::Submitted)
    }

    /// An unlink request `id` for the request `victim`. The victim, if on the host, is
    /// cancelled and answered when the host gives it back; the unlink itself is answered
    /// at once (status 0, as both stock backends do, also when the victim is unknown).
    pub fn handle_unlink(&mut self, id: u16, victim: u16) -> Result<(), ProtocolError> {
        self.check_id(id)?;
        if let Some(slot) = self.slot_of(victim) {
            let ep = self.live.get(slot).and_then(Option::as_ref).map(|l| l.ep);
            if self.answer_held_slot(slot, Cancel::Unlinked) {
                // What waited behind it may go now.
                if let Some(ep) = ep {
                    self.release(ep);
                }
            } else if let Some(live) = self.live.get_mut(slot).and_then(Option::as_mut) {
                if live.cancel.is_none() {
                    live.cancel = Some(Cancel::Unlinked);
                    self.actions.push_back(Action::Cancel { id: victim });
                }
            }
        }
        let status = if self.disconnected {
            Status::Shutdown
        } else {
            Status::Ok
        };
        self.respond(id, UrbResult::status(status), None);
        Ok(())
    }

    /// A request the shell answers without the host: one that failed validation
    /// (`wire::BadRequest::status`), or one it emulates (SET_ADDRESS). The answer is queued
    /// in order with the others; a duplicate live id is still a protocol error.
    pub fn handle_local(
        &mut self,
        id: u16,
        result: UrbResult,
        payload: Option<P>,
    ) -> Result<(), Rejected<Option<P>>> {
        if let Err(error) = self.check_id(id) {
            return Err(Rejected { error, payload });
        }
        self.respond(id, result, payload);
        Ok(())
    }

    /// The host gave back URB `id` with `result` and its payload.
    pub fn handle_host_done(
        &mut self,
        id: u16,
        result: HostResult,
        payload: P,
    ) -> Result<(), UnknownUrb<P>> {
        let on_host = self
            .slot_of(id)
            .filter(|&s| self.parked.get(s).is_some_and(Option::is_none));
        let Some(live) = on_host
            .and_then(|s| self.live.get_mut(s))
            .and_then(Option::take)
        else {
            return Err(UnknownUrb { id, payload });
        };
        let status = match (live.cancel, result.status) {
            (Some(c), _) if c.is_final() => c.status(),
            // The host's own -ESHUTDOWN (device going away) must not read as the
            // containment code, which a frontend takes for collateral of a failure it has
            // already seen; -ENODEV says the same about the device.
            (_, HostStatus::Done(Status::Shutdown)) if live.contain => Status::NoDev,
            // It ran before the cancel took effect: say what happened.
            (_, HostStatus::Done(status)) => status,
            (Some(c), HostStatus::Cancelled) => c.status(),
            // The host cancelled it by itself: a continuation chain broken by an earlier
            // failure, reaped before this one.
            (None, HostStatus::Cancelled) if live.contain => CONTAINED,
            (None, HostStatus::Cancelled) => Status::IoError,
        };
        let failed = matches!(result.status, HostStatus::Done(s) if !s.is_ok());
        let contains = failed && live.contain && !live.cancel.is_some_and(Cancel::is_final);
        if contains {
            self.contain(live);
        }
        let result = UrbResult {
            status,
            actual_length: result.actual_length,
            start_frame: result.start_frame,
            error_count: result.error_count,
        };
        self.respond(id, result, Some(payload));
        if contains {
            // After the failure's own answer, as their cancels on the host would be.
            self.answer_held(Cancel::Contained, |l| l.ep == live.ep && l.seq > live.seq);
        }
        self.release(live.ep);
        Ok(())
    }

    /// A device is on `port` (new or back): its endpoints start open. Its host stops an
    /// endpoint at a short packet (usbfs `USBDEVFS_CAP_BULK_CONTINUATION`).
    pub fn handle_device_attached(&mut self, port: Port) {
        self.handle_device_attached_with(port, true);
    }

    /// [`Backend::handle_device_attached`] for a device whose host may or may not stop an
    /// endpoint at a short packet: `stops_on_short` is usbfs's
    /// `USBDEVFS_CAP_BULK_CONTINUATION`, which xHCI buses withhold (see [`super::chain`]).
    pub fn handle_device_attached_with(&mut self, port: Port, stops_on_short: bool) {
        let p = usize::from(port.get() - 1);
        if let Some(present) = self.present.get_mut(p) {
            *present = true;
        }
        if let Some(stops) = self.stops_on_short.get_mut(p) {
            *stops = stops_on_short;
        }
        if let Some(n) = self.held_total.get_mut(p) {
            *n = 0;
        }
        let start = usize::from(port.get() - 1) * EPS_PER_PORT;
        for ep in self.eps.iter_mut().skip(start).take(EPS_PER_PORT) {
            ep.reset();
        }
        for ep in self.chains.iter_mut().skip(start).take(EPS_PER_PORT) {
            ep.reset();
        }
    }

    /// The device on `port` went away: every URB of it on the host is cancelled and will
    /// be answered -ENODEV, and every later request for the port is answered -ENODEV at
    /// once, until [`Backend::handle_device_attached`].
    pub fn handle_device_gone(&mut self, port: Port) {
        if let Some(p) = self.present.get_mut(usize::from(port.get() - 1)) {
            *p = false;
        }
        self.cancel_all(Cancel::DeviceGone, |l| l.port == port.get());
    }

    /// The controller goes away: every URB on the host is cancelled and will be answered
    /// -ESHUTDOWN, and every later request is answered -ESHUTDOWN at once.
    pub fn handle_disconnect(&mut self) {
        self.disconnected = true;
        self.cancel_all(Cancel::Shutdown, |_| true);
    }

    fn check_id(&self, id: u16) -> Result<(), ProtocolError> {
        if self.slot_of(id).is_some() {
            return Err(ProtocolError::DuplicateId(id));
        }
        Ok(())
    }

    /// The slot of live request `id`.
    fn slot_of(&self, id: u16) -> Option<usize> {
        self.live.iter().position(|l| l.is_some_and(|l| l.id == id))
    }

    fn port_present(&self, port: u8) -> bool {
        port.checked_sub(1)
            .and_then(|p| self.present.get(usize::from(p)))
            .copied()
            .unwrap_or(false)
    }

    /// `failed` failed on the host: contain its endpoint and cancel the URBs behind it.
    fn contain(&mut self, failed: Live) {
        if let Some(state) = self.eps.get_mut(failed.ep) {
            state.fail();
        }
        for live in self.live.iter_mut().flatten() {
            if live.ep == failed.ep && live.seq > failed.seq && live.cancel.is_none() {
                live.cancel = Some(Cancel::Contained);
                self.actions.push_back(Action::Cancel { id: live.id });
            }
        }
    }

    fn cancel_all(&mut self, why: Cancel, which: impl Fn(&Live) -> bool) {
        self.answer_held(why, &which);
        for live in self.live.iter_mut().flatten().filter(|l| which(l)) {
            match live.cancel {
                Some(c) if c.is_final() => {}
                // Already being cancelled: only the answer changes.
                Some(_) => live.cancel = Some(why),
                None => {
                    live.cancel = Some(why);
                    self.actions.push_back(Action::Cancel { id: live.id });
                }
            }
        }
    }

    fn respond(&mut self, id: u16, result: UrbResult, payload: Option<P>) {
        self.actions.push_back(Action::Respond {
            id,
            result,
            payload,
        });
    }
}
