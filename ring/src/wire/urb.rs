//! The URB ring's requests: raw `usbif_urb_request`, checked parse, infallible emit.
//!
//! Parsing is where a guest's request stops being bytes it can still change: call it on a
//! private copy (`BackRing::pop_request` makes one), never on the shared page. What parse
//! deliberately does *not* check, because Linux xen-hcd leaves stale bytes there (it fills a
//! per-id shadow copy and only writes the fields the request type uses):
//! the union bytes a type does not use (all 8 for bulk, the pads of intr and unlink),
//! `seg[]` entries past the counted ones, and `transfer_flags`/`buffer_length` of an unlink.
//! `nr_frame_desc_segs` on a non-isochronous request is not a wire field at all (those bytes
//! belong to another union member), so the typed repr makes it unrepresentable instead.
use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use zerocopy::FromZeros;

pub use super::response::{BadResponse, RawUrbResponse, UrbResponse};
use super::seg::{Seg, Segments};
use super::{
    Pipe, Status, XferType, MAX_PORTNR, MAX_SEGMENTS_PER_REQUEST, PAGE_SIZE, SHORT_NOT_OK,
};

/// `struct usbif_request_segment`: one granted page holding part of a buffer.
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
pub struct RawSeg {
    /// Grant reference of the page.
    pub gref: U32,
    /// Offset of the buffer piece in the page.
    pub offset: U16,
    /// Length of the buffer piece in the page.
    pub length: U16,
}

/// `struct usbif_urb_request`, 148 bytes. `u` is the 8-byte union; read it through
/// [`RawUrbRequest::isoc`], [`RawUrbRequest::intr`], [`RawUrbRequest::unlink`] or as the
/// control setup packet directly.
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
pub struct RawUrbRequest {
    /// Request id, echoed in the response.
    pub id: U16,
    /// Number of `seg[]` entries describing the data buffer.
    pub nr_buffer_segs: U16,
    /// The usbif pipe (see [`super::Pipe`]).
    pub pipe: U32,
    /// `USBIF_SHORT_NOT_OK` and negotiated extension bits.
    pub transfer_flags: U16,
    /// Total data length; 0 for a page-aligned 64 KiB buffer (u16 wraps).
    pub buffer_length: U16,
    /// The per-type union: setup packet, isoc, intr or unlink fields.
    pub u: [u8; 8],
    /// Data segments, then (isochronous) frame-descriptor segments.
    pub seg: [RawSeg; MAX_SEGMENTS_PER_REQUEST],
}

/// `u.isoc` of a request.
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
pub struct RawIsoc {
    /// The guest's `urb->interval` (frames or microframes, despite the header's "msecs").
    pub interval: U16,
    /// Start frame.
    pub start_frame: U16,
    /// Number of ISO packets (and of frame descriptors).
    pub number_of_packets: U16,
    /// Number of `seg[]` entries, after the data segments, holding the frame descriptors.
    pub nr_frame_desc_segs: U16,
}

/// `u.intr` of a request.
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
pub struct RawIntr {
    /// The guest's `urb->interval`.
    pub interval: U16,
    /// Unused; Linux xen-hcd leaves stale bytes here, so it is never checked.
    pub pad: [U16; 3],
}

/// `u.unlink` of a request.
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
pub struct RawUnlink {
    /// Id of the request to cancel.
    pub unlink_id: U16,
    /// Unused; never checked (stale in xen-hcd's shadow copy).
    pub pad: [U16; 3],
}

impl RawUrbRequest {
    /// The union read as `u.isoc`.
    pub fn isoc(&self) -> RawIsoc {
        zerocopy::transmute!(self.u)
    }
    /// The union read as `u.intr`.
    pub fn intr(&self) -> RawIntr {
        zerocopy::transmute!(self.u)
    }
    /// The union read as `u.unlink`.
    pub fn unlink(&self) -> RawUnlink {
        zerocopy::transmute!(self.u)
    }
    /// Stores `u.isoc`.
    pub fn set_isoc(&mut self, v: RawIsoc) {
        self.u = zerocopy::transmute!(v);
    }
    /// Stores `u.intr`.
    pub fn set_intr(&mut self, v: RawIntr) {
        self.u = zerocopy::transmute!(v);
    }
    /// Stores `u.unlink`.
    pub fn set_unlink(&mut self, v: RawUnlink) {
        self.u = zerocopy::transmute!(v);
    }
}

const _: () = {
    assert!(core::mem::size_of::<RawSeg>() == 8);
    assert!(core::mem::size_of::<RawUrbRequest>() == 148);
};

/// What the parser accepts beyond stock usbif, from the xenstore negotiation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Ports on this controller (`num-ports`, 1..=31); larger values are clamped to 31.
    pub num_ports: u8,
    /// `transfer_flags` bits besides `USBIF_SHORT_NOT_OK` that a negotiated extension defines.
    pub ext_flags: u16,
}

impl Limits {
    /// Stock usbif: only `USBIF_SHORT_NOT_OK`.
    pub const fn stock(num_ports: u8) -> Self {
        Limits {
            num_ports,
            ext_flags: 0,
        }
    }
}

/// Why a request was refused. Each variant names the bad field; [`BadRequest::status`] is
/// the answer the guest gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    /// Pipe bits 6 or 19-29 are set.
    #[error("pipe {pipe:#010x} sets reserved bits {bits:#010x}")]
    ReservedPipeBits { pipe: u32, bits: u32 },
    /// Port 0 does not exist (ports are 1-based).
    #[error("request for port 0")]
    PortZero,
    /// The port is beyond `num-ports`.
    #[error("port {port} does not exist on this controller ({num_ports} ports)")]
    NoSuchPort { port: u8, num_ports: u8 },
    /// `transfer_flags` has bits that were neither defined nor negotiated.
    #[error("unknown transfer_flags bits {bits:#06x}")]
    UnknownTransferFlags { bits: u16 },
    /// More than 16 segments (data plus ISO frame descriptors).
    #[error("{nr_segs} segments, more than 16")]
    TooManySegments { nr_segs: u16 },
    /// `nr_buffer_segs + nr_frame_desc_segs` is more than 16.
    #[error(
        "{nr_buffer_segs} data + {nr_frame_desc_segs} frame descriptor segments, more than 16"
    )]
    FrameDescSegsOverflow {
        nr_buffer_segs: u16,
        nr_frame_desc_segs: u16,
    },
    /// A segment runs past the end of its page.
    #[error("segment {index} ends at byte {end}, past its page")]
    SegmentPastPage { index: usize, end: u32 },
    /// A segment has length 0.
    #[error("segment {index} is empty")]
    EmptySegment { index: usize },
    /// `buffer_length` is more than the data segments hold.
    #[error("buffer_length {buffer_length} exceeds the {seg_total} bytes of its segments")]
    BufferPastSegments { buffer_length: u32, seg_total: u32 },
    /// An isochronous request with `number_of_packets == 0` (Linux refuses those too).
    #[error("isochronous request without packets")]
    IsoWithoutPackets,
    /// The frame-descriptor segments cannot hold `number_of_packets` descriptors.
    #[error("{number_of_packets} iso packets need more than the {desc_bytes} descriptor bytes")]
    IsoDescTooSmall {
        number_of_packets: u16,
        desc_bytes: u32,
    },
    /// An unlink request carries buffer segments.
    #[error("unlink request with {nr_buffer_segs} buffer segments")]
    UnlinkWithSegments { nr_buffer_segs: u16 },
    /// An unlink request names itself as its victim.
    #[error("unlink request {id} cancels itself")]
    UnlinkSelf { id: u16 },
}

impl BadRequest {
    /// The usbif status answering this request: `-ENODEV` for a port that does not exist
    /// (what the guest would see if the device were gone), `-EINVAL` for everything else.
    pub const fn status(&self) -> Status {
        match self {
            BadRequest::NoSuchPort { .. } => Status::NoDev,
            _ => Status::Inval,
        }
    }
}

/// The type-specific part of a submit request (the `u` union, decoded by pipe type).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transfer {
    /// Control: the 8-byte setup packet, in USB (little-endian) order.
    Ctrl { setup: [u8; 8] },
    /// Interrupt: the guest's `urb->interval`, passed through undecoded.
    Int { interval: u16 },
    /// Isochronous.
    Isoc(Isoc),
    /// Bulk: the union is unused.
    Bulk,
}

impl Transfer {
    /// The pipe type this transfer belongs to.
    pub const fn xfer_type(&self) -> XferType {
        match self {
            Transfer::Ctrl { .. } => XferType::Ctrl,
            Transfer::Int { .. } => XferType::Int,
            Transfer::Isoc(_) => XferType::Isoc,
            Transfer::Bulk => XferType::Bulk,
        }
    }
}

/// `u.isoc` of a checked isochronous request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Isoc {
    /// The guest's `urb->interval`, passed through undecoded.
    pub interval: u16,
    /// Start frame.
    pub start_frame: u16,
    /// Packets in this URB, ≥ 1; the descriptor segments hold at least 16 bytes for each.
    pub number_of_packets: u16,
    /// How many of the request's segments, after the data segments, hold the
    /// `usb_iso_packet_descriptor` array.
    pub nr_frame_desc_segs: u16,
}

/// A checked submit request.
///
/// Invariants after [`UrbRequest::parse`]: no unlink or reserved pipe bits, port in
/// 1..=num_ports, `xfer` matches the pipe type, every segment is in-page and non-empty,
/// `buffer_length` ≤ total of the data segments, and for ISO the descriptor segments
/// follow the data segments and can hold `number_of_packets` descriptors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Submit {
    /// Request id, echoed in the response.
    pub id: u16,
    /// The pipe (unlink bit clear).
    pub pipe: Pipe,
    /// Type-specific fields.
    pub xfer: Transfer,
    /// Data segments, then ISO frame-descriptor segments.
    pub segs: Segments,
    /// Transfer length in bytes, 0..=65536. A wire value of 0 with data segments adding up
    /// to exactly 64 KiB means 65536: usbif's `buffer_length` is a u16, and xen-hcd sends a
    /// page-aligned 64 KiB buffer that way, so the segment lengths are trusted.
    pub buffer_length: u32,
    /// `USBIF_SHORT_NOT_OK`: a short IN transfer is an error.
    pub short_not_ok: bool,
    /// The other `transfer_flags` bits, all within [`Limits::ext_flags`].
    pub ext_flags: u16,
}

impl Submit {
    /// Number of data segments (`nr_buffer_segs`).
    pub fn nr_buffer_segs(&self) -> usize {
        let desc = match self.xfer {
            Transfer::Isoc(i) => usize::from(i.nr_frame_desc_segs),
            _ => 0,
        };
        self.segs.len().saturating_sub(desc)
    }
    /// The segments holding the data buffer.
    pub fn data_segs(&self) -> &[Seg] {
        self.segs.head(self.nr_buffer_segs())
    }
    /// The setup packet of a control request.
    pub fn setup(&self) -> Option<super::Setup> {
        match self.xfer {
            Transfer::Ctrl { setup } => Some(super::Setup(setup)),
            _ => None,
        }
    }
    /// The segments holding the ISO frame descriptors (empty unless isochronous).
    pub fn frame_desc_segs(&self) -> &[Seg] {
        self.segs.tail(self.nr_buffer_segs())
    }
}

/// A checked unlink request: cancel request `victim`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unlink {
    /// This request's own id (answered separately from the victim).
    pub id: u16,
    /// The victim's pipe; stored *without* the unlink bit, which emit adds.
    pub pipe: Pipe,
    /// Id of the request to cancel (`u.unlink.unlink_id`), never `id`.
    pub victim: u16,
}

/// A checked URB ring request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UrbRequest {
    /// Submit a transfer.
    Submit(Submit),
    /// Cancel an earlier transfer.
    Unlink(Unlink),
}

impl UrbRequest {
    /// The request id.
    pub const fn id(&self) -> u16 {
        match self {
            UrbRequest::Submit(s) => s.id,
            UrbRequest::Unlink(u) => u.id,
        }
    }

    /// The pipe, without the unlink bit.
    pub const fn pipe(&self) -> Pipe {
        match self {
            UrbRequest::Submit(s) => s.pipe,
            UrbRequest::Unlink(u) => u.pipe,
        }
    }

    /// Checks a private copy of a request. Never panics, for any bytes.
    pub fn parse(raw: &RawUrbRequest, limits: &Limits) -> Result<Self, BadRequest> {
        let id = raw.id.get();
        let wire_pipe = Pipe(raw.pipe.get());
        let bits = wire_pipe.reserved_bits();
        if bits != 0 {
            return Err(BadRequest::ReservedPipeBits {
                pipe: wire_pipe.0,
                bits,
            });
        }
        let port = wire_pipe.port();
        let num_ports = limits.num_ports.min(MAX_PORTNR);
        if port == 0 {
            return Err(BadRequest::PortZero);
        }
        if port > num_ports {
            return Err(BadRequest::NoSuchPort { port, num_ports });
        }
        let pipe = wire_pipe.without_unlink();
        let nr_buffer_segs = raw.nr_buffer_segs.get();
        if wire_pipe.is_unlink() {
            return parse_unlink(raw, id, pipe, nr_buffer_segs);
        }

        let flags = raw.transfer_flags.get();
        let unknown = flags & !SHORT_NOT_OK & !limits.ext_flags;
        if unknown != 0 {
            return Err(BadRequest::UnknownTransferFlags { bits: unknown });
        }
        if usize::from(nr_buffer_segs) > MAX_SEGMENTS_PER_REQUEST {
            return Err(BadRequest::TooManySegments {
                nr_segs: nr_buffer_segs,
            });
        }
        let xfer = match pipe.xfer_type() {
            XferType::Ctrl => Transfer::Ctrl { setup: raw.u },
            XferType::Int => Transfer::Int {
                interval: raw.intr().interval.get(),
            },
            XferType::Bulk => Transfer::Bulk,
            XferType::Isoc => {
                let i = raw.isoc();
                Transfer::Isoc(Isoc {
                    interval: i.interval.get(),
                    start_frame: i.start_frame.get(),
                    number_of_packets: i.number_of_packets.get(),
                    nr_frame_desc_segs: i.nr_frame_desc_segs.get(),
                })
            }
        };
        let nr_desc = match xfer {
            Transfer::Isoc(i) => i.nr_frame_desc_segs,
            _ => 0,
        };
        let total = usize::from(nr_buffer_segs) + usize::from(nr_desc);
        if total > MAX_SEGMENTS_PER_REQUEST {
            return Err(BadRequest::FrameDescSegsOverflow {
                nr_buffer_segs,
                nr_frame_desc_segs: nr_desc,
            });
        }
        let mut segs = Segments::new();
        for (index, s) in raw.seg.iter().take(total).enumerate() {
            segs.push(Seg::new(
                index,
                s.gref.get(),
                s.offset.get(),
                s.length.get(),
            )?)?;
        }

        let seg_total: u32 = segs
            .head(usize::from(nr_buffer_segs))
            .iter()
            .map(|s| u32::from(s.length))
            .sum();
        let wire_len = u32::from(raw.buffer_length.get());
        let buffer_length = if wire_len == 0 && seg_total == MAX_BUFFER {
            MAX_BUFFER
        } else {
            wire_len
        };
        if buffer_length > seg_total {
            return Err(BadRequest::BufferPastSegments {
                buffer_length,
                seg_total,
            });
        }

        if let Transfer::Isoc(i) = xfer {
            if i.number_of_packets == 0 {
                return Err(BadRequest::IsoWithoutPackets);
            }
            let desc_bytes: u32 = segs
                .tail(usize::from(nr_buffer_segs))
                .iter()
                .map(|s| u32::from(s.length))
                .sum();
            let need = u32::from(i.number_of_packets) * super::iso::ISO_DESC_SIZE;
            if desc_bytes < need {
                return Err(BadRequest::IsoDescTooSmall {
                    number_of_packets: i.number_of_packets,
                    desc_bytes,
                });
            }
        }

        Ok(UrbRequest::Submit(Submit {
            id,
            pipe,
            xfer,
            segs,
            buffer_length,
            short_not_ok: flags & SHORT_NOT_OK != 0,
            ext_flags: flags & !SHORT_NOT_OK,
        }))
    }

    /// Writes the request into `raw`, every byte of it (unused union bytes and segments are
    /// zeroed). Cannot fail: `parse(emit(x)) == x` for every `x` parse can produce.
    pub fn emit(&self, raw: &mut RawUrbRequest) {
        *raw = RawUrbRequest::new_zeroed();
        match self {
            UrbRequest::Unlink(u) => {
                raw.id.set(u.id);
                raw.pipe.set(u.pipe.with_unlink().0);
                raw.set_unlink(RawUnlink {
                    unlink_id: u.victim.into(),
                    pad: Default::default(),
                });
            }
            UrbRequest::Submit(s) => {
                raw.id.set(s.id);
                raw.pipe.set(s.pipe.without_unlink().0);
                let nr_data = s.nr_buffer_segs();
                raw.nr_buffer_segs.set(u16::try_from(nr_data).unwrap_or(0));
                let flags = s.ext_flags | if s.short_not_ok { SHORT_NOT_OK } else { 0 };
                raw.transfer_flags.set(flags);
                // 65536 becomes 0 on the wire, which parse reads back from the segments.
                raw.buffer_length.set((s.buffer_length & 0xffff) as u16);
                match s.xfer {
                    Transfer::Ctrl { setup } => raw.u = setup,
                    Transfer::Int { interval } => raw.set_intr(RawIntr {
                        interval: interval.into(),
                        pad: Default::default(),
                    }),
                    Transfer::Isoc(i) => raw.set_isoc(RawIsoc {
                        interval: i.interval.into(),
                        start_frame: i.start_frame.into(),
                        number_of_packets: i.number_of_packets.into(),
                        nr_frame_desc_segs: i.nr_frame_desc_segs.into(),
                    }),
                    Transfer::Bulk => {}
                }
                for (dst, src) in raw.seg.iter_mut().zip(s.segs.as_slice()) {
                    *dst = RawSeg {
                        gref: src.gref.into(),
                        offset: src.offset.into(),
                        length: src.length.into(),
                    };
                }
            }
        }
    }

    /// [`UrbRequest::emit`] into a fresh raw request.
    pub fn to_raw(&self) -> RawUrbRequest {
        let mut raw = RawUrbRequest::new_zeroed();
        self.emit(&mut raw);
        raw
    }
}

/// Largest transfer one request can describe: 16 full pages.
pub const MAX_BUFFER: u32 = (MAX_SEGMENTS_PER_REQUEST * PAGE_SIZE) as u32;

fn parse_unlink(
    raw: &RawUrbRequest,
    id: u16,
    pipe: Pipe,
    nr_buffer_segs: u16,
) -> Result<UrbRequest, BadRequest> {
    if nr_buffer_segs != 0 {
        return Err(BadRequest::UnlinkWithSegments { nr_buffer_segs });
    }
    let victim = raw.unlink().unlink_id.get();
    if victim == id {
        return Err(BadRequest::UnlinkSelf { id });
    }
    Ok(UrbRequest::Unlink(Unlink { id, pipe, victim }))
}

#[cfg(test)]
mod tests;
