//! The host side of the engine: a request's URBs handed to the port's device, and the
//! device's completions folded back into the request's answer.

use tracing::{debug, warn};

use std::collections::VecDeque;

use super::payload::{self, refused_errno, synthetic, Payload};
use super::{Engine, Running};
use crate::host::{errno, UrbBuf, XferKind};
use pvusb_ring::wire::Port;

impl Engine {
    /// Takes every completion `port`'s device has ready.
    pub(super) fn reap(&mut self, port: Port) {
        let idx = usize::from(port.get() - 1);
        loop {
            let c = match self.ports.get_mut(idx).and_then(|s| s.device.as_mut()) {
                Some(dev) => dev.reap(),
                None => return,
            };
            let Some(c) = c else { break };
            self.complete(port, c);
            self.perform();
        }
    }

    /// Reaps the ports given URBs since the last call.
    pub(super) fn reap_submitted(&mut self) {
        let mask = std::mem::take(&mut self.submitted);
        for bit in 0..32u8 {
            if mask & (1 << bit) != 0 {
                if let Some(port) = Port::new(bit + 1) {
                    self.reap(port);
                }
            }
        }
    }

    pub(super) fn submit(
        &mut self,
        id: u16,
        pipe: pvusb_ring::wire::Pipe,
        continuation: bool,
        mut payload: Payload,
    ) {
        let Some(port) = Port::new(pipe.port()) else {
            return;
        };
        let Some(link) = &mut self.link else { return };
        let idx = usize::from(port.get() - 1);
        let Some(dev) = self.ports.get_mut(idx).and_then(|s| s.device.as_mut()) else {
            let r = payload::host_result(-(errno::ENODEV), 0);
            let _ = link.backend.handle_host_done(id, r, payload);
            return;
        };
        let max_bulk = self.cfg.max_bulk_urb.min(dev.max_bulk_urb());
        let (mut urbs, mut pieces) = payload.host_urbs(&mut self.next_tag, continuation, max_bulk);
        // Where the host does not stop at a short packet, a piece queued behind a short one
        // could take the device's next data: one piece at a time.
        let serial = !dev.bulk_continuation()
            && urbs.len() > 1
            && urbs
                .first()
                .is_some_and(|u| u.kind == XferKind::Bulk && u.is_in());
        let queued = if serial {
            urbs.split_off(1).into()
        } else {
            VecDeque::new()
        };
        let mut outstanding = 0;
        let mut stop: Option<i32> = None;
        for (i, urb) in urbs.into_iter().enumerate() {
            let tag = urb.tag;
            if let Some(status) = stop {
                if let Some(p) = pieces.get_mut(i) {
                    p.done = Some(synthetic(tag, status, urb.buf));
                }
                continue;
            }
            match dev.submit(urb) {
                Ok(()) => {
                    outstanding += 1;
                    link.tags.insert(tag, id);
                    self.submitted |= 1 << (idx % 32);
                }
                Err(refused) => {
                    let status = refused_errno(refused.error);
                    if let Some(p) = pieces.get_mut(i) {
                        p.done = Some(synthetic(tag, status, refused.urb.buf));
                    }
                    // The rest of the transfer must not run after a refused piece.
                    stop = Some(-(errno::ENOENT));
                }
            }
        }
        let mut run = Running {
            port,
            payload,
            pieces,
            queued,
        };
        if stop.is_some() {
            run.skip_queued(-(errno::ENOENT));
        }
        if outstanding == 0 {
            let r = run.payload.finish(&mut run.pieces);
            // The pieces' buffers may be views of the guest pages: drop them first, so the
            // payload's drop (before the response is pushed) is what unmaps.
            drop(run.pieces);
            let _ = link.backend.handle_host_done(id, r, run.payload);
        } else {
            link.running.insert(id, run);
        }
    }

    /// A host completion for a URB of `port`.
    pub(super) fn complete(&mut self, port: Port, c: crate::host::Completion) {
        let Some(link) = &mut self.link else { return };
        let Some(id) = link.tags.remove(&c.tag) else {
            debug!(parent: &self.span, port = port.get(), tag = c.tag, "completion of an unknown URB");
            return;
        };
        let Some(run) = link.running.get_mut(&id) else {
            return;
        };
        let mut full = false;
        if let Some(p) = run.pieces.iter_mut().find(|p| p.tag == c.tag) {
            full = c.status == 0 && c.actual_length as usize >= p.len;
            p.done = Some(c);
        }
        if let Some(next) = run.queued.pop_front() {
            let dev = self
                .ports
                .get_mut(usize::from(port.get() - 1))
                .and_then(|s| s.device.as_mut());
            match dev {
                Some(dev) if full => {
                    let tag = next.tag;
                    match dev.submit(next) {
                        Ok(()) => {
                            link.tags.insert(tag, id);
                            self.submitted |= 1 << ((port.get() - 1) % 32);
                        }
                        Err(refused) => {
                            run.settle(tag, refused_errno(refused.error), refused.urb.buf);
                            run.skip_queued(-(errno::ENOENT));
                        }
                    }
                }
                // Short, failed or cancelled (or the device is going): the rest never
                // runs, as usbfs's cancel of a chain would have it.
                _ => {
                    run.settle(next.tag, -(errno::ENOENT), next.buf);
                    run.skip_queued(-(errno::ENOENT));
                }
            }
        }
        if run.pieces.iter().all(|p| p.done.is_some()) {
            if let Some(mut run) = link.running.remove(&id) {
                let r = run.payload.finish(&mut run.pieces);
                // As in `submit`: the host's views of the guest pages go before the payload.
                drop(run.pieces);
                if let Err(e) = link.backend.handle_host_done(id, r, run.payload) {
                    warn!(parent: &self.span, id = e.id, "host completion the state machine did not expect");
                }
            }
        }
    }
}

impl Running {
    /// Piece `tag` never ran: it ended with `status`.
    fn settle(&mut self, tag: u64, status: i32, buf: UrbBuf) {
        if let Some(p) = self.pieces.iter_mut().find(|p| p.tag == tag) {
            p.done = Some(synthetic(tag, status, buf));
        }
    }

    /// The pieces still queued never run: each ends with `status`.
    pub(super) fn skip_queued(&mut self, status: i32) {
        while let Some(urb) = self.queued.pop_front() {
            self.settle(urb.tag, status, urb.buf);
        }
    }
}
