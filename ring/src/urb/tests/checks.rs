//! The contract checks run on a simulation's logs once it is at rest.

use std::collections::HashMap;

use super::sim::{Exec, Sim, EPS};
use crate::urb::frontend::Handle;
use crate::wire::Status;

impl Sim {
    /// Contract checks over the logs, once the simulation is at rest.
    pub fn check_at_rest(&self) {
        // Contract 1 / 4: every transfer taken got exactly one answer, every unlink one.
        for (h, x) in &self.xfers {
            assert!(
                x.completes.len() + usize::from(x.reset) == 1,
                "transfer {h} got {} answers: {x:?}",
                x.completes.len() + usize::from(x.reset)
            );
        }
        for (h, (_, answered)) in &self.unlinks {
            assert!(answered, "unlink {h} never answered");
        }
        assert!(
            self.be_ids.is_empty(),
            "backend never answered {:?}",
            self.be_ids
        );
        assert!(self.on_host.is_empty());
        assert_eq!(self.be.in_flight(), 0);
        assert_eq!(self.be.held(), 0);
        assert_eq!(self.fe.pending_transfers(), 0);
        self.check_order();
        self.check_containment();
        self.check_split();
    }

    /// Contract 2: per endpoint, pushes, host submissions and executions follow the
    /// client's submission order, and a transfer's pieces go in offset order.
    fn check_order(&self) {
        let mut last: HashMap<usize, (Handle, u32)> = HashMap::new();
        for &(ep, h, off) in &self.pushes {
            if let Some(&(ph, poff)) = last.get(&ep) {
                assert!(
                    (ph, poff) < (h, off),
                    "push order on ep {ep}: {ph}@{poff} then {h}@{off}"
                );
            }
            last.insert(ep, (h, off));
        }
        for trace in [
            self.submits
                .iter()
                .map(|s| (s.1, s.2.handle, s.2.piece.offset))
                .collect::<Vec<_>>(),
            self.execs
                .iter()
                .map(|e| (e.ep, e.req.handle, e.req.piece.offset))
                .collect(),
        ] {
            let mut last: HashMap<usize, (Handle, u32)> = HashMap::new();
            for (ep, h, off) in trace {
                if let Some(&prev) = last.get(&ep) {
                    assert!(prev < (h, off), "order on ep {ep}: {prev:?} then {h}@{off}");
                }
                last.insert(ep, (h, off));
            }
        }
    }

    /// When the client saw transfer `h` answered (never: `u64::MAX`).
    fn seen(&self, h: Handle) -> u64 {
        self.xfers
            .get(&h)
            .and_then(|x| x.completes.first())
            .map_or(u64::MAX, |c| c.0)
    }

    /// Contract 3 (negotiated only): after a bulk URB fails on the device, the device runs
    /// nothing of that endpoint the client submitted before it saw the failure; after the
    /// backend learns of a bulk or interrupt failure, neither the backend nor the device
    /// handles anything such.
    fn check_containment(&self) {
        if !self.aca {
            return;
        }
        for f in self.execs.iter().filter(|e| !e.status.is_ok()) {
            let local = f.ep % EPS;
            if local != 1 && local != 2 {
                continue;
            }
            let seen = self.seen(f.req.handle);
            for later in self
                .execs
                .iter()
                .filter(|e| e.ep == f.ep && e.step > f.step)
            {
                let submitted = self.xfers[&later.req.handle].submitted;
                assert!(
                    submitted > seen,
                    "{:?} ran after {:?} failed, but was submitted at {submitted}, before the \
                     client saw the failure at {seen}",
                    later,
                    f
                );
            }
        }
        for &(step, ep, h) in &self.be_failures {
            if ep % EPS == 0 {
                continue;
            }
            let seen = self.seen(h);
            for s in self.submits.iter().filter(|s| s.1 == ep && s.0 > step) {
                let submitted = self.xfers[&s.2.handle].submitted;
                assert!(
                    submitted > seen,
                    "backend submitted {:?} after learning {h} failed",
                    s.2
                );
            }
            // Interrupt URBs have no usbfs continuation: the device may run a follower
            // before the failure is reaped, but not after.
            for e in self.execs.iter().filter(|e| e.ep == ep && e.step > step) {
                let submitted = self.xfers[&e.req.handle].submitted;
                assert!(
                    submitted > seen,
                    "{e:?} ran after the backend learnt {h} failed"
                );
            }
        }
    }

    /// Contract 6: a transfer's pieces stop at the first short or failed one, and a
    /// successful transfer's length is the sum of what its pieces moved.
    fn check_split(&self) {
        for (h, x) in &self.xfers {
            let mut runs: Vec<&Exec> = self.execs.iter().filter(|e| e.req.handle == *h).collect();
            runs.sort_by_key(|e| e.req.piece.offset);
            let mut ended = false;
            for r in &runs {
                let stock_out = !self.aca && x.ep % EPS == 1;
                assert!(
                    !ended || stock_out,
                    "piece {:?} of {h} ran after a short or failed piece",
                    r.req.piece
                );
                if !r.status.is_ok() || r.actual < r.req.piece.len {
                    ended = true;
                }
            }
            let Some(&(_, result)) = x.completes.first() else {
                continue;
            };
            // The status is the truth: the device's own answer for one of its pieces, or a
            // reason the client can explain (its unlink, containment, unplug, disconnect,
            // a transfer usbif cannot carry).
            let containable = self.aca && x.ep % EPS != 0;
            let own = runs.iter().any(|r| match r.status {
                Status::Shutdown if containable => result.status == Status::NoDev,
                s => s == result.status,
            });
            let explained = match result.status {
                Status::Ok => true,
                Status::IoError => x.unlinked,
                Status::Shutdown => self.aca || self.disconnected.is_some(),
                Status::NoDev => self.gone[x.ep / EPS].is_some(),
                Status::Inval => runs.is_empty(),
                _ => false,
            };
            assert!(
                own || explained,
                "{h} completed {result:?} for no reason: {x:?}"
            );
            if result.status.is_ok() && self.gone[x.ep / EPS].is_none() {
                let moved: u32 = runs.iter().map(|r| r.actual).sum();
                assert_eq!(result.actual_length, moved, "length of {h}");
                let mut next = 0;
                for r in &runs {
                    assert_eq!(r.req.piece.offset, next, "pieces of {h} not contiguous");
                    next += r.req.piece.len;
                }
            }
        }
    }
}
