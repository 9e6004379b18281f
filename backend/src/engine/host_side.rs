//! The host side of the engine: a request's URBs handed to the port's device, and the
//! device's completions folded back into the request's answer.

use tracing::{debug, warn};

use super::payload::{self, refused_errno, synthetic, Payload};
use super::{Engine, Running};
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
            let r = payload::host_result(-(crate::host::errno::ENODEV), 0);
            let _ = link.backend.handle_host_done(id, r, payload);
            return;
        };
        let max_bulk = self.cfg.max_bulk_urb.min(dev.max_bulk_urb());
        let (urbs, mut pieces) = payload.host_urbs(&mut self.next_tag, continuation, max_bulk);
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
                    stop = Some(-(crate::host::errno::ENOENT));
                }
            }
        }
        let mut run = Running {
            port,
            payload,
            pieces,
        };
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
        if let Some(p) = run.pieces.iter_mut().find(|p| p.tag == c.tag) {
            p.done = Some(c);
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
