//! Random interleavings: the whole vusb against the contract checks, and the backend alone
//! against a reference model.

use std::collections::{BTreeMap, BTreeSet};

use proptest::collection::vec;
use proptest::prelude::*;

use super::sim::{Outcome, Sim, EPS, PORTS};
use crate::urb::aca::CONTAINED;
use crate::urb::backend::{Action, Backend, BackendConfig, Disposition, HostResult, ProtocolError};
use crate::wire::{Ep, Pipe, Port, Status, XferType};

/// `PROPTEST_CASES` (CI sets 1000), 256 by default.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    ProptestConfig::with_cases(cases)
}

#[derive(Clone, Debug)]
enum Op {
    Submit {
        ep: usize,
        len: u32,
        page_offset: u16,
        short_not_ok: bool,
    },
    /// Unlink the `pick`-th transfer the client still waits for (or a stray handle).
    Unlink(usize),
    ToBackend(usize),
    ToFrontend(usize),
    Run(usize, Outcome),
    Reap(usize),
    Gone(u8),
    Disconnect,
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        6 => Just(Outcome::Full),
        2 => any::<u8>().prop_map(Outcome::Short),
        1 => Just(Outcome::Fail(Status::IoError)),
        1 => Just(Outcome::Fail(Status::Stall)),
        1 => Just(Outcome::Fail(Status::Babble)),
        1 => Just(Outcome::Fail(Status::Shutdown)),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let ep = 0..usize::from(PORTS) * EPS;
    let len = prop_oneof![4 => 0u32..1100, 1 => 60_000u32..200_000];
    let page_offset = prop_oneof![Just(0u16), 0u16..4096];
    prop_oneof![
        8 => (ep.clone(), len, page_offset, any::<bool>()).prop_map(
            |(ep, len, page_offset, short_not_ok)| Op::Submit {
                ep,
                len,
                page_offset,
                short_not_ok
            }
        ),
        1 => (0usize..32).prop_map(Op::Unlink),
        5 => (1usize..4).prop_map(Op::ToBackend),
        5 => (1usize..4).prop_map(Op::ToFrontend),
        8 => (ep, outcome()).prop_map(|(ep, o)| Op::Run(ep, o)),
        5 => (1usize..4).prop_map(Op::Reap),
    ]
}

/// Unplugs and disconnects, rare enough that most runs keep going for a while.
fn cut() -> impl Strategy<Value = Op> {
    prop_oneof![Just(Op::Gone(1)), Just(Op::Gone(2)), Just(Op::Disconnect)]
}

fn apply(sim: &mut Sim, op: Op) {
    match op {
        Op::Submit {
            ep,
            len,
            page_offset,
            short_not_ok,
        } => {
            sim.submit(ep, len, page_offset, short_not_ok);
        }
        Op::Unlink(pick) => {
            let live = sim.live_handles();
            let victim = live.get(pick % (live.len() + 1)).copied().unwrap_or(9_999);
            sim.unlink(victim);
        }
        Op::ToBackend(n) => sim.deliver_requests(n),
        Op::ToFrontend(n) => sim.deliver_responses(n),
        Op::Run(ep, o) => sim.run(ep, o),
        Op::Reap(n) => sim.reap(n),
        Op::Gone(port) => sim.device_gone(port),
        Op::Disconnect => sim.disconnect(),
    }
}

proptest! {
    #![proptest_config(config())]

    /// Every property of DESIGN.md contract 1-6 the simulation can see, for random client
    /// behaviour, ring sizes, hosts that stop at a short packet or not, device failures,
    /// unplugs and disconnects; then every endpoint
    /// still attached must make progress (containment is always cleared).
    #[test]
    fn vusb_keeps_the_contract(
        aca in any::<bool>(),
        split_chain in any::<bool>(),
        stops_on_short in any::<bool>(),
        ring_size in prop_oneof![Just(2u16), Just(4), Just(16)],
        ops in vec(op(), 0..120),
        cuts in vec((0usize..120, cut()), 0..2),
    ) {
        let mut sim = Sim::with_host(aca, split_chain, ring_size, stops_on_short);
        let mut ops = ops;
        for (at, c) in cuts {
            ops.insert(at.min(ops.len()), c);
        }
        for op in ops {
            apply(&mut sim, op);
        }
        sim.settle();
        sim.check_at_rest();
        if sim.disconnected.is_none() {
            for ep in 0..usize::from(PORTS) * EPS {
                let port = u8::try_from(ep / EPS).unwrap() + 1;
                if !sim.port_present(port) {
                    continue;
                }
                let h = sim.submit(ep, 8, 0, false);
                sim.settle();
                let result = sim.xfers[&h].completes[0].1;
                prop_assert_eq!(result.status, Status::Ok, "ep {} stuck", ep);
                prop_assert_eq!(result.actual_length, 8);
            }
            sim.check_at_rest();
        }
    }
}

// --- The backend alone against a reference model. ---

#[derive(Clone, Debug)]
enum BeOp {
    Submit {
        id: u16,
        port: u8,
        ep: usize,
        clear: bool,
    },
    Unlink {
        id: u16,
        victim: u16,
    },
    Done {
        pick: usize,
        how: Option<Status>,
    },
    Gone(u8),
    Attach(u8),
    Disconnect,
}

fn be_op() -> impl Strategy<Value = BeOp> {
    prop_oneof![
        8 => (0u16..6, 0u8..=3, 0usize..4, any::<bool>())
            .prop_map(|(id, port, ep, clear)| BeOp::Submit { id, port, ep, clear }),
        2 => (0u16..6, 0u16..6).prop_map(|(id, victim)| BeOp::Unlink { id, victim }),
        8 => (any::<usize>(), prop_oneof![
            4 => Just(Some(Status::Ok)),
            2 => Just(Some(Status::IoError)),
            1 => Just(Some(Status::Stall)),
            1 => Just(Some(Status::Shutdown)),
            2 => Just(None),
        ]).prop_map(|(pick, how)| BeOp::Done { pick, how }),
        1 => (1u8..=2).prop_map(BeOp::Gone),
        1 => (1u8..=2).prop_map(BeOp::Attach),
        1 => Just(BeOp::Disconnect),
    ]
}

fn be_pipe(port: u8, ep: usize) -> Pipe {
    match ep {
        0 => Pipe::new(port, 1, Ep::new(0, false), XferType::Ctrl),
        1 => Pipe::new(port, 1, Ep::new(1, false), XferType::Bulk),
        2 => Pipe::new(port, 1, Ep::new(1, true), XferType::Int),
        _ => Pipe::new(port, 1, Ep::new(2, true), XferType::Isoc),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Why {
    Unlinked,
    Contained,
    Gone,
    Shutdown,
}

#[derive(Clone, Copy, Debug)]
struct ModelUrb {
    port: u8,
    ep: usize,
    seq: u64,
    why: Option<Why>,
}

#[derive(Default)]
struct Model {
    aca: bool,
    live: BTreeMap<u16, ModelUrb>,
    contained: BTreeSet<(u8, usize)>,
    present: BTreeSet<u8>,
    disconnected: bool,
    seq: u64,
}

impl Model {
    fn containable(ep: usize) -> bool {
        ep == 1 || ep == 2
    }

    fn cancel(&mut self, which: impl Fn(&ModelUrb) -> bool, why: Why) -> Vec<u16> {
        let mut cancels = Vec::new();
        for (id, u) in self.live.iter_mut().filter(|(_, u)| which(u)) {
            match u.why {
                Some(Why::Gone | Why::Shutdown) => {}
                Some(_) => u.why = Some(why),
                None => {
                    u.why = Some(why);
                    cancels.push(*id);
                }
            }
        }
        cancels
    }
}

/// What one call produced: submitted ids with their continuation flag, cancels, answers.
type Produced = (Vec<(u16, bool)>, Vec<u16>, Vec<(u16, Status)>);

fn produced(be: &mut Backend<u16>) -> Produced {
    let mut out: Produced = Default::default();
    while let Some(a) = be.poll_action() {
        match a {
            Action::Submit {
                id,
                continuation,
                payload,
                ..
            } => {
                assert_eq!(payload, id);
                out.0.push((id, continuation));
            }
            // Compared as sets: the order of cancels within one call is not part of the
            // contract.
            Action::Cancel { id } => out.1.push(id),
            Action::Respond {
                id,
                result,
                payload,
            } => {
                if let Some(p) = payload {
                    assert_eq!(p, id);
                }
                out.2.push((id, result.status));
            }
        }
    }
    out.1.sort_unstable();
    out
}

fn be_step(be: &mut Backend<u16>, m: &mut Model, op: BeOp) {
    match op {
        BeOp::Submit {
            id,
            port,
            ep,
            clear,
        } => {
            let out = be.handle_submit(id, be_pipe(port, ep), clear, id);
            if m.live.contains_key(&id) {
                let err = out.unwrap_err();
                assert_eq!(
                    (err.error, err.payload),
                    (ProtocolError::DuplicateId(id), id)
                );
                assert_eq!(produced(be), Produced::default());
                return;
            }
            let refuse = if m.disconnected {
                Some(Status::Shutdown)
            } else if !m.present.contains(&port) {
                Some(Status::NoDev)
            } else if m.aca && Model::containable(ep) && m.contained.contains(&(port, ep)) && !clear
            {
                Some(CONTAINED)
            } else {
                None
            };
            if let Some(status) = refuse {
                assert_eq!(out.unwrap(), Disposition::Refused(status));
                assert_eq!(produced(be), (vec![], vec![], vec![(id, status)]));
                return;
            }
            let reopened = m.contained.remove(&(port, ep)) && m.aca && Model::containable(ep);
            let continuation = m.aca && ep == 1 && !reopened;
            assert_eq!(out.unwrap(), Disposition::Submitted);
            assert_eq!(produced(be), (vec![(id, continuation)], vec![], vec![]));
            m.seq += 1;
            m.live.insert(
                id,
                ModelUrb {
                    port,
                    ep,
                    seq: m.seq,
                    why: None,
                },
            );
        }
        BeOp::Unlink { id, victim } => {
            let out = be.handle_unlink(id, victim);
            if m.live.contains_key(&id) {
                assert_eq!(out, Err(ProtocolError::DuplicateId(id)));
                assert_eq!(produced(be), Produced::default());
                return;
            }
            assert_eq!(out, Ok(()));
            let mut cancels = Vec::new();
            if let Some(u) = m.live.get_mut(&victim) {
                if u.why.is_none() {
                    u.why = Some(Why::Unlinked);
                    cancels.push(victim);
                }
            }
            let status = if m.disconnected {
                Status::Shutdown
            } else {
                Status::Ok
            };
            assert_eq!(produced(be), (vec![], cancels, vec![(id, status)]));
        }
        BeOp::Done { pick, how } => {
            let ids: Vec<u16> = m.live.keys().copied().collect();
            let Some(&id) = ids.get(pick % ids.len().max(1)) else {
                return;
            };
            let Some(u) = m.live.remove(&id) else { return };
            let result = match how {
                Some(s) => HostResult::done(s, 0),
                None => HostResult::cancelled(),
            };
            assert!(be.handle_host_done(id, result, id).is_ok());
            let containable = m.aca && Model::containable(u.ep);
            let status = match (u.why, how) {
                (Some(Why::Gone), _) => Status::NoDev,
                (Some(Why::Shutdown), _) => Status::Shutdown,
                (_, Some(Status::Shutdown)) if containable => Status::NoDev,
                (_, Some(s)) => s,
                (Some(Why::Contained), None) => CONTAINED,
                (Some(Why::Unlinked), None) => Status::IoError,
                (None, None) if containable => CONTAINED,
                (None, None) => Status::IoError,
            };
            let failed = how.is_some_and(|s| !s.is_ok());
            let final_ = matches!(u.why, Some(Why::Gone | Why::Shutdown));
            let mut cancels = Vec::new();
            if failed && containable && !final_ {
                m.contained.insert((u.port, u.ep));
                cancels = m.cancel(
                    |o| o.port == u.port && o.ep == u.ep && o.seq > u.seq && o.why.is_none(),
                    Why::Contained,
                );
            }
            assert_eq!(produced(be), (vec![], cancels, vec![(id, status)]));
        }
        BeOp::Gone(port) => {
            m.present.remove(&port);
            be.handle_device_gone(Port::new(port).unwrap());
            let cancels = m.cancel(|u| u.port == port, Why::Gone);
            assert_eq!(produced(be), (vec![], cancels, vec![]));
        }
        BeOp::Attach(port) => {
            m.present.insert(port);
            m.contained.retain(|&(p, _)| p != port);
            be.handle_device_attached(Port::new(port).unwrap());
            assert_eq!(produced(be), Produced::default());
        }
        BeOp::Disconnect => {
            m.disconnected = true;
            be.handle_disconnect();
            let cancels = m.cancel(|_| true, Why::Shutdown);
            assert_eq!(produced(be), (vec![], cancels, vec![]));
        }
    }
}

proptest! {
    #![proptest_config(config())]

    /// The backend matches the reference model call by call: which requests are refused
    /// and how, what is submitted with which continuation flag, what is cancelled and
    /// every answer's status; and once the host has given everything back, every request
    /// taken has had exactly one answer.
    #[test]
    fn backend_matches_reference_model(aca in any::<bool>(), ops in vec(be_op(), 0..150)) {
        let mut be = Backend::new(BackendConfig { num_ports: 2, ring_size: 8, aca });
        let mut m = Model { aca, ..Model::default() };
        for port in 1..=2 {
            be_step(&mut be, &mut m, BeOp::Attach(port));
        }
        for op in ops {
            be_step(&mut be, &mut m, op);
            prop_assert_eq!(be.in_flight(), m.live.len());
        }
        while !m.live.is_empty() {
            be_step(&mut be, &mut m, BeOp::Done { pick: 0, how: None });
        }
        prop_assert_eq!(be.in_flight(), 0);
    }
}
