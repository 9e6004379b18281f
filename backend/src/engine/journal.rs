//! Which requests a backend process has taken off a urb ring and not yet had answered, kept
//! in memory that outlives the process (a file under the runtime directory, mapped shared),
//! so that the process taking the rings over after a crash answers exactly those.
//!
//! The ring alone cannot say: responses are published in completion order, so the requests
//! between the published `rsp_prod` and `req_prod` are not the ones in flight once a
//! device answered out of ring order (a keyboard's interrupt IN waits while a stick's
//! reads complete behind it), and a response overwrites the slot of the request it reuses.
//!
//! It also keeps which device the guest was told of on each port, so that a device swapped
//! while no backend ran is not passed off as the one the guest knows.
//!
//! The layout is 32-bit words, each written with one atomic store, so a process killed
//! between any two stores leaves a state [`Journal::recover`] reads correctly:
//!
//! - header: magic, urb ring gref, event channel, `req_cons` (the next request to take);
//! - ports 1 to 31: the [`crate::host::HostDevice::instance`] of the device the guest was
//!   told of (its connect event published), 0 for none;
//! - entries: `state << 30 | id << 14 | position & 0x3fff`, free, *taken* at the request's
//!   ring position, or *answered* at its response's position.
//!
//! The order of stores: an entry is taken for each request popped, before any of the batch
//! is served, then `req_cons` moves past it; an entry becomes answered before its response
//! is published, and free after. On recovery an answered entry whose response position is
//! at or past the published `rsp_prod` was never seen by the frontend, and counts as in
//! flight; `req_cons` is the furthest of the header's and every taken entry's next
//! position. Positions are kept modulo 2^14: every one the journal holds lies within a
//! ring's size of the published `rsp_prod`.

use pvusb_ring::shm::{Shm, ShmError};
use std::sync::atomic::Ordering;

/// Bytes a journal takes (one page).
pub const JOURNAL_BYTES: usize = 4096;

const MAGIC: u32 = u32::from_le_bytes(*b"PVJ2");
const W_MAGIC: usize = 0;
const W_GREF: usize = 1;
const W_EVTCHN: usize = 2;
const W_REQ_CONS: usize = 3;
const W_PORTS: usize = 4;
/// Ports a controller has at most.
pub const PORTS: usize = 31;
const HEADER_WORDS: usize = W_PORTS + PORTS;
/// Entries one page holds.
const MAX_ENTRIES: usize = JOURNAL_BYTES / 4 - HEADER_WORDS;

const FREE: u32 = 0;
const TAKEN: u32 = 1;
const ANSWERED: u32 = 2;
const POS_BITS: u32 = 14;
const POS_MASK: u32 = (1 << POS_BITS) - 1;

fn entry(state: u32, id: u16, pos: u32) -> u32 {
    state << 30 | u32::from(id) << POS_BITS | (pos & POS_MASK)
}

fn state(e: u32) -> u32 {
    e >> 30
}

fn id(e: u32) -> u16 {
    // Masked to 16 bits first: the cast cannot truncate.
    ((e >> POS_BITS) & 0xffff) as u16
}

/// The full position of `e`'s low bits, taken as the nearest one to `near`.
fn position(e: u32, near: u32) -> u32 {
    let d = (e & POS_MASK).wrapping_sub(near) & POS_MASK;
    if d < 1 << (POS_BITS - 1) {
        near.wrapping_add(d)
    } else {
        near.wrapping_sub((1 << POS_BITS) - d)
    }
}

/// Which rings a journal belongs to: a frontend that reconnected has new ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingId {
    /// `urb-ring-ref`.
    pub urb_gref: u32,
    /// `event-channel`.
    pub evtchn: u32,
}

/// What a dead process left: the ids it had taken and not had answered, and where it
/// stopped taking.
#[derive(Debug, PartialEq, Eq)]
pub struct Recovered {
    /// Ids in flight in the dead process.
    pub ids: Vec<u16>,
    /// The next request it had not taken.
    pub req_cons: u32,
    /// Per port (index `port - 1`), the instance of the device the guest was told of; 0
    /// for none.
    pub ports: [u32; PORTS],
}

/// One urb ring's journal.
#[derive(Debug)]
pub struct Journal {
    shm: Shm,
    /// What the entries hold (only this process writes them).
    entries: Vec<u32>,
    /// Entries free, as a stack.
    free: Vec<usize>,
    /// Entries answered since the last publish.
    answered: Vec<usize>,
    /// Set when an entry could not be had: the journal no longer covers every request and
    /// says so (its magic is cleared), so a takeover falls back to the ring's positions.
    broken: bool,
}

impl Journal {
    /// A journal for rings served from `req_cons` on, with nothing in flight.
    pub fn start(shm: Shm, ring: RingId, req_cons: u32, ring_size: u32) -> Result<Self, ShmError> {
        let n = entries_for(ring_size);
        store(&shm, W_MAGIC, 0)?;
        store(&shm, W_GREF, ring.urb_gref)?;
        store(&shm, W_EVTCHN, ring.evtchn)?;
        store(&shm, W_REQ_CONS, req_cons)?;
        for w in W_PORTS..HEADER_WORDS + n {
            store(&shm, w, 0)?;
        }
        store(&shm, W_MAGIC, MAGIC)?;
        Ok(Journal::over(shm, vec![FREE; n]))
    }

    /// Reads what the process that served `ring` before left, given the published
    /// `rsp_prod`. `None` if the journal is not of these rings, or does not account for
    /// every request between `rsp_prod` and its `req_cons` (then nothing is known). The
    /// journal goes on from there: the ids recovered are taken, to be answered.
    pub fn recover(
        shm: Shm,
        ring: RingId,
        rsp_prod: u32,
        ring_size: u32,
    ) -> Option<(Self, Recovered)> {
        let n = entries_for(ring_size);
        let word = |w| load(&shm, w).ok();
        if word(W_MAGIC)? != MAGIC
            || word(W_GREF)? != ring.urb_gref
            || word(W_EVTCHN)? != ring.evtchn
        {
            return None;
        }
        let mut req_cons = word(W_REQ_CONS)?;
        let mut ports = [0; PORTS];
        for (i, p) in ports.iter_mut().enumerate() {
            *p = word(W_PORTS + i)?;
        }
        let mut ids = Vec::new();
        let mut entries = vec![FREE; n];
        for (i, slot) in entries.iter_mut().enumerate() {
            let e = word(HEADER_WORDS + i)?;
            let in_flight = match state(e) {
                TAKEN => {
                    let next = position(e, rsp_prod).wrapping_add(1);
                    if (next.wrapping_sub(req_cons) as i32) > 0 {
                        req_cons = next;
                    }
                    true
                }
                // Its response was written but not published: the frontend never saw it.
                ANSWERED => (position(e, rsp_prod).wrapping_sub(rsp_prod) as i32) >= 0,
                _ => false,
            };
            if in_flight {
                ids.push(id(e));
                *slot = entry(TAKEN, id(e), position(e, rsp_prod));
            }
        }
        if req_cons.wrapping_sub(rsp_prod) != u32::try_from(ids.len()).ok()? {
            return None;
        }
        let journal = Journal::over(shm, entries);
        for (i, &e) in journal.entries.iter().enumerate() {
            store(&journal.shm, HEADER_WORDS + i, e).ok()?;
        }
        store(&journal.shm, W_REQ_CONS, req_cons).ok()?;
        Some((
            journal,
            Recovered {
                ids,
                req_cons,
                ports,
            },
        ))
    }

    /// A journal over `shm` whose entries hold `entries` (already stored).
    fn over(shm: Shm, entries: Vec<u32>) -> Self {
        let free = (0..entries.len())
            .rev()
            .filter(|&i| entries.get(i).is_some_and(|&e| state(e) == FREE))
            .collect();
        Journal {
            shm,
            entries,
            free,
            answered: Vec::new(),
            broken: false,
        }
    }

    /// Request `id` at ring position `pos` was taken.
    pub fn taken(&mut self, id: u16, pos: u32) {
        match self.free.pop() {
            Some(i) => self.set(i, entry(TAKEN, id, pos)),
            None => self.break_off(),
        }
        let _ = store(&self.shm, W_REQ_CONS, pos.wrapping_add(1));
    }

    /// The response to request `id` was written at position `pos` (not yet published).
    pub fn answered(&mut self, id: u16, pos: u32) {
        let found = self
            .entries
            .iter()
            .position(|&e| state(e) == TAKEN && self::id(e) == id);
        match found {
            Some(i) => {
                self.set(i, entry(ANSWERED, id, pos));
                self.answered.push(i);
            }
            None => self.break_off(),
        }
    }

    /// The guest was told (the event published) that `port` has the device `instance`,
    /// or nothing (`None`).
    pub fn announced(&mut self, port: u8, instance: Option<u32>) {
        let Some(i) = usize::from(port).checked_sub(1).filter(|&i| i < PORTS) else {
            return;
        };
        if store(&self.shm, W_PORTS + i, instance.unwrap_or(0)).is_err() {
            self.break_off();
        }
    }

    /// Every response written so far is published.
    pub fn published(&mut self) {
        while let Some(i) = self.answered.pop() {
            self.set(i, FREE);
            self.free.push(i);
        }
    }

    fn set(&mut self, i: usize, e: u32) {
        if let Some(slot) = self.entries.get_mut(i) {
            *slot = e;
        }
        if store(&self.shm, HEADER_WORDS + i, e).is_err() {
            self.break_off();
        }
    }

    /// The journal lost track (a guest reusing an id in flight, more requests than the
    /// ring holds): a takeover must not trust it.
    fn break_off(&mut self) {
        if !self.broken {
            self.broken = true;
            let _ = store(&self.shm, W_MAGIC, 0);
        }
    }
}

/// Entries kept for a ring of `ring_size`: every request taken and not yet published fits
/// (at most the ring's size), twice over.
fn entries_for(ring_size: u32) -> usize {
    usize::try_from(ring_size)
        .unwrap_or(MAX_ENTRIES)
        .saturating_mul(2)
        .clamp(1, MAX_ENTRIES)
}

fn store(shm: &Shm, word: usize, v: u32) -> Result<(), ShmError> {
    shm.atomic_u32(word * 4)?.store(v, Ordering::Release);
    Ok(())
}

fn load(shm: &Shm, word: usize) -> Result<u32, ShmError> {
    Ok(shm.atomic_u32(word * 4)?.load(Ordering::Acquire))
}

#[cfg(test)]
mod tests;
