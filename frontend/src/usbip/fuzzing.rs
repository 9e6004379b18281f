//! Drivers shared by the fuzz targets and the proptests: a model of vhci_hcd's receive
//! side that checks what a session sends, and a byte-driven run of a whole connection.
//! Not part of the stable API.

use std::collections::{HashMap, HashSet};

use super::decode::{CmdDecoder, Limits, ReplyShape, RetDecoder};
use super::device::{ExportedDevice, InterfaceClass, Speed};
use super::op::OpStatus;
use super::pdu::{CmdSubmit, CmdUnlink, Command, IsoPacket, Reply};
use super::server::{ConnEvent, ServerConn};
use super::session::{CompleteError, Completion, Event, Session, SessionConfig, SessionError};
use super::shell::FeedError;
use super::wire::ECONNRESET;

/// What vhci_rx.c knows about one connection: the URBs it sent and is waiting for, and its
/// CMD_UNLINKs. [`accept`](Self::accept) reports what vhci would treat as fatal (a
/// RET_SUBMIT for a URB it no longer has) or what breaks contract 4.
#[derive(Debug, Default)]
pub struct VhciModel {
    /// Outstanding URBs: seqnum -> (shape, submit generation).
    pending: HashMap<u32, (ReplyShape, u64)>,
    /// Unlink seqnum -> (victim, generation of the victim's submit if it was outstanding
    /// when the unlink was sent), oldest first: a client may reuse an answered seqnum.
    unlinks: HashMap<u32, Vec<(u32, Option<u64>)>>,
    generation: u64,
    decoder: RetDecoder,
    /// URBs given back by RET_UNLINK -ECONNRESET.
    pub cancelled: HashSet<u32>,
    /// URBs given back by RET_SUBMIT.
    pub completed: HashSet<u32>,
}

impl VhciModel {
    /// Records a CMD_SUBMIT sent to the server.
    pub fn submitted(&mut self, c: &CmdSubmit) {
        let iso_packets = u32::try_from(c.iso.len()).unwrap_or(u32::MAX);
        self.generation += 1;
        let shape = ReplyShape {
            dir: c.dir,
            length: c.length,
            iso_packets,
        };
        self.pending.insert(c.seqnum, (shape, self.generation));
    }

    /// Records a CMD_UNLINK sent to the server.
    pub fn unlink_sent(&mut self, u: &CmdUnlink) {
        let target = self.pending.get(&u.victim).map(|&(_, g)| g);
        self.unlinks
            .entry(u.seqnum)
            .or_default()
            .push((u.victim, target));
    }

    /// Whether `seqnum` is a URB still waiting for its answer.
    pub fn is_pending(&self, seqnum: u32) -> bool {
        self.pending.contains_key(&seqnum)
    }

    /// CMD_UNLINKs not yet answered.
    pub fn open_unlinks(&self) -> usize {
        self.unlinks.values().map(Vec::len).sum()
    }

    /// URBs not yet answered.
    pub fn open_urbs(&self) -> usize {
        self.pending.len()
    }

    /// Consumes bytes the server sent; `Err` says what vhci would object to.
    pub fn accept(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.decoder.push(bytes);
        loop {
            let pending = &self.pending;
            let reply = self
                .decoder
                .next_reply(|s| pending.get(&s).map(|p| p.0))
                .map_err(|e| e.to_string())?;
            match reply {
                None => return Ok(()),
                Some(Reply::Submit(r)) => {
                    // vhci_recv_ret_submit: unknown seqnum => VDEV_EVENT_ERROR_TCP.
                    self.pending
                        .remove(&r.seqnum)
                        .ok_or(format!("RET_SUBMIT {} not pending", r.seqnum))?;
                    self.completed.insert(r.seqnum);
                }
                Some(Reply::Unlink(r)) => {
                    let victims = self.unlinks.get_mut(&r.seqnum).filter(|v| !v.is_empty());
                    let (victim, target) = victims
                        .ok_or(format!("RET_UNLINK {} was never sent", r.seqnum))?
                        .remove(0);
                    self.unlinks.retain(|_, v| !v.is_empty());
                    // vhci_recv_ret_unlink gives back whatever URB has the victim's seqnum.
                    let live = self.pending.get(&victim).map(|&(_, g)| g);
                    let same = target.is_some() && live == target;
                    if r.status == ECONNRESET {
                        if !same {
                            return Err(format!("RET_UNLINK -ECONNRESET for answered {victim}"));
                        }
                        self.pending.remove(&victim);
                        self.cancelled.insert(victim);
                    } else if r.status != 0 {
                        return Err(format!("RET_UNLINK {} with status {}", r.seqnum, r.status));
                    } else if same {
                        return Err(format!("RET_UNLINK 0 while {victim} is outstanding"));
                    }
                }
            }
        }
    }
}

/// The device the handshake half of [`drive`] exports.
pub fn fuzz_device() -> ExportedDevice {
    ExportedDevice {
        path: "/sys/devices/pvusb/1-1".into(),
        busid: "1-1".into(),
        busnum: 1,
        devnum: 2,
        speed: Speed::High,
        id_vendor: 0x1209,
        id_product: 0x0001,
        interfaces: vec![InterfaceClass {
            class: 0xFF,
            sub_class: 0,
            protocol: 0,
        }],
        ..ExportedDevice::default()
    }
}

/// Devid the session half of [`drive`] serves.
pub const FUZZ_DEVID: u32 = 0x0001_0002;

/// Bytes of steering input, consumed round-robin (all zeros when empty).
#[derive(Debug)]
struct Steer<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Steer<'_> {
    fn next(&mut self) -> u8 {
        let b = self
            .bytes
            .get(self.pos % self.bytes.len().max(1))
            .copied()
            .unwrap_or(0);
        self.pos = self.pos.wrapping_add(1);
        b
    }
}

fn completion_for(s: &CmdSubmit, pick: u8) -> Completion {
    let n = u32::from(pick).min(s.length);
    let iso = s
        .iso
        .iter()
        .map(|p| IsoPacket {
            actual_length: p.length / 2,
            ..*p
        })
        .collect();
    Completion {
        status: if pick % 5 == 4 { -32 } else { 0 },
        actual_length: n,
        data: vec![pick; usize::try_from(s.length).unwrap_or(0)],
        iso,
        ..Completion::default()
    }
}

/// A completion was applied, or answered with -EPROTO because it did not fit the request.
fn answered(r: Result<(), CompleteError>) -> Result<(), String> {
    match r {
        Ok(()) | Err(CompleteError::BadCompletion { .. }) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// An answer to an [`Event::Unlink`]: by the time the engine handles it, the victim may
/// already have been completed (then the session sent RET_SUBMIT and RET_UNLINK 0) or
/// its seqnum reused by a new submit; both refusals are expected, and nothing is sent.
fn late(r: Result<(), CompleteError>) -> Result<(), String> {
    match r {
        Err(CompleteError::NotInFlight(_) | CompleteError::NotUnlinking(_)) => Ok(()),
        r => answered(r),
    }
}

/// What [`run_session`] saw.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The session rejected the stream (the connection would be closed).
    pub rejected: bool,
    /// URBs answered by RET_SUBMIT.
    pub completed: usize,
    /// URBs answered by RET_UNLINK -ECONNRESET.
    pub cancelled: usize,
}

/// Hands `bytes` to `session`: with `direct`, as far as possible the way a shell reads a
/// payload straight into its buffer ([`Session::feed_direct`], appending the whole chunk even
/// past the payload's end), the rest with [`Session::feed`].
fn feed(session: &mut Session, mut bytes: &[u8], direct: bool) -> Result<(), SessionError> {
    while direct && !bytes.is_empty() {
        let appended = session.feed_direct(|buf, _want| append(buf, bytes));
        match appended {
            Some(Ok(_)) => bytes = &[],
            Some(Err(FeedError::Protocol(e))) => return Err(e),
            Some(Err(FeedError::Read(()))) | None => break,
        }
    }
    session.feed(bytes)
}

/// Feeds `stream` (the client's bytes) to a [`Session`] for [`FUZZ_DEVID`] in chunks of
/// the sizes in `chunks` (cycled; 0 means 1), answering events as `steer` says: complete
/// now, fail, defer, cancel, or complete-then-cancel (the race). Every byte the session
/// sends is checked against [`VhciModel`]; at the end the rest is completed and nothing
/// may remain unanswered. `Err` describes a contract violation.
pub fn run_session(stream: &[u8], chunks: &[u8], steer: &[u8]) -> Result<Outcome, String> {
    let limits = Limits {
        max_transfer_len: 1 << 16,
        max_iso_packets: 64,
    };
    let mut session = Session::new(SessionConfig {
        devid: FUZZ_DEVID,
        limits,
        max_in_flight: 64,
    });
    let mut mirror = CmdDecoder::new(limits);
    let mut model = VhciModel::default();
    let mut steer = Steer {
        bytes: steer,
        pos: 0,
    };
    let mut deferred: Vec<CmdSubmit> = Vec::new();
    let mut outcome = Outcome::default();
    let (mut pos, mut c) = (0, 0);
    while pos < stream.len() {
        let size = usize::from(chunks.get(c % chunks.len().max(1)).copied().unwrap_or(255)).max(1);
        c += 1;
        let end = pos.saturating_add(size).min(stream.len());
        let bytes = stream.get(pos..end).unwrap_or_default();
        pos = end;
        mirror.push(bytes);
        while let Ok(Some(cmd)) = mirror.next_command() {
            match &cmd {
                Command::Submit(s) => model.submitted(s),
                Command::Unlink(u) => model.unlink_sent(u),
            }
        }
        if feed(&mut session, bytes, c % 2 == 0).is_err() {
            outcome.rejected = true;
            break;
        }
        while let Some(ev) = session.poll_event() {
            match ev {
                Event::Submit(s) => match steer.next() % 3 {
                    0 => deferred.push(s),
                    _ => answered(session.complete(s.seqnum, completion_for(&s, steer.next())))?,
                },
                Event::Unlink { victim, .. } => match steer.next() % 4 {
                    0 => late(session.unlinked(victim))?,
                    1 => {
                        // Completion racing the unlink: the second answer must be refused.
                        let s = deferred
                            .iter()
                            .find(|d| d.seqnum == victim)
                            .cloned()
                            .unwrap_or_default();
                        late(session.complete(victim, completion_for(&s, steer.next())))?;
                        if session.unlinked(victim).is_ok() {
                            return Err(format!("unlinked({victim}) accepted after complete"));
                        }
                    }
                    2 => {
                        let cancelled = Completion {
                            status: ECONNRESET,
                            ..Completion::default()
                        };
                        late(session.complete(victim, cancelled))?;
                    }
                    _ => {}
                },
            }
            deferred.retain(|d| session.is_in_flight(d.seqnum));
        }
        if steer.next() % 2 == 0 {
            if let Some(s) = deferred.pop() {
                if session.is_in_flight(s.seqnum) {
                    answered(session.complete(s.seqnum, completion_for(&s, steer.next())))?;
                }
            }
        }
        model.accept(&session.take_tx())?;
    }
    if outcome.rejected {
        return Ok(outcome);
    }
    session.complete_all(-108);
    model.accept(&session.take_tx())?;
    if model.open_urbs() != 0 || model.open_unlinks() != 0 {
        return Err(format!(
            "{} URBs and {} unlinks left unanswered",
            model.open_urbs(),
            model.open_unlinks()
        ));
    }
    outcome.completed = model.completed.len();
    outcome.cancelled = model.cancelled.len();
    Ok(outcome)
}

/// Runs the management handshake and what follows over arbitrary bytes; never panics.
pub fn run_server_conn(data: &[u8], accept: bool) {
    let mut conn = ServerConn::new(
        Limits {
            max_transfer_len: 1 << 16,
            max_iso_packets: 64,
        },
        64,
    );
    let dev = fuzz_device();
    for chunk in data.chunks(7) {
        if conn.feed(chunk).is_err() {
            return;
        }
        while let Some(ev) = conn.poll_event() {
            match ev {
                ConnEvent::DevlistRequested => {
                    let _ = conn.reply_devlist(std::slice::from_ref(&dev));
                }
                ConnEvent::ImportRequested { busid } if accept && busid == dev.busid => {
                    if let Ok(Err(_)) = conn.accept_import(&dev) {
                        return;
                    }
                }
                ConnEvent::ImportRequested { .. } => {
                    let _ = conn.refuse_import(OpStatus::NoDev);
                }
                ConnEvent::Urb(Event::Submit(s)) => {
                    if let Some(session) = conn.session() {
                        let _ = session.complete(s.seqnum, completion_for(&s, 3));
                    }
                }
                ConnEvent::Urb(Event::Unlink { victim, .. }) => {
                    if let Some(session) = conn.session() {
                        let _ = session.unlinked(victim);
                    }
                }
            }
        }
        let n = conn.pending_tx().len();
        conn.consume_tx(n);
        if conn.should_close() {
            return;
        }
    }
}

/// The fuzz target: the first byte picks the half (session or handshake) and the split
/// of the rest into client bytes, chunk sizes and steering. Panics only on a contract
/// violation.
pub fn drive(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 1 {
        run_server_conn(rest, mode & 2 == 0);
        return;
    }
    let split = usize::from(mode >> 2).min(rest.len());
    let (knobs, stream) = rest.split_at(split);
    let (chunks, steer) = knobs.split_at(knobs.len() / 2);
    if let Err(e) = run_session(stream, chunks, steer) {
        panic!("contract violation: {e}");
    }
}

/// A direct read that appends all of `piece`, whatever the decoder still needs.
fn append(buf: &mut Vec<u8>, piece: &[u8]) -> Result<usize, ()> {
    buf.extend_from_slice(piece);
    Ok(piece.len())
}

/// The decoder fuzz target: the first byte sets the chunk size and the shape the reply
/// decoder assumes; the rest goes through both URB decoders and the OP_* decoders.
pub fn decoders(data: &[u8]) {
    let Some((&knob, rest)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_transfer_len: 1 << 16,
        max_iso_packets: 64,
    };
    let chunk = usize::from(knob % 64) + 1;
    let dir = if knob & 0x40 == 0 {
        super::pdu::Direction::Out
    } else {
        super::pdu::Direction::In
    };
    let shape = ReplyShape {
        dir,
        length: u32::from(knob) * 97,
        iso_packets: u32::from(knob >> 6),
    };
    // Each decoder twice: fed by `push` only, and by direct payload reads where possible
    // (appending whole chunks, possibly past the payload). Both must agree.
    let cmds = |direct| {
        let mut d = CmdDecoder::new(limits);
        let mut out = Vec::new();
        for piece in rest.chunks(chunk) {
            let took = direct && d.read_payload(|buf, _| append(buf, piece)).is_some();
            if !took {
                d.push(piece);
            }
            while let Ok(Some(c)) = d.next_command() {
                out.push(c);
            }
        }
        (out, d.next_command().err())
    };
    assert_eq!(
        cmds(false),
        cmds(true),
        "direct payload reads changed the commands"
    );
    let rets = |direct| {
        let mut d = RetDecoder::new(limits);
        let mut out = Vec::new();
        for piece in rest.chunks(chunk) {
            let took = direct && d.read_payload(|buf, _| append(buf, piece)).is_some();
            if !took {
                d.push(piece);
            }
            while let Ok(Some(r)) = d.next_reply(|_| Some(shape)) {
                out.push(r);
            }
        }
        (out, d.next_reply(|_| Some(shape)).err())
    };
    assert_eq!(
        rets(false),
        rets(true),
        "direct payload reads changed the replies"
    );
    let _ = super::op::decode_request(rest);
    let _ = super::op::decode_rep_import(rest);
    let _ = super::op::decode_rep_devlist(rest);
}
