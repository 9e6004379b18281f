//! Building usbif requests from the state machine's pushes: bounce OUT data and iso frame
//! descriptors into the request id's pool pages (descriptors after the data's pages);
//! copying IN data and iso results back.

use pvusb_ring::urb::frontend::{Frontend, Handle, Request, RequestKind};
use pvusb_ring::urb::split::{segments, Piece};
use pvusb_ring::wire::{
    IsoPacket as RingIsoPacket, IsoPacketResult, Isoc, RawIsoPacketDesc, RawUrbRequest, Seg,
    Segments, Submit, Transfer, Unlink, UrbRequest, ISO_DESC_SIZE, PAGE_SIZE, SHORT_NOT_OK,
};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

use super::EngineError;
use crate::pool::{Grants, PoolError};
use crate::usbip::IsoPacket;

/// What kind of transfer a payload is, with its type-specific fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Control, with its SETUP packet.
    Ctrl {
        /// The SETUP packet.
        setup: [u8; 8],
    },
    /// Interrupt.
    Int {
        /// The client's interval, passed through.
        interval: u16,
    },
    /// Bulk.
    Bulk,
    /// Isochronous.
    Isoc {
        /// The client's interval.
        interval: u16,
        /// The client's start frame.
        start_frame: u16,
        /// Packets; the results are filled in on completion.
        packets: Vec<IsoPacket>,
    },
}

/// A client transfer's buffers while the engine holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payload {
    /// Device-to-host.
    pub dir_in: bool,
    /// OUT data, or the IN buffer (transfer length, filled as pieces complete).
    pub buf: Vec<u8>,
    /// Type-specific fields.
    pub kind: Kind,
}

/// What a request id in flight carries.
#[derive(Clone, Copy, Debug)]
pub(super) enum Sent {
    Piece { handle: Handle, piece: Piece },
    Unlink,
}

fn bug(id: u16) -> EngineError {
    EngineError::Pool(PoolError::NoPage { id, page: 0 })
}

/// The raw request for `req`, with data and descriptors copied into the pool.
pub(super) fn build(
    grants: &Grants,
    fe: &mut Frontend<Payload>,
    req: &Request,
) -> Result<(RawUrbRequest, Sent), EngineError> {
    let id = req.id;
    let (handle, piece) = match req.kind {
        RequestKind::Unlink { victim } => {
            let raw = UrbRequest::Unlink(Unlink {
                id,
                pipe: req.pipe.without_unlink(),
                victim,
            })
            .to_raw();
            return Ok((raw, Sent::Unlink));
        }
        RequestKind::Submit { handle, piece, .. } => (handle, piece),
    };
    let payload = fe.payload_mut(handle).ok_or_else(|| bug(id))?;
    let mut segs = Segments::new();
    let mut done: usize = 0;
    let start = usize::try_from(piece.offset).map_err(|_| bug(id))?;
    for span in segments(piece.page_offset, piece.len) {
        let page = usize::try_from(span.page).map_err(|_| bug(id))?;
        let gref = grants.gref(id, page)?;
        let len = usize::from(span.len);
        if !payload.dir_in {
            let from = start + done;
            let chunk = payload.buf.get(from..from + len).ok_or_else(|| bug(id))?;
            grants.write(id, page, usize::from(span.offset), chunk)?;
        }
        done += len;
        let index = segs.len();
        segs.push(Seg::new(index, gref.0, span.offset, span.len).map_err(|_| bug(id))?)
            .map_err(|_| bug(id))?;
    }
    let xfer = match &payload.kind {
        Kind::Ctrl { setup } => Transfer::Ctrl { setup: *setup },
        Kind::Int { interval } => Transfer::Int {
            interval: *interval,
        },
        Kind::Bulk => Transfer::Bulk,
        Kind::Isoc {
            interval,
            start_frame,
            packets,
        } => {
            let first = segs.len();
            let desc_segs = write_iso_descs(grants, id, first, packets, &mut segs)?;
            Transfer::Isoc(Isoc {
                interval: *interval,
                start_frame: *start_frame,
                number_of_packets: u16::try_from(packets.len()).map_err(|_| bug(id))?,
                nr_frame_desc_segs: desc_segs,
            })
        }
    };
    let flags = req.kind.transfer_flags();
    let raw = UrbRequest::Submit(Submit {
        id,
        pipe: req.pipe,
        xfer,
        segs,
        buffer_length: piece.len,
        short_not_ok: flags & SHORT_NOT_OK != 0,
        ext_flags: flags & !SHORT_NOT_OK,
    })
    .to_raw();
    Ok((raw, Sent::Piece { handle, piece }))
}

/// Writes the Linux `usb_iso_packet_descriptor` array into the pages after the data
/// segments (writable pool) and appends their segments. Returns their count.
fn write_iso_descs(
    grants: &Grants,
    id: u16,
    first: usize,
    packets: &[IsoPacket],
    segs: &mut Segments,
) -> Result<u16, EngineError> {
    let mut bytes = Vec::with_capacity(packets.len() * ISO_DESC_SIZE as usize);
    for p in packets {
        let mut raw = RawIsoPacketDesc::new_zeroed();
        RingIsoPacket {
            offset: p.offset,
            length: p.length,
        }
        .emit(&mut raw);
        bytes.extend_from_slice(raw.as_bytes());
    }
    let mut n: u16 = 0;
    for (k, chunk) in bytes.chunks(PAGE_SIZE).enumerate() {
        let page = first + k;
        grants.write(id, page, 0, chunk)?;
        let gref = grants.gref(id, page)?;
        let len = u16::try_from(chunk.len()).map_err(|_| bug(id))?;
        segs.push(Seg::new(page, gref.0, 0, len).map_err(|_| bug(id))?)
            .map_err(|_| bug(id))?;
        n += 1;
    }
    Ok(n)
}

/// Copies the answered piece's IN data (`actual` bytes) and, for iso, the packet results
/// out of the pool into the payload.
pub(super) fn copy_back(
    grants: &Grants,
    id: u16,
    piece: &Piece,
    actual: u32,
    payload: &mut Payload,
) -> Result<(), EngineError> {
    let nsegs = usize::try_from(piece.segs).map_err(|_| bug(id))?;
    // Iso IN data sits at each packet's offset, so the whole buffer comes back.
    let actual = if matches!(payload.kind, Kind::Isoc { .. }) {
        piece.len
    } else {
        actual
    };
    if payload.dir_in && actual > 0 {
        let start = usize::try_from(piece.offset).map_err(|_| bug(id))?;
        let mut left = usize::try_from(actual).map_err(|_| bug(id))?;
        let mut at = start;
        for span in segments(piece.page_offset, piece.len) {
            if left == 0 {
                break;
            }
            let page = usize::try_from(span.page).map_err(|_| bug(id))?;
            let n = usize::from(span.len).min(left);
            let dst = payload.buf.get_mut(at..at + n).ok_or_else(|| bug(id))?;
            grants.read(id, page, usize::from(span.offset), dst)?;
            at += n;
            left -= n;
        }
    }
    if let Kind::Isoc { packets, .. } = &mut payload.kind {
        let bytes_len = packets.len() * ISO_DESC_SIZE as usize;
        let mut bytes = vec![0u8; bytes_len];
        for (k, chunk) in bytes.chunks_mut(PAGE_SIZE).enumerate() {
            grants.read(id, nsegs + k, 0, chunk)?;
        }
        for (i, (p, raw)) in packets
            .iter_mut()
            .zip(bytes.chunks_exact(ISO_DESC_SIZE as usize))
            .enumerate()
        {
            let raw = RawIsoPacketDesc::read_from_bytes(raw).map_err(|_| bug(id))?;
            // A result claiming more than the packet asked for is the backend's error:
            // report the packet as failed rather than trusting its length.
            let r = IsoPacketResult::parse(&raw, i).unwrap_or(IsoPacketResult {
                actual_length: 0,
                status: -71,
            });
            p.actual_length = r.actual_length.min(p.length);
            p.status = r.status;
        }
    }
    Ok(())
}
