//! What SUBMITURB checks before an URB is queued: the endpoint exists in the current
//! configuration and alt setting, the transfer type fits it, control setup and iso packet
//! lists are well formed, and a broken BULK_CONTINUATION chain is refused.

use super::Core;
use crate::host::desc::EndpointDescriptor;
use crate::host::{errno, HostSpeed, HostUrb, SubmitError, UrbFlags, XferKind};
use crate::sim::model::Setup;

/// Max iso packets per URB (usbfs's limit).
const MAX_ISO_PACKETS: usize = 128;
/// Max bytes usbfs takes for one iso packet (96 SuperSpeedPlus packets of 1024).
const MAX_ISO_PACKET_LEN: u32 = 98_304;

impl Core {
    pub(super) fn validate(&self, urb: &HostUrb) -> Result<(), SubmitError> {
        if self.gone {
            return Err(SubmitError::Gone);
        }
        if self.tags.contains(&urb.tag) {
            return Err(SubmitError::DuplicateTag(urb.tag));
        }
        if urb.kind == XferKind::Control {
            if urb.endpoint & 0x7f != 0 {
                return Err(SubmitError::NoEndpoint(urb.endpoint));
            }
            let mut setup = [0u8; 8];
            if !urb.buf.read_at(0, &mut setup) {
                return Err(SubmitError::Invalid(
                    "control URB shorter than its setup packet",
                ));
            }
            if usize::from(Setup::parse(setup).length) + 8 > urb.buf.len() {
                return Err(SubmitError::Invalid("wLength exceeds the buffer"));
            }
            return Ok(());
        }
        let cfg = self
            .ident
            .descriptors
            .config(self.config)
            .ok_or(SubmitError::NoEndpoint(urb.endpoint))?;
        let (_, ep) = cfg
            .find_endpoint(|i| self.alt_of(i), urb.endpoint)
            .ok_or(SubmitError::NoEndpoint(urb.endpoint))?;
        // usbfs lets bulk and interrupt URBs use either kind of endpoint.
        let compatible = matches!(
            (urb.kind, ep.kind()),
            (XferKind::Iso, XferKind::Iso)
                | (
                    XferKind::Bulk | XferKind::Interrupt,
                    XferKind::Bulk | XferKind::Interrupt
                )
        );
        if !compatible {
            return Err(SubmitError::Invalid(
                "transfer type does not match the endpoint",
            ));
        }
        if urb.kind == XferKind::Iso {
            self.validate_iso(urb, ep)?;
        }
        if urb.kind == XferKind::Bulk
            && urb.flags.contains(UrbFlags::BULK_CONTINUATION)
            && self.eps.get(&urb.endpoint).is_some_and(|e| e.cont_refused)
        {
            return Err(SubmitError::ContinuationRefused);
        }
        Ok(())
    }

    /// usbfs's iso checks (devio.c `proc_do_submiturb`), then `usb_submit_urb`'s: a packet
    /// longer than the endpoint moves per (micro)frame is refused with -EMSGSIZE.
    fn validate_iso(&self, urb: &HostUrb, ep: &EndpointDescriptor) -> Result<(), SubmitError> {
        let total: u64 = urb.iso_packets.iter().map(|&l| u64::from(l)).sum();
        if urb.iso_packets.is_empty()
            || urb.iso_packets.len() > MAX_ISO_PACKETS
            || urb.iso_packets.iter().any(|&l| l > MAX_ISO_PACKET_LEN)
            || total > urb.buf.len() as u64
        {
            return Err(SubmitError::Invalid("bad iso packet list"));
        }
        // High speed: bits 11-12 of wMaxPacketSize add up to two more packets per
        // microframe. (SuperSpeed multiplies by the companion's burst and mult, which the
        // models leave at one packet.)
        let mult = match self.ident.speed {
            HostSpeed::High => u32::from((ep.max_packet_size >> 11) & 3) + 1,
            _ => 1,
        };
        let max = u32::from(ep.max_packet()) * mult;
        if urb.iso_packets.iter().any(|&l| l > max) {
            return Err(SubmitError::Errno(errno::EMSGSIZE));
        }
        Ok(())
    }
}
