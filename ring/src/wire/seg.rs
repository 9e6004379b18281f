//! Grant segments of a request: a fixed-capacity list that only holds in-page pieces.

use core::fmt;

use super::urb::BadRequest;
use super::{MAX_SEGMENTS_PER_REQUEST, PAGE_SIZE};

/// One checked segment: `offset + length <= PAGE_SIZE` and `length > 0`.
///
/// Zero-length segments are refused: Linux xen-hcd never sends one (it maps exactly the
/// pages a non-empty buffer covers, and no pages for an empty one), and accepting them
/// would only add a case every consumer of a segment list has to think about.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Seg {
    /// Grant reference of the page.
    pub gref: u32,
    /// Start of the piece inside the page.
    pub offset: u16,
    /// Length of the piece, 1..=4096.
    pub length: u16,
}

impl Seg {
    /// Checks a segment found at `index` of a request.
    pub fn new(index: usize, gref: u32, offset: u16, length: u16) -> Result<Self, BadRequest> {
        let end = u32::from(offset) + u32::from(length);
        if length == 0 {
            return Err(BadRequest::EmptySegment { index });
        }
        if end > PAGE_SIZE as u32 {
            return Err(BadRequest::SegmentPastPage { index, end });
        }
        Ok(Seg {
            gref,
            offset,
            length,
        })
    }

    /// One past the last byte of the piece inside its page (at most 4096).
    pub const fn end(self) -> u32 {
        self.offset as u32 + self.length as u32
    }
}

/// Up to [`MAX_SEGMENTS_PER_REQUEST`] segments, stored inline (no allocation). For an
/// isochronous request the data segments come first, then the frame-descriptor segments.
#[derive(Clone, Copy, Default)]
pub struct Segments {
    segs: [Seg; MAX_SEGMENTS_PER_REQUEST],
    len: u8,
}

impl Segments {
    /// An empty list.
    pub const fn new() -> Self {
        Segments {
            segs: [Seg {
                gref: 0,
                offset: 0,
                length: 0,
            }; MAX_SEGMENTS_PER_REQUEST],
            len: 0,
        }
    }

    /// Builds a list from checked segments; fails past 16.
    pub fn from_slice(segs: &[Seg]) -> Result<Self, BadRequest> {
        let mut out = Segments::new();
        for s in segs {
            out.push(*s)?;
        }
        Ok(out)
    }

    /// Appends a segment; fails with [`BadRequest::TooManySegments`] when full.
    pub fn push(&mut self, seg: Seg) -> Result<(), BadRequest> {
        let slot = self
            .segs
            .get_mut(usize::from(self.len))
            .ok_or(BadRequest::TooManySegments {
                nr_segs: u16::from(self.len) + 1,
            })?;
        *slot = seg;
        self.len += 1;
        Ok(())
    }

    /// The live segments.
    pub fn as_slice(&self) -> &[Seg] {
        self.segs.get(..usize::from(self.len)).unwrap_or(&[])
    }

    /// Number of segments.
    pub const fn len(&self) -> usize {
        self.len as usize
    }

    /// True if there are no segments.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sum of the segment lengths (at most 16 × 4096 = 65536).
    pub fn total_len(&self) -> u32 {
        self.as_slice().iter().map(|s| u32::from(s.length)).sum()
    }

    /// The first `n` segments (all of them if `n` is larger).
    pub fn head(&self, n: usize) -> &[Seg] {
        let s = self.as_slice();
        s.get(..n).unwrap_or(s)
    }

    /// The segments after the first `n` (empty if `n` is larger).
    pub fn tail(&self, n: usize) -> &[Seg] {
        self.as_slice().get(n..).unwrap_or(&[])
    }
}

impl PartialEq for Segments {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Segments {}

impl fmt::Debug for Segments {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

impl<'a> IntoIterator for &'a Segments {
    type Item = &'a Seg;
    type IntoIter = core::slice::Iter<'a, Seg>;
    fn into_iter(self) -> Self::IntoIter {
        self.as_slice().iter()
    }
}
