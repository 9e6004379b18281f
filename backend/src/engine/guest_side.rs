//! The guest's side of the engine: requests taken off the urb ring (parsed with the
//! controller's [`Limits`](pvusb_ring::wire::Limits), answered locally or handed to the
//! state machine), hotplug events pushed on the conn ring, and answers published once their
//! data is back in the guest's pages and their mappings are gone.

use pvusb_ring::urb::aca::ACA_CLEAR;
use pvusb_ring::urb::backend::SubmitFlags;
use pvusb_ring::urb::chain::{SPLIT_CONT, SPLIT_MORE};
use pvusb_ring::urb::UrbResult;
use pvusb_ring::wire::{ConnEvent, Port, Speed, Status, UrbRequest};
use tracing::{debug, warn};

use super::payload::Payload;
use super::request::{prepare, Prepared};
use super::takeover::left_over;
use super::{Engine, Fatal, Link, RING_BUDGET};
use crate::guest_warn;

impl Engine {
    /// The event channel fired: serve the requests on the ring, at most [`RING_BUDGET`]
    /// of them. Returns true if more are waiting: call again soon (without waiting for an
    /// event), after serving other controllers, so a guest that keeps its ring full cannot
    /// starve them.
    pub fn on_ring_event(&mut self) -> Result<bool, Fatal> {
        let mut served = 0;
        let more = loop {
            // Take what is on the ring (up to the budget), announce its data maps so they
            // can be made in one hypervisor call, then serve it in ring order.
            let mut batch = Vec::new();
            {
                let Some(link) = &mut self.link else {
                    return Ok(false);
                };
                while served + batch.len() < RING_BUDGET {
                    let pos = link.urb.req_cons();
                    let Some(raw) = link.urb.pop_request()? else {
                        break;
                    };
                    if let Some(j) = &mut link.journal {
                        j.taken(raw.id.get(), pos);
                    }
                    batch.push(raw);
                }
                link.mem.prefetch(&data_maps(&batch, &link.limits));
            }
            served += batch.len();
            let mut fatal = Ok(());
            for raw in batch {
                fatal = match &mut self.link {
                    Some(link) if link.left_over > 0 => {
                        link.left_over -= 1;
                        left_over(link, &raw)
                    }
                    _ => self.handle_raw(raw),
                };
                if fatal.is_err() {
                    break;
                }
                self.perform();
            }
            // Responses pushed so far are published only below, after this: every mapping
            // made for the batch is gone before any of its responses is visible (contract 7
            // also for requests answered without the device).
            if let Some(link) = &mut self.link {
                link.mem.end_prefetch();
            }
            fatal?;
            // What the host finished at once (a simulated device, a fast usbfs completion) is
            // answered in this pass, not after another trip through the poller.
            self.reap_submitted();
            let Some(link) = &mut self.link else {
                return Ok(false);
            };
            if served >= RING_BUDGET {
                break link.urb.unconsumed_requests()? > 0;
            }
            let again = if self.quiet {
                link.urb.unconsumed_requests()? > 0
            } else {
                link.urb.final_check_for_requests()?
            };
            if !again {
                break false;
            }
        };
        self.flush();
        self.publish();
        Ok(more)
    }

    fn handle_raw(&mut self, raw: pvusb_ring::wire::RawUrbRequest) -> Result<(), Fatal> {
        let span = &self.span;
        let Some(link) = &mut self.link else {
            return Ok(());
        };
        let req = match UrbRequest::parse(&raw, &link.limits) {
            Ok(r) => r,
            Err(bad) => {
                let id = raw.id.get();
                guest_warn!(self.warn, parent: span, id, error = %bad, "malformed request");
                return local(link, id, UrbResult::status(bad.status()));
            }
        };
        match req {
            UrbRequest::Unlink(u) => {
                debug!(parent: span, id = u.id, victim = u.victim, "unlink");
                link.backend.handle_unlink(u.id, u.victim)?;
                Ok(())
            }
            UrbRequest::Submit(sub) => {
                let Some(port) = Port::new(sub.pipe.port()) else {
                    return local(
                        link,
                        sub.id,
                        UrbResult::status(pvusb_ring::wire::Status::NoDev),
                    );
                };
                let Some(slot) = self.ports.get_mut(usize::from(port.get() - 1)) else {
                    return local(
                        link,
                        sub.id,
                        UrbResult::status(pvusb_ring::wire::Status::NoDev),
                    );
                };
                debug!(parent: &slot.span, id = sub.id, pipe = ?sub.pipe, len = sub.buffer_length, "submit");
                match prepare(slot, &sub, link.mem.as_ref()) {
                    Prepared::Local(result, why) => {
                        if !result.status.is_ok() {
                            debug!(parent: &slot.span, id = sub.id, status = ?result.status, why, "answered locally");
                        }
                        local(link, sub.id, result)
                    }
                    Prepared::Host(payload) => {
                        let max_bulk = slot
                            .device
                            .as_ref()
                            .map_or(usize::MAX, |d| d.max_bulk_urb())
                            .min(self.cfg.max_bulk_urb);
                        let flags = SubmitFlags {
                            aca_clear: sub.ext_flags & ACA_CLEAR != 0,
                            split_more: sub.ext_flags & SPLIT_MORE != 0,
                            split_cont: sub.ext_flags & SPLIT_CONT != 0,
                            host_split: payload.splits(max_bulk),
                            short_not_ok: sub.short_not_ok,
                        };
                        match link
                            .backend
                            .handle_submit_with(sub.id, sub.pipe, flags, payload)
                        {
                            Ok(_) => Ok(()),
                            Err(rej) => Err(rej.error.into()),
                        }
                    }
                }
            }
        }
    }

    /// Sends queued hotplug events while the conn ring has free slots.
    pub(super) fn flush(&mut self) {
        let span = &self.span;
        let Some(link) = &mut self.link else { return };
        let mut pushed = false;
        // Ports whose event went out (bit `port - 1`), and those last told empty.
        let (mut told, mut empty) = (0u32, 0u32);
        loop {
            while let Some(&(port, speed)) = link.conn_queue.front() {
                match link.conn.pop_request() {
                    Ok(Some(slot)) => {
                        let ev = ConnEvent {
                            id: slot.id.get(),
                            port,
                            speed,
                        };
                        if link.conn.push_response(&ev.to_raw()).is_err() {
                            break;
                        }
                        link.conn_queue.pop_front();
                        pushed = true;
                        let bit = 1u32 << (port.get() - 1);
                        told |= bit;
                        empty = if speed == Speed::None {
                            empty | bit
                        } else {
                            empty & !bit
                        };
                        debug!(parent: span, port = port.get(), ?speed, "conn event");
                    }
                    Ok(None) => break,
                    Err(e) => {
                        guest_warn!(self.warn, parent: span, error = %e, "conn ring broken");
                        link.conn_queue.clear();
                        break;
                    }
                }
            }
            if link.conn_queue.is_empty() || !link.conn.final_check_for_requests().unwrap_or(false)
            {
                break;
            }
        }
        if !pushed {
            return;
        }
        let notify = link.conn.push_responses_and_check_notify();
        if let Some(j) = &mut link.journal {
            for (i, slot) in self.ports.iter().enumerate() {
                let bit = 1u32 << i;
                if told & bit != 0 {
                    let port = u8::try_from(i + 1).unwrap_or(0);
                    let dev = slot.device.as_ref().filter(|_| empty & bit == 0);
                    j.announced(port, dev.map(|d| d.instance()));
                }
            }
        }
        if notify {
            link.notify.notify();
        }
    }

    /// Publishes pushed responses and kicks the frontend if it asked.
    pub(super) fn publish(&mut self) {
        let Some(link) = &mut self.link else { return };
        if link.unpublished {
            link.unpublished = false;
            // Copied IN data reaches the guest's pages before any response is visible.
            let lost = link.mem.flush();
            if lost > 0 {
                let span = &self.span;
                guest_warn!(self.warn, parent: span, lost, "IN data not copied back: the guest revoked its grants");
            }
            let span = &self.span;
            for (mut rsp, payload) in link.answered.drain(..) {
                if payload.as_ref().is_some_and(Payload::lost) {
                    rsp.status = Status::IoError.to_wire();
                    rsp.actual_length = 0;
                }
                // Unmap the grants *before* pushing the response: xen-hcd revokes them on
                // completion and treats a live mapping as fatal. With persistent grants
                // this only drops the request's views of the cached pages.
                drop(payload);
                let pos = link.urb.rsp_prod_pvt();
                match link.urb.push_response(&rsp.to_raw()) {
                    Ok(()) => {
                        if let Some(j) = &mut link.journal {
                            j.answered(rsp.id, pos);
                        }
                    }
                    Err(e) => warn!(parent: span, id = rsp.id, error = %e, "response dropped"),
                }
            }
            let notify = link.urb.push_responses_and_check_notify();
            if let Some(j) = &mut link.journal {
                j.published();
            }
            if notify {
                link.notify.notify();
            }
        }
    }
}

/// The data mappings `batch`'s well-formed submits will ask for, as [`prepare`] asks
/// (IN writable, OUT read-only), in ring order.
fn data_maps(
    batch: &[pvusb_ring::wire::RawUrbRequest],
    limits: &pvusb_ring::wire::Limits,
) -> Vec<(Vec<u32>, bool)> {
    batch
        .iter()
        .filter_map(|raw| match UrbRequest::parse(raw, limits) {
            Ok(UrbRequest::Submit(sub)) if sub.buffer_length > 0 => {
                let is_in = match sub.setup() {
                    Some(s) => s.is_in(),
                    None => sub.pipe.is_in(),
                };
                let refs = sub.data_segs().iter().map(|s| s.gref).collect();
                Some((refs, is_in))
            }
            _ => None,
        })
        .collect()
}

/// Answers a request the host never sees.
pub(super) fn local(link: &mut Link, id: u16, result: UrbResult) -> Result<(), Fatal> {
    match link.backend.handle_local(id, result, None) {
        Ok(()) => Ok(()),
        Err(rej) => Err(rej.error.into()),
    }
}
