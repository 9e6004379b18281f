//! The MAP and FORGET messages: batches of mappings, and grant files named by serial.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{
    access, access_flags, bounded, count, domid, end, len32, push_u32s, take, u32s, BadMessage,
    Reply, Request, Status, Three, Two, MAX_BATCH, MAX_BATCH_PAGES, MAX_DEAD, MAX_FILES,
    MAX_FORGET,
};
use crate::{Access, DomId, GrantRef};

/// One mapping of a MAP request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapSpec {
    /// How to map.
    pub access: Access,
    /// The references, page by page.
    pub refs: Vec<GrantRef>,
}

/// A file the broker hands out: an allocation's memfd, through a writable or a read-only
/// file description.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileKey {
    /// The allocation's serial number (never reused while the broker runs).
    pub serial: u64,
    /// The file description's access.
    pub access: Access,
}

/// A file named in a MAP reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileRef {
    /// Which file.
    pub key: FileKey,
    /// Its fd is attached to this reply (the next one in order); otherwise the client holds
    /// it from an earlier reply.
    pub attached: bool,
}

/// One page of a MAP reply: which file of the reply, and which page of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct PageLoc {
    /// Index into the reply's files.
    pub file: u32,
    /// Page number inside that memfd.
    pub file_page: u32,
}

/// The outcome of one mapping of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapOutcome {
    /// Mapped: the broker counts it until UNMAP.
    Mapped { map_id: u32, pages: Vec<PageLoc> },
    /// Refused (never [`Status::Ok`]).
    Failed(Status),
}

/// A serial as its low and high 32-bit words.
fn serial_words(v: u64) -> [u32; 2] {
    // Both conversions are exact: each value fits in 32 bits.
    let lo = u32::try_from(v & u64::from(u32::MAX)).unwrap_or(u32::MAX);
    let hi = u32::try_from(v >> 32).unwrap_or(u32::MAX);
    [lo, hi]
}

fn serial(lo: u32, hi: u32) -> u64 {
    u64::from(lo) | (u64::from(hi) << 32)
}

/// A file key's flags word: bit 0 writable; `attached` adds bit 1.
fn file_flags(key: FileKey, attached: bool) -> u32 {
    access_flags(key.access) | if attached { 2 } else { 0 }
}

fn parse_file(t: Three, allow_attached: bool) -> Result<FileRef, BadMessage> {
    let attached = t.c & 2 != 0;
    if attached && !allow_attached {
        return Err(BadMessage::BadField);
    }
    Ok(FileRef {
        key: FileKey {
            serial: serial(t.a, t.b),
            access: access(t.c & !2)?,
        },
        attached,
    })
}

/// Parses a MAP request body: `domid, nmaps`, then per map `count, flags, refs[count]`.
pub(super) fn parse_request(body: &[u8]) -> Result<Request, BadMessage> {
    let (t, mut rest) = take::<Two>(body)?;
    let nmaps = bounded(t.b, MAX_BATCH, true)?;
    let mut maps = Vec::with_capacity(nmaps);
    let mut total = 0usize;
    for _ in 0..nmaps {
        let (m, r) = take::<Two>(rest)?;
        let n = count(m.a)?;
        total += n;
        if total > MAX_BATCH_PAGES {
            return Err(BadMessage::BadField);
        }
        let (refs, r) = u32s(r, n)?;
        rest = r;
        maps.push(MapSpec {
            access: access(m.b)?,
            refs: refs.into_iter().map(GrantRef).collect(),
        });
    }
    end(rest)?;
    Ok(Request::Map {
        domid: domid(t.a)?,
        maps,
    })
}

/// Parses a FORGET body: `count, {serial_lo, serial_hi, flags}[count]`.
pub(super) fn parse_forget(body: &[u8]) -> Result<Request, BadMessage> {
    let (n, mut rest) = take::<u32>(body)?;
    let n = bounded(n, MAX_FORGET, true)?;
    let mut files = Vec::with_capacity(n);
    for _ in 0..n {
        let (t, r) = take::<Three>(rest)?;
        rest = r;
        files.push(parse_file(t, false)?.key);
    }
    end(rest)?;
    Ok(Request::Forget { files })
}

pub(super) fn emit_request(out: &mut Vec<u8>, domid: DomId, maps: &[MapSpec]) {
    push_u32s(out, [u32::from(domid.0), len32(maps.len())]);
    for m in maps {
        push_u32s(out, [len32(m.refs.len()), access_flags(m.access)]);
        push_u32s(out, m.refs.iter().map(|r| r.0));
    }
}

pub(super) fn emit_forget(out: &mut Vec<u8>, files: &[FileKey]) {
    push_u32s(out, [len32(files.len())]);
    for &f in files {
        let [lo, hi] = serial_words(f.serial);
        push_u32s(out, [lo, hi, file_flags(f, false)]);
    }
}

pub(super) fn emit_reply(out: &mut Vec<u8>, files: &[FileRef], dead: &[u64], maps: &[MapOutcome]) {
    push_u32s(
        out,
        [len32(maps.len()), len32(files.len()), len32(dead.len())],
    );
    for f in files {
        let [lo, hi] = serial_words(f.key.serial);
        push_u32s(out, [lo, hi, file_flags(f.key, f.attached)]);
    }
    for &d in dead {
        push_u32s(out, serial_words(d));
    }
    for m in maps {
        match m {
            MapOutcome::Mapped { map_id, pages } => {
                push_u32s(out, [Status::Ok.to_wire(), *map_id, len32(pages.len())]);
                for p in pages {
                    out.extend_from_slice(p.as_bytes());
                }
            }
            MapOutcome::Failed(status) => push_u32s(out, [status.to_wire(), 0, 0]),
        }
    }
}

/// Parses a MAP reply body.
pub(super) fn parse_reply(body: &[u8]) -> Result<Reply, BadMessage> {
    let (t, mut rest) = take::<Three>(body)?;
    let nmaps = bounded(t.a, MAX_BATCH, true)?;
    let nfiles = bounded(t.b, MAX_FILES, false)?;
    let ndead = bounded(t.c, MAX_DEAD, false)?;
    let mut files = Vec::with_capacity(nfiles);
    for _ in 0..nfiles {
        let (f, r) = take::<Three>(rest)?;
        rest = r;
        files.push(parse_file(f, true)?);
    }
    let mut dead = Vec::with_capacity(ndead);
    for _ in 0..ndead {
        let (d, r) = take::<Two>(rest)?;
        rest = r;
        dead.push(serial(d.a, d.b));
    }
    let mut maps = Vec::with_capacity(nmaps);
    let mut total = 0usize;
    for _ in 0..nmaps {
        let (m, r) = take::<Three>(rest)?;
        rest = r;
        let status = Status::from_wire(m.a)?;
        if status != Status::Ok {
            if m.b != 0 || m.c != 0 {
                return Err(BadMessage::BadField);
            }
            maps.push(MapOutcome::Failed(status));
            continue;
        }
        let n = count(m.c)?;
        total += n;
        if total > MAX_BATCH_PAGES {
            return Err(BadMessage::BadField);
        }
        let mut pages = Vec::with_capacity(n);
        for _ in 0..n {
            let (p, r) = take::<PageLoc>(rest)?;
            rest = r;
            pages.push(p);
        }
        maps.push(MapOutcome::Mapped { map_id: m.b, pages });
    }
    end(rest)?;
    Ok(Reply::Mapped { files, dead, maps })
}
