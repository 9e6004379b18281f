//! Isochronous source: interface 0 alt 0 has no bandwidth, alt 1 streams one packet per 1 ms
//! frame on EP 0x81 whose bytes follow a counter (byte i of frame f = (f * 7 + i) as u8).

use super::{build_descriptors, Alt, Ep, Io, Model};
use crate::host::desc::Descriptors;
use crate::host::{HostSpeed, IsoPacketResult};

/// Descriptors: vendor class; alt 0 no endpoints, alt 1 iso EP 0x81 of `packet_size`.
pub fn descriptors(speed: HostSpeed, packet_size: u16) -> Descriptors {
    let alt = Alt::vendor;
    build_descriptors(
        speed,
        [0xff, 0, 0],
        (0x1209, 0x0004),
        &[
            alt(0, Vec::new()),
            alt(
                1,
                vec![Ep {
                    address: 0x81,
                    attributes: 0x05,
                    max_packet: packet_size & 0x7ff,
                    interval: 1,
                }],
            ),
        ],
    )
}

/// The byte at position `i` of the packet sent in frame `frame`.
pub fn sample(frame: u64, i: usize) -> u8 {
    (frame.wrapping_mul(7).wrapping_add(i as u64)) as u8
}

/// The iso source model.
#[derive(Debug, Default)]
pub struct IsoSource {
    packet_size: u16,
}

impl IsoSource {
    /// A source sending packets of up to `packet_size` bytes.
    pub fn new(packet_size: u16) -> Self {
        IsoSource {
            packet_size: packet_size & 0x7ff,
        }
    }
}

impl Model for IsoSource {
    fn iso(
        &mut self,
        ep: u8,
        frame: u64,
        lengths: &[u32],
        io: &mut Io<'_>,
    ) -> Vec<IsoPacketResult> {
        let mut off = 0usize;
        let mut out = Vec::with_capacity(lengths.len());
        let mut pkt = Vec::new();
        for (i, &len) in lengths.iter().enumerate() {
            let n = if ep == 0x81 {
                (len as usize).min(usize::from(self.packet_size))
            } else {
                0
            };
            pkt.clear();
            pkt.extend((0..n).map(|j| sample(frame + i as u64, j)));
            let ok = io.write_at(off, &pkt);
            out.push(IsoPacketResult {
                actual_length: if ok { n as u32 } else { 0 },
                status: if ok {
                    0
                } else {
                    -crate::host::errno::EOVERFLOW
                },
            });
            off = off.saturating_add(len as usize);
        }
        io.set_actual(out.iter().map(|p| p.actual_length as usize).sum());
        out
    }
}
