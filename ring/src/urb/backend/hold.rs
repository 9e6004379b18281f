//! Holding a split chain's next piece back on hosts that do not stop at a short packet;
//! why, and what it costs, is in [`crate::urb::chain`].

use super::{Action, Backend, Cancel, Live};
use crate::urb::UrbResult;

impl<P> Backend<P> {
    /// Whether `l` (already in `live`) must stay held: something earlier on its endpoint is
    /// held, or, on a port that does not stop at a short packet, it is chained behind a
    /// request still out that a short read would fail.
    pub(super) fn must_wait(&self, l: &Live) -> bool {
        let earlier = |o: &Live| o.ep == l.ep && o.seq < l.seq;
        let cuts = |o: &Live| earlier(o) && o.ends_short;
        // Every submit and completion asks: the common case (nothing held, a host that
        // stops) decides without looking at the table.
        let behind_held = || {
            self.live
                .iter()
                .zip(&self.parked)
                .any(|(o, parked)| parked.is_some() && o.as_ref().is_some_and(earlier))
        };
        let stops = usize::from(l.port)
            .checked_sub(1)
            .and_then(|p| self.stops_on_short.get(p))
            .copied()
            .unwrap_or(true);
        (self.parked_n > 0 && behind_held())
            || (l.continuation && !stops && self.live.iter().flatten().any(cuts))
    }

    /// Parks the payload of the request in `slot` (held).
    pub(super) fn park(&mut self, slot: usize, payload: P) {
        if let Some(parked) = self.parked.get_mut(slot) {
            *parked = Some(payload);
            self.parked_n += 1;
        }
    }

    /// Takes the payload parked in `slot`, if any.
    fn unpark(&mut self, slot: usize) -> Option<P> {
        let payload = self.parked.get_mut(slot).and_then(Option::take)?;
        self.parked_n -= 1;
        Some(payload)
    }

    /// Submits `ep`'s held requests, in arrival order, up to the first that must still
    /// wait.
    pub(super) fn release(&mut self, ep: usize) {
        while self.parked_n > 0 {
            let next = self
                .live
                .iter()
                .zip(&self.parked)
                .enumerate()
                .filter_map(|(slot, (l, parked))| {
                    l.filter(|l| l.ep == ep && parked.is_some())
                        .map(|l| (slot, l))
                })
                .min_by_key(|(_, l)| l.seq);
            let Some((slot, live)) = next else { return };
            if self.must_wait(&live) {
                return;
            }
            let Some(payload) = self.unpark(slot) else {
                return;
            };
            self.actions.push_back(Action::Submit {
                id: live.id,
                pipe: live.pipe,
                continuation: live.continuation,
                payload,
            });
        }
    }

    /// Answers every held request `which` selects, for `why`, without the host.
    pub(super) fn answer_held(&mut self, why: Cancel, which: impl Fn(&Live) -> bool) {
        if self.parked_n == 0 {
            return;
        }
        for slot in 0..self.live.len() {
            let selected = self
                .live
                .get(slot)
                .and_then(Option::as_ref)
                .is_some_and(&which);
            if selected {
                self.answer_held_slot(slot, why);
            }
        }
    }

    /// Answers the request held in `slot`, if any, for `why`; true if there was one.
    pub(super) fn answer_held_slot(&mut self, slot: usize, why: Cancel) -> bool {
        let Some(payload) = self.unpark(slot) else {
            return false;
        };
        let Some(live) = self.live.get_mut(slot).and_then(Option::take) else {
            return false;
        };
        self.respond(live.id, UrbResult::status(why.status()), Some(payload));
        true
    }
}
