//! Typed USB/IP URB PDUs (CMD_SUBMIT, RET_SUBMIT, CMD_UNLINK, RET_UNLINK) and their
//! infallible encoders. Checked decoding lives in [`super::decode`].

use zerocopy::IntoBytes;

use super::tx::TxBuf;
use super::wire::{self, RawHeader, RawIsoPacket};

/// Direction of a transfer, from the host's point of view (`USBIP_DIR_*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Host to device (`USBIP_DIR_OUT` = 0).
    #[default]
    Out,
    /// Device to host (`USBIP_DIR_IN` = 1).
    In,
}

impl Direction {
    /// The wire value.
    pub fn to_wire(self) -> u32 {
        match self {
            Direction::Out => wire::DIR_OUT,
            Direction::In => wire::DIR_IN,
        }
    }

    /// Parses the wire value; anything but 0 or 1 is `None`.
    pub fn from_wire(v: u32) -> Option<Self> {
        match v {
            wire::DIR_OUT => Some(Direction::Out),
            wire::DIR_IN => Some(Direction::In),
            _ => None,
        }
    }
}

bitflags::bitflags! {
    /// The `transfer_flags` bits that mean something to a device (`USBIP_URB_*`). The
    /// kernel puts its internal URB flags (DMA mapping, FREE_BUFFER, ...) on the wire
    /// too; they are dropped on decode.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct TransferFlags: u32 {
        /// `URB_SHORT_NOT_OK`: a short IN packet is an error.
        const SHORT_NOT_OK = 0x0001;
        /// `URB_ISO_ASAP`: schedule an iso transfer at the next possible frame.
        const ISO_ASAP = 0x0002;
        /// `URB_ZERO_PACKET`: end a bulk OUT that fills its last packet with a ZLP.
        const ZERO_PACKET = 0x0040;
        /// `URB_DIR_IN`: mirrors `direction` (the direction field is authoritative).
        const DIR_IN = 0x0200;
    }
}

/// One `usbip_iso_packet_descriptor`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IsoPacket {
    /// Offset of the packet in the transfer buffer (unpacked layout).
    pub offset: u32,
    /// Requested length.
    pub length: u32,
    /// Transferred length (0 in CMD_SUBMIT).
    pub actual_length: u32,
    /// Packet status, 0 or -errno (0 in CMD_SUBMIT).
    pub status: i32,
}

impl IsoPacket {
    pub(crate) fn from_raw(raw: &RawIsoPacket) -> Self {
        IsoPacket {
            offset: raw.offset.get(),
            length: raw.length.get(),
            actual_length: raw.actual_length.get(),
            status: i32::from_be_bytes(raw.status.get().to_be_bytes()),
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let raw = RawIsoPacket {
            offset: self.offset.into(),
            length: self.length.into(),
            actual_length: self.actual_length.into(),
            status: u32::from_be_bytes(self.status.to_be_bytes()).into(),
        };
        out.extend_from_slice(raw.as_bytes());
    }
}

/// `USBIP_CMD_SUBMIT`. Invariants after decoding: `ep <= 15`; for OUT `data.len() ==
/// length`, for IN `data` is empty; `iso` is empty for a non-iso transfer, otherwise every
/// packet lies inside `0..length`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CmdSubmit {
    /// Sequence number chosen by the client, unique among its outstanding requests.
    pub seqnum: u32,
    /// Device id the client believes it talks to.
    pub devid: u32,
    /// Transfer direction.
    pub dir: Direction,
    /// Endpoint number, 0..=15.
    pub ep: u8,
    /// Meaningful transfer flags.
    pub flags: TransferFlags,
    /// `transfer_buffer_length`.
    pub length: u32,
    /// `start_frame` (iso).
    pub start_frame: i32,
    /// `interval` (interrupt, iso).
    pub interval: i32,
    /// SETUP packet (control), verbatim.
    pub setup: [u8; 8],
    /// OUT data.
    pub data: Vec<u8>,
    /// Iso packet descriptors; empty for non-iso transfers.
    pub iso: Vec<IsoPacket>,
}

/// `USBIP_CMD_UNLINK`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CmdUnlink {
    /// This request's own sequence number; the RET_UNLINK carries it back.
    pub seqnum: u32,
    /// Device id.
    pub devid: u32,
    /// Sequence number of the CMD_SUBMIT to cancel.
    pub victim: u32,
}

/// `USBIP_RET_SUBMIT`. `data` is present only for IN transfers, then `data.len() ==
/// actual_length`; for iso IN it is packed (packets back to back, no gaps).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetSubmit {
    /// Sequence number of the CMD_SUBMIT answered.
    pub seqnum: u32,
    /// 0 or -errno.
    pub status: i32,
    /// Bytes transferred (for iso, the sum of the packets' `actual_length`).
    pub actual_length: u32,
    /// `start_frame` (iso).
    pub start_frame: i32,
    /// `error_count` (iso).
    pub error_count: i32,
    /// IN data.
    pub data: Vec<u8>,
    /// Iso packet descriptors; empty for non-iso transfers.
    pub iso: Vec<IsoPacket>,
}

/// `USBIP_RET_UNLINK`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetUnlink {
    /// Sequence number of the CMD_UNLINK answered.
    pub seqnum: u32,
    /// `-ECONNRESET` if the victim was cancelled (and gets no RET_SUBMIT), 0 if it had
    /// already completed (its RET_SUBMIT was or will be sent).
    pub status: i32,
}

/// What a client sends after the handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `CMD_SUBMIT`.
    Submit(CmdSubmit),
    /// `CMD_UNLINK`.
    Unlink(CmdUnlink),
}

/// What a server sends after the handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `RET_SUBMIT`.
    Submit(RetSubmit),
    /// `RET_UNLINK`.
    Unlink(RetUnlink),
}

/// Lengths are `s32` on the wire; a longer buffer than that cannot be described, so the
/// encoders saturate rather than wrap (the decoders never produce such a value).
fn wire_len(len: usize) -> i32 {
    i32::try_from(len).unwrap_or(i32::MAX)
}

fn wire_u32_as_i32(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

fn header(command: u32, seqnum: u32) -> RawHeader {
    RawHeader {
        command: command.into(),
        seqnum: seqnum.into(),
        ..RawHeader::default()
    }
}

fn encode_iso(iso: &[IsoPacket], out: &mut Vec<u8>) {
    for p in iso {
        p.encode(out);
    }
}

impl CmdSubmit {
    fn raw_header(&self) -> RawHeader {
        let length = match self.dir {
            Direction::Out => wire_len(self.data.len()),
            Direction::In => wire_u32_as_i32(self.length),
        };
        let mut h = header(wire::CMD_SUBMIT, self.seqnum);
        h.devid = self.devid.into();
        h.direction = self.dir.to_wire().into();
        h.ep = u32::from(self.ep).into();
        h.word0 = self.flags.bits().into();
        h.word1 = length.into();
        h.start_frame = self.start_frame.into();
        h.number_of_packets = wire_len(self.iso.len()).into();
        h.word4 = self.interval.into();
        h.setup = self.setup;
        h
    }

    /// Appends the PDU to `out`. For OUT the length field is `data.len()`; for IN it is
    /// `length` and no data follows. A non-iso transfer gets `number_of_packets` 0, as the
    /// kernel's vhci sends it.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.raw_header().as_bytes());
        if self.dir == Direction::Out {
            out.extend_from_slice(&self.data);
        }
        encode_iso(&self.iso, out);
    }

    /// As [`encode`](Self::encode), handing the OUT data over to `tx` instead of copying it.
    pub(crate) fn encode_to(mut self, tx: &mut TxBuf) {
        tx.out().extend_from_slice(self.raw_header().as_bytes());
        if self.dir == Direction::Out {
            tx.push_owned(std::mem::take(&mut self.data));
        }
        encode_iso(&self.iso, tx.out());
    }
}

impl CmdUnlink {
    /// Appends the PDU to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut h = header(wire::CMD_UNLINK, self.seqnum);
        h.devid = self.devid.into();
        h.word0 = self.victim.into();
        out.extend_from_slice(h.as_bytes());
    }
}

impl RetSubmit {
    fn raw_header(&self) -> RawHeader {
        let mut h = header(wire::RET_SUBMIT, self.seqnum);
        h.word0 = u32::from_be_bytes(self.status.to_be_bytes()).into();
        h.word1 = wire_u32_as_i32(self.actual_length).into();
        h.start_frame = self.start_frame.into();
        h.number_of_packets = wire_len(self.iso.len()).into();
        h.word4 = self.error_count.into();
        h
    }

    /// Appends the PDU to `out`: header (devid, direction and ep 0, as the stub sends
    /// them), then `data`, then the iso descriptors. A non-iso transfer gets
    /// `number_of_packets` 0, which vhci copies into the URB.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.raw_header().as_bytes());
        out.extend_from_slice(&self.data);
        encode_iso(&self.iso, out);
    }

    /// As [`encode`](Self::encode), handing `data` over to `tx` instead of copying it.
    pub(crate) fn encode_to(mut self, tx: &mut TxBuf) {
        tx.out().extend_from_slice(self.raw_header().as_bytes());
        tx.push_owned(std::mem::take(&mut self.data));
        encode_iso(&self.iso, tx.out());
    }
}

impl RetUnlink {
    /// Appends the PDU to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut h = header(wire::RET_UNLINK, self.seqnum);
        h.word0 = u32::from_be_bytes(self.status.to_be_bytes()).into();
        out.extend_from_slice(h.as_bytes());
    }
}

impl Command {
    /// Appends the PDU to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Command::Submit(c) => c.encode(out),
            Command::Unlink(c) => c.encode(out),
        }
    }

    /// The PDU's own sequence number.
    pub fn seqnum(&self) -> u32 {
        match self {
            Command::Submit(c) => c.seqnum,
            Command::Unlink(c) => c.seqnum,
        }
    }
}

impl Reply {
    /// Appends the PDU to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Reply::Submit(r) => r.encode(out),
            Reply::Unlink(r) => r.encode(out),
        }
    }
}
