//! Isochronous loopback (what a headset's playback + capture pair, or gadget zero's iso
//! source/sink, looks like to a host): packets sent on EP 0x01 OUT come back, one per IN
//! packet, on EP 0x82 IN.
//!
//! Interface 0 alt 0 has no endpoints (zero bandwidth, as USB requires of an iso
//! interface's default setting); alt 1 has iso OUT 0x01 and iso IN 0x82, both
//! `wMaxPacketSize = packet_size`, one packet per 1 ms frame, no synchronisation (there is
//! no feedback endpoint, as in f_sourcesink's iso mode).
//!
//! The device's receive buffer holds the last [`QUEUE_PACKETS`] packets: iso has no
//! handshake, so an OUT packet the device has no room for cannot be refused or NAKed; like
//! an audio device's ring buffer the oldest packet is overwritten (counted in
//! [`IsoLoopback::dropped`]). Each IN packet returns the oldest queued packet that arrived
//! in an earlier frame (its exact bytes and length, a zero-length packet included), or a
//! zero-length packet when there is none. A queued packet longer than the IN packet the
//! host asked for is babble: the packet ends with -EOVERFLOW carrying the bytes that fit.
//! Changing the alt setting or resetting the device empties the buffer.
//!
//! The sim runs a whole URB when its last frame has passed, so OUT packets reach the device
//! when their URB completes; an IN URB scheduled over the same frames as an OUT URB that
//! has not run yet sees none of its packets.

use std::collections::VecDeque;

use super::{build_descriptors, Alt, Ep, Io, Model};
use crate::host::desc::Descriptors;
use crate::host::{errno, HostSpeed, IsoPacketResult};

/// OUT endpoint address.
pub const EP_OUT: u8 = 0x01;
/// IN endpoint address.
pub const EP_IN: u8 = 0x82;
/// Packets the device buffers: one full usbfs URB (128 packets, 128 ms at full speed).
pub const QUEUE_PACKETS: usize = 128;

/// bmAttributes: isochronous, no synchronisation, data endpoint.
const ISO_NO_SYNC: u8 = 0x01;

/// Descriptors: vendor class; alt 0 no endpoints, alt 1 iso EP 0x01 OUT + 0x82 IN of
/// `packet_size` (bits 0-10 of wMaxPacketSize), every frame.
pub fn descriptors(speed: HostSpeed, packet_size: u16) -> Descriptors {
    let alt = Alt::vendor;
    let ep = |address: u8| Ep {
        address,
        attributes: ISO_NO_SYNC,
        max_packet: packet_size & 0x7ff,
        interval: 1,
    };
    build_descriptors(
        speed,
        [0xff, 0, 0],
        (0x1209, 0x0005),
        &[alt(0, Vec::new()), alt(1, vec![ep(EP_OUT), ep(EP_IN)])],
    )
}

/// One received OUT packet and the frame it arrived in.
#[derive(Debug)]
struct Packet {
    frame: u64,
    data: Vec<u8>,
}

/// The iso loopback model.
#[derive(Debug, Default)]
pub struct IsoLoopback {
    queue: VecDeque<Packet>,
    dropped: u64,
}

impl IsoLoopback {
    /// An empty loopback. The packet size lives in the descriptors: the host refuses
    /// larger packets before they reach the device.
    pub fn new() -> Self {
        IsoLoopback::default()
    }

    /// Packets waiting to be read back.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// OUT packets overwritten because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn receive(&mut self, frame: u64, lengths: &[u32], io: &Io<'_>) -> Vec<IsoPacketResult> {
        let mut off = 0usize;
        let mut out = Vec::with_capacity(lengths.len());
        for (i, &len) in lengths.iter().enumerate() {
            let n = len as usize;
            let mut data = vec![0u8; n];
            // The host packed the packets back to back; one outside the buffer never left it.
            let ok = io.read(off, &mut data);
            off = off.saturating_add(n);
            if !ok {
                out.push(IsoPacketResult {
                    actual_length: 0,
                    status: -errno::EPROTO,
                });
                continue;
            }
            if self.queue.len() >= QUEUE_PACKETS {
                self.queue.pop_front();
                self.dropped += 1;
            }
            self.queue.push_back(Packet {
                frame: frame.saturating_add(i as u64),
                data,
            });
            out.push(IsoPacketResult {
                actual_length: len,
                status: 0,
            });
        }
        out
    }

    fn send(&mut self, frame: u64, lengths: &[u32], io: &mut Io<'_>) -> Vec<IsoPacketResult> {
        let mut off = 0usize;
        let mut out = Vec::with_capacity(lengths.len());
        for (i, &len) in lengths.iter().enumerate() {
            let at = off;
            off = off.saturating_add(len as usize);
            let now = frame.saturating_add(i as u64);
            // A packet from this frame or later has not reached the device yet.
            let Some(p) = self
                .queue
                .front()
                .is_some_and(|p| p.frame < now)
                .then(|| self.queue.pop_front())
                .flatten()
            else {
                out.push(IsoPacketResult::default());
                continue;
            };
            let fits = p.data.len().min(len as usize);
            let head = p.data.get(..fits).unwrap_or_default();
            let written = io.write_at(at, head);
            let babble = fits < p.data.len();
            out.push(IsoPacketResult {
                // `fits` is at most `len`.
                actual_length: if written {
                    u32::try_from(fits).unwrap_or(len)
                } else {
                    0
                },
                status: if babble || !written {
                    -errno::EOVERFLOW
                } else {
                    0
                },
            });
        }
        out
    }
}

impl Model for IsoLoopback {
    fn iso(
        &mut self,
        ep: u8,
        frame: u64,
        lengths: &[u32],
        io: &mut Io<'_>,
    ) -> Vec<IsoPacketResult> {
        let out = match ep {
            EP_OUT => self.receive(frame, lengths, io),
            EP_IN => self.send(frame, lengths, io),
            // The bus layer only hands over endpoints of the active alt setting.
            _ => lengths
                .iter()
                .map(|_| IsoPacketResult {
                    actual_length: 0,
                    status: -errno::EPROTO,
                })
                .collect(),
        };
        io.set_actual(out.iter().map(|p| p.actual_length as usize).sum());
        out
    }

    fn set_interface(&mut self, _interface: u8, _alt: u8) {
        self.queue.clear();
    }

    fn reset(&mut self) {
        self.queue.clear();
    }
}

#[cfg(test)]
#[path = "iso_loopback_tests.rs"]
mod tests;
