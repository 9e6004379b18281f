//! Client half of a USB/IP connection, without I/O: what vhci_hcd does, for tests and tools
//! that drive a USB/IP server (pipelined submits, unlinks). It checks the server as
//! strictly as DESIGN.md contract 4 asks, which is stricter than vhci: vhci only logs a
//! stray RET_UNLINK, this client reports it.

use std::collections::{HashMap, VecDeque};
use std::io::IoSlice;

use super::decode::{DecodeError, Limits, ReplyShape, RetDecoder};
use super::device::ExportedDevice;
use super::op::{self, OpError, OpStatus};
use super::pdu::{CmdSubmit, CmdUnlink, Direction, Reply, RetSubmit};
use super::session::TxBuf;
use super::shell::FeedError;
use super::wire::ECONNRESET;

/// What the server answered. Drain with [`ClientConn::poll_event`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// OP_REP_DEVLIST; the connection is over.
    Devlist(Vec<ExportedDevice>),
    /// OP_REP_IMPORT success; the URB phase starts with the device's devid.
    Imported(ExportedDevice),
    /// OP_REP_IMPORT failure; the connection is over.
    ImportRefused(OpStatus),
    /// RET_SUBMIT: the request `ret.seqnum` is done.
    Completed(RetSubmit),
    /// RET_UNLINK for the CMD_UNLINK `seqnum` aimed at `victim`. With status
    /// -ECONNRESET the victim was cancelled and is given back by this event; with 0 its
    /// RET_SUBMIT came earlier.
    Unlinked {
        /// The CMD_UNLINK's seqnum.
        seqnum: u32,
        /// The request it targeted.
        victim: u32,
        /// 0 or -ECONNRESET.
        status: i32,
    },
}

/// A server that broke the protocol or contract 4, or a call out of order.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// Bad management reply.
    #[error(transparent)]
    Op(#[from] OpError),
    /// Bad URB reply (including a RET_SUBMIT for a request not outstanding).
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A RET_UNLINK for no outstanding CMD_UNLINK.
    #[error("RET_UNLINK {0} answers no outstanding CMD_UNLINK")]
    UnknownUnlink(u32),
    /// RET_UNLINK -ECONNRESET for a request already answered by RET_SUBMIT.
    #[error("request {victim} got RET_SUBMIT and then RET_UNLINK -ECONNRESET")]
    CancelAfterCompletion {
        /// The request.
        victim: u32,
    },
    /// RET_UNLINK status 0 while its victim had no answer yet (vhci would give the
    /// request back without its data).
    #[error("RET_UNLINK 0 for request {victim} before its RET_SUBMIT")]
    UnlinkBeforeCompletion {
        /// The request.
        victim: u32,
    },
    /// RET_UNLINK with a status other than 0 or -ECONNRESET.
    #[error("RET_UNLINK {seqnum} with status {status}")]
    BadUnlinkStatus {
        /// The RET_UNLINK.
        seqnum: u32,
        /// Its status.
        status: i32,
    },
    /// `submit`/`unlink` before the URB phase.
    #[error("no device imported on this connection")]
    NotImported,
}

#[derive(Debug)]
enum State {
    AwaitDevlist,
    AwaitImport,
    Urb { devid: u32 },
    Done,
}

/// Client side of one USB/IP connection. Write out [`pending_tx`](Self::pending_tx), feed
/// what the server sends, drain events.
#[derive(Debug)]
pub struct ClientConn {
    state: State,
    rx: Vec<u8>,
    decoder: RetDecoder,
    pending: HashMap<u32, ReplyShape>,
    /// CMD_UNLINK seqnum → victim.
    unlinks: HashMap<u32, u32>,
    next_seqnum: u32,
    tx: TxBuf,
    events: VecDeque<ClientEvent>,
}

impl ClientConn {
    fn new(state: State, limits: Limits) -> Self {
        ClientConn {
            state,
            rx: Vec::new(),
            decoder: RetDecoder::new(limits),
            pending: HashMap::new(),
            unlinks: HashMap::new(),
            next_seqnum: 1,
            tx: TxBuf::default(),
            events: VecDeque::new(),
        }
    }

    /// A connection that asks for the device list.
    pub fn devlist(limits: Limits) -> Self {
        let mut c = Self::new(State::AwaitDevlist, limits);
        op::encode_req_devlist(c.tx.out());
        c
    }

    /// A connection that imports `busid`.
    pub fn import(busid: &str, limits: Limits) -> Self {
        let mut c = Self::new(State::AwaitImport, limits);
        op::encode_req_import(busid, c.tx.out());
        c
    }

    /// A connection already in the URB phase for `devid`, as vhci's after `attach`.
    pub fn attached(devid: u32, limits: Limits) -> Self {
        Self::new(State::Urb { devid }, limits)
    }

    /// Queues a CMD_SUBMIT; its `seqnum` and `devid` are filled in, and for OUT its
    /// `length` is `data.len()`. Returns the seqnum.
    pub fn submit(&mut self, mut cmd: CmdSubmit) -> Result<u32, ClientError> {
        let State::Urb { devid } = self.state else {
            return Err(ClientError::NotImported);
        };
        cmd.seqnum = self.take_seqnum();
        cmd.devid = devid;
        if cmd.dir == Direction::Out {
            cmd.length = u32::try_from(cmd.data.len()).unwrap_or(u32::MAX);
        }
        let iso_packets = u32::try_from(cmd.iso.len()).unwrap_or(u32::MAX);
        self.pending.insert(
            cmd.seqnum,
            ReplyShape {
                dir: cmd.dir,
                length: cmd.length,
                iso_packets,
            },
        );
        let seqnum = cmd.seqnum;
        cmd.encode_to(&mut self.tx);
        Ok(seqnum)
    }

    /// Queues a CMD_UNLINK of `victim`. Returns the unlink's own seqnum.
    pub fn unlink(&mut self, victim: u32) -> Result<u32, ClientError> {
        let State::Urb { devid } = self.state else {
            return Err(ClientError::NotImported);
        };
        let seqnum = self.take_seqnum();
        self.unlinks.insert(seqnum, victim);
        CmdUnlink {
            seqnum,
            devid,
            victim,
        }
        .encode(self.tx.out());
        Ok(seqnum)
    }

    /// vhci's counter: one sequence for submits and unlinks, skipping 0 on wrap.
    fn take_seqnum(&mut self) -> u32 {
        let s = self.next_seqnum;
        self.next_seqnum = self.next_seqnum.wrapping_add(1).max(1);
        s
    }

    /// Requests not yet answered.
    pub fn outstanding(&self) -> usize {
        self.pending.len()
    }

    /// CMD_UNLINKs not yet answered.
    pub fn outstanding_unlinks(&self) -> usize {
        self.unlinks.len()
    }

    /// Processes bytes from the server.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        match self.state {
            State::Done => Ok(()),
            State::AwaitDevlist | State::AwaitImport => {
                self.rx.extend_from_slice(bytes);
                self.handshake()
            }
            State::Urb { .. } => {
                self.decoder.push(bytes);
                self.drain_replies()
            }
        }
    }

    /// When the stream's next bytes are the rest of a RET_SUBMIT's IN data, lets `read`
    /// append them straight to its buffer (see [`RetDecoder::read_payload`]) and processes
    /// them. `None`: nothing is awaited that way now; use [`feed`](Self::feed).
    pub fn feed_direct<E>(
        &mut self,
        read: impl FnOnce(&mut Vec<u8>, usize) -> Result<usize, E>,
    ) -> Option<Result<usize, FeedError<E, ClientError>>> {
        if !matches!(self.state, State::Urb { .. }) {
            return None;
        }
        let n = match self.decoder.read_payload(read)? {
            Ok(n) => n,
            Err(e) => return Some(Err(FeedError::Read(e))),
        };
        Some(
            self.drain_replies()
                .map(|()| n)
                .map_err(FeedError::Protocol),
        )
    }

    fn handshake(&mut self) -> Result<(), ClientError> {
        let used = match self.state {
            State::AwaitDevlist => {
                let Some((devs, used)) = op::decode_rep_devlist(&self.rx)? else {
                    return Ok(());
                };
                self.events.push_back(ClientEvent::Devlist(devs));
                self.state = State::Done;
                used
            }
            State::AwaitImport => {
                let Some((r, used)) = op::decode_rep_import(&self.rx)? else {
                    return Ok(());
                };
                match r {
                    Ok(dev) => {
                        self.state = State::Urb { devid: dev.devid() };
                        self.events.push_back(ClientEvent::Imported(dev));
                    }
                    Err(status) => {
                        self.state = State::Done;
                        self.events.push_back(ClientEvent::ImportRefused(status));
                    }
                }
                used
            }
            _ => return Ok(()),
        };
        let rest = self.rx.split_off(used.min(self.rx.len()));
        self.rx.clear();
        if matches!(self.state, State::Urb { .. }) && !rest.is_empty() {
            self.decoder.push(&rest);
            return self.drain_replies();
        }
        Ok(())
    }

    fn drain_replies(&mut self) -> Result<(), ClientError> {
        loop {
            let pending = &self.pending;
            let Some(reply) = self.decoder.next_reply(|s| pending.get(&s).copied())? else {
                return Ok(());
            };
            match reply {
                Reply::Submit(r) => {
                    self.pending.remove(&r.seqnum);
                    self.events.push_back(ClientEvent::Completed(r));
                }
                Reply::Unlink(r) => {
                    let victim = self
                        .unlinks
                        .remove(&r.seqnum)
                        .ok_or(ClientError::UnknownUnlink(r.seqnum))?;
                    let live = self.pending.contains_key(&victim);
                    match (r.status, live) {
                        (ECONNRESET, true) => {
                            self.pending.remove(&victim);
                        }
                        (ECONNRESET, false) => {
                            return Err(ClientError::CancelAfterCompletion { victim })
                        }
                        (0, true) => return Err(ClientError::UnlinkBeforeCompletion { victim }),
                        (0, false) => {}
                        (status, _) => {
                            return Err(ClientError::BadUnlinkStatus {
                                seqnum: r.seqnum,
                                status,
                            })
                        }
                    }
                    self.events.push_back(ClientEvent::Unlinked {
                        seqnum: r.seqnum,
                        victim,
                        status: r.status,
                    });
                }
            }
        }
    }

    /// The next answer.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// The first bytes waiting to be written (empty only when none are).
    pub fn pending_tx(&self) -> &[u8] {
        self.tx.pending()
    }

    /// All the bytes waiting to be written, in order, as slices for one `writev`; returns
    /// how many slices were filled.
    pub fn pending_tx_slices<'a>(&'a self, out: &mut [IoSlice<'a>]) -> usize {
        self.tx.slices(out)
    }

    /// Marks the first `n` pending bytes as written.
    pub fn consume_tx(&mut self, n: usize) {
        self.tx.consume(n);
    }

    /// An OUT data buffer that has been written out whole, handed back for the caller's
    /// next OUT transfer (as vhci_hcd reuses an URB's buffer): it holds what was submitted.
    /// Small buffers were copied behind their header instead and do not come back.
    pub fn take_spent(&mut self) -> Option<Vec<u8>> {
        self.tx.take_spent()
    }

    /// Whether the server ended the exchange (devlist answered, import refused).
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }
}
