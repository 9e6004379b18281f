//! A whole vusb in one process: client, frontend, ring, backend and a usbfs-like host, with
//! logs of everything each party saw, and the contract checks run on them.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use crate::urb::backend::{self, Backend, BackendConfig, HostResult, HostStatus, SubmitFlags};
use crate::urb::frontend::{self, Frontend, FrontendConfig, Handle, RequestKind};
use crate::urb::split::{Piece, Shape};
use crate::urb::{aca, UrbResult};
use crate::wire::{Ep, Pipe, Port, Status, XferType};

/// Endpoints per simulated port: ep0 control, bulk 1 OUT, bulk 1 IN, interrupt 2 IN.
pub const EPS: usize = 4;
pub const PORTS: u8 = 2;

/// The pipe of simulated endpoint `ep` (0..EPS) on `port`.
pub fn pipe(port: u8, ep: usize) -> Pipe {
    match ep {
        0 => Pipe::new(port, 2, Ep::new(0, true), XferType::Ctrl),
        1 => Pipe::new(port, 2, Ep::new(1, false), XferType::Bulk),
        2 => Pipe::new(port, 2, Ep::new(1, true), XferType::Bulk),
        _ => Pipe::new(port, 2, Ep::new(2, true), XferType::Int),
    }
}

/// `wMaxPacketSize` of simulated endpoint `ep`.
pub fn max_packet(ep: usize) -> u16 {
    match ep {
        0 => 64,
        1 | 2 => 512,
        _ => 8,
    }
}

/// Simulated endpoint index (port-major) of a pipe.
fn ep_of(pipe: Pipe) -> usize {
    let port = usize::from(pipe.port().saturating_sub(1));
    let ep = match (pipe.xfer_type(), pipe.is_in()) {
        (XferType::Ctrl, _) => 0,
        (XferType::Bulk, false) => 1,
        (XferType::Bulk, true) => 2,
        _ => 3,
    };
    port * EPS + ep
}

/// What the backend hands the host: enough to run the piece and to trace it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostReq {
    pub handle: Handle,
    pub piece: Piece,
    pub short_not_ok: bool,
    /// A split chain piece with more to follow: the shell adds SHORT_NOT_OK and reports
    /// the -EREMOTEIO of a short read as a success.
    pub split_more: bool,
}

/// How the device answers the URB at the head of an endpoint's queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Full,
    /// IN only: `n`/256 of the length (an OUT transfer is never short).
    Short(u8),
    Fail(Status),
}

#[derive(Clone, Copy, Debug)]
struct HostUrb {
    id: u16,
    continuation: bool,
    req: HostReq,
}

/// One URB the device ran.
#[derive(Clone, Copy, Debug)]
pub struct Exec {
    pub step: u64,
    pub ep: usize,
    pub req: HostReq,
    pub status: Status,
    pub actual: u32,
}

/// What the client did and saw about one transfer.
#[derive(Clone, Debug, Default)]
pub struct ClientXfer {
    pub ep: usize,
    pub len: u32,
    pub submitted: u64,
    pub completes: Vec<(u64, UrbResult)>,
    pub reset: bool,
    pub unlinked: bool,
}

pub struct Sim {
    pub fe: Frontend<Handle>,
    pub be: Backend<HostReq>,
    pub aca: bool,
    pub ring_size: u16,
    /// The host stops an endpoint at a short packet (see [`Sim::with_host`]).
    pub stops_on_short: bool,
    pub step: u64,
    next_handle: Handle,
    to_be: VecDeque<frontend::Request>,
    to_fe: VecDeque<(u16, UrbResult)>,
    host: Vec<VecDeque<HostUrb>>,
    host_disabled: Vec<bool>,
    host_dead: Vec<bool>,
    reap: VecDeque<(u16, HostResult, HostReq)>,
    /// Ids pushed by the frontend and not yet answered to it.
    fe_ids: BTreeSet<u16>,
    /// Ids the backend took and has not answered.
    pub(super) be_ids: BTreeSet<u16>,
    /// Backend ids that must be answered with a given status (device gone, disconnect).
    forced: HashMap<u16, Status>,
    /// Ids the backend has on the host.
    pub(super) on_host: BTreeMap<u16, HostReq>,
    pub xfers: BTreeMap<Handle, ClientXfer>,
    pub refused: BTreeSet<Handle>,
    /// Client unlinks: unlink handle -> (victim, answered).
    pub(super) unlinks: BTreeMap<Handle, (Handle, bool)>,
    pub execs: Vec<Exec>,
    /// Backend Submit actions: (step, ep, req).
    pub submits: Vec<(u64, usize, HostReq)>,
    /// Frontend pushes of data requests: (ep, handle, offset).
    pub(super) pushes: Vec<(usize, Handle, u32)>,
    /// Failures the backend learnt of: (step, ep, handle).
    pub(super) be_failures: Vec<(u64, usize, Handle)>,
    pub(super) gone: Vec<Option<u64>>,
    pub disconnected: Option<u64>,
}

impl Sim {
    pub fn new(aca: bool, ring_size: u16) -> Self {
        Self::with_chains(aca, false, ring_size)
    }

    /// A vusb with split chains negotiated or not.
    pub fn with_chains(aca: bool, split_chain: bool, ring_size: u16) -> Self {
        Self::with_host(aca, split_chain, ring_size, true)
    }

    /// A vusb whose host stops an endpoint at a short packet (usbfs's
    /// BULK_CONTINUATION capability) or, like xHCI, runs the next queued URB first.
    pub fn with_host(aca: bool, split_chain: bool, ring_size: u16, stops_on_short: bool) -> Self {
        let fe_cfg = FrontendConfig {
            ring_size,
            aca,
            split_chain,
            ..FrontendConfig::stock(PORTS)
        };
        let be_cfg = BackendConfig {
            num_ports: PORTS,
            ring_size,
            aca,
        };
        let mut sim = Sim {
            fe: Frontend::new(fe_cfg),
            be: Backend::new(be_cfg),
            aca,
            ring_size,
            stops_on_short,
            step: 0,
            next_handle: 1,
            to_be: VecDeque::new(),
            to_fe: VecDeque::new(),
            host: vec![VecDeque::new(); usize::from(PORTS) * EPS],
            host_disabled: vec![false; usize::from(PORTS) * EPS],
            host_dead: vec![false; usize::from(PORTS)],
            reap: VecDeque::new(),
            fe_ids: BTreeSet::new(),
            be_ids: BTreeSet::new(),
            forced: HashMap::new(),
            on_host: BTreeMap::new(),
            xfers: BTreeMap::new(),
            refused: BTreeSet::new(),
            unlinks: BTreeMap::new(),
            execs: Vec::new(),
            submits: Vec::new(),
            pushes: Vec::new(),
            be_failures: Vec::new(),
            gone: vec![None; usize::from(PORTS)],
            disconnected: None,
        };
        for port in 1..=PORTS {
            let port = Port::new(port).unwrap();
            sim.fe.handle_device_attached(port);
            sim.be.handle_device_attached_with(port, stops_on_short);
        }
        sim
    }

    fn tick(&mut self) -> u64 {
        self.step += 1;
        self.step
    }

    /// The client submits a transfer on simulated endpoint `ep` (port-major index).
    pub fn submit(&mut self, ep: usize, len: u32, page_offset: u16, short_not_ok: bool) -> Handle {
        let step = self.tick();
        let handle = self.next_handle;
        self.next_handle += 1;
        let port = u8::try_from(ep / EPS).unwrap() + 1;
        let local = ep % EPS;
        let shape = Shape {
            len,
            page_offset: if local == 1 || local == 2 {
                page_offset
            } else {
                0
            },
            max_packet: max_packet(local),
            extra_segs: 0,
        };
        self.xfers.insert(
            handle,
            ClientXfer {
                ep,
                len,
                submitted: step,
                ..ClientXfer::default()
            },
        );
        match self
            .fe
            .submit(handle, pipe(port, local), shape, short_not_ok, handle)
        {
            Ok(()) => {}
            Err(rejected) => {
                assert_eq!(
                    rejected.payload, handle,
                    "refusal must hand the payload back"
                );
                if self.disconnected.is_some() {
                    assert_eq!(rejected.reason, frontend::Refused::Disconnected);
                } else {
                    assert!(
                        self.gone[usize::from(port - 1)].is_some(),
                        "refused {rejected:?}"
                    );
                }
                self.xfers.remove(&handle);
                self.refused.insert(handle);
            }
        }
        self.drain_fe();
        handle
    }

    /// The client unlinks `victim`.
    pub fn unlink(&mut self, victim: Handle) -> Handle {
        self.tick();
        let handle = self.next_handle;
        self.next_handle += 1;
        match self.fe.unlink(handle, victim) {
            Ok(()) => {
                self.unlinks.insert(handle, (victim, false));
                if let Some(x) = self.xfers.get_mut(&victim) {
                    x.unlinked = true;
                }
            }
            Err(e) => {
                assert_eq!(e, frontend::Refused::Disconnected);
                assert!(self.disconnected.is_some());
            }
        }
        self.drain_fe();
        handle
    }

    /// Whether `port` still has its device.
    pub fn port_present(&self, port: u8) -> bool {
        self.gone[usize::from(port - 1)].is_none()
    }

    /// Whether the client's unlink `h` was answered.
    pub fn unlink_answered(&self, h: Handle) -> bool {
        self.unlinks.get(&h).is_some_and(|u| u.1)
    }

    /// Handles of transfers the client is still waiting for.
    pub fn live_handles(&self) -> Vec<Handle> {
        self.xfers
            .iter()
            .filter(|(_, x)| x.completes.is_empty() && !x.reset)
            .map(|(h, _)| *h)
            .collect()
    }

    /// Moves up to `n` requests from the ring to the backend.
    pub fn deliver_requests(&mut self, n: usize) {
        for _ in 0..n {
            let Some(req) = self.to_be.pop_front() else {
                return;
            };
            self.tick();
            assert!(self.be_ids.insert(req.id), "backend got live id {}", req.id);
            match req.kind {
                RequestKind::Submit {
                    handle,
                    piece,
                    short_not_ok,
                    aca_clear,
                    split_more,
                    split_cont,
                } => {
                    let payload = HostReq {
                        handle,
                        piece,
                        short_not_ok,
                        split_more,
                    };
                    let flags = SubmitFlags {
                        aca_clear,
                        split_more,
                        split_cont,
                        host_split: false,
                        short_not_ok,
                    };
                    let out = self.be.handle_submit_with(req.id, req.pipe, flags, payload);
                    assert!(
                        out.is_ok(),
                        "backend refused a well-formed request: {out:?}"
                    );
                }
                RequestKind::Unlink { victim } => {
                    assert_eq!(self.be.handle_unlink(req.id, victim), Ok(()));
                }
            }
            self.drain_be();
        }
    }

    /// Moves up to `n` responses from the ring to the frontend.
    pub fn deliver_responses(&mut self, n: usize) {
        for _ in 0..n {
            let Some((id, result)) = self.to_fe.pop_front() else {
                return;
            };
            self.tick();
            if self.disconnected.is_none() {
                assert!(
                    self.fe_ids.remove(&id),
                    "response for id {id} not in flight"
                );
            }
            assert_eq!(self.fe.handle_response(id, result), Ok(()));
            self.drain_fe();
        }
    }

    /// The device runs the URB at the head of endpoint `ep`'s queue.
    pub fn run(&mut self, ep: usize, outcome: Outcome) {
        if self.host_dead[ep / EPS] {
            return;
        }
        let Some(urb) = self.host.get_mut(ep).and_then(VecDeque::pop_front) else {
            return;
        };
        let step = self.tick();
        let len = urb.req.piece.len;
        let is_in = ep % EPS != 1;
        // `ended`: usbfs saw an error (a short read with SHORT_NOT_OK included) and cancels
        // the continuations queued behind.
        let short = matches!(outcome, Outcome::Short(_));
        let (status, actual, ended) = match outcome {
            Outcome::Short(n) if is_in && len > 0 => {
                let actual = u32::try_from(u64::from(len) * u64::from(n) / 256).unwrap();
                let status = if urb.req.short_not_ok && !urb.req.split_more {
                    Status::IoError
                } else {
                    Status::Ok
                };
                let ended = urb.req.short_not_ok || urb.req.split_more;
                (status, actual, ended && actual < len)
            }
            Outcome::Fail(status) => (status, len / 2, !status.is_ok()),
            _ => (Status::Ok, len, false),
        };
        self.execs.push(Exec {
            step,
            ep,
            req: urb.req,
            status,
            actual,
        });
        self.reap
            .push_back((urb.id, HostResult::done(status, actual), urb.req));
        if ended && ep % EPS != 0 && ep % EPS != 3 {
            if short && !self.stops_on_short {
                // xHCI does not stop at a short packet: the next URB takes the device's
                // next data before usbfs's cancel reaches it. usbfs still has that URB
                // pending then (it is given back after this one): if it starts a new
                // transfer (no BULK_CONTINUATION), cancel_bulk_urbs stops at it, cancels
                // nothing and leaves the endpoint enabled.
                let fresh_next = self.host[ep].front().is_some_and(|n| !n.continuation);
                self.run(ep, Outcome::Full);
                if fresh_next {
                    return;
                }
            }
            // usbfs cancel_bulk_urbs, in the failed URB's completion handler: before the
            // device runs anything else.
            let queue = &mut self.host[ep];
            let mut stopped = false;
            while let Some(next) = queue.front() {
                if !next.continuation {
                    stopped = true;
                    break;
                }
                let next = queue.pop_front().unwrap();
                self.reap
                    .push_back((next.id, HostResult::cancelled(), next.req));
            }
            if !stopped {
                self.host_disabled[ep] = true;
            }
        }
    }

    /// The host gives back up to `n` URBs to the backend.
    pub fn reap(&mut self, n: usize) {
        for _ in 0..n {
            let Some((id, result, req)) = self.reap.pop_front() else {
                return;
            };
            let step = self.tick();
            assert_eq!(self.on_host.remove(&id), Some(req));
            if let HostStatus::Done(s) = result.status {
                let ep = ep_of(pipe_of(&self.xfers, req.handle));
                if !s.is_ok() {
                    self.be_failures.push((step, ep, req.handle));
                }
            }
            let out = self.be.handle_host_done(id, result, req);
            assert!(out.is_ok(), "backend lost urb {id}");
            self.drain_be();
        }
    }

    pub fn device_gone(&mut self, port: u8) {
        let step = self.tick();
        let p = usize::from(port - 1);
        if self.gone[p].is_some() {
            return;
        }
        self.gone[p] = Some(step);
        self.host_dead[p] = true;
        for (&id, req) in &self.on_host {
            if self.xfers.get(&req.handle).map(|x| x.ep / EPS) == Some(p) {
                self.forced.entry(id).or_insert(Status::NoDev);
            }
        }
        self.be.handle_device_gone(Port::new(port).unwrap());
        self.drain_be();
        self.fe.handle_device_gone(Port::new(port).unwrap());
        self.drain_fe();
    }

    pub fn disconnect(&mut self) {
        let step = self.tick();
        if self.disconnected.is_some() {
            return;
        }
        self.disconnected = Some(step);
        for dead in &mut self.host_dead {
            *dead = true;
        }
        for &id in self.on_host.keys() {
            self.forced.entry(id).or_insert(Status::Shutdown);
        }
        self.be.handle_disconnect();
        self.drain_be();
        self.fe.handle_disconnect();
        self.drain_fe();
        // The frontend stops producing; what it had pushed is gone with the ring.
        self.to_be.clear();
        self.fe_ids.clear();
    }

    fn drain_be(&mut self) {
        while let Some(action) = self.be.poll_action() {
            match action {
                backend::Action::Submit {
                    id,
                    pipe,
                    continuation,
                    payload,
                } => {
                    let ep = ep_of(pipe);
                    assert!(self.disconnected.is_none(), "submit after disconnect");
                    assert!(self.gone[ep / EPS].is_none(), "submit after device gone");
                    assert!(!continuation || pipe.is_bulk());
                    self.submits.push((self.step, ep, payload));
                    self.on_host.insert(id, payload);
                    if continuation && self.host_disabled[ep] {
                        // usbfs refuses it with -EREMOTEIO.
                        self.reap.push_back((id, HostResult::cancelled(), payload));
                    } else {
                        if pipe.is_bulk() && !continuation {
                            self.host_disabled[ep] = false;
                        }
                        self.host[ep].push_back(HostUrb {
                            id,
                            continuation,
                            req: payload,
                        });
                    }
                }
                backend::Action::Cancel { id } => {
                    for queue in &mut self.host {
                        if let Some(i) = queue.iter().position(|u| u.id == id) {
                            let urb = queue.remove(i).unwrap();
                            self.reap.push_back((id, HostResult::cancelled(), urb.req));
                        }
                    }
                }
                backend::Action::Respond {
                    id,
                    result,
                    payload,
                } => {
                    assert!(self.be_ids.remove(&id), "backend answered id {id} twice");
                    if let Some(status) = self.forced.remove(&id) {
                        assert_eq!(result.status, status, "urb {id} on the host at unplug");
                    }
                    if let Some(p) = payload {
                        assert!(
                            !self.on_host.contains_key(&id),
                            "payload {p:?} still on host"
                        );
                    }
                    self.to_fe.push_back((id, result));
                }
            }
        }
    }

    fn drain_fe(&mut self) {
        while let Some(action) = self.fe.poll_action() {
            let step = self.step;
            match action {
                frontend::Action::Push(req) => {
                    assert!(req.id < self.ring_size, "id {} past the ring", req.id);
                    assert!(self.fe_ids.insert(req.id), "id {} pushed twice", req.id);
                    assert!(self.fe.in_flight() <= usize::from(self.ring_size));
                    if let RequestKind::Submit { handle, piece, .. } = req.kind {
                        self.pushes.push((ep_of(req.pipe), handle, piece.offset));
                    }
                    self.to_be.push_back(req);
                }
                frontend::Action::Complete {
                    handle,
                    result,
                    payload,
                } => {
                    assert_eq!(payload, handle);
                    assert!(
                        !self.refused.contains(&handle),
                        "refused {handle} completed"
                    );
                    let x = self
                        .xfers
                        .get_mut(&handle)
                        .expect("completion of unknown handle");
                    assert!(
                        x.completes.is_empty() && !x.reset,
                        "{handle} answered twice"
                    );
                    assert!(result.actual_length <= x.len);
                    x.completes.push((step, result));
                }
                frontend::Action::UnlinkOk { handle } => {
                    let (victim, answered) = self.unlinks.get_mut(&handle).expect("unknown unlink");
                    assert!(!*answered, "unlink {handle} answered twice");
                    *answered = true;
                    if let Some(x) = self.xfers.get(victim) {
                        assert!(
                            !x.completes.is_empty() || x.reset,
                            "RET_UNLINK 0 for {victim} before its RET_SUBMIT"
                        );
                    }
                }
                frontend::Action::UnlinkReset {
                    handle,
                    victim,
                    payload,
                } => {
                    assert_eq!(payload, victim);
                    let (v, answered) = self.unlinks.get_mut(&handle).expect("unknown unlink");
                    assert_eq!(*v, victim);
                    assert!(!*answered, "unlink {handle} answered twice");
                    *answered = true;
                    let x = self
                        .xfers
                        .get_mut(&victim)
                        .expect("reset of unknown handle");
                    assert!(
                        x.completes.is_empty() && !x.reset,
                        "{victim} answered twice"
                    );
                    x.reset = true;
                    // Nothing of it may ever have reached the ring.
                    assert!(!self.pushes.iter().any(|p| p.1 == victim));
                }
            }
        }
    }

    /// Runs everything to rest with a device that never fails.
    pub fn settle(&mut self) {
        for _ in 0..10_000 {
            let busy = !self.to_be.is_empty()
                || !self.to_fe.is_empty()
                || !self.reap.is_empty()
                || self
                    .host
                    .iter()
                    .enumerate()
                    .any(|(ep, q)| !q.is_empty() && !self.host_dead[ep / EPS]);
            if !busy {
                return;
            }
            self.deliver_requests(usize::MAX);
            self.reap(usize::MAX);
            for ep in 0..self.host.len() {
                self.run(ep, Outcome::Full);
            }
            self.deliver_responses(usize::MAX);
        }
        panic!("the simulation does not come to rest");
    }
}

fn pipe_of(xfers: &BTreeMap<Handle, ClientXfer>, h: Handle) -> Pipe {
    let ep = xfers[&h].ep;
    pipe(u8::try_from(ep / EPS).unwrap() + 1, ep % EPS)
}

/// The contained status, re-exported for the cases.
pub const CONTAINED: Status = aca::CONTAINED;
