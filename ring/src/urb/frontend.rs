//! Frontend half of one vusb controller: client transfers in, usbif requests and answers out.
//!
//! One [`Frontend`] feeds one usbif ring from a client that speaks in whole transfers (the
//! USB/IP side of vhci_hcd: CMD_SUBMIT / CMD_UNLINK in, RET_SUBMIT / RET_UNLINK out). It
//! enforces:
//!
//! - **ring ids**: never more requests in flight than the ring holds; the rest wait in a
//!   local queue, still in per-endpoint order;
//! - **order** (contract 2): one endpoint's requests go on the ring in the order the
//!   client submitted its transfers, and a split transfer's pieces in order, never
//!   interleaved with the next transfer's;
//! - **splitting** (contract 6, [`super::split`]): a large bulk transfer becomes several
//!   requests. A stock backend gets an IN transfer's pieces one at a time, because a short
//!   piece must end the transfer before its successor can swallow the device's next
//!   answer, and stock usbif cannot tell the backend that a short read ends the transfer.
//!   With split chains negotiated ([`super::chain`]) up to a quarter of the ring's ids'
//!   worth of pieces are in flight together, flagged, and nothing else of the endpoint
//!   follows until the transfer has completed;
//! - **exactly one answer** (contracts 1 and 4): every transfer taken gets exactly one
//!   [`Action::Complete`], unless it is unlinked before any of it reached the ring, in which
//!   case its [`Action::UnlinkReset`] (RET_UNLINK -ECONNRESET) is its only answer; every
//!   unlink of a transfer that reached the ring waits for the transfer's usbif answers and
//!   comes out as [`Action::UnlinkOk`] right after its `Complete`;
//! - **containment marks** (contract 3, [`super::aca`]);
//! - **disconnect** (contract 5): everything pending completes with an error in the same
//!   call and later submissions are refused.
//!
//! Payloads (the client's buffers) are held while their transfer is pending and handed back
//! exactly once, with its `Complete` or `UnlinkReset`.

use std::collections::VecDeque;

use crate::wire::{Pipe, Port, Status};

use super::aca::{self, FrontendAca, Release, Seen};
use super::split::{Piece, Shape, Split, Verdict};
use super::{clamp_ports, EpKey, UrbResult, EPS_PER_PORT};

mod interface;

pub use interface::{
    Action, FrontendConfig, Handle, Refused, Rejected, Request, RequestKind, UnknownId, ECONNRESET,
};

/// A client transfer that has not completed.
#[derive(Debug)]
struct Transfer<P> {
    handle: Handle,
    pipe: Pipe,
    port: u8,
    ep: usize,
    payload: P,
    split: Split,
    /// IN transfer of several pieces, stock backend: one piece in flight at a time.
    serial: bool,
    /// IN transfer of several pieces sent as a split chain ([`super::chain`]).
    chain: bool,
    short_not_ok: bool,
    /// Containment applies to its endpoint.
    contain: bool,
    epoch: u32,
    /// Some request of it reached the ring.
    sent: bool,
    in_flight: u32,
    seen: Seen,
}

/// What an id in flight carries.
#[derive(Clone, Copy, Debug)]
enum Carries {
    Piece { transfer: usize, piece: Piece },
    Unlink,
}

#[derive(Clone, Copy, Debug)]
struct InFlight {
    /// Push order, so a queued unlink can tell whether its victim is still the same request.
    seq: u64,
    pipe: Pipe,
    carries: Carries,
}

/// A usbif unlink waiting for a free id.
#[derive(Clone, Copy, Debug)]
struct QueuedUnlink {
    victim: u16,
    seq: u64,
}

/// Frontend half of one vusb controller: client transfers in, ring requests and client
/// answers out.
///
/// Calling contract: call [`submit`](Self::submit) and [`unlink`](Self::unlink) for the
/// client's commands, [`handle_response`](Self::handle_response) for each response taken
/// off the ring, [`handle_device_attached`](Self::handle_device_attached) /
/// [`handle_device_gone`](Self::handle_device_gone) for conn-ring events and
/// [`handle_disconnect`](Self::handle_disconnect) when the backend goes away. After each
/// call drain [`poll_action`](Self::poll_action) until `None` and perform the actions in
/// order (push the requests, then notify). No call blocks or reads a clock; the tables
/// are sized at construction and grow only past `backlog` pending transfers.
#[derive(Debug)]
pub struct Frontend<P> {
    cfg: FrontendConfig,
    transfers: Vec<Option<Transfer<P>>>,
    free_slots: Vec<usize>,
    /// Transfers with requests still to send, in submission order.
    pending: VecDeque<usize>,
    /// By request id.
    ring: Vec<Option<InFlight>>,
    free_ids: Vec<u16>,
    unlinks: VecDeque<QueuedUnlink>,
    /// Client unlinks answered after their victim's `Complete`: (unlink, victim slot).
    waiting: Vec<(Handle, usize)>,
    eps: Vec<FrontendAca>,
    /// Per endpoint: a split chain transfer has requests on the ring and has not
    /// completed; nothing else of the endpoint goes out.
    chained: Vec<bool>,
    /// Endpoint blocked in the current scan of `pending` iff its entry equals `scan`.
    blocked: Vec<u64>,
    scan: u64,
    present: Vec<bool>,
    disconnected: bool,
    seq: u64,
    actions: VecDeque<Action<P>>,
}

impl<P> Frontend<P> {
    /// A controller with every port empty.
    pub fn new(cfg: FrontendConfig) -> Self {
        let cfg = FrontendConfig {
            num_ports: clamp_ports(cfg.num_ports),
            ring_size: cfg.ring_size.max(1),
            ..cfg
        };
        let ids = usize::from(cfg.ring_size);
        let eps = usize::from(cfg.num_ports) * EPS_PER_PORT;
        Frontend {
            cfg,
            transfers: Vec::with_capacity(cfg.backlog),
            free_slots: Vec::with_capacity(cfg.backlog),
            pending: VecDeque::with_capacity(cfg.backlog),
            ring: vec![None; ids],
            // Popped from the end: id 0 goes first.
            free_ids: (0..cfg.ring_size).rev().collect(),
            unlinks: VecDeque::with_capacity(ids),
            waiting: Vec::with_capacity(ids),
            eps: vec![FrontendAca::default(); eps],
            chained: vec![false; eps],
            blocked: vec![0; eps],
            scan: 0,
            present: vec![false; usize::from(cfg.num_ports)],
            disconnected: false,
            seq: 0,
            actions: VecDeque::with_capacity(cfg.backlog + ids),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> FrontendConfig {
        self.cfg
    }

    /// The next thing to do, in order.
    pub fn poll_action(&mut self) -> Option<Action<P>> {
        self.actions.pop_front()
    }

    /// Requests on the ring not yet answered (at most `ring_size`).
    pub fn in_flight(&self) -> usize {
        self.ring.iter().flatten().count()
    }

    /// Client transfers taken and not yet answered.
    pub fn pending_transfers(&self) -> usize {
        self.transfers.iter().flatten().count()
    }

    /// Whether [`Frontend::handle_disconnect`] was called.
    pub fn is_disconnected(&self) -> bool {
        self.disconnected
    }

    /// The payload of a pending transfer (e.g. to copy an IN piece's data into it).
    pub fn payload_mut(&mut self, handle: Handle) -> Option<&mut P> {
        self.transfers
            .iter_mut()
            .flatten()
            .find(|t| t.handle == handle)
            .map(|t| &mut t.payload)
    }

    /// The client submits a transfer of `shape` on `pipe`. Taken transfers are answered
    /// exactly once, possibly before this returns: one that cannot be expressed in usbif
    /// (too large and not splittable) completes at once with [`super::split::TOO_LARGE`].
    pub fn submit(
        &mut self,
        handle: Handle,
        pipe: Pipe,
        shape: Shape,
        short_not_ok: bool,
        payload: P,
    ) -> Result<(), Rejected<P>> {
        let pipe = pipe.without_unlink();
        let key = EpKey::of(pipe);
        if self.disconnected {
            let reason = Refused::Disconnected;
            return Err(Rejected { reason, payload });
        }
        let present = key
            .index(self.cfg.num_ports)
            .filter(|_| self.port_present(key.port));
        let Some(ep) = present else {
            let reason = Refused::NoDevice(key.port);
            return Err(Rejected { reason, payload });
        };
        let split = match Split::new(pipe.xfer_type(), shape, self.cfg.limits) {
            Ok(split) => split,
            Err(e) => {
                let result = UrbResult::status(e.status());
                self.actions.push_back(Action::Complete {
                    handle,
                    result,
                    payload,
                });
                return Ok(());
            }
        };
        let contain = self.cfg.aca && aca::applies_to(pipe.xfer_type());
        let epoch = self.eps.get(ep).map_or(0, FrontendAca::epoch);
        let transfer = Transfer {
            handle,
            pipe,
            port: key.port,
            ep,
            payload,
            serial: pipe.is_in() && !split.is_single() && !self.cfg.split_chain,
            chain: pipe.is_in() && !split.is_single() && self.cfg.split_chain,
            split,
            short_not_ok,
            contain,
            epoch,
            sent: false,
            in_flight: 0,
            seen: Seen::Clean,
        };
        let slot = match self.free_slots.pop() {
            Some(slot) => {
                if let Some(entry) = self.transfers.get_mut(slot) {
                    *entry = Some(transfer);
                }
                slot
            }
            None => {
                self.transfers.push(Some(transfer));
                self.transfers.len() - 1
            }
        };
        self.pending.push_back(slot);
        self.pump();
        Ok(())
    }

    /// The client unlinks `victim` with its own `handle` (USB/IP CMD_UNLINK). Answered
    /// with [`Action::UnlinkReset`] at once if none of the victim reached the ring, else
    /// with [`Action::UnlinkOk`] right after the victim's `Complete`, which waits for the
    /// backend's answers (contract 4).
    pub fn unlink(&mut self, handle: Handle, victim: Handle) -> Result<(), Refused> {
        if self.disconnected {
            return Err(Refused::Disconnected);
        }
        let found = self
            .transfers
            .iter()
            .position(|t| t.as_ref().is_some_and(|t| t.handle == victim));
        let Some(slot) = found else {
            self.actions.push_back(Action::UnlinkOk { handle });
            return Ok(());
        };
        let sent = self
            .transfers
            .get(slot)
            .and_then(Option::as_ref)
            .is_some_and(|t| t.sent);
        if !sent {
            self.pending.retain(|&s| s != slot);
            if let Some(t) = self.take(slot) {
                self.actions.push_back(Action::UnlinkReset {
                    handle,
                    victim,
                    payload: t.payload,
                });
            }
            // A held transfer behind it may now be the one to carry the clear mark.
            self.pump();
            return Ok(());
        }
        if let Some(t) = self.transfer_mut(slot) {
            t.split.abort(Status::IoError);
        }
        self.pending.retain(|&s| s != slot);
        self.waiting.push((handle, slot));
        self.unlink_pieces(slot, None);
        self.finish_if_done(slot);
        self.pump();
        Ok(())
    }

    /// The backend answered request `id`. An id not in flight is the backend's protocol
    /// error ([`UnknownId`]): the shell should disconnect. Ignored after a disconnect.
    pub fn handle_response(&mut self, id: u16, result: UrbResult) -> Result<(), UnknownId> {
        if self.disconnected {
            // The ring is gone and every transfer was already answered.
            return Ok(());
        }
        let Some(entry) = self.ring.get_mut(usize::from(id)).and_then(Option::take) else {
            return Err(UnknownId(id));
        };
        self.free_ids.push(id);
        if let Carries::Piece { transfer, piece } = entry.carries {
            let mut cancel_after = None;
            if let Some(t) = self.transfer_mut(transfer) {
                t.in_flight = t.in_flight.saturating_sub(1);
                t.seen = t.seen.max(Seen::of(result.status));
                if let Verdict::Ended { after } = t.split.piece_done(piece, result) {
                    cancel_after = Some(after);
                }
            }
            if let Some(after) = cancel_after {
                self.pending.retain(|&s| s != transfer);
                self.unlink_pieces(transfer, Some(after));
            }
            self.finish_if_done(transfer);
        }
        self.pump();
        Ok(())
    }

    /// A device is on `port` (conn ring: a speed other than none).
    pub fn handle_device_attached(&mut self, port: Port) {
        if let Some(p) = self.present.get_mut(usize::from(port.get() - 1)) {
            *p = true;
        }
        let start = usize::from(port.get() - 1) * EPS_PER_PORT;
        for ep in self.eps.iter_mut().skip(start).take(EPS_PER_PORT) {
            ep.reset();
        }
    }

    /// The device on `port` went away (conn ring: speed none). Its transfers that never
    /// reached the ring complete -ENODEV now; the others send nothing more and complete
    /// when the backend has answered what is in flight (it answers -ENODEV). Later
    /// submissions for the port are refused until it is attached again.
    pub fn handle_device_gone(&mut self, port: Port) {
        if let Some(p) = self.present.get_mut(usize::from(port.get() - 1)) {
            *p = false;
        }
        for slot in 0..self.transfers.len() {
            let sent = match self.transfer_mut(slot) {
                Some(t) if t.port == port.get() => {
                    t.split.abort(Status::NoDev);
                    t.sent
                }
                _ => continue,
            };
            self.pending.retain(|&s| s != slot);
            if sent {
                self.finish_if_done(slot);
            } else if let Some(t) = self.take(slot) {
                self.actions.push_back(Action::Complete {
                    handle: t.handle,
                    result: UrbResult::status(Status::NoDev),
                    payload: t.payload,
                });
            }
        }
        self.pump();
    }

    /// The backend went away (or the ring broke): every pending transfer completes
    /// -ESHUTDOWN now, pending unlinks are answered after their victims, and later
    /// submissions and unlinks are refused.
    ///
    /// The ring's answers will never come, so a shell whose grants point into payloads
    /// must keep those pages from reuse until the backend has unmapped them (gntalloc
    /// defers freeing a page that is still mapped by itself).
    pub fn handle_disconnect(&mut self) {
        if self.disconnected {
            return;
        }
        self.disconnected = true;
        self.pending.clear();
        self.unlinks.clear();
        for entry in self.ring.iter_mut() {
            *entry = None;
        }
        self.free_ids.clear();
        self.free_ids.extend((0..self.cfg.ring_size).rev());
        for slot in 0..self.transfers.len() {
            let Some(t) = self.take(slot) else { continue };
            self.actions.push_back(Action::Complete {
                handle: t.handle,
                result: UrbResult::status(Status::Shutdown),
                payload: t.payload,
            });
            self.answer_waiting(slot);
        }
    }

    fn port_present(&self, port: u8) -> bool {
        port.checked_sub(1)
            .and_then(|p| self.present.get(usize::from(p)))
            .copied()
            .unwrap_or(false)
    }

    fn transfer_mut(&mut self, slot: usize) -> Option<&mut Transfer<P>> {
        self.transfers.get_mut(slot).and_then(Option::as_mut)
    }

    /// Removes a transfer, keeping its endpoint's bookkeeping right.
    fn take(&mut self, slot: usize) -> Option<Transfer<P>> {
        let t = self.transfers.get_mut(slot).and_then(Option::take)?;
        self.free_slots.push(slot);
        if t.chain && t.sent {
            if let Some(c) = self.chained.get_mut(t.ep) {
                *c = false;
            }
        }
        if t.contain {
            if let Some(ep) = self.eps.get_mut(t.ep) {
                ep.completed(t.sent, t.seen);
            }
        }
        Some(t)
    }

    /// Queues usbif unlinks for the transfer's pieces in flight (those after `after`).
    fn unlink_pieces(&mut self, slot: usize, after: Option<u32>) {
        for (id, entry) in self.ring.iter().enumerate() {
            let Some(InFlight {
                seq,
                carries: Carries::Piece { transfer, piece },
                ..
            }) = entry
            else {
                continue;
            };
            if *transfer == slot && after.is_none_or(|a| piece.offset > a) {
                if let Ok(victim) = u16::try_from(id) {
                    self.unlinks.push_back(QueuedUnlink { victim, seq: *seq });
                }
            }
        }
    }

    /// Completes the transfer if nothing more will be sent and nothing is in flight.
    fn finish_if_done(&mut self, slot: usize) {
        let done = self
            .transfers
            .get(slot)
            .and_then(Option::as_ref)
            .is_some_and(|t| t.in_flight == 0 && !t.split.has_next());
        if !done {
            return;
        }
        if let Some(t) = self.take(slot) {
            self.actions.push_back(Action::Complete {
                handle: t.handle,
                result: t.split.result(),
                payload: t.payload,
            });
            self.answer_waiting(slot);
        }
    }

    /// Answers the client unlinks that waited for the transfer in `slot`.
    fn answer_waiting(&mut self, slot: usize) {
        let actions = &mut self.actions;
        self.waiting.retain(|&(handle, victim)| {
            if victim == slot {
                actions.push_back(Action::UnlinkOk { handle });
                false
            } else {
                true
            }
        });
    }

    /// Puts as much on the ring as ids allow: unlinks first, then transfers in order.
    fn pump(&mut self) {
        if self.disconnected {
            return;
        }
        while let Some(&QueuedUnlink { victim, seq }) = self.unlinks.front() {
            let target = self
                .ring
                .get(usize::from(victim))
                .copied()
                .flatten()
                .filter(|f| f.seq == seq);
            let Some(target) = target else {
                // Answered meanwhile; the id may already carry another request.
                self.unlinks.pop_front();
                continue;
            };
            let Some(id) = self.free_ids.pop() else {
                return;
            };
            self.unlinks.pop_front();
            let request = Request {
                id,
                pipe: target.pipe.with_unlink(),
                kind: RequestKind::Unlink { victim },
            };
            self.push(request, Carries::Unlink);
        }
        self.scan += 1;
        let mut i = 0;
        while i < self.pending.len() && !self.free_ids.is_empty() {
            let Some(&slot) = self.pending.get(i) else {
                break;
            };
            match self.try_send(slot) {
                Step::Sent => {}
                Step::Blocked => i += 1,
                Step::Done => {
                    self.pending.remove(i);
                }
            }
        }
    }

    /// Tries to send the next piece of the transfer in `slot`, the oldest unsent one of its
    /// endpoint unless the endpoint is already blocked in this scan.
    fn try_send(&mut self, slot: usize) -> Step {
        let scan = self.scan;
        let Some(t) = self.transfers.get_mut(slot).and_then(Option::as_mut) else {
            return Step::Done;
        };
        let blocked = self.blocked.get_mut(t.ep);
        if blocked.as_deref() == Some(&scan) {
            return Step::Blocked;
        }
        if !t.split.has_next() {
            return Step::Done;
        }
        let behind_chain = !t.sent && self.chained.get(t.ep).copied().unwrap_or(false);
        let chain_full = t.chain && t.in_flight >= chain_depth(self.cfg.ring_size);
        let mut hold = (t.serial && t.in_flight > 0) || chain_full || behind_chain;
        let mut mark = false;
        if !hold && t.contain && !t.sent {
            match self.eps.get(t.ep).map(|ep| ep.release(t.epoch)) {
                Some(Release::Hold) => hold = true,
                Some(Release::SendMarked) => mark = true,
                Some(Release::Send) | None => {}
            }
        }
        if hold {
            // Nothing behind it on this endpoint may overtake it.
            if let Some(b) = blocked {
                *b = scan;
            }
            return Step::Blocked;
        }
        let Some(id) = self.free_ids.pop() else {
            return Step::Blocked;
        };
        let Some(piece) = t.split.next_piece() else {
            self.free_ids.push(id);
            return Step::Done;
        };
        if !t.sent && t.contain {
            if let Some(ep) = self.eps.get_mut(t.ep) {
                ep.sent(mark);
            }
        }
        if t.chain && !t.sent {
            if let Some(c) = self.chained.get_mut(t.ep) {
                *c = true;
            }
        }
        let split_cont = t.chain && t.sent;
        t.sent = true;
        t.in_flight += 1;
        let more = t.split.has_next();
        let request = Request {
            id,
            pipe: t.pipe,
            kind: RequestKind::Submit {
                handle: t.handle,
                piece,
                short_not_ok: t.short_not_ok,
                aca_clear: mark,
                split_more: t.chain && more,
                split_cont,
            },
        };
        self.push(
            request,
            Carries::Piece {
                transfer: slot,
                piece,
            },
        );
        if more {
            Step::Sent
        } else {
            Step::Done
        }
    }

    fn push(&mut self, request: Request, carries: Carries) {
        self.seq += 1;
        if let Some(entry) = self.ring.get_mut(usize::from(request.id)) {
            *entry = Some(InFlight {
                seq: self.seq,
                pipe: request.pipe,
                carries,
            });
        }
        self.actions.push_back(Action::Push(request));
    }
}

/// Pieces of one split chain in flight at once: a quarter of the ring (4 of a stock ring's
/// 16 ids), at least one. An IN waiting for the device holds its id; a chain may not take
/// the ids that other endpoints (the OUT that would feed it, other devices) need.
fn chain_depth(ring_size: u16) -> u32 {
    u32::from(ring_size / 4).max(1)
}

/// Outcome of one attempt in [`Frontend::pump`].
enum Step {
    /// A piece went out; the transfer has more.
    Sent,
    /// Nothing went out; later transfers of this endpoint must wait.
    Blocked,
    /// The transfer has nothing more to send.
    Done,
}
