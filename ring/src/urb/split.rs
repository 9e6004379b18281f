//! Cutting one large bulk transfer into usbif requests and putting its result back together.
//!
//! One usbif request holds at most 16 page segments and 65535 bytes (`buffer_length` is a
//! u16), while a USB/IP client hands over transfers of any size (vhci_hcd does
//! scatter-gather). DESIGN.md contract 6 and seed 001 set the rules, which are usbfs's
//! `BULK_CONTINUATION` semantics:
//!
//! - only bulk transfers are split, and only at multiples of the endpoint's
//!   `wMaxPacketSize`, so every piece but the last ends on a packet boundary and the device
//!   sees the same packets as for one big transfer;
//! - pieces are issued in order; a short or failed piece ends the whole transfer, the
//!   pieces after it are cancelled and their results ignored;
//! - the client sees one completion whose length is the sum up to and including the first
//!   short or failed piece;
//! - separate client transfers are never chained into one request.
//!
//! The segment count of a piece depends on where it starts in its first page, so a
//! transfer is described by the offset of its buffer in its first page, and every count
//! here is exact for that layout.

use crate::wire::{Status, XferType, MAX_SEGMENTS_PER_REQUEST, PAGE_SIZE};

use super::UrbResult;

/// Page size as the u32/u64 arithmetic below uses it.
const PAGE: u64 = PAGE_SIZE as u64;

/// Status a transfer gets when it is too large for one request and may not be split
/// (control, interrupt, isochronous, or a bulk endpoint whose packets do not fit).
///
/// Linux would say -EMSGSIZE ("too large for the host controller"), which usbif cannot
/// carry; -EINVAL is the usbif code for a request refused as malformed, and unlike
/// -EOVERFLOW it does not claim the device babbled.
pub const TOO_LARGE: Status = Status::Inval;

/// How large one request may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Page segments per request (`USBIF_MAX_SEGMENTS_PER_REQUEST`).
    pub max_segments: u32,
    /// Bytes per request (`buffer_length` is a u16).
    pub max_len: u32,
}

impl Limits {
    /// Stock usbif: 16 segments, 65535 bytes.
    pub const STOCK: Limits = Limits {
        max_segments: MAX_SEGMENTS_PER_REQUEST as u32,
        max_len: u16::MAX as u32,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::STOCK
    }
}

/// Page segments a buffer of `len` bytes starting at `page_offset` in its first page covers.
pub fn seg_count(page_offset: u16, len: u32) -> u32 {
    if len == 0 {
        return 0;
    }
    let span = u64::from(page_offset) % PAGE + u64::from(len);
    u32::try_from(span.div_ceil(PAGE)).unwrap_or(u32::MAX)
}

/// One page's part of a buffer, as a usbif segment describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegSpan {
    /// Page index counted from the buffer's first page.
    pub page: u32,
    /// Offset in that page.
    pub offset: u16,
    /// Bytes in that page, 1..=4096.
    pub len: u16,
}

/// The segments of a buffer of `len` bytes starting at `page_offset`, in order; exactly
/// [`seg_count`] of them.
pub fn segments(page_offset: u16, len: u32) -> impl Iterator<Item = SegSpan> {
    let first = u64::from(page_offset) % PAGE;
    let end = first + u64::from(len);
    (0..seg_count(page_offset, len)).map(move |page| {
        let start = (u64::from(page) * PAGE).max(first);
        let stop = ((u64::from(page) + 1) * PAGE).min(end);
        SegSpan {
            page,
            offset: u16::try_from(start % PAGE).unwrap_or(0),
            len: u16::try_from(stop - start).unwrap_or(0),
        }
    })
}

/// A client transfer as the splitter needs to know it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Transfer length in bytes.
    pub len: u32,
    /// Offset of the buffer in its first page.
    pub page_offset: u16,
    /// The endpoint's `wMaxPacketSize` (only used when a bulk transfer must be split).
    pub max_packet: u16,
    /// Segments the request needs besides data (isochronous frame descriptors).
    pub extra_segs: u32,
}

/// One request's share of a transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// Offset in the transfer.
    pub offset: u32,
    /// Length, at most [`Limits::max_len`]; a multiple of `wMaxPacketSize` unless `last`.
    pub len: u32,
    /// Offset of the piece's first byte in its page.
    pub page_offset: u16,
    /// Data segments the piece covers.
    pub segs: u32,
    /// The final piece of the transfer.
    pub last: bool,
}

/// Why a transfer cannot be issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    /// Larger than one request, and only bulk transfers may be split.
    #[error("a {xfer:?} transfer of {len} bytes does not fit one request")]
    NotSplittable {
        /// Its type.
        xfer: XferType,
        /// Its length.
        len: u32,
    },
    /// A bulk transfer to split, but the endpoint's `wMaxPacketSize` is 0.
    #[error("wMaxPacketSize is 0")]
    ZeroMaxPacket,
    /// Not even one packet fits a request.
    #[error("wMaxPacketSize {max_packet} does not fit one request of {room} bytes")]
    PacketTooLarge {
        /// The endpoint's packet size.
        max_packet: u16,
        /// Bytes the worst-placed request can hold.
        room: u32,
    },
}

impl SplitError {
    /// What the client is told ([`TOO_LARGE`]).
    pub const fn status(&self) -> Status {
        TOO_LARGE
    }
}

/// The first piece that ended the transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct End {
    offset: u32,
    status: Status,
    actual: u32,
}

/// What a piece's answer did to its transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing changed: the piece was full, or an earlier piece had already ended it.
    Continue,
    /// The piece was short or failed and is now the first such piece: cancel every piece
    /// starting after `after` that is still in flight, and issue no more.
    Ended {
        /// Offset of the piece that ended the transfer.
        after: u32,
    },
}

/// One client transfer: its pieces, issued in order, and its result.
#[derive(Clone, Debug)]
pub struct Split {
    total: u32,
    page_offset: u16,
    max_packet: u32,
    room_segs: u32,
    max_len: u32,
    /// Offset of the next piece to issue.
    next: u32,
    issued_any: bool,
    end: Option<End>,
    aborted: Option<Status>,
    /// Isochronous fields of the (single) piece's answer.
    start_frame: u16,
    error_count: u32,
}

impl Split {
    /// Plans a transfer of type `xfer`. It fits one request, or it is bulk and splits.
    pub fn new(xfer: XferType, shape: Shape, limits: Limits) -> Result<Self, SplitError> {
        let room_segs = limits.max_segments.saturating_sub(shape.extra_segs);
        let split = Split {
            total: shape.len,
            page_offset: shape.page_offset,
            max_packet: u32::from(shape.max_packet),
            room_segs,
            max_len: limits.max_len,
            next: 0,
            issued_any: false,
            end: None,
            aborted: None,
            start_frame: 0,
            error_count: 0,
        };
        if split.is_single() {
            return Ok(split);
        }
        if xfer != XferType::Bulk {
            return Err(SplitError::NotSplittable {
                xfer,
                len: shape.len,
            });
        }
        if shape.max_packet == 0 {
            return Err(SplitError::ZeroMaxPacket);
        }
        // The least room any piece can have: its start may sit at the end of a page.
        let worst = u64::from(room_segs) * PAGE;
        let room = u32::try_from(worst.saturating_sub(PAGE - 1))
            .unwrap_or(u32::MAX)
            .min(limits.max_len);
        if u32::from(shape.max_packet) > room {
            return Err(SplitError::PacketTooLarge {
                max_packet: shape.max_packet,
                room,
            });
        }
        Ok(split)
    }

    /// The whole transfer fits one request.
    pub fn is_single(&self) -> bool {
        self.total <= self.max_len && seg_count(self.page_offset, self.total) <= self.room_segs
    }

    /// Total length the client asked for.
    pub fn total(&self) -> u32 {
        self.total
    }

    /// Whether another piece is to be issued.
    pub fn has_next(&self) -> bool {
        self.end.is_none() && self.aborted.is_none() && (self.next < self.total || !self.issued_any)
    }

    /// The next piece, in order; `None` once all are issued or the transfer ended.
    pub fn next_piece(&mut self) -> Option<Piece> {
        if !self.has_next() {
            return None;
        }
        let offset = self.next;
        let page_offset = self.page_offset_at(offset);
        let remaining = self.total - offset;
        let by_segs = (u64::from(self.room_segs) * PAGE).saturating_sub(u64::from(page_offset));
        let room = u32::try_from(by_segs).unwrap_or(u32::MAX).min(self.max_len);
        let (len, last) = if remaining <= room {
            (remaining, true)
        } else {
            // `new` checked that a packet fits even the worst-placed piece.
            let packets = room / self.max_packet.max(1);
            (packets * self.max_packet.max(1), false)
        };
        self.next = offset + len;
        self.issued_any = true;
        Some(Piece {
            offset,
            len,
            page_offset,
            segs: seg_count(page_offset, len),
            last,
        })
    }

    fn page_offset_at(&self, offset: u32) -> u16 {
        let at = (u64::from(self.page_offset) + u64::from(offset)) % PAGE;
        u16::try_from(at).unwrap_or(0)
    }

    /// Records the answer to the piece `piece` issued by [`Split::next_piece`].
    pub fn piece_done(&mut self, piece: Piece, result: UrbResult) -> Verdict {
        let actual = result.actual_length.min(piece.len);
        if piece.offset == 0 {
            self.start_frame = result.start_frame;
            self.error_count = result.error_count;
        }
        let full = result.status.is_ok() && actual == piece.len;
        if full {
            return Verdict::Continue;
        }
        if self.end.is_some_and(|e| e.offset < piece.offset) {
            return Verdict::Continue;
        }
        self.end = Some(End {
            offset: piece.offset,
            status: result.status,
            actual,
        });
        Verdict::Ended {
            after: piece.offset,
        }
    }

    /// Stops issuing (the transfer was unlinked, or its device went away); `status` is
    /// the result unless an answered piece had already ended the transfer.
    pub fn abort(&mut self, status: Status) {
        if self.aborted.is_none() {
            self.aborted = Some(status);
        }
    }

    /// The transfer's result, once every issued piece is answered: the status of the first
    /// short or failed piece and the bytes up to its end; else, if it was aborted before
    /// every piece was issued, the abort status and the bytes of the (full) pieces issued;
    /// else success with the whole length (an abort that came too late changes nothing).
    pub fn result(&self) -> UrbResult {
        let (status, actual_length) = match (self.end, self.aborted) {
            (Some(e), _) => (e.status, e.offset.saturating_add(e.actual)),
            // Cut short: only the pieces issued were transferred (and they were full).
            (None, Some(s)) if self.next < self.total || !self.issued_any => (s, self.next),
            _ => (Status::Ok, self.total),
        };
        UrbResult {
            status,
            actual_length,
            start_frame: self.start_frame,
            error_count: self.error_count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(len: u32, page_offset: u16, max_packet: u16) -> Split {
        let shape = Shape {
            len,
            page_offset,
            max_packet,
            extra_segs: 0,
        };
        Split::new(XferType::Bulk, shape, Limits::STOCK).unwrap()
    }

    fn pieces(s: &mut Split) -> Vec<Piece> {
        std::iter::from_fn(|| s.next_piece()).collect()
    }

    #[test]
    fn seg_count_is_exact() {
        assert_eq!(seg_count(0, 0), 0);
        assert_eq!(seg_count(0, 1), 1);
        assert_eq!(seg_count(0, 4096), 1);
        assert_eq!(seg_count(1, 4096), 2);
        assert_eq!(seg_count(4095, 2), 2);
        assert_eq!(seg_count(0, 65536), 16);
        assert_eq!(seg_count(100, 65535), 17);
    }

    #[test]
    fn segments_cover_the_buffer() {
        let segs: Vec<_> = segments(4000, 200).collect();
        assert_eq!(
            segs,
            vec![
                SegSpan {
                    page: 0,
                    offset: 4000,
                    len: 96
                },
                SegSpan {
                    page: 1,
                    offset: 0,
                    len: 104
                }
            ]
        );
        assert_eq!(segments(0, 0).count(), 0);
    }

    #[test]
    fn small_transfer_is_one_piece() {
        let mut s = bulk(13, 0, 512);
        assert!(s.is_single());
        let p = pieces(&mut s);
        assert_eq!(p.len(), 1);
        assert!(p[0].last);
        assert_eq!((p[0].len, p[0].segs), (13, 1));
    }

    #[test]
    fn zero_length_transfer_is_one_empty_piece() {
        let mut s = bulk(0, 0, 512);
        let p = pieces(&mut s);
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].len, p[0].segs, p[0].last), (0, 0, true));
    }

    #[test]
    fn split_at_packet_multiples_within_16_pages() {
        // 31.5 KiB + 8 pages from seed 001, 1024-byte packets, page-aligned buffer.
        let mut s = bulk(200_000, 0, 1024);
        let p = pieces(&mut s);
        assert_eq!(p.iter().map(|p| p.len).sum::<u32>(), 200_000);
        for w in p.windows(2) {
            assert_eq!(w[0].offset + w[0].len, w[1].offset);
        }
        for piece in &p[..p.len() - 1] {
            assert_eq!(piece.len % 1024, 0);
            assert!(piece.len <= 65535 && piece.segs <= 16);
            assert!(!piece.last);
        }
        assert!(p.last().unwrap().last);
        assert_eq!(p[0].len, 64512);
    }

    #[test]
    fn unaligned_buffer_costs_a_segment() {
        // Page-aligned, the first piece is 63 packets of 1024; starting at 2048 in its page
        // 63 packets would need 17 pages, so it is 62.
        assert_eq!(bulk(100_000, 0, 1024).next_piece().unwrap().len, 63 * 1024);
        let mut s = bulk(100_000, 2048, 1024);
        let p = s.next_piece().unwrap();
        assert_eq!((p.len, p.segs), (62 * 1024, 16));
        let q = s.next_piece().unwrap();
        assert_eq!(q.page_offset, ((2048 + p.len) % 4096) as u16);
        assert_eq!((q.offset, q.len), (p.len, 100_000 - p.len));
    }

    #[test]
    fn short_piece_ends_transfer_with_summed_length() {
        let mut s = bulk(150_000, 0, 512);
        let a = s.next_piece().unwrap();
        let b = s.next_piece().unwrap();
        assert_eq!(s.piece_done(a, UrbResult::ok(a.len)), Verdict::Continue);
        assert_eq!(
            s.piece_done(b, UrbResult::ok(100)),
            Verdict::Ended { after: b.offset }
        );
        assert!(!s.has_next());
        assert_eq!(s.next_piece(), None);
        assert_eq!(s.result(), UrbResult::ok(a.len + 100));
    }

    #[test]
    fn earlier_failure_wins_over_later_short() {
        let mut s = bulk(200_000, 0, 512);
        let a = s.next_piece().unwrap();
        let b = s.next_piece().unwrap();
        assert_eq!(
            s.piece_done(b, UrbResult::ok(7)),
            Verdict::Ended { after: b.offset }
        );
        let mut fail = UrbResult::status(Status::IoError);
        fail.actual_length = 10;
        assert_eq!(s.piece_done(a, fail), Verdict::Ended { after: 0 });
        assert_eq!(s.result().status, Status::IoError);
        assert_eq!(s.result().actual_length, 10);
    }

    #[test]
    fn backend_cannot_inflate_length() {
        let mut s = bulk(10, 0, 512);
        let a = s.next_piece().unwrap();
        s.piece_done(a, UrbResult::ok(1_000_000));
        assert_eq!(s.result(), UrbResult::ok(10));
    }

    #[test]
    fn abort_reports_issued_bytes() {
        let mut s = bulk(200_000, 0, 512);
        let a = s.next_piece().unwrap();
        s.piece_done(a, UrbResult::ok(a.len));
        s.abort(Status::IoError);
        assert!(!s.has_next());
        assert_eq!(s.result().actual_length, a.len);
        assert_eq!(s.result().status, Status::IoError);
    }

    #[test]
    fn control_interrupt_iso_never_split() {
        let shape = Shape {
            len: 70_000,
            page_offset: 0,
            max_packet: 64,
            extra_segs: 0,
        };
        for xfer in [XferType::Ctrl, XferType::Int, XferType::Isoc] {
            let e = Split::new(xfer, shape, Limits::STOCK).unwrap_err();
            assert_eq!(e, SplitError::NotSplittable { xfer, len: 70_000 });
            assert_eq!(e.status(), TOO_LARGE);
        }
        // 65535 control bytes at page offset 100 need 17 pages: also refused.
        let odd = Shape {
            len: 65535,
            page_offset: 100,
            ..shape
        };
        assert!(Split::new(XferType::Ctrl, odd, Limits::STOCK).is_err());
        // ISO frame descriptors share the 16 segments.
        let iso = Shape {
            len: 15 * 4096,
            extra_segs: 2,
            ..shape
        };
        assert!(Split::new(XferType::Isoc, iso, Limits::STOCK).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
        ))]

        /// Pieces tile the transfer in order, each fits one request exactly as counted,
        /// all but the last end on a packet boundary, and `segments` agrees with the count.
        #[test]
        fn pieces_tile_the_transfer(
            len in 0u32..600_000,
            page_offset in 0u16..4096,
            max_packet in proptest::sample::select(vec![8u16, 64, 512, 1024, 1023]),
            max_segments in 1u32..=16,
        ) {
            let shape = Shape { len, page_offset, max_packet, extra_segs: 0 };
            let limits = Limits { max_segments, max_len: 65535 };
            let Ok(mut s) = Split::new(XferType::Bulk, shape, limits) else {
                // Only when not even one packet fits the worst-placed piece.
                proptest::prop_assert!(u32::from(max_packet) > max_segments * 4096 - 4095);
                return Ok(());
            };
            let p = pieces(&mut s);
            proptest::prop_assert!(!p.is_empty());
            let mut next = 0;
            for (i, piece) in p.iter().enumerate() {
                let last = i + 1 == p.len();
                proptest::prop_assert_eq!(piece.offset, next);
                proptest::prop_assert_eq!(piece.last, last);
                proptest::prop_assert!(piece.len <= 65535 && piece.segs <= max_segments);
                proptest::prop_assert_eq!(piece.segs, seg_count(piece.page_offset, piece.len));
                let spans: Vec<_> = segments(piece.page_offset, piece.len).collect();
                proptest::prop_assert_eq!(spans.len(), piece.segs as usize);
                proptest::prop_assert_eq!(spans.iter().map(|x| u32::from(x.len)).sum::<u32>(), piece.len);
                if !last {
                    proptest::prop_assert!(piece.len > 0 && piece.len % u32::from(max_packet) == 0);
                }
                next += piece.len;
            }
            proptest::prop_assert_eq!(next, len);
        }
    }

    #[test]
    fn bulk_needs_a_packet_size_to_split() {
        let shape = Shape {
            len: 70_000,
            page_offset: 0,
            max_packet: 0,
            extra_segs: 0,
        };
        assert_eq!(
            Split::new(XferType::Bulk, shape, Limits::STOCK).unwrap_err(),
            SplitError::ZeroMaxPacket
        );
        let tiny = Limits {
            max_segments: 1,
            max_len: 65535,
        };
        let shape = Shape {
            max_packet: 512,
            ..shape
        };
        assert!(matches!(
            Split::new(XferType::Bulk, shape, tiny),
            Err(SplitError::PacketTooLarge { .. })
        ));
    }
}
