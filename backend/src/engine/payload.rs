//! A request's buffers between the ring and the host: where its bytes live in the guest's
//! mapped pages, the host URBs it becomes (split like libusb when too large), and how the
//! pieces' results fold back into one answer.
//!
//! Bulk and interrupt data is zero copy when the guest's segments form one contiguous run of
//! the mapping (what every frontend sends for page-aligned buffers): IN pieces are slices of
//! the writable mapping the host fills directly, OUT pieces slices of the read-only mapping
//! it reads. The mapping then lives until the response (the slices hold it; every one is
//! back from the host and dropped before the payload is), so it is still unmapped before the
//! response is pushed (contract 7; with persistent grants the mapping is a cached run that
//! outlives the response).
//! A guest that rewrites an OUT page while the host reads
//! it only changes its own data; the host copies bytes out before it parses them. Control,
//! isochronous and scattered buffers are bounced through buffers owned by the host URBs.

use pvusb_ring::shm::Shm;
use pvusb_ring::urb::backend::HostResult;
use pvusb_ring::wire::{IsoPacket, Setup, Status};

use std::sync::Arc;

use super::memory::{Mapped, WriteBack};
use crate::host::{errno, Completion, HostUrb, IsoPacketResult, UrbBuf, UrbFlags, XferKind};

/// Where a request's byte stream lies in a mapping: `(offset in mapping, length)` pieces in
/// stream order, truncated to the transfer length.
#[derive(Debug)]
pub struct GuestBuf {
    /// All the request's pages, back to back.
    map: Shm,
    /// `(offset in the mapping, length)` in stream order.
    spans: Vec<(usize, usize)>,
    len: usize,
    /// Set when `map` is a copy of the guest's pages: written bytes go back through it.
    back: Option<Arc<dyn WriteBack>>,
}

impl GuestBuf {
    /// `segs` are `(page offset, length)` of the mapped pages in order; the stream is
    /// their concatenation, cut at `len`. `None` if the mapping has no data view.
    pub fn new(
        map: Box<dyn Mapped>,
        segs: impl Iterator<Item = (u16, u16)>,
        len: usize,
    ) -> Option<Self> {
        let back = map.write_back();
        let map = map.into_data()?;
        let mut spans: Vec<(usize, usize)> = Vec::new();
        let mut left = len;
        for (page, (off, seg_len)) in segs.enumerate() {
            if left == 0 {
                break;
            }
            let take = usize::from(seg_len).min(left);
            let start = page * pvusb_ring::wire::PAGE_SIZE + usize::from(off);
            // Merge runs that continue each other, so a page-aligned buffer is one span.
            match spans.last_mut() {
                Some((s, l)) if *s + *l == start => *l += take,
                _ => spans.push((start, take)),
            }
            left -= take;
        }
        Some(GuestBuf {
            map,
            spans,
            len: len - left,
            back,
        })
    }

    /// Bytes in the stream.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for an empty stream.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Stream bytes `off..off+n` as a view of the mapping, when the stream is one run.
    pub fn window(&self, off: usize, n: usize) -> Option<Shm> {
        let [(start, len)] = self.spans.as_slice() else {
            return None;
        };
        let end = off.checked_add(n).filter(|&e| e <= *len)?;
        self.map.slice(start + off, end - off).ok()
    }

    /// True when the stream is one contiguous run of the mapping (zero copy possible).
    pub fn is_contiguous(&self) -> bool {
        self.spans.len() == 1
    }

    /// Walks the spans covering stream bytes `off..off+n`, calling
    /// `f(mapping, map_off, buf_off, len)`.
    fn walk(
        &self,
        off: usize,
        n: usize,
        mut f: impl FnMut(&Shm, usize, usize, usize) -> bool,
    ) -> bool {
        let Some(end) = off.checked_add(n).filter(|&e| e <= self.len) else {
            return false;
        };
        let mut pos = 0;
        for &(map_off, len) in &self.spans {
            let (s, e) = (pos, pos + len);
            pos = e;
            let lo = s.max(off);
            let hi = e.min(end);
            if lo >= hi {
                continue;
            }
            if !f(&self.map, map_off + (lo - s), lo - off, hi - lo) {
                return false;
            }
        }
        true
    }

    /// Copies stream bytes `off..off+out.len()` out of the guest pages.
    pub fn gather(&self, off: usize, out: &mut [u8]) -> bool {
        self.walk(off, out.len(), |map, m, b, n| {
            out.get_mut(b..b + n)
                .is_some_and(|dst| map.read(m, dst).is_ok())
        })
    }

    /// Marks stream bytes `off..off+n` as the transfer's result: when the mapping is a copy
    /// (grant copy), they are queued for the guest's pages; a real mapping already is them.
    pub fn written(&self, off: usize, n: usize) {
        if let Some(back) = &self.back {
            if n > 0 {
                self.walk(off, n, |_, m, _, len| {
                    back.queue(m, len);
                    true
                });
            }
        }
    }

    /// True when bytes marked [`GuestBuf::written`] could not be delivered to the guest.
    pub fn lost(&self) -> bool {
        self.back.as_ref().is_some_and(|b| b.failed())
    }

    /// Copies `data` into stream bytes `off..off+data.len()` of the guest pages.
    pub fn scatter(&self, off: usize, data: &[u8]) -> bool {
        self.walk(off, data.len(), |map, m, b, n| {
            data.get(b..b + n)
                .is_some_and(|src| map.write(m, src).is_ok())
        })
    }
}

/// What a request becomes on the host.
#[derive(Debug)]
pub enum Plan {
    /// A control transfer: setup packet + data stage (OUT bytes already copied).
    Ctrl {
        setup: Setup,
        out: Vec<u8>,
        /// Patch bMaxPacketSize0 of a returned device descriptor (SuperSpeed as HIGH).
        fix_ep0: bool,
    },
    /// Bulk or interrupt: `len` bytes, OUT bytes already copied.
    Data {
        kind: XferKind,
        endpoint: u8,
        len: usize,
        out: Vec<u8>,
        short_not_ok: bool,
        /// A split chain piece with more to follow ([`pvusb_ring::urb::chain::SPLIT_MORE`]):
        /// a short read ends it, so every host URB gets SHORT_NOT_OK.
        split_more: bool,
    },
    /// Isochronous: packets as the guest described them (offsets into its buffer), OUT
    /// bytes packed back to back as usbfs wants them.
    Iso {
        endpoint: u8,
        packets: Vec<IsoPacket>,
        out: Vec<u8>,
        start_frame: u16,
    },
}

/// Everything a submitted request owns until it is answered: the plan, the guest's IN
/// buffer (mapped writable) and, for isochronous requests, the frame descriptors.
#[derive(Debug)]
pub struct Payload {
    /// What to submit.
    pub plan: Plan,
    /// IN data pages: the host writes them directly (zero copy) or they are written from
    /// the bounce buffers when the transfer ends.
    pub data_in: Option<GuestBuf>,
    /// OUT data pages the host reads directly (zero copy; `Plan`'s `out` is then empty).
    pub data_out: Option<GuestBuf>,
    /// Isochronous frame descriptors (mapped writable).
    pub desc: Option<GuestBuf>,
}

/// One host URB of a request.
#[derive(Debug)]
pub struct Piece {
    /// Host tag.
    pub tag: u64,
    /// Offset of its bytes in the guest's stream.
    pub offset: usize,
    /// Bytes asked for.
    pub len: usize,
    /// We set SHORT_NOT_OK on it ourselves (split IN): a short read is not an error.
    pub added_short_not_ok: bool,
    /// Its completion, once reaped (or refused).
    pub done: Option<Completion>,
}

/// Largest bulk piece for a limit: a multiple of 1024, which every bulk wMaxPacketSize
/// (8..=1024, a power of two) divides, so a split never lands inside a packet (contract 6).
pub fn piece_size(max_bulk: usize) -> usize {
    (max_bulk / 1024).max(1) * 1024
}

impl Payload {
    /// Whether [`Payload::host_urbs`] cuts it into several URBs under `max_bulk`.
    pub fn splits(&self, max_bulk: usize) -> bool {
        matches!(&self.plan, Plan::Data { kind: XferKind::Bulk, len, .. } if *len > piece_size(max_bulk))
    }

    /// True when the transfer's IN bytes or frame descriptors could not be copied back to
    /// the guest (grant copy): its answer becomes an error.
    pub fn lost(&self) -> bool {
        [&self.data_in, &self.desc]
            .into_iter()
            .flatten()
            .any(GuestBuf::lost)
    }

    /// Builds the host URBs (tags from `next_tag`). `continuation`: the first piece
    /// continues an earlier URB of the endpoint (containment); later pieces always do.
    pub fn host_urbs(
        &mut self,
        next_tag: &mut u64,
        continuation: bool,
        max_bulk: usize,
    ) -> (Vec<HostUrb>, Vec<Piece>) {
        let mut tag = || {
            *next_tag = next_tag.wrapping_add(1);
            *next_tag
        };
        let mut urbs = Vec::new();
        let mut pieces = Vec::new();
        let piece = |t: u64, offset: usize, len: usize, added: bool| Piece {
            tag: t,
            offset,
            len,
            added_short_not_ok: added,
            done: None,
        };
        let Payload {
            plan,
            data_in,
            data_out,
            ..
        } = self;
        match plan {
            Plan::Ctrl { setup, out, .. } => {
                let wlen = usize::from(setup.length());
                let mut buf = vec![0u8; 8 + wlen];
                if let Some(head) = buf.get_mut(..8) {
                    head.copy_from_slice(&setup.0);
                }
                if !setup.is_in() {
                    if let Some(body) = buf.get_mut(8..8 + out.len().min(wlen)) {
                        body.copy_from_slice(out.get(..body.len()).unwrap_or_default());
                    }
                }
                let t = tag();
                urbs.push(HostUrb::new(
                    t,
                    XferKind::Control,
                    0,
                    UrbFlags::empty(),
                    UrbBuf::from_vec(buf),
                ));
                pieces.push(piece(t, 0, wlen, false));
            }
            Plan::Data {
                kind,
                endpoint,
                len,
                out,
                short_not_ok,
                split_more,
            } => {
                let is_in = *endpoint & 0x80 != 0;
                let size = if *kind == XferKind::Bulk {
                    piece_size(max_bulk)
                } else {
                    usize::MAX
                };
                let mut offset = 0;
                let total = *len;
                loop {
                    let n = (total - offset).min(size);
                    let last = offset + n >= total;
                    let first = offset == 0;
                    let mut flags = UrbFlags::empty();
                    if (!first || continuation) && *kind == XferKind::Bulk {
                        flags |= UrbFlags::BULK_CONTINUATION;
                    }
                    let added = is_in && (!last || *split_more);
                    if added || (*short_not_ok && is_in) {
                        flags |= UrbFlags::SHORT_NOT_OK;
                    }
                    let direct = if is_in { &*data_in } else { &*data_out };
                    let buf = match direct.as_ref().and_then(|g| g.window(offset, n)) {
                        Some(view) => UrbBuf::shared(view),
                        None if is_in => UrbBuf::zeroed(n),
                        None => UrbBuf::from_vec(
                            out.get(offset..offset + n).unwrap_or_default().to_vec(),
                        ),
                    };
                    let t = tag();
                    urbs.push(HostUrb::new(t, *kind, *endpoint, flags, buf));
                    pieces.push(piece(t, offset, n, added));
                    offset += n;
                    if last {
                        break;
                    }
                }
                out.clear();
            }
            Plan::Iso {
                endpoint,
                packets,
                out,
                start_frame,
            } => {
                let total: usize = packets.iter().map(|p| p.length as usize).sum();
                let buf = if *endpoint & 0x80 != 0 {
                    UrbBuf::zeroed(total)
                } else {
                    UrbBuf::from_vec(std::mem::take(out))
                };
                let t = tag();
                let mut urb = HostUrb::new(t, XferKind::Iso, *endpoint, UrbFlags::ISO_ASAP, buf);
                urb.iso_packets = packets.iter().map(|p| p.length).collect();
                urb.start_frame = i32::from(*start_frame);
                urbs.push(urb);
                pieces.push(piece(t, 0, total, false));
            }
        }
        (urbs, pieces)
    }

    /// Folds the pieces' completions into one result and writes IN data (and iso frame
    /// descriptors) into the guest's pages. Call once every piece is done.
    pub fn finish(&mut self, pieces: &mut [Piece]) -> HostResult {
        match &self.plan {
            Plan::Ctrl { setup, fix_ep0, .. } => {
                let Some((c, wlen)) = pieces
                    .first_mut()
                    .and_then(|p| p.done.as_mut().map(|c| (c, p.len)))
                else {
                    return HostResult::cancelled();
                };
                let mut actual = (c.actual_length as usize).min(wlen);
                if setup.is_in() && actual > 0 {
                    let mut data = vec![0u8; actual];
                    if !c.buf.read_at(8, &mut data) {
                        data.clear();
                    }
                    if *fix_ep0 && is_get_device_descriptor(*setup) {
                        crate::host::fixup_superspeed_as_high(&mut data);
                    }
                    let fits = self.data_in.as_ref().map_or(0, GuestBuf::len);
                    data.truncate(fits);
                    actual = data.len();
                    if let Some(g) = &self.data_in {
                        if g.scatter(0, &data) {
                            g.written(0, actual);
                        } else {
                            actual = 0;
                        }
                    }
                }
                host_result(c.status, actual)
            }
            Plan::Data { short_not_ok, .. } => {
                let mut actual = 0usize;
                let mut status = 0i32;
                for p in pieces.iter() {
                    let Some(c) = &p.done else { break };
                    let got = (c.actual_length as usize).min(p.len);
                    if let Some(g) = self.data_in.as_ref().filter(|_| !c.buf.is_shared()) {
                        let mut data = vec![0u8; got];
                        if c.buf.read_at(0, &mut data) && g.scatter(p.offset, &data) {
                            actual += got;
                        }
                    } else {
                        // OUT, or IN the host wrote straight into the guest's pages.
                        actual += got;
                    }
                    // A short piece we flagged ourselves ends the transfer early but is
                    // not an error, unless the guest asked for SHORT_NOT_OK too.
                    let short_ok =
                        c.status == -errno::EREMOTEIO && p.added_short_not_ok && !*short_not_ok;
                    if c.status != 0 && !short_ok {
                        status = c.status;
                        break;
                    }
                    if got < p.len {
                        break;
                    }
                }
                if let Some(g) = &self.data_in {
                    g.written(0, actual);
                }
                host_result(status, actual)
            }
            Plan::Iso { packets, .. } => {
                let Some(c) = pieces.first().and_then(|p| p.done.as_ref()) else {
                    return HostResult::cancelled();
                };
                let mut packed = 0usize;
                let mut actual = 0u32;
                let mut failed = 0u32;
                for (i, pkt) in packets.iter().enumerate() {
                    let r = c.iso_packets.get(i).copied().unwrap_or(IsoPacketResult {
                        actual_length: 0,
                        status: c.status,
                    });
                    let got = r.actual_length.min(pkt.length);
                    if let Some(g) = &self.data_in {
                        let mut data = vec![0u8; got as usize];
                        if c.buf.read_at(packed, &mut data) && g.scatter(pkt.offset as usize, &data)
                        {
                            g.written(pkt.offset as usize, data.len());
                        }
                    }
                    packed += pkt.length as usize;
                    actual = actual.saturating_add(got);
                    failed += u32::from(r.status != 0);
                    if let Some(d) = &self.desc {
                        let mut res = [0u8; 8];
                        res[..4].copy_from_slice(&got.to_le_bytes());
                        res[4..].copy_from_slice(&r.status.to_le_bytes());
                        d.scatter(i * 16 + 8, &res);
                    }
                }
                if let Some(d) = &self.desc {
                    d.written(0, d.len());
                }
                let mut r = host_result(c.status, actual as usize);
                // Counted from the descriptors just written rather than taken from the host:
                // a refused or flushed URB carries no per-packet results, and every packet
                // it stood for failed with its status.
                r.error_count = failed;
                r.start_frame = u16::try_from(c.start_frame & 0xffff).unwrap_or(0);
                r
            }
        }
    }
}

fn is_get_device_descriptor(s: Setup) -> bool {
    s.is_standard()
        && s.is_in()
        && s.request() == pvusb_ring::wire::setup::request::GET_DESCRIPTOR
        && s.value() >> 8 == u16::from(crate::host::desc::dt::DEVICE)
}

/// A host status (0 or -errno) as the URB state machine wants it.
pub fn host_result(status: i32, actual: usize) -> HostResult {
    let actual = u32::try_from(actual).unwrap_or(u32::MAX);
    match status {
        s if s == -errno::ECONNRESET || s == -errno::ENOENT => HostResult {
            actual_length: actual,
            ..HostResult::cancelled()
        },
        // The host's -ESHUTDOWN means the device (or its port) is going away.
        s if s == -errno::ESHUTDOWN => HostResult::done(Status::NoDev, actual),
        s => HostResult::done(Status::from_errno(s), actual),
    }
}

/// The status a refused submission stands for in [`Payload::finish`]: a continuation the
/// host refused because an earlier piece failed reads as cancelled; an URB the host found
/// too large (usb_submit_urb's -EMSGSIZE: an iso packet over the endpoint's size) reads as
/// -EINVAL, usbif's code for a malformed request (it has no -EMSGSIZE, and xen-hcd would
/// turn it into -ESHUTDOWN, "controller gone"; ring's `split::TOO_LARGE` decides the same).
pub fn refused_errno(e: crate::host::SubmitError) -> i32 {
    match e {
        crate::host::SubmitError::ContinuationRefused => -errno::ENOENT,
        crate::host::SubmitError::NoEndpoint(_) => -errno::EINVAL,
        crate::host::SubmitError::Errno(errno::EMSGSIZE) => -errno::EINVAL,
        e => e.to_errno(),
    }
}

/// A completion standing for a piece that never reached the host.
pub fn synthetic(tag: u64, status: i32, buf: UrbBuf) -> Completion {
    Completion {
        tag,
        status,
        actual_length: 0,
        iso_packets: Vec::new(),
        error_count: 0,
        start_frame: 0,
        buf,
    }
}
