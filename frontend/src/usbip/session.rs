//! Server half of one USB/IP URB connection (towards vhci_hcd or an imported client),
//! without I/O: commands in, events out, completions in, reply bytes out.
//!
//! The session enforces DESIGN.md contract 4 on the wire: each CMD_SUBMIT gets exactly one
//! of RET_SUBMIT (followed by RET_UNLINK status 0 if it was being unlinked) or RET_UNLINK
//! -ECONNRESET with no RET_SUBMIT ever; a CMD_UNLINK whose victim is no longer outstanding
//! is answered at once with RET_UNLINK status 0. Like the kernel stub, it treats a wrong
//! devid or a reused outstanding seqnum as fatal for the connection.

use std::collections::{HashMap, VecDeque};
use std::io::IoSlice;

use super::decode::{CmdDecoder, DecodeError, Limits};
use super::pdu::{CmdSubmit, Command, Direction, IsoPacket, RetSubmit, RetUnlink};
use super::shell::FeedError;
pub(crate) use super::tx::TxBuf;
use super::wire::{ECONNRESET, EPROTO};

/// Tunables of a [`Session`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// The devid every command must carry (`ExportedDevice::devid`, or what was written
    /// to vhci's `attach`).
    pub devid: u32,
    /// Bounds on each decoded PDU.
    pub limits: Limits,
    /// Most CMD_SUBMITs outstanding at once; one more is a connection error.
    pub max_in_flight: usize,
}

impl SessionConfig {
    /// Default limits and 4096 outstanding URBs for `devid`.
    pub fn new(devid: u32) -> Self {
        SessionConfig {
            devid,
            limits: Limits::default(),
            max_in_flight: 4096,
        }
    }
}

/// What the client asked for. Drain with [`Session::poll_event`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A transfer to perform; answer it with [`Session::complete`] (or
    /// [`Session::unlinked`] after an [`Event::Unlink`] for it).
    Submit(CmdSubmit),
    /// Cancel the outstanding transfer `victim`. Answer with [`Session::unlinked`] if it
    /// was cancelled, or [`Session::complete`] if it finished anyway.
    Unlink {
        /// The CMD_UNLINK's own seqnum.
        seqnum: u32,
        /// The CMD_SUBMIT to cancel.
        victim: u32,
    },
}

/// How a transfer ended, as the device (or backend) reported it.
///
/// Non-iso: `actual_length` bytes were transferred; for IN the first `actual_length` bytes
/// of `data` are the result. Iso: one entry in `iso` per submitted packet, `data` is the
/// whole IN buffer laid out at the packets' offsets (the session packs it for the wire),
/// and `actual_length` is ignored (it is the sum of the packets').
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Completion {
    /// 0 or -errno (e.g. -EPIPE for a stall).
    pub status: i32,
    /// Bytes transferred (non-iso).
    pub actual_length: u32,
    /// `start_frame` (iso).
    pub start_frame: i32,
    /// `error_count` (iso).
    pub error_count: i32,
    /// IN data.
    pub data: Vec<u8>,
    /// Iso packet results.
    pub iso: Vec<IsoPacket>,
}

/// A protocol violation by the client; the connection must be closed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The byte stream is not valid USB/IP.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A command for another device.
    #[error("seqnum {seqnum}: devid {got:#010x}, this connection serves {expected:#010x}")]
    WrongDevid {
        /// The command.
        seqnum: u32,
        /// This session's devid.
        expected: u32,
        /// The command's devid.
        got: u32,
    },
    /// A seqnum that is still outstanding (as a submit or an unlink) was used again.
    #[error("seqnum {0} is already outstanding")]
    DuplicateSeqnum(u32),
    /// More outstanding submits than [`SessionConfig::max_in_flight`].
    #[error("more than {0} URBs outstanding")]
    TooManyInFlight(usize),
}

/// A completion the session could not apply as given.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CompleteError {
    /// No such CMD_SUBMIT is outstanding (never submitted, already answered, or answered
    /// by RET_UNLINK -ECONNRESET). Nothing was sent.
    #[error("seqnum {0} is not outstanding")]
    NotInFlight(u32),
    /// `unlinked` for a URB the client never asked to unlink. Nothing was sent; the URB
    /// is still outstanding and must be completed.
    #[error("seqnum {0} has no pending CMD_UNLINK")]
    NotUnlinking(u32),
    /// The completion contradicts the request (see `reason`). The URB was answered with
    /// -EPROTO and no data, so the client is not left waiting.
    #[error("seqnum {seqnum}: {reason}; answered with -EPROTO")]
    BadCompletion {
        /// The request.
        seqnum: u32,
        /// What was wrong.
        reason: &'static str,
    },
}

#[derive(Debug)]
struct InFlight {
    dir: Direction,
    length: u32,
    iso: Vec<IsoPacket>,
    /// Seqnum of the CMD_UNLINK targeting this URB, once one arrived.
    unlink: Option<u32>,
    /// Further CMD_UNLINKs for it: answered with status 0 right after its own answer
    /// (vhci gives a URB back on *any* RET_UNLINK naming it, so not earlier).
    extra_unlinks: Vec<u32>,
}

/// One USB/IP URB connection, server side. Call [`feed`](Self::feed) with received bytes,
/// drain [`poll_event`](Self::poll_event), answer with [`complete`](Self::complete) /
/// [`unlinked`](Self::unlinked), and write out [`pending_tx`](Self::pending_tx), reporting
/// progress with [`consume_tx`](Self::consume_tx). After a `feed` error, close the socket.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    decoder: CmdDecoder,
    in_flight: HashMap<u32, InFlight>,
    /// Pending CMD_UNLINK seqnum → victim.
    unlinks: HashMap<u32, u32>,
    events: VecDeque<Event>,
    tx: TxBuf,
    failed: Option<SessionError>,
}

impl Session {
    /// A session for the device `config.devid`.
    pub fn new(config: SessionConfig) -> Self {
        Session {
            config,
            decoder: CmdDecoder::new(config.limits),
            in_flight: HashMap::new(),
            unlinks: HashMap::new(),
            events: VecDeque::new(),
            tx: TxBuf::default(),
            failed: None,
        }
    }

    /// The devid this session serves.
    pub fn devid(&self) -> u32 {
        self.config.devid
    }

    /// Decodes `bytes` (any chunk of the stream) and queues the resulting events.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), SessionError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        self.decoder.push(bytes);
        let r = self.drain_decoder();
        if let Err(e) = &r {
            self.failed = Some(e.clone());
        }
        r
    }

    /// When the stream's next bytes are the rest of an OUT payload, lets `read` append them
    /// straight to the payload's buffer (no copy; see [`CmdDecoder::read_payload`]) and
    /// processes them. `None`: nothing is awaited that way now; use [`feed`](Self::feed).
    pub fn feed_direct<E>(
        &mut self,
        read: impl FnOnce(&mut Vec<u8>, usize) -> Result<usize, E>,
    ) -> Option<Result<usize, FeedError<E, SessionError>>> {
        if self.failed.is_some() {
            return None;
        }
        let n = match self.decoder.read_payload(read)? {
            Ok(n) => n,
            Err(e) => return Some(Err(FeedError::Read(e))),
        };
        let r = self.drain_decoder();
        if let Err(e) = &r {
            self.failed = Some(e.clone());
        }
        Some(r.map(|()| n).map_err(FeedError::Protocol))
    }

    fn drain_decoder(&mut self) -> Result<(), SessionError> {
        while let Some(cmd) = self.decoder.next_command()? {
            self.handle(cmd)?;
        }
        Ok(())
    }

    fn check_new_seqnum(&self, seqnum: u32, devid: u32) -> Result<(), SessionError> {
        if devid != self.config.devid {
            return Err(SessionError::WrongDevid {
                seqnum,
                expected: self.config.devid,
                got: devid,
            });
        }
        if self.in_flight.contains_key(&seqnum) || self.unlinks.contains_key(&seqnum) {
            return Err(SessionError::DuplicateSeqnum(seqnum));
        }
        Ok(())
    }

    fn handle(&mut self, cmd: Command) -> Result<(), SessionError> {
        match cmd {
            Command::Submit(s) => {
                self.check_new_seqnum(s.seqnum, s.devid)?;
                if self.in_flight.len() >= self.config.max_in_flight {
                    return Err(SessionError::TooManyInFlight(self.config.max_in_flight));
                }
                let urb = InFlight {
                    dir: s.dir,
                    length: s.length,
                    iso: s.iso.clone(),
                    unlink: None,
                    extra_unlinks: Vec::new(),
                };
                self.in_flight.insert(s.seqnum, urb);
                self.events.push_back(Event::Submit(s));
            }
            Command::Unlink(u) => {
                self.check_new_seqnum(u.seqnum, u.devid)?;
                match self.in_flight.get_mut(&u.victim) {
                    Some(urb) if urb.unlink.is_none() => {
                        urb.unlink = Some(u.seqnum);
                        self.unlinks.insert(u.seqnum, u.victim);
                        let (seqnum, victim) = (u.seqnum, u.victim);
                        self.events.push_back(Event::Unlink { seqnum, victim });
                    }
                    Some(urb) => {
                        urb.extra_unlinks.push(u.seqnum);
                        self.unlinks.insert(u.seqnum, u.victim);
                    }
                    // Already answered or never seen: as stub_rx does, "nothing to cancel".
                    None => self.ret_unlink(u.seqnum, 0),
                }
            }
        }
        Ok(())
    }

    fn ret_unlink(&mut self, seqnum: u32, status: i32) {
        RetUnlink { seqnum, status }.encode(self.tx.out());
    }

    /// Answers the CMD_UNLINKs of a URB that has just been answered: the first with
    /// `status`, any further ones with 0.
    fn answer_unlinks(&mut self, urb: &InFlight, status: i32) {
        if let Some(u) = urb.unlink {
            self.unlinks.remove(&u);
            self.ret_unlink(u, status);
        }
        for &u in &urb.extra_unlinks {
            self.unlinks.remove(&u);
            self.ret_unlink(u, 0);
        }
    }

    /// The next thing the client asked for.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Reports that the transfer `seqnum` finished. Sends its RET_SUBMIT, then RET_UNLINK
    /// status 0 for each pending unlink of it. If an unlink is pending and `status` is
    /// -ECONNRESET, the transfer counts as cancelled: as [`unlinked`](Self::unlinked).
    pub fn complete(&mut self, seqnum: u32, c: Completion) -> Result<(), CompleteError> {
        let urb = self
            .in_flight
            .remove(&seqnum)
            .ok_or(CompleteError::NotInFlight(seqnum))?;
        if urb.unlink.is_some() && c.status == ECONNRESET {
            self.answer_unlinks(&urb, ECONNRESET);
            return Ok(());
        }
        let (ret, bad) = match build_ret(seqnum, &urb, c) {
            Ok(ret) => (ret, None),
            Err(reason) => (eproto(seqnum, &urb), Some(reason)),
        };
        ret.encode_to(&mut self.tx);
        self.answer_unlinks(&urb, 0);
        match bad {
            None => Ok(()),
            Some(reason) => Err(CompleteError::BadCompletion { seqnum, reason }),
        }
    }

    /// Reports that the transfer `victim` was cancelled before it completed, after an
    /// [`Event::Unlink`]: sends RET_UNLINK -ECONNRESET and never a RET_SUBMIT for it.
    pub fn unlinked(&mut self, victim: u32) -> Result<(), CompleteError> {
        let urb = self
            .in_flight
            .get(&victim)
            .ok_or(CompleteError::NotInFlight(victim))?;
        if urb.unlink.is_none() {
            return Err(CompleteError::NotUnlinking(victim));
        }
        if let Some(urb) = self.in_flight.remove(&victim) {
            self.answer_unlinks(&urb, ECONNRESET);
        }
        Ok(())
    }

    /// Completes every outstanding transfer with `status` and no data (the device went
    /// away); transfers being unlinked get RET_UNLINK -ECONNRESET instead.
    pub fn complete_all(&mut self, status: i32) {
        for seqnum in self.in_flight_seqnums() {
            let unlinking = self
                .in_flight
                .get(&seqnum)
                .is_some_and(|u| u.unlink.is_some());
            // Neither call can fail: `seqnum` is outstanding, and `unlinked` is only used
            // when an unlink is pending; the completion mirrors the request's own packets.
            let _ = if unlinking {
                self.unlinked(seqnum)
            } else {
                let iso = self
                    .in_flight
                    .get(&seqnum)
                    .map(|u| u.iso.clone())
                    .unwrap_or_default();
                let iso = iso
                    .into_iter()
                    .map(|p| IsoPacket {
                        actual_length: 0,
                        status,
                        ..p
                    })
                    .collect();
                self.complete(
                    seqnum,
                    Completion {
                        status,
                        iso,
                        ..Completion::default()
                    },
                )
            };
        }
    }

    /// Seqnums of the outstanding CMD_SUBMITs, ascending.
    pub fn in_flight_seqnums(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.in_flight.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Whether `seqnum` is an outstanding CMD_SUBMIT.
    pub fn is_in_flight(&self, seqnum: u32) -> bool {
        self.in_flight.contains_key(&seqnum)
    }

    /// The first bytes waiting to be written to the socket (empty only when none are).
    /// More may follow once these are consumed; see also
    /// [`pending_tx_slices`](Self::pending_tx_slices).
    pub fn pending_tx(&self) -> &[u8] {
        self.tx.pending()
    }

    /// Fills `out` with the pending bytes in order (a data buffer is its own slice, to be
    /// written with one `writev`); returns how many slices were filled.
    pub fn pending_tx_slices<'a>(&'a self, out: &mut [IoSlice<'a>]) -> usize {
        self.tx.slices(out)
    }

    /// Marks the first `n` pending bytes as written.
    pub fn consume_tx(&mut self, n: usize) {
        self.tx.consume(n);
    }

    /// An IN data buffer already written out, to be reused for a later transfer (contents
    /// stale). Saves allocating and zeroing one per URB.
    pub fn take_spent_buffer(&mut self) -> Option<Vec<u8>> {
        self.tx.take_spent()
    }

    /// Takes every pending byte at once (for shells that write synchronously).
    pub fn take_tx(&mut self) -> Vec<u8> {
        let mut v = Vec::new();
        loop {
            let p = self.tx.pending();
            if p.is_empty() {
                return v;
            }
            v.extend_from_slice(p);
            let n = p.len();
            self.tx.consume(n);
        }
    }
}

/// The answer for a completion that cannot be encoded faithfully: -EPROTO, no data, and
/// for iso the submitted descriptors with no data, so vhci can still parse it.
fn eproto(seqnum: u32, urb: &InFlight) -> RetSubmit {
    let iso = urb
        .iso
        .iter()
        .map(|p| IsoPacket {
            actual_length: 0,
            status: EPROTO,
            ..*p
        })
        .collect();
    RetSubmit {
        seqnum,
        status: EPROTO,
        iso,
        ..RetSubmit::default()
    }
}

fn build_ret(seqnum: u32, urb: &InFlight, c: Completion) -> Result<RetSubmit, &'static str> {
    let mut ret = RetSubmit {
        seqnum,
        status: c.status,
        start_frame: c.start_frame,
        error_count: c.error_count,
        ..RetSubmit::default()
    };
    if urb.iso.is_empty() {
        if !c.iso.is_empty() {
            return Err("iso packets returned for a non-iso transfer");
        }
        if c.actual_length > urb.length {
            return Err("actual_length exceeds the requested length");
        }
        if urb.dir == Direction::In {
            let n = usize::try_from(c.actual_length).map_err(|_| "actual_length too large")?;
            let mut data = c.data;
            if data.len() < n {
                return Err("less IN data than actual_length");
            }
            data.truncate(n);
            ret.data = data;
        }
        ret.actual_length = c.actual_length;
        return Ok(ret);
    }
    if c.iso.len() != urb.iso.len() {
        return Err("iso packet count differs from the request");
    }
    let mut sum: u32 = 0;
    for p in &c.iso {
        let end = u64::from(p.offset) + u64::from(p.length);
        if p.actual_length > p.length || end > u64::from(urb.length) {
            return Err("iso packet outside the transfer buffer");
        }
        sum = sum
            .checked_add(p.actual_length)
            .ok_or("iso lengths overflow")?;
        if urb.dir == Direction::In {
            let start = usize::try_from(p.offset).map_err(|_| "iso offset too large")?;
            let n = usize::try_from(p.actual_length).map_err(|_| "iso length too large")?;
            let chunk = start.checked_add(n).and_then(|end| c.data.get(start..end));
            ret.data
                .extend_from_slice(chunk.ok_or("iso packet data missing from the IN buffer")?);
        }
    }
    if sum > urb.length {
        // Overlapping packets: the packed data would not fit the client's buffer.
        return Err("iso packets total more than the transfer buffer");
    }
    ret.actual_length = sum;
    ret.iso = c.iso;
    Ok(ret)
}
