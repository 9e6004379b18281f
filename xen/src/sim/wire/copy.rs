//! The grant-copy messages: LOCAL_REGISTER, LOCAL_FORGET and COPY.
//!
//! | op | request body | reply body | fds |
//! |----|--------------|------------|-----|
//! | 14 LOCAL_REGISTER | pages | id | the request carries the local memfd |
//! | 15 LOCAL_FORGET | id | *none* (one-way) | — |
//! | 16 COPY | domid, local id, count, `RawCopySeg[count]` | count, `i16 status[count]` | — |
//!
//! A COPY status is Xen's `GNTST_*` value for that segment (0 done).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{bounded, domid, end, len32, push_u32s, take, BadMessage, Reply, Request, Three};
use crate::copy::{CopyDir, MAX_COPY_SEGS};
use crate::{DomId, GrantRef};

/// The most pages one LOCAL_REGISTER names (64 MiB; local offsets then fit 32 bits).
pub const MAX_LOCAL_PAGES: usize = 16 * 1024;

/// One segment of a COPY request as it travels (16 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct RawCopySeg {
    /// Grant reference.
    pub gref: u32,
    /// Offset in the granted page.
    pub offset: u16,
    /// Bytes.
    pub len: u16,
    /// Offset in the registered local memory.
    pub local: u32,
    /// Bit 0: to the grant (otherwise from it); no other bit may be set.
    pub flags: u32,
}

/// One parsed COPY segment. Bounds are the broker's to check (a segment out of range gets
/// its own status), only the encoding is checked here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireSeg {
    /// The granted page.
    pub gref: GrantRef,
    /// Offset in it.
    pub offset: u16,
    /// Bytes to copy.
    pub len: u16,
    /// Offset in the local memory.
    pub local: u32,
    /// Which way.
    pub dir: CopyDir,
}

const TO_GRANT: u32 = 1;

impl WireSeg {
    fn raw(&self) -> RawCopySeg {
        RawCopySeg {
            gref: self.gref.0,
            offset: self.offset,
            len: self.len,
            local: self.local,
            flags: match self.dir {
                CopyDir::FromGrant => 0,
                CopyDir::ToGrant => TO_GRANT,
            },
        }
    }

    fn parse(r: RawCopySeg) -> Result<WireSeg, BadMessage> {
        let dir = match r.flags {
            0 => CopyDir::FromGrant,
            TO_GRANT => CopyDir::ToGrant,
            _ => return Err(BadMessage::BadField),
        };
        Ok(WireSeg {
            gref: GrantRef(r.gref),
            offset: r.offset,
            len: r.len,
            local: r.local,
            dir,
        })
    }
}

/// LOCAL_REGISTER body: `pages` (1..=[`MAX_LOCAL_PAGES`]).
pub(super) fn parse_register(body: &[u8]) -> Result<Request, BadMessage> {
    let (pages, rest) = take::<u32>(body)?;
    end(rest)?;
    bounded(pages, MAX_LOCAL_PAGES, true)?;
    Ok(Request::LocalRegister { pages })
}

/// COPY body: `domid, local, count` then the segments (count 1..=[`MAX_COPY_SEGS`]).
pub(super) fn parse_copy(body: &[u8]) -> Result<Request, BadMessage> {
    let (t, mut rest) = take::<Three>(body)?;
    let n = bounded(t.c, MAX_COPY_SEGS, true)?;
    let mut segs = Vec::with_capacity(n);
    for _ in 0..n {
        let (r, more) = take::<RawCopySeg>(rest)?;
        rest = more;
        segs.push(WireSeg::parse(r)?);
    }
    end(rest)?;
    Ok(Request::Copy {
        domid: domid(t.a)?,
        local: t.b,
        segs,
    })
}

pub(super) fn emit_copy(out: &mut Vec<u8>, domid: DomId, local: u32, segs: &[WireSeg]) {
    push_u32s(out, [u32::from(domid.0), local, len32(segs.len())]);
    for s in segs {
        out.extend_from_slice(s.raw().as_bytes());
    }
}

/// COPY reply body: `count, i16 status[count]`.
pub(super) fn parse_copied(body: &[u8]) -> Result<Reply, BadMessage> {
    let (n, mut rest) = take::<u32>(body)?;
    let n = bounded(n, MAX_COPY_SEGS, true)?;
    let mut statuses = Vec::with_capacity(n);
    for _ in 0..n {
        let (s, more) = take::<i16>(rest)?;
        rest = more;
        statuses.push(s);
    }
    end(rest)?;
    Ok(Reply::Copied { statuses })
}

pub(super) fn emit_copied(out: &mut Vec<u8>, statuses: &[i16]) {
    push_u32s(out, [len32(statuses.len())]);
    for s in statuses {
        out.extend_from_slice(s.as_bytes());
    }
}
