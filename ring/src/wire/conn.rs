//! The conn ring: hotplug events from backend to frontend (`usbif_conn_*`).
//!
//! The frontend posts dummy requests (xen-hcd fills all 512 slots at connect and re-posts
//! each slot it consumes); the backend answers one per port change, echoing the slot id.

use zerocopy::little_endian::U16;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::{Port, Speed};

/// `struct usbif_conn_request`, 2 bytes: a dummy slot the backend answers on hotplug.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(C)]
pub struct RawConnRequest {
    /// Slot id, echoed by the response.
    pub id: U16,
}

/// `struct usbif_conn_response`, 4 bytes.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(C)]
pub struct RawConnResponse {
    /// Id of the request slot used.
    pub id: U16,
    /// Root-hub port, 1..=31.
    pub portnum: u8,
    /// `USBIF_SPEED_*`; 0 means the port is now empty.
    pub speed: u8,
}

/// A conn ring request: only a slot id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnRequest {
    /// Slot id, echoed by the response.
    pub id: u16,
}

impl ConnRequest {
    /// Every conn request is valid.
    pub fn parse(raw: &RawConnRequest) -> Self {
        ConnRequest { id: raw.id.get() }
    }
    /// Writes the request.
    pub fn emit(&self, raw: &mut RawConnRequest) {
        raw.id.set(self.id);
    }
    /// [`ConnRequest::emit`] into a fresh raw request.
    pub fn to_raw(&self) -> RawConnRequest {
        RawConnRequest { id: self.id.into() }
    }
}

/// A hotplug event: `port` now has a device of `speed`, or none (`Speed::None`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnEvent {
    /// Id of the request slot this answers.
    pub id: u16,
    /// The port that changed.
    pub port: Port,
    /// The new device's speed; `Speed::None` when the port was emptied.
    pub speed: Speed,
}

/// Why a conn response from the backend was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadConnResponse {
    /// Port 0, or beyond the controller's `num-ports`.
    #[error("conn event for port {port}, controller has {num_ports}")]
    NoSuchPort { port: u8, num_ports: u8 },
    /// A speed usbif.h does not define.
    #[error("conn event with unknown speed {0}")]
    UnknownSpeed(u8),
}

impl ConnEvent {
    /// True when the port was emptied.
    pub const fn is_disconnect(&self) -> bool {
        matches!(self.speed, Speed::None)
    }

    /// Checks a private copy of a conn response against the controller's port count.
    pub fn parse(raw: &RawConnResponse, num_ports: u8) -> Result<Self, BadConnResponse> {
        let port = Port::new(raw.portnum)
            .filter(|p| p.get() <= num_ports)
            .ok_or(BadConnResponse::NoSuchPort {
                port: raw.portnum,
                num_ports,
            })?;
        let speed = Speed::from_wire(raw.speed).ok_or(BadConnResponse::UnknownSpeed(raw.speed))?;
        Ok(ConnEvent {
            id: raw.id.get(),
            port,
            speed,
        })
    }

    /// Writes the response.
    pub fn emit(&self, raw: &mut RawConnResponse) {
        raw.id.set(self.id);
        raw.portnum = self.port.get();
        raw.speed = self.speed.to_wire();
    }

    /// [`ConnEvent::emit`] into a fresh raw response.
    pub fn to_raw(&self) -> RawConnResponse {
        let mut raw = RawConnResponse::default();
        self.emit(&mut raw);
        raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLUG_HIGH: [u8; 4] = [7, 0, 3, 3];
    const PORT_ZERO: [u8; 4] = [7, 0, 0, 3];
    const SPEED_SUPER: [u8; 4] = [7, 0, 1, 5];

    fn raw(b: [u8; 4]) -> RawConnResponse {
        zerocopy::transmute!(b)
    }

    #[test]
    fn parse_conn_plug() {
        let ev = ConnEvent::parse(&raw(PLUG_HIGH), 8).unwrap();
        assert_eq!(ev.id, 7);
        assert_eq!(ev.port.get(), 3);
        assert_eq!(ev.speed, Speed::High);
        assert!(!ev.is_disconnect());
        assert_eq!(ev.to_raw().as_bytes(), &PLUG_HIGH);
    }

    #[test]
    fn parse_conn_rejects_port_zero_and_beyond_num_ports() {
        assert!(matches!(
            ConnEvent::parse(&raw(PORT_ZERO), 8),
            Err(BadConnResponse::NoSuchPort { port: 0, .. })
        ));
        assert!(matches!(
            ConnEvent::parse(&raw(PLUG_HIGH), 2),
            Err(BadConnResponse::NoSuchPort {
                port: 3,
                num_ports: 2
            })
        ));
    }

    #[test]
    fn parse_conn_rejects_unknown_speed() {
        assert_eq!(
            ConnEvent::parse(&raw(SPEED_SUPER), 8),
            Err(BadConnResponse::UnknownSpeed(5))
        );
    }
}
