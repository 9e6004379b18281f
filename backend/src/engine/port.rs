//! One root-hub port of a controller: the host device passed through on it and the guest's
//! view of it (announced speed, the address the guest gave it).

use pvusb_ring::wire::{Speed, UsbVer};
use tracing::Span;

use crate::host::{HostDevice, HostSpeed};

/// A port and what is plugged into it.
#[derive(Debug)]
pub struct PortSlot {
    /// The opened host device, if any.
    pub device: Option<Box<dyn HostDevice>>,
    /// Its bus id.
    pub busid: Option<String>,
    /// The speed announced on the conn ring.
    pub speed: Speed,
    /// The device is SuperSpeed shown as HIGH: patch bMaxPacketSize0.
    pub fix_ep0: bool,
    /// The address the guest set with SET_ADDRESS (`None`: only address 0 answers).
    pub addr: Option<u8>,
    /// Log span (port, busid).
    pub span: Span,
    /// Bulk IN endpoints whose last request was cut into several host URBs.
    pub split_tail: SplitTails,
}

impl PortSlot {
    /// An empty port.
    pub fn empty() -> Self {
        PortSlot {
            device: None,
            busid: None,
            speed: Speed::None,
            fix_ep0: false,
            addr: None,
            span: Span::none(),
            split_tail: SplitTails::default(),
        }
    }
}

/// Bulk IN endpoints (bit = endpoint number) whose last request was cut into several host
/// URBs.
///
/// A request cut into host URBs (a `max-bulk-urb` below the request's length) has
/// SHORT_NOT_OK added on all its IN pieces but the last, so that a short piece ends it;
/// usbfs then cancels every continuation URB queued behind, up to the first one that is
/// not. Had the next request been chained for containment, an ordinary short read would
/// cancel it too and leave the endpoint refusing continuations. So the request after a
/// split IN request starts a new chain: a failure of the split request's last piece is
/// contained when it is reaped, not by the kernel — what interrupt endpoints get too.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SplitTails(u16);

impl SplitTails {
    /// Whether a request on `endpoint` (address) may carry BULK_CONTINUATION on its first
    /// URB, given that the ring state machine asks for it (`continuation`); records
    /// whether this request is cut into several host URBs (`split`).
    pub fn chain(&mut self, endpoint: u8, continuation: bool, split: bool) -> bool {
        if endpoint & 0x80 == 0 {
            return continuation;
        }
        let bit = 1u16 << (endpoint & 0x0f);
        let after_split = self.0 & bit != 0;
        if split {
            self.0 |= bit;
        } else {
            self.0 &= !bit;
        }
        continuation && !after_split
    }
}

/// Why a device cannot be announced on a controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SpeedError {
    /// A high-speed (or faster) device on a usb-ver 1 controller.
    #[error("a {0:?}-speed device is too fast for a USB 1.1 (usb-ver 1) controller")]
    TooFast(HostSpeed),
}

/// The usbif speed to announce for a host device on a controller of `usb_ver`, and whether
/// the device descriptor needs the SuperSpeed bMaxPacketSize0 fix-up.
pub fn announce_speed(host: HostSpeed, usb_ver: UsbVer) -> Result<(Speed, bool), SpeedError> {
    let speed = match host.usbif_speed() {
        1 => Speed::Low,
        2 => Speed::Full,
        _ => Speed::High,
    };
    if speed > usb_ver.max_speed() {
        return Err(SpeedError::TooFast(host));
    }
    Ok((speed, host.needs_ep0_fixup()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speeds_follow_usb_ver() {
        assert_eq!(
            announce_speed(HostSpeed::Super, UsbVer::Usb20),
            Ok((Speed::High, true))
        );
        assert_eq!(
            announce_speed(HostSpeed::Full, UsbVer::Usb11),
            Ok((Speed::Full, false))
        );
        assert!(announce_speed(HostSpeed::High, UsbVer::Usb11).is_err());
        assert_eq!(
            announce_speed(HostSpeed::Low, UsbVer::Usb20),
            Ok((Speed::Low, false))
        );
    }
}
