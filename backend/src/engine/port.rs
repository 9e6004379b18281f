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
    /// The device was on this port when rings left by a dead backend process were taken
    /// over: the guest addressed it through that process, so the first address it uses is
    /// taken as the one it set (see `Engine::connect`).
    pub adopted: bool,
    /// Log span (port, busid).
    pub span: Span,
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
            adopted: false,
            span: Span::none(),
        }
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
