//! The broker's message format: one SOCK_SEQPACKET datagram per request and per reply.
//!
//! Every message is host-local, so integers are native-endian `u32`.
//!
//! Request  = `RawHeader { op, seq }` + the op's body.
//! Reply    = `RawReplyHeader { seq, op, status }` + (status 0 only) the op's reply body.
//!
//! | op | request body | reply body | fds in reply |
//! |----|--------------|------------|--------------|
//! | 1 GRANT_ALLOC | grantee, count, flags(bit0 writable) | handle, count, `u32 grefs[count]` | memfd (rw) |
//! | 2 GRANT_END | handle, mode (0 refuse if mapped, 1 defer) | — | — |
//! | 3 MAP | domid, nmaps, then per map: count, flags, `u32 refs[count]` | see below | one per attached file |
//! | 4 UNMAP | map_id | — | — |
//! | 5 EVTCHN_ALLOC_UNBOUND | remote | port | rx eventfd, tx eventfd, channel page |
//! | 6 EVTCHN_BIND | remote, remote_port | port | rx eventfd, tx eventfd, channel page |
//! | 7 EVTCHN_UNBIND | port | — | — |
//! | 8 DOMAIN_CREATE (dom0) | domid | — | — |
//! | 9 DOMAIN_DESTROY (dom0) | domid | — | — |
//! | 10 COUNTERS (dom0) | — | grants, mappings, channels, domains, connections | — |
//! | 11 UNMAP_ONEWAY | map_id | *none* (one-way: no reply, not even an error) | — |
//! | 12 FORGET | count, `{serial_lo, serial_hi, flags}[count]` | *none* (one-way) | — |
//! | 13 SIDE_OPEN | — | — | the client's end of the connection's side channel |
//! | 14–16 grant copy | see [`copy`] (LOCAL_REGISTER, LOCAL_FORGET, COPY) | | |
//! | 17 COPY_ATTACH | domid | — | the domain's grant table (read-only), the caller's hazard page |
//! | 18 FILES | as MAP | as MAP, every `map_id` 0 (nothing mapped) | as MAP |
//!
//! The channel page (one per channel, sealed at one page) holds two native `u32` state words,
//! the allocating end's at offset 0 and the binding end's at 4: bit 0 pending, bit 1 masked
//! (see `client::channel`).
//!
//! The side channel is a socket pair the broker does not poll: one-way messages sent there
//! wake nobody. The broker reads it before each message of the main connection, before
//! answering anything that must see earlier unmaps (see `State::drain_before`), and every
//! few milliseconds. Only one-way messages are accepted on it.
//!
//! MAP is a batch: each map succeeds or fails on its own. Its reply body is
//! `nmaps, nfiles, ndead`, then `files[nfiles]` = `{serial_lo, serial_hi, flags}` (flags bit 0:
//! writable file description, bit 1: its fd is attached to this reply, in list order), then
//! `dead[ndead]` = `{serial_lo, serial_hi}`, then per map `{status, map_id, count}` followed
//! (status 0 only) by `{file, file_page}[count]`, `file` indexing `files`. A file is named by
//! its allocation's serial (64 bits, never reused) and access: the broker attaches a file's
//! fd only the first time a connection needs it; the client keeps it until the serial is
//! reported `dead` (the allocation is gone) or it sends FORGET (and closes its copy).
//!
//! One-way messages still take a sequence number, so no reply can ever match a later call.
//! The broker handles the messages of one connection in order, so a one-way message is seen
//! by every later request of that connection.
//!
//! `parse` is total (any bytes give a value or a [`BadMessage`]) and `parse(emit(x)) == x`.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::{Access, DomId, EvtchnPort, GrantRef, MAX_PAGES_PER_CALL};

pub mod copy;
mod map;
mod status;

pub use copy::{RawCopySeg, WireSeg, MAX_LOCAL_PAGES};
pub use map::{FileKey, FileRef, MapOutcome, MapSpec, PageLoc};
pub use status::Status;
#[cfg(test)]
use status::STATUSES;

/// The largest datagram either side sends or accepts (a full COPY request is about 32 KiB,
/// a full MAP reply about 14 KiB).
pub const MAX_MESSAGE: usize = 36 * 1024;

/// The largest one-way message (a full FORGET is about 3 KiB).
pub const MAX_ONEWAY: usize = 4096;

/// The most maps one MAP request carries.
pub const MAX_BATCH: usize = 64;
/// The most pages one MAP request carries, over all its maps.
pub const MAX_BATCH_PAGES: usize = 1024;
/// The most distinct files one MAP reply names (the attached fds stay below SCM_MAX_FD).
pub const MAX_FILES: usize = 250;
/// The most dead serials one MAP reply reports (more follow in later replies).
pub const MAX_DEAD: usize = 256;
/// The most files one FORGET names.
pub const MAX_FORGET: usize = 256;

/// Request header.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct RawHeader {
    /// Operation number.
    pub op: u32,
    /// Client-chosen sequence number, echoed in the reply.
    pub seq: u32,
}

/// Reply header.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct RawReplyHeader {
    /// The request's sequence number.
    pub seq: u32,
    /// The request's operation number.
    pub op: u32,
    /// [`Status`] as a number.
    pub status: u32,
}

mod op {
    pub const GRANT_ALLOC: u32 = 1;
    pub const GRANT_END: u32 = 2;
    pub const MAP: u32 = 3;
    pub const UNMAP: u32 = 4;
    pub const EVTCHN_ALLOC_UNBOUND: u32 = 5;
    pub const EVTCHN_BIND: u32 = 6;
    pub const EVTCHN_UNBIND: u32 = 7;
    pub const DOMAIN_CREATE: u32 = 8;
    pub const DOMAIN_DESTROY: u32 = 9;
    pub const COUNTERS: u32 = 10;
    pub const UNMAP_ONEWAY: u32 = 11;
    pub const FORGET: u32 = 12;
    pub const SIDE_OPEN: u32 = 13;
    pub const LOCAL_REGISTER: u32 = 14;
    pub const LOCAL_FORGET: u32 = 15;
    pub const COPY: u32 = 16;
    pub const COPY_ATTACH: u32 = 17;
    pub const FILES: u32 = 18;
}

/// A request that does not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadMessage {
    /// Shorter than its header or fixed body.
    #[error("message truncated")]
    Truncated,
    /// Bytes left over after the body.
    #[error("trailing bytes after the body")]
    Trailing,
    /// Unknown operation number.
    #[error("unknown operation {0}")]
    UnknownOp(u32),
    /// Unknown status number in a reply.
    #[error("unknown status {0}")]
    UnknownStatus(u32),
    /// A field is out of range (domid above 0xffff, count 0 or too large, bad flag bits).
    #[error("field out of range")]
    BadField,
}

/// How GRANT_END treats a grant that is still mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndMode {
    /// Refuse with [`Status::StillMapped`].
    Refuse,
    /// Revoke once the grantee unmaps (what dropping the pages does).
    Defer,
}

/// The broker's live-object counters: tests check they return to zero.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct Counters {
    /// Granted pages not yet revoked (including those waiting for an unmap).
    pub grants: u32,
    /// Live mappings (one per MAP call).
    pub mappings: u32,
    /// Bound or unbound event channel ports.
    pub channels: u32,
    /// Existing domains, dom0 included.
    pub domains: u32,
    /// Open client connections.
    pub connections: u32,
    /// Registered local memories (grant copy's local side).
    pub locals: u32,
}

/// A parsed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Grant `count` new pages to `grantee`.
    GrantAlloc {
        grantee: DomId,
        count: u32,
        access: Access,
    },
    /// End access to an allocation.
    GrantEnd { handle: u32, mode: EndMode },
    /// Map references of `domid`: each entry of `maps` is one mapping.
    Map { domid: DomId, maps: Vec<MapSpec> },
    /// Report that a mapping is gone.
    Unmap { map_id: u32 },
    /// Report that a mapping is gone, without a reply.
    UnmapOneway { map_id: u32 },
    /// The client closed its copies of these files (no reply).
    Forget { files: Vec<FileKey> },
    /// Open the connection's side channel for one-way messages.
    SideOpen,
    /// Register the attached memfd (`pages` pages) as local memory for COPY.
    LocalRegister { pages: u32 },
    /// The client unmapped local memory `id` (no reply).
    LocalForget { id: u32 },
    /// Copy between grants of `domid` and registered local memory `local`.
    Copy {
        domid: DomId,
        local: u32,
        segs: Vec<WireSeg>,
    },
    /// Hand over `domid`'s grant table and this connection's hazard page, to copy on the
    /// caller's CPU (see [`super::gnttab`]).
    CopyAttach { domid: DomId },
    /// Like [`Request::Map`], but only the files and pages are returned: nothing is mapped
    /// or counted (a copier on its own CPU needs the files).
    Files { domid: DomId, maps: Vec<MapSpec> },
    /// Allocate a port `remote` may bind.
    EvtchnAllocUnbound { remote: DomId },
    /// Bind to `remote`'s unbound port.
    EvtchnBind {
        remote: DomId,
        remote_port: EvtchnPort,
    },
    /// Close a port.
    EvtchnUnbind { port: EvtchnPort },
    /// Create a domain (dom0 only).
    DomainCreate { domid: DomId },
    /// Destroy a domain (dom0 only).
    DomainDestroy { domid: DomId },
    /// Read the counters (dom0 only).
    Counters,
}

/// A parsed reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The request failed.
    Error { op: u32, status: Status },
    /// GRANT_ALLOC succeeded (one memfd attached).
    Granted { handle: u32, grefs: Vec<GrantRef> },
    /// MAP was handled (one fd attached per `attached` file); each map has its outcome.
    Mapped {
        files: Vec<FileRef>,
        dead: Vec<u64>,
        maps: Vec<MapOutcome>,
    },
    /// A port was bound (rx and tx eventfds attached).
    Port { op: u32, port: EvtchnPort },
    /// The counters.
    Counters(Counters),
    /// LOCAL_REGISTER succeeded.
    Registered { id: u32 },
    /// COPY was done: one `GNTST_*` status per segment.
    Copied { statuses: Vec<i16> },
    /// Any other request succeeded.
    Done { op: u32 },
}

#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
struct Three {
    a: u32,
    b: u32,
    c: u32,
}

#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
struct Two {
    a: u32,
    b: u32,
}

fn take<T: FromBytes>(bytes: &[u8]) -> Result<(T, &[u8]), BadMessage> {
    T::read_from_prefix(bytes).map_err(|_| BadMessage::Truncated)
}

fn end(rest: &[u8]) -> Result<(), BadMessage> {
    if rest.is_empty() {
        Ok(())
    } else {
        Err(BadMessage::Trailing)
    }
}

fn domid(v: u32) -> Result<DomId, BadMessage> {
    u16::try_from(v)
        .map(DomId)
        .map_err(|_| BadMessage::BadField)
}

fn count(v: u32) -> Result<usize, BadMessage> {
    usize::try_from(v)
        .ok()
        .filter(|&n| n > 0 && n <= MAX_PAGES_PER_CALL)
        .ok_or(BadMessage::BadField)
}

fn access(flags: u32) -> Result<Access, BadMessage> {
    match flags {
        0 => Ok(Access::ReadOnly),
        1 => Ok(Access::Writable),
        _ => Err(BadMessage::BadField),
    }
}

fn access_flags(a: Access) -> u32 {
    match a {
        Access::ReadOnly => 0,
        Access::Writable => 1,
    }
}

/// A count in `0..=max` (`1..=max` when `nonzero`).
fn bounded(v: u32, max: usize, nonzero: bool) -> Result<usize, BadMessage> {
    usize::try_from(v)
        .ok()
        .filter(|&n| n <= max && (n > 0 || !nonzero))
        .ok_or(BadMessage::BadField)
}

/// Reads `n` native u32s.
fn u32s(bytes: &[u8], n: usize) -> Result<(Vec<u32>, &[u8]), BadMessage> {
    let len = n.checked_mul(4).ok_or(BadMessage::BadField)?;
    if bytes.len() < len {
        return Err(BadMessage::Truncated);
    }
    let (head, rest) = bytes.split_at(len);
    let v = head
        .chunks_exact(4)
        .map(|c| u32::read_from_bytes(c).map_err(|_| BadMessage::Truncated))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((v, rest))
}

/// A length as a wire count; lengths beyond u32 cannot parse back anyway.
fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn push_u32s(out: &mut Vec<u8>, vals: impl IntoIterator<Item = u32>) {
    for v in vals {
        out.extend_from_slice(v.as_bytes());
    }
}

impl Request {
    /// The operation number.
    pub fn op(&self) -> u32 {
        match self {
            Request::GrantAlloc { .. } => op::GRANT_ALLOC,
            Request::GrantEnd { .. } => op::GRANT_END,
            Request::Map { .. } => op::MAP,
            Request::Unmap { .. } => op::UNMAP,
            Request::UnmapOneway { .. } => op::UNMAP_ONEWAY,
            Request::Forget { .. } => op::FORGET,
            Request::SideOpen => op::SIDE_OPEN,
            Request::LocalRegister { .. } => op::LOCAL_REGISTER,
            Request::LocalForget { .. } => op::LOCAL_FORGET,
            Request::Copy { .. } => op::COPY,
            Request::CopyAttach { .. } => op::COPY_ATTACH,
            Request::Files { .. } => op::FILES,
            Request::EvtchnAllocUnbound { .. } => op::EVTCHN_ALLOC_UNBOUND,
            Request::EvtchnBind { .. } => op::EVTCHN_BIND,
            Request::EvtchnUnbind { .. } => op::EVTCHN_UNBIND,
            Request::DomainCreate { .. } => op::DOMAIN_CREATE,
            Request::DomainDestroy { .. } => op::DOMAIN_DESTROY,
            Request::Counters => op::COUNTERS,
        }
    }

    /// Whether the broker answers this request (one-way messages get no reply at all).
    pub fn wants_reply(&self) -> bool {
        !matches!(
            self,
            Request::UnmapOneway { .. } | Request::Forget { .. } | Request::LocalForget { .. }
        )
    }

    /// Parses a request datagram into its sequence number and request. The header is parsed
    /// first so that a bad body can still be answered with the right `seq` and `op`.
    pub fn parse_header(bytes: &[u8]) -> Result<(RawHeader, &[u8]), BadMessage> {
        take::<RawHeader>(bytes)
    }

    /// Parses a request body for operation `op`.
    pub fn parse_body(op: u32, body: &[u8]) -> Result<Request, BadMessage> {
        let req = match op {
            op::GRANT_ALLOC => {
                let (t, rest) = take::<Three>(body)?;
                end(rest)?;
                count(t.b)?;
                Request::GrantAlloc {
                    grantee: domid(t.a)?,
                    count: t.b,
                    access: access(t.c)?,
                }
            }
            op::GRANT_END => {
                let (t, rest) = take::<Two>(body)?;
                end(rest)?;
                let mode = match t.b {
                    0 => EndMode::Refuse,
                    1 => EndMode::Defer,
                    _ => return Err(BadMessage::BadField),
                };
                Request::GrantEnd { handle: t.a, mode }
            }
            op::MAP => map::parse_request(body)?,
            op::FILES => match map::parse_request(body)? {
                Request::Map { domid, maps } => Request::Files { domid, maps },
                other => other,
            },
            op::FORGET => map::parse_forget(body)?,
            op::LOCAL_REGISTER => copy::parse_register(body)?,
            op::COPY => copy::parse_copy(body)?,
            op::COUNTERS => {
                end(body)?;
                Request::Counters
            }
            op::SIDE_OPEN => {
                end(body)?;
                Request::SideOpen
            }
            op::EVTCHN_BIND => {
                let (t, rest) = take::<Two>(body)?;
                end(rest)?;
                Request::EvtchnBind {
                    remote: domid(t.a)?,
                    remote_port: EvtchnPort(t.b),
                }
            }
            op::UNMAP
            | op::UNMAP_ONEWAY
            | op::LOCAL_FORGET
            | op::EVTCHN_ALLOC_UNBOUND
            | op::EVTCHN_UNBIND
            | op::DOMAIN_CREATE
            | op::DOMAIN_DESTROY
            | op::COPY_ATTACH => {
                let (v, rest) = take::<u32>(body)?;
                end(rest)?;
                match op {
                    op::UNMAP => Request::Unmap { map_id: v },
                    op::UNMAP_ONEWAY => Request::UnmapOneway { map_id: v },
                    op::LOCAL_FORGET => Request::LocalForget { id: v },
                    op::EVTCHN_ALLOC_UNBOUND => Request::EvtchnAllocUnbound { remote: domid(v)? },
                    op::EVTCHN_UNBIND => Request::EvtchnUnbind {
                        port: EvtchnPort(v),
                    },
                    op::DOMAIN_CREATE => Request::DomainCreate { domid: domid(v)? },
                    op::COPY_ATTACH => Request::CopyAttach { domid: domid(v)? },
                    _ => Request::DomainDestroy { domid: domid(v)? },
                }
            }
            other => return Err(BadMessage::UnknownOp(other)),
        };
        Ok(req)
    }

    /// Parses a whole request datagram.
    pub fn parse(bytes: &[u8]) -> Result<(u32, Request), BadMessage> {
        let (h, body) = Self::parse_header(bytes)?;
        Ok((h.seq, Self::parse_body(h.op, body)?))
    }

    /// Encodes the request with sequence number `seq`.
    pub fn emit(&self, seq: u32) -> Vec<u8> {
        let mut out = RawHeader { op: self.op(), seq }.as_bytes().to_vec();
        match self {
            Request::GrantAlloc {
                grantee,
                count,
                access,
            } => push_u32s(
                &mut out,
                [u32::from(grantee.0), *count, access_flags(*access)],
            ),
            Request::GrantEnd { handle, mode } => {
                push_u32s(&mut out, [*handle, u32::from(*mode == EndMode::Defer)])
            }
            Request::Map { domid, maps } | Request::Files { domid, maps } => {
                map::emit_request(&mut out, *domid, maps)
            }
            Request::Forget { files } => map::emit_forget(&mut out, files),
            Request::Unmap { map_id: v }
            | Request::UnmapOneway { map_id: v }
            | Request::LocalRegister { pages: v }
            | Request::LocalForget { id: v } => push_u32s(&mut out, [*v]),
            Request::Copy { domid, local, segs } => copy::emit_copy(&mut out, *domid, *local, segs),
            Request::EvtchnAllocUnbound { remote } => push_u32s(&mut out, [u32::from(remote.0)]),
            Request::EvtchnBind {
                remote,
                remote_port,
            } => push_u32s(&mut out, [u32::from(remote.0), remote_port.0]),
            Request::EvtchnUnbind { port } => push_u32s(&mut out, [port.0]),
            Request::DomainCreate { domid }
            | Request::DomainDestroy { domid }
            | Request::CopyAttach { domid } => push_u32s(&mut out, [u32::from(domid.0)]),
            Request::Counters | Request::SideOpen => {}
        }
        out
    }
}

impl Reply {
    /// Encodes the reply to request `seq`.
    pub fn emit(&self, seq: u32) -> Vec<u8> {
        let (op, status) = match self {
            Reply::Error { op, status } => (*op, *status),
            Reply::Granted { .. } => (op::GRANT_ALLOC, Status::Ok),
            Reply::Mapped { .. } => (op::MAP, Status::Ok),
            Reply::Port { op, .. } | Reply::Done { op } => (*op, Status::Ok),
            Reply::Counters(_) => (op::COUNTERS, Status::Ok),
            Reply::Registered { .. } => (op::LOCAL_REGISTER, Status::Ok),
            Reply::Copied { .. } => (op::COPY, Status::Ok),
        };
        let mut out = RawReplyHeader {
            seq,
            op,
            status: status.to_wire(),
        }
        .as_bytes()
        .to_vec();
        match self {
            Reply::Granted { handle, grefs } => {
                let n = u32::try_from(grefs.len()).unwrap_or(u32::MAX);
                push_u32s(&mut out, [*handle, n]);
                push_u32s(&mut out, grefs.iter().map(|g| g.0));
            }
            Reply::Mapped { files, dead, maps } => map::emit_reply(&mut out, files, dead, maps),
            Reply::Port { port, .. } => push_u32s(&mut out, [port.0]),
            Reply::Registered { id } => push_u32s(&mut out, [*id]),
            Reply::Copied { statuses } => copy::emit_copied(&mut out, statuses),
            Reply::Counters(c) => out.extend_from_slice(c.as_bytes()),
            Reply::Error { .. } | Reply::Done { .. } => {}
        }
        out
    }

    /// Parses a reply datagram into its sequence number and reply.
    pub fn parse(bytes: &[u8]) -> Result<(u32, Reply), BadMessage> {
        let (h, body) = take::<RawReplyHeader>(bytes)?;
        let status = Status::from_wire(h.status)?;
        if status != Status::Ok {
            end(body)?;
            return Ok((h.seq, Reply::Error { op: h.op, status }));
        }
        let reply = match h.op {
            op::GRANT_ALLOC => {
                let (t, rest) = take::<Two>(body)?;
                let (grefs, rest) = u32s(rest, count(t.b)?)?;
                end(rest)?;
                Reply::Granted {
                    handle: t.a,
                    grefs: grefs.into_iter().map(GrantRef).collect(),
                }
            }
            op::MAP => map::parse_reply(body)?,
            op::EVTCHN_ALLOC_UNBOUND | op::EVTCHN_BIND => {
                let (port, rest) = take::<u32>(body)?;
                end(rest)?;
                Reply::Port {
                    op: h.op,
                    port: EvtchnPort(port),
                }
            }
            op::LOCAL_REGISTER => {
                let (id, rest) = take::<u32>(body)?;
                end(rest)?;
                Reply::Registered { id }
            }
            op::COPY => copy::parse_copied(body)?,
            op::COUNTERS => {
                let (c, rest) = take::<Counters>(body)?;
                end(rest)?;
                Reply::Counters(c)
            }
            op::GRANT_END
            | op::UNMAP
            | op::SIDE_OPEN
            | op::EVTCHN_UNBIND
            | op::DOMAIN_CREATE
            | op::DOMAIN_DESTROY
            | op::COPY_ATTACH => {
                end(body)?;
                Reply::Done { op: h.op }
            }
            other => return Err(BadMessage::UnknownOp(other)),
        };
        Ok((h.seq, reply))
    }
}

#[cfg(test)]
mod tests;
