//! ISO frame descriptors: Linux `struct usb_iso_packet_descriptor`, as the guest grants them.
//!
//! The frame-descriptor segments of an isochronous request hold the guest's descriptor
//! array. The array need not be 16-byte aligned in its pages, so a descriptor can straddle
//! two segments: callers gather the descriptor bytes into one buffer first, then iterate
//! with [`iso_packets`]. The backend writes results back with [`IsoPacketResult::emit`].

use zerocopy::little_endian::{I32, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Size of one descriptor on the wire.
pub const ISO_DESC_SIZE: u32 = 16;

/// Linux `struct usb_iso_packet_descriptor` (include/linux/usb.h), 16 bytes: the array the
/// ISO frame-descriptor segments hold. The backend writes `actual_length` and `status` back.
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
pub struct RawIsoPacketDesc {
    /// Offset of this packet in the data buffer.
    pub offset: U32,
    /// Expected length.
    pub length: U32,
    /// Bytes transferred (written by the backend).
    pub actual_length: U32,
    /// Packet status, a negative errno or 0 (written by the backend).
    pub status: I32,
}

/// One checked packet of an isochronous request: `offset + length <= buffer_length`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IsoPacket {
    /// Offset in the data buffer.
    pub offset: u32,
    /// Expected length.
    pub length: u32,
}

/// The result of one packet, as the backend reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IsoPacketResult {
    /// Bytes transferred, ≤ the packet's length.
    pub actual_length: u32,
    /// 0 or a negative Linux errno.
    pub status: i32,
}

/// Why an ISO descriptor was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadIsoPacket {
    /// The packet runs past the data buffer.
    #[error("iso packet {index} at {offset}+{length} runs past the {buffer_length}-byte buffer")]
    PastBuffer {
        index: usize,
        offset: u32,
        length: u32,
        buffer_length: u32,
    },
    /// A result reports more bytes than the packet asked for.
    #[error("iso packet {index} reports {actual_length} of {length} bytes")]
    ActualPastLength {
        index: usize,
        actual_length: u32,
        length: u32,
    },
}

impl IsoPacket {
    /// Checks descriptor `index` against the URB's buffer length.
    pub fn parse(
        raw: &RawIsoPacketDesc,
        index: usize,
        buffer_length: u32,
    ) -> Result<Self, BadIsoPacket> {
        let offset = raw.offset.get();
        let length = raw.length.get();
        match offset.checked_add(length) {
            Some(end) if end <= buffer_length => Ok(IsoPacket { offset, length }),
            _ => Err(BadIsoPacket::PastBuffer {
                index,
                offset,
                length,
                buffer_length,
            }),
        }
    }

    /// Writes the request half of a descriptor (result fields zeroed).
    pub fn emit(&self, raw: &mut RawIsoPacketDesc) {
        *raw = RawIsoPacketDesc {
            offset: self.offset.into(),
            length: self.length.into(),
            actual_length: 0.into(),
            status: 0.into(),
        };
    }
}

impl IsoPacketResult {
    /// Reads the result half of descriptor `index`, checked against its length.
    pub fn parse(raw: &RawIsoPacketDesc, index: usize) -> Result<Self, BadIsoPacket> {
        let actual_length = raw.actual_length.get();
        let length = raw.length.get();
        if actual_length > length {
            return Err(BadIsoPacket::ActualPastLength {
                index,
                actual_length,
                length,
            });
        }
        Ok(IsoPacketResult {
            actual_length,
            status: raw.status.get(),
        })
    }

    /// Writes the result half of a descriptor, leaving offset and length alone.
    pub fn emit(&self, raw: &mut RawIsoPacketDesc) {
        raw.actual_length.set(self.actual_length);
        raw.status.set(self.status);
    }
}

/// Iterates over the first `number_of_packets` descriptors in `bytes`, checking each
/// against `buffer_length`. Stops early (without error) if `bytes` is too short; parse of
/// the request has already checked the descriptor segments hold enough bytes.
pub fn iso_packets(
    bytes: &[u8],
    number_of_packets: u16,
    buffer_length: u32,
) -> impl Iterator<Item = Result<IsoPacket, BadIsoPacket>> + '_ {
    bytes
        .chunks_exact(ISO_DESC_SIZE as usize)
        .take(usize::from(number_of_packets))
        .enumerate()
        .filter_map(move |(index, chunk)| {
            let raw = RawIsoPacketDesc::read_from_bytes(chunk).ok()?;
            Some(IsoPacket::parse(&raw, index, buffer_length))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    // offset 0x100, length 0x40, actual 0x20, status -18 (EXDEV).
    const DESC: [u8; 16] = [
        0x00, 0x01, 0, 0, 0x40, 0, 0, 0, 0x20, 0, 0, 0, 0xee, 0xff, 0xff, 0xff,
    ];
    // offset 0xffff_fff0, length 0x20: offset + length overflows u32.
    const DESC_WRAPS: [u8; 16] = [
        0xf0, 0xff, 0xff, 0xff, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    #[test]
    fn parse_iso_desc_in_buffer() {
        let raw = RawIsoPacketDesc::read_from_bytes(&DESC).unwrap();
        let p = IsoPacket::parse(&raw, 0, 0x140).unwrap();
        assert_eq!(
            p,
            IsoPacket {
                offset: 0x100,
                length: 0x40
            }
        );
        let r = IsoPacketResult::parse(&raw, 0).unwrap();
        assert_eq!(
            r,
            IsoPacketResult {
                actual_length: 0x20,
                status: -18
            }
        );
        let mut back = RawIsoPacketDesc::default();
        p.emit(&mut back);
        r.emit(&mut back);
        assert_eq!(back.as_bytes(), &DESC);
    }

    #[test]
    fn parse_iso_rejects_packet_past_buffer() {
        let raw = RawIsoPacketDesc::read_from_bytes(&DESC).unwrap();
        assert!(matches!(
            IsoPacket::parse(&raw, 3, 0x13f),
            Err(BadIsoPacket::PastBuffer { index: 3, .. })
        ));
    }

    #[test]
    fn parse_iso_rejects_offset_overflow() {
        let raw = RawIsoPacketDesc::read_from_bytes(&DESC_WRAPS).unwrap();
        assert!(IsoPacket::parse(&raw, 0, u32::MAX).is_err());
    }

    #[test]
    fn parse_iso_rejects_actual_past_length() {
        let mut raw = RawIsoPacketDesc::read_from_bytes(&DESC).unwrap();
        raw.actual_length.set(0x41);
        assert!(matches!(
            IsoPacketResult::parse(&raw, 1),
            Err(BadIsoPacket::ActualPastLength { index: 1, .. })
        ));
    }

    #[test]
    fn iso_packets_iterates_and_stops_at_count() {
        let mut bytes = [0u8; 48];
        bytes[..16].copy_from_slice(&DESC);
        bytes[16..32].copy_from_slice(&DESC_WRAPS);
        let v: Vec<_> = iso_packets(&bytes, 1, 0x140).collect();
        assert_eq!(v.len(), 1);
        let v: Vec<_> = iso_packets(&bytes, 5, 0x140).collect();
        assert_eq!(v.len(), 3);
        assert!(v[1].is_err());
    }
}
