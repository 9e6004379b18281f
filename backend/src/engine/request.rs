//! From a checked submit request to what happens to it: answered here (device addressing,
//! the standard requests the host stack must do itself, bad buffers) or a [`Payload`] for
//! the host.

use pvusb_ring::urb::chain::{SPLIT_CONT, SPLIT_MORE};
use pvusb_ring::urb::UrbResult;
use pvusb_ring::wire::setup::request;
use pvusb_ring::wire::{iso_packets, Setup, Status, Submit, Transfer, XferType};

use super::memory::GuestMemory;
use super::payload::{GuestBuf, Payload, Plan};
use super::port::PortSlot;
use crate::host::{CtrlError, XferKind};

/// What to do with a submit request.
#[derive(Debug)]
// Returned once and moved straight into the state machine: boxing the payload would only
// add an allocation per URB.
#[allow(clippy::large_enum_variant)]
pub enum Prepared {
    /// Answer it now without the host.
    Local(UrbResult, &'static str),
    /// Hand it to the URB state machine.
    Host(Payload),
}

fn local(status: Status, why: &'static str) -> Prepared {
    Prepared::Local(UrbResult::status(status), why)
}

fn ctrl_status(r: Result<(), CtrlError>) -> UrbResult {
    match r {
        Ok(()) => UrbResult::ok(0),
        Err(e) => UrbResult::status(Status::from_errno(e.to_errno())),
    }
}

/// Decides a submit request for the device on `slot`. Never panics; every refusal has a
/// usbif status.
pub fn prepare(slot: &mut PortSlot, sub: &Submit, mem: &dyn GuestMemory) -> Prepared {
    if slot.device.is_none() {
        return local(Status::NoDev, "no device on the port");
    }
    let devnum = sub.pipe.devnum();
    let setup = sub.setup();
    let std_req = setup.filter(|s| s.is_standard()).map(|s| s.request());
    if devnum == 0 {
        // Before SET_ADDRESS the guest may only read descriptors (and set the address).
        if !matches!(
            std_req,
            Some(request::GET_DESCRIPTOR) | Some(request::SET_ADDRESS)
        ) {
            return local(
                Status::Inval,
                "only GET_DESCRIPTOR and SET_ADDRESS at address 0",
            );
        }
    } else if slot.addr.is_none() && slot.adopted {
        // Addressed through the backend process whose rings we took over.
        slot.addr = Some(devnum);
        slot.adopted = false;
        tracing::info!(parent: &slot.span, devnum, "device address taken over from the guest");
    } else if slot.addr != Some(devnum) {
        return local(Status::NoDev, "unknown device address");
    }
    let Some(dev) = slot.device.as_mut() else {
        return local(Status::NoDev, "no device on the port");
    };

    if let Some(s) = setup.filter(|s| s.is_standard()) {
        let low = |v: u16| v.to_le_bytes()[0];
        match (s.request_type(), s.request()) {
            (0x00, request::SET_ADDRESS) => {
                let addr = s.value();
                if addr == 0 || addr > 127 {
                    return local(Status::Inval, "SET_ADDRESS out of range");
                }
                slot.addr = Some(low(addr));
                return Prepared::Local(UrbResult::ok(0), "SET_ADDRESS emulated");
            }
            (0x00, request::SET_CONFIGURATION) => {
                let r = dev.set_configuration(low(s.value()));
                return Prepared::Local(ctrl_status(r), "SET_CONFIGURATION");
            }
            (0x01, request::SET_INTERFACE) => {
                let r = dev.set_interface(low(s.index()), low(s.value()));
                return Prepared::Local(ctrl_status(r), "SET_INTERFACE");
            }
            (0x02, request::CLEAR_FEATURE) if s.value() == 0 => {
                let r = dev.clear_halt(low(s.index()));
                return Prepared::Local(ctrl_status(r), "CLEAR_FEATURE(ENDPOINT_HALT)");
            }
            _ => {}
        }
    }

    if sub.ext_flags & (SPLIT_MORE | SPLIT_CONT) != 0 && !(sub.pipe.is_bulk() && sub.pipe.is_in()) {
        return local(
            Status::Inval,
            "split chain flags on a request that is not bulk IN",
        );
    }
    let len = sub.buffer_length as usize;
    let is_in = match setup {
        Some(s) => s.is_in(),
        None => sub.pipe.is_in(),
    };
    if let Some(s) = setup {
        if usize::from(s.length()) > len {
            return local(Status::Inval, "wLength exceeds the data buffer");
        }
    }
    let data = if len == 0 {
        None
    } else {
        let refs: Vec<u32> = sub.data_segs().iter().map(|s| s.gref).collect();
        let segs = sub.data_segs().iter().map(|s| (s.offset, s.length));
        match mem
            .map(&refs, is_in)
            .ok()
            .and_then(|m| GuestBuf::new(m, segs, len))
        {
            Some(g) => Some(g),
            None => return local(Status::Inval, "data grants do not map"),
        }
    };
    // IN: keep the mapping until the transfer ends. OUT bulk/interrupt in one run: keep the
    // read-only mapping for the host to read (zero copy); other OUT: copy the bytes now and
    // drop the mapping.
    let direct_out = matches!(sub.xfer, Transfer::Bulk | Transfer::Int { .. });
    let (out, data_in, data_out) = match data {
        Some(g) if !is_in && direct_out && g.is_contiguous() => (Vec::new(), None, Some(g)),
        Some(g) if !is_in && sub.pipe.xfer_type() != XferType::Isoc => {
            let mut out = vec![0u8; g.len()];
            if !g.gather(0, &mut out) {
                return local(Status::Inval, "data grants unreadable");
            }
            (out, None, None)
        }
        other => (Vec::new(), other, None),
    };
    let endpoint = sub.pipe.endpoint().address();
    let plan = match sub.xfer {
        Transfer::Ctrl { setup } => Plan::Ctrl {
            setup: Setup(setup),
            out,
            fix_ep0: slot.fix_ep0,
        },
        Transfer::Bulk | Transfer::Int { .. } => Plan::Data {
            kind: if sub.pipe.is_bulk() {
                XferKind::Bulk
            } else {
                XferKind::Interrupt
            },
            endpoint,
            len,
            out,
            short_not_ok: sub.short_not_ok,
            split_more: sub.ext_flags & SPLIT_MORE != 0,
        },
        Transfer::Isoc(iso) => {
            let desc_segs = sub.frame_desc_segs();
            let refs: Vec<u32> = desc_segs.iter().map(|s| s.gref).collect();
            let desc_len = usize::from(iso.number_of_packets) * 16;
            let segs = desc_segs.iter().map(|s| (s.offset, s.length));
            let desc = match mem
                .map_update(&refs)
                .ok()
                .and_then(|m| GuestBuf::new(m, segs, desc_len))
            {
                Some(g) => g,
                None => return local(Status::Inval, "frame descriptor grants do not map"),
            };
            let mut bytes = vec![0u8; desc_len];
            if !desc.gather(0, &mut bytes) {
                return local(Status::Inval, "frame descriptors unreadable");
            }
            let mut packets = Vec::with_capacity(usize::from(iso.number_of_packets));
            for p in iso_packets(&bytes, iso.number_of_packets, sub.buffer_length) {
                match p {
                    Ok(p) => packets.push(p),
                    Err(_) => return local(Status::Inval, "iso packet outside the buffer"),
                }
            }
            let mut packed = Vec::new();
            if !is_in {
                // Only packets with bytes need data pages: an URB of zero-length packets
                // (buffer_length 0, no data segments) is a valid iso OUT.
                for p in packets.iter().filter(|p| p.length > 0) {
                    let mut b = vec![0u8; p.length as usize];
                    if !data_in
                        .as_ref()
                        .is_some_and(|g| g.gather(p.offset as usize, &mut b))
                    {
                        return local(Status::Inval, "iso packet unreadable");
                    }
                    packed.extend_from_slice(&b);
                }
            }
            return Prepared::Host(Payload {
                plan: Plan::Iso {
                    endpoint,
                    packets,
                    out: packed,
                    start_frame: iso.start_frame,
                },
                data_in: if is_in { data_in } else { None },
                data_out: None,
                desc: Some(desc),
            });
        }
    };
    Prepared::Host(Payload {
        plan,
        data_in,
        data_out,
        desc: None,
    })
}
