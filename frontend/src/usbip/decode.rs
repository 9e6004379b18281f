//! Streaming, checked decoders for the URB phase: bytes in (any chunking), typed PDUs out.
//!
//! [`CmdDecoder`] is the server side (decodes CMD_SUBMIT / CMD_UNLINK from vhci or a USB/IP
//! client); [`RetDecoder`] is the client side (decodes RET_SUBMIT / RET_UNLINK, which needs
//! to know each outstanding request's direction and length: USB/IP does not repeat them).
//! Every length is bounded before anything is buffered for it. After an error the stream
//! is out of sync: the connection must be closed (the decoder keeps returning the error).

use zerocopy::FromBytes;

use super::pdu::{
    CmdSubmit, CmdUnlink, Command, Direction, IsoPacket, Reply, RetSubmit, RetUnlink, TransferFlags,
};
use super::wire::{self, RawHeader, RawIsoPacket, HEADER_LEN, ISO_PACKET_LEN};

/// `USBIP_MAX_ISO_PACKETS` (linux `usbip_common.h`).
pub const MAX_ISO_PACKETS: u32 = 1024;

/// Bounds applied to every decoded PDU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest `transfer_buffer_length` accepted.
    pub max_transfer_len: u32,
    /// Largest `number_of_packets` accepted for an iso transfer.
    pub max_iso_packets: u32,
}

impl Default for Limits {
    /// 16 MiB per transfer (vhci sends scatter-gather URBs whole), 1024 iso packets.
    fn default() -> Self {
        Limits {
            max_transfer_len: 16 << 20,
            max_iso_packets: MAX_ISO_PACKETS,
        }
    }
}

/// Why a byte stream is not valid USB/IP. Each variant is fatal for the connection.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// `command` is none of the four URB PDUs.
    #[error("unknown USB/IP command {0:#x}")]
    UnknownCommand(u32),
    /// A valid PDU that travels the other way (a RET_* to a server, a CMD_* to a client).
    #[error("USB/IP command {0:#x} is not expected in this direction")]
    WrongWay(u32),
    /// `direction` is neither 0 nor 1.
    #[error("seqnum {seqnum}: direction {direction} is neither OUT (0) nor IN (1)")]
    BadDirection {
        /// The request.
        seqnum: u32,
        /// The field's value.
        direction: u32,
    },
    /// `ep` is not 0..=15.
    #[error("seqnum {seqnum}: endpoint {ep} does not exist (0..=15)")]
    BadEndpoint {
        /// The request.
        seqnum: u32,
        /// The field's value.
        ep: u32,
    },
    /// A negative `transfer_buffer_length` or `actual_length`.
    #[error("seqnum {seqnum}: negative length {len}")]
    NegativeLength {
        /// The PDU.
        seqnum: u32,
        /// The field's value.
        len: i32,
    },
    /// `transfer_buffer_length` above [`Limits::max_transfer_len`].
    #[error("seqnum {seqnum}: transfer of {len} bytes exceeds the limit of {max}")]
    TooLong {
        /// The request.
        seqnum: u32,
        /// The field's value.
        len: u32,
        /// The configured limit.
        max: u32,
    },
    /// `number_of_packets` neither "not iso" (0 or -1) nor within 1..=max.
    #[error("seqnum {seqnum}: invalid number of iso packets {count}")]
    BadPacketCount {
        /// The PDU.
        seqnum: u32,
        /// The field's value.
        count: i32,
    },
    /// An iso descriptor that does not fit in the transfer buffer.
    #[error("seqnum {seqnum}: iso packet {index} ({offset}+{length}) lies outside the {buffer}-byte buffer")]
    IsoOutsideBuffer {
        /// The PDU.
        seqnum: u32,
        /// Packet index.
        index: usize,
        /// Its offset.
        offset: u32,
        /// Its (actual) length.
        length: u32,
        /// The transfer buffer length.
        buffer: u32,
    },
    /// A RET_SUBMIT for a seqnum that is not outstanding (vhci tears down on this).
    #[error("RET_SUBMIT for seqnum {0}, which is not outstanding")]
    UnknownSeqnum(u32),
    /// A RET_SUBMIT returning more data than requested.
    #[error("seqnum {seqnum}: {actual} bytes returned for a {requested}-byte request")]
    ActualTooLong {
        /// The request.
        seqnum: u32,
        /// `actual_length`.
        actual: u32,
        /// `transfer_buffer_length` of the request.
        requested: u32,
    },
    /// A RET_SUBMIT whose iso packet count differs from the request's.
    #[error("seqnum {seqnum}: {got} iso packets returned for {expected} submitted")]
    IsoCountMismatch {
        /// The request.
        seqnum: u32,
        /// Packets submitted.
        expected: u32,
        /// `number_of_packets` returned.
        got: i32,
    },
    /// A RET_SUBMIT whose iso `actual_length`s do not add up to `actual_length`.
    #[error("seqnum {seqnum}: iso packets total {sum} bytes but actual_length is {actual}")]
    IsoSumMismatch {
        /// The request.
        seqnum: u32,
        /// Sum of the packets' `actual_length`.
        sum: u64,
        /// Header `actual_length`.
        actual: u32,
    },
}

/// Unconsumed input: a vector read from `start`, compacted once the dead prefix dominates.
#[derive(Debug, Default)]
struct ByteQueue {
    buf: Vec<u8>,
    start: usize,
}

impl ByteQueue {
    fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    fn available(&self) -> &[u8] {
        self.buf.get(self.start..).unwrap_or_default()
    }

    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let end = self.start.checked_add(n)?;
        let out = self.buf.get(self.start..end)?;
        self.start = end;
        Some(out)
    }

    /// Moves queued bytes into `data` until it holds `data_len` bytes; true once it does.
    fn fill(&mut self, data: &mut Vec<u8>, data_len: usize) -> bool {
        let need = data_len.saturating_sub(data.len());
        let n = need.min(self.available().len());
        if let Some(b) = self.take(n) {
            data.extend_from_slice(b);
        }
        data.len() >= data_len
    }
}

/// Appends to `data` what `bytes` holds of its missing part; returns the rest.
fn absorb<'a>(data: &mut Vec<u8>, data_len: usize, bytes: &'a [u8]) -> &'a [u8] {
    let n = data_len.saturating_sub(data.len()).min(bytes.len());
    let (mine, rest) = bytes.split_at(n);
    data.extend_from_slice(mine);
    rest
}

/// Lets `read` append at most `want` bytes to `data` (it may append more: the excess is
/// handed back in `excess`).
fn read_into<E>(
    data: &mut Vec<u8>,
    data_len: usize,
    excess: &mut ByteQueue,
    read: impl FnOnce(&mut Vec<u8>, usize) -> Result<usize, E>,
) -> Option<Result<usize, E>> {
    let want = data_len.checked_sub(data.len()).filter(|&n| n > 0)?;
    let r = read(data, want);
    if data.len() > data_len {
        // Bytes beyond the payload belong to the next PDU.
        let extra = data.split_off(data_len);
        excess.push(&extra);
    }
    Some(r)
}

fn read_header(q: &mut ByteQueue) -> Option<RawHeader> {
    if q.available().len() < HEADER_LEN {
        return None;
    }
    let bytes = q.take(HEADER_LEN)?;
    RawHeader::read_from_bytes(bytes).ok()
}

fn read_iso(bytes: &[u8]) -> Vec<IsoPacket> {
    bytes
        .chunks_exact(ISO_PACKET_LEN)
        .filter_map(|c| RawIsoPacket::read_from_bytes(c).ok())
        .map(|r| IsoPacket::from_raw(&r))
        .collect()
}

fn nonneg(seqnum: u32, len: i32) -> Result<u32, DecodeError> {
    u32::try_from(len).map_err(|_| DecodeError::NegativeLength { seqnum, len })
}

/// `number_of_packets`: 0 and -1 mean "not iso" (vhci sends 0, the spec says -1).
fn packet_count(seqnum: u32, count: i32, limits: &Limits) -> Result<u32, DecodeError> {
    match count {
        -1 | 0 => Ok(0),
        n => u32::try_from(n)
            .ok()
            .filter(|&n| n <= limits.max_iso_packets)
            .ok_or(DecodeError::BadPacketCount { seqnum, count }),
    }
}

fn iso_bytes(np: u32) -> usize {
    // np <= max_iso_packets <= u32::MAX; 16 * u32::MAX fits in usize on 64-bit targets and
    // is clamped on 32-bit ones (a limit that high cannot be buffered anyway).
    usize::try_from(np)
        .unwrap_or(usize::MAX)
        .saturating_mul(ISO_PACKET_LEN)
}

fn to_usize(n: u32) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

fn check_iso_inside(
    seqnum: u32,
    iso: &[IsoPacket],
    buffer: u32,
    actual: bool,
) -> Result<(), DecodeError> {
    for (index, p) in iso.iter().enumerate() {
        let length = if actual { p.actual_length } else { p.length };
        let end = u64::from(p.offset) + u64::from(length);
        if end > u64::from(buffer) || (actual && p.actual_length > p.length) {
            return Err(DecodeError::IsoOutsideBuffer {
                seqnum,
                index,
                offset: p.offset,
                length,
                buffer,
            });
        }
    }
    Ok(())
}

/// A CMD_SUBMIT whose header has been checked, waiting for its payload.
#[derive(Debug)]
struct PendingSubmit {
    cmd: CmdSubmit,
    data_len: usize,
    iso_len: usize,
}

/// Server-side decoder: CMD_SUBMIT and CMD_UNLINK. Call [`push`](Self::push) with each
/// chunk read from the socket, then [`next_command`](Self::next_command) until it returns `Ok(None)`.
#[derive(Debug, Default)]
pub struct CmdDecoder {
    limits: Limits,
    queue: ByteQueue,
    pending: Option<PendingSubmit>,
    failed: Option<DecodeError>,
}

impl CmdDecoder {
    /// A decoder enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        CmdDecoder {
            limits,
            ..Self::default()
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        let rest = match &mut self.pending {
            Some(p) if self.queue.available().is_empty() => {
                absorb(&mut p.cmd.data, p.data_len, bytes)
            }
            _ => bytes,
        };
        self.queue.push(rest);
    }

    /// When the stream's next bytes are the rest of an OUT payload (a CMD_SUBMIT header
    /// was decoded, nothing after it is buffered), lets `read` append them straight to the
    /// payload's buffer: it gets the buffer and how many bytes are still missing, and
    /// returns what it read (0 for end of stream). Bytes it appends beyond the payload are
    /// kept for the next PDU. `None` if no payload is awaited that way: read elsewhere and
    /// [`push`](Self::push). Call [`next_command`](Self::next_command) afterwards.
    pub fn read_payload<E>(
        &mut self,
        read: impl FnOnce(&mut Vec<u8>, usize) -> Result<usize, E>,
    ) -> Option<Result<usize, E>> {
        if self.failed.is_some() || !self.queue.available().is_empty() {
            return None;
        }
        let p = self.pending.as_mut()?;
        read_into(&mut p.cmd.data, p.data_len, &mut self.queue, read)
    }

    /// Bytes received but not yet decoded (a partial PDU).
    pub fn buffered(&self) -> usize {
        let data = self.pending.as_ref().map_or(0, |p| p.cmd.data.len());
        self.queue.available().len().saturating_add(data)
    }

    /// The next complete command, `Ok(None)` if more bytes are needed.
    pub fn next_command(&mut self) -> Result<Option<Command>, DecodeError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let r = self.step();
        if let Err(e) = &r {
            self.failed = Some(e.clone());
        }
        r
    }

    fn step(&mut self) -> Result<Option<Command>, DecodeError> {
        if self.pending.is_none() {
            let Some(h) = read_header(&mut self.queue) else {
                return Ok(None);
            };
            match h.command.get() {
                wire::CMD_SUBMIT => self.pending = Some(self.submit_header(&h)?),
                wire::CMD_UNLINK => {
                    return Ok(Some(Command::Unlink(CmdUnlink {
                        seqnum: h.seqnum.get(),
                        devid: h.devid.get(),
                        victim: h.word0.get(),
                    })))
                }
                c @ (wire::RET_SUBMIT | wire::RET_UNLINK) => return Err(DecodeError::WrongWay(c)),
                c => return Err(DecodeError::UnknownCommand(c)),
            }
        }
        let Some(p) = &mut self.pending else {
            return Ok(None);
        };
        if !self.queue.fill(&mut p.cmd.data, p.data_len) || self.queue.available().len() < p.iso_len
        {
            return Ok(None);
        }
        let iso = read_iso(self.queue.take(p.iso_len).unwrap_or_default());
        let Some(mut p) = self.pending.take() else {
            return Ok(None);
        };
        check_iso_inside(p.cmd.seqnum, &iso, p.cmd.length, false)?;
        p.cmd.iso = iso;
        Ok(Some(Command::Submit(p.cmd)))
    }

    fn submit_header(&self, h: &RawHeader) -> Result<PendingSubmit, DecodeError> {
        let seqnum = h.seqnum.get();
        let direction = h.direction.get();
        let dir = Direction::from_wire(direction)
            .ok_or(DecodeError::BadDirection { seqnum, direction })?;
        let ep = h.ep.get();
        let ep = u8::try_from(ep)
            .ok()
            .filter(|&e| e <= 15)
            .ok_or(DecodeError::BadEndpoint { seqnum, ep })?;
        let length = nonneg(seqnum, h.word1.get())?;
        if length > self.limits.max_transfer_len {
            return Err(DecodeError::TooLong {
                seqnum,
                len: length,
                max: self.limits.max_transfer_len,
            });
        }
        let np = packet_count(seqnum, h.number_of_packets.get(), &self.limits)?;
        let data_len = if dir == Direction::Out {
            to_usize(length)
        } else {
            0
        };
        let cmd = CmdSubmit {
            seqnum,
            devid: h.devid.get(),
            dir,
            ep,
            flags: TransferFlags::from_bits_truncate(h.word0.get()),
            length,
            start_frame: h.start_frame.get(),
            interval: h.word4.get(),
            setup: h.setup,
            // Bounded by `max_transfer_len` above; sized once so the payload never moves.
            data: Vec::with_capacity(data_len),
            iso: Vec::new(),
        };
        Ok(PendingSubmit {
            cmd,
            data_len,
            iso_len: iso_bytes(np),
        })
    }
}

/// What a client remembers about an outstanding CMD_SUBMIT, needed to read its RET_SUBMIT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyShape {
    /// Direction of the request (IN replies carry data).
    pub dir: Direction,
    /// Its `transfer_buffer_length`.
    pub length: u32,
    /// Its number of iso packets (0 if not iso).
    pub iso_packets: u32,
}

#[derive(Debug)]
struct PendingRet {
    ret: RetSubmit,
    shape: ReplyShape,
    data_len: usize,
    iso_len: usize,
}

/// Client-side decoder: RET_SUBMIT and RET_UNLINK. `next` takes the lookup from a
/// seqnum to its request's [`ReplyShape`]; it is called once per RET_SUBMIT header.
#[derive(Debug, Default)]
pub struct RetDecoder {
    limits: Limits,
    queue: ByteQueue,
    pending: Option<PendingRet>,
    failed: Option<DecodeError>,
}

impl RetDecoder {
    /// A decoder enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        RetDecoder {
            limits,
            ..Self::default()
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        let rest = match &mut self.pending {
            Some(p) if self.queue.available().is_empty() => {
                absorb(&mut p.ret.data, p.data_len, bytes)
            }
            _ => bytes,
        };
        self.queue.push(rest);
    }

    /// As [`CmdDecoder::read_payload`], for the IN data of a RET_SUBMIT.
    pub fn read_payload<E>(
        &mut self,
        read: impl FnOnce(&mut Vec<u8>, usize) -> Result<usize, E>,
    ) -> Option<Result<usize, E>> {
        if self.failed.is_some() || !self.queue.available().is_empty() {
            return None;
        }
        let p = self.pending.as_mut()?;
        read_into(&mut p.ret.data, p.data_len, &mut self.queue, read)
    }

    /// The next complete reply, `Ok(None)` if more bytes are needed.
    pub fn next_reply(
        &mut self,
        shape_of: impl FnMut(u32) -> Option<ReplyShape>,
    ) -> Result<Option<Reply>, DecodeError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let r = self.step(shape_of);
        if let Err(e) = &r {
            self.failed = Some(e.clone());
        }
        r
    }

    fn step(
        &mut self,
        shape_of: impl FnMut(u32) -> Option<ReplyShape>,
    ) -> Result<Option<Reply>, DecodeError> {
        if self.pending.is_none() {
            let Some(h) = read_header(&mut self.queue) else {
                return Ok(None);
            };
            match h.command.get() {
                wire::RET_SUBMIT => self.pending = Some(self.ret_header(&h, shape_of)?),
                wire::RET_UNLINK => {
                    return Ok(Some(Reply::Unlink(RetUnlink {
                        seqnum: h.seqnum.get(),
                        status: i32::from_be_bytes(h.word0.get().to_be_bytes()),
                    })))
                }
                c @ (wire::CMD_SUBMIT | wire::CMD_UNLINK) => return Err(DecodeError::WrongWay(c)),
                c => return Err(DecodeError::UnknownCommand(c)),
            }
        }
        let Some(p) = &mut self.pending else {
            return Ok(None);
        };
        if !self.queue.fill(&mut p.ret.data, p.data_len) || self.queue.available().len() < p.iso_len
        {
            return Ok(None);
        }
        let iso = read_iso(self.queue.take(p.iso_len).unwrap_or_default());
        let Some(mut p) = self.pending.take() else {
            return Ok(None);
        };
        let seqnum = p.ret.seqnum;
        if p.shape.iso_packets > 0 {
            check_iso_inside(seqnum, &iso, p.shape.length, true)?;
            let sum: u64 = iso.iter().map(|i| u64::from(i.actual_length)).sum();
            if sum != u64::from(p.ret.actual_length) {
                return Err(DecodeError::IsoSumMismatch {
                    seqnum,
                    sum,
                    actual: p.ret.actual_length,
                });
            }
        }
        p.ret.iso = iso;
        Ok(Some(Reply::Submit(p.ret)))
    }

    fn ret_header(
        &self,
        h: &RawHeader,
        mut shape_of: impl FnMut(u32) -> Option<ReplyShape>,
    ) -> Result<PendingRet, DecodeError> {
        let seqnum = h.seqnum.get();
        let shape = shape_of(seqnum).ok_or(DecodeError::UnknownSeqnum(seqnum))?;
        let actual = nonneg(seqnum, h.word1.get())?;
        if actual > shape.length {
            return Err(DecodeError::ActualTooLong {
                seqnum,
                actual,
                requested: shape.length,
            });
        }
        let got = h.number_of_packets.get();
        let np = packet_count(seqnum, got, &self.limits)?;
        if np != shape.iso_packets {
            return Err(DecodeError::IsoCountMismatch {
                seqnum,
                expected: shape.iso_packets,
                got,
            });
        }
        let data_len = if shape.dir == Direction::In {
            to_usize(actual)
        } else {
            0
        };
        let ret = RetSubmit {
            seqnum,
            status: i32::from_be_bytes(h.word0.get().to_be_bytes()),
            actual_length: actual,
            start_frame: h.start_frame.get(),
            error_count: h.word4.get(),
            // `actual <= shape.length`, a length this client itself submitted.
            data: Vec::with_capacity(data_len),
            iso: Vec::new(),
        };
        Ok(PendingRet {
            ret,
            shape,
            data_len,
            iso_len: iso_bytes(np),
        })
    }
}
