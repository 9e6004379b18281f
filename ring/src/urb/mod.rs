//! URB semantics as sans-I/O state machines: DESIGN.md's contract 1-6 for both halves of a vusb.
//!
//! [`backend::Backend`] serves one usbif ring against a host (usbfs or a simulated device);
//! [`frontend::Frontend`] feeds one usbif ring from a client (the USB/IP side of vhci_hcd).
//! Both are generic over an opaque payload the shell owns (mapped grants, a usbfs URB, a
//! client buffer) that they hand back exactly once, so every buffer has one owner at a time.
//! [`split`] cuts large bulk transfers into requests and puts their results together;
//! [`aca`] is the per-endpoint error containment both halves agree on; [`chain`] lets a
//! large IN transfer's pieces be in flight together.

#![warn(missing_docs)]
pub mod aca;
pub mod backend;
pub mod chain;
pub mod frontend;
pub mod split;

#[cfg(test)]
mod tests;

use crate::wire::{Ep, Pipe, Status, MAX_PORTNR};

/// What a finished URB reports: the fields of `struct usbif_urb_response` besides its id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UrbResult {
    /// Completion status.
    pub status: Status,
    /// Bytes transferred.
    pub actual_length: u32,
    /// Isochronous: the frame the transfer started in.
    pub start_frame: u16,
    /// Isochronous: packets that failed.
    pub error_count: u32,
}

impl UrbResult {
    /// A result with only a status (nothing transferred).
    pub const fn status(status: Status) -> Self {
        UrbResult {
            status,
            actual_length: 0,
            start_frame: 0,
            error_count: 0,
        }
    }

    /// A successful non-isochronous result of `actual_length` bytes.
    pub const fn ok(actual_length: u32) -> Self {
        UrbResult {
            status: Status::Ok,
            actual_length,
            start_frame: 0,
            error_count: 0,
        }
    }
}

/// Endpoints per port in the per-endpoint tables: 16 numbers times two directions.
const EPS_PER_PORT: usize = 32;

/// The unit of ordering and containment: one endpoint of the device on one port.
///
/// Control endpoints are bidirectional, so a control pipe's direction bit (which follows
/// the setup packet) is dropped: ep0 IN and ep0 OUT requests share one queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EpKey {
    /// usbif port, 1-based.
    pub port: u8,
    /// Endpoint (OUT direction for control pipes).
    pub ep: Ep,
}

impl EpKey {
    /// The endpoint a pipe addresses.
    pub const fn of(pipe: Pipe) -> Self {
        let ep = if pipe.is_ctrl() {
            Ep::new(pipe.ep_num(), false)
        } else {
            pipe.endpoint()
        };
        EpKey {
            port: pipe.port(),
            ep,
        }
    }

    /// Index into a per-endpoint table of `num_ports` ports; `None` for a port outside
    /// 1..=num_ports, so a peer's pipe can never index past a table.
    fn index(self, num_ports: u8) -> Option<usize> {
        if self.port == 0 || self.port > num_ports || self.port > MAX_PORTNR {
            return None;
        }
        let port = usize::from(self.port - 1);
        let dir = if self.ep.is_in() { 16 } else { 0 };
        Some(port * EPS_PER_PORT + dir + usize::from(self.ep.num()))
    }
}

/// Ports clamped to what usbif can address, so table sizes are bounded.
fn clamp_ports(num_ports: u8) -> u8 {
    num_ports.min(MAX_PORTNR)
}
