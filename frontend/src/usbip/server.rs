//! One accepted `--usbip-listen` connection, without I/O: the management handshake
//! (OP_REQ_DEVLIST, OP_REQ_IMPORT) and then, for an import, the URB [`Session`] on the same
//! connection, as usbipd does it.

use std::collections::VecDeque;
use std::io::IoSlice;

use super::decode::Limits;
use super::device::ExportedDevice;
use super::op::{self, OpError, OpRequest, OpStatus};
use super::session::{Event, Session, SessionConfig, SessionError, TxBuf};
use super::shell::FeedError;

/// Most bytes a client may send before its request has been answered.
const MAX_EARLY_BYTES: usize = 1 << 20;

/// What the connection needs from the engine. Drain with [`ServerConn::poll_event`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnEvent {
    /// Answer with [`ServerConn::reply_devlist`].
    DevlistRequested,
    /// Answer with [`ServerConn::accept_import`] or [`ServerConn::refuse_import`].
    ImportRequested {
        /// The bus id asked for.
        busid: String,
    },
    /// A URB-phase event of the imported device's [`Session`].
    Urb(Event),
}

/// The client broke the protocol; close the connection.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConnError {
    /// A bad management message.
    #[error(transparent)]
    Op(#[from] OpError),
    /// A bad URB-phase message.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The client kept sending before its request was answered.
    #[error("client sent {0} bytes before its request was answered")]
    TooEarly(usize),
}

/// A reply call that does not match the pending request (an engine bug).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no {0} request is waiting for an answer")]
pub struct NotAwaiting(pub &'static str);

#[derive(Debug)]
enum State {
    Handshake,
    Awaiting(OpRequest),
    Urb(Box<Session>),
    Closing,
}

/// Server side of one USB/IP TCP connection. Feed received bytes, drain events, answer
/// them, write out [`pending_tx`](Self::pending_tx); close once
/// [`should_close`](Self::should_close) says so or a call returns [`ConnError`].
#[derive(Debug)]
pub struct ServerConn {
    limits: Limits,
    max_in_flight: usize,
    state: State,
    rx: Vec<u8>,
    tx: TxBuf,
    events: VecDeque<ConnEvent>,
}

impl ServerConn {
    /// A fresh connection; URB-phase sessions get `limits` and `max_in_flight`.
    pub fn new(limits: Limits, max_in_flight: usize) -> Self {
        ServerConn {
            limits,
            max_in_flight,
            state: State::Handshake,
            rx: Vec::new(),
            tx: TxBuf::default(),
            events: VecDeque::new(),
        }
    }

    /// Processes received bytes.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        match &mut self.state {
            State::Urb(s) => return Ok(s.feed(bytes)?),
            State::Closing => return Ok(()),
            State::Handshake | State::Awaiting(_) => self.rx.extend_from_slice(bytes),
        }
        if let State::Handshake = self.state {
            if let Some((req, used)) = op::decode_request(&self.rx)? {
                self.rx.drain(..used.min(self.rx.len()));
                self.events.push_back(match &req {
                    OpRequest::Devlist => ConnEvent::DevlistRequested,
                    OpRequest::Import { busid } => ConnEvent::ImportRequested {
                        busid: busid.clone(),
                    },
                });
                self.state = State::Awaiting(req);
            }
        }
        if self.rx.len() > MAX_EARLY_BYTES {
            return Err(ConnError::TooEarly(self.rx.len()));
        }
        Ok(())
    }

    /// [`Session::feed_direct`] once a device is imported; `None` before.
    pub fn feed_direct<E>(
        &mut self,
        read: impl FnOnce(&mut Vec<u8>, usize) -> Result<usize, E>,
    ) -> Option<Result<usize, FeedError<E, ConnError>>> {
        let State::Urb(s) = &mut self.state else {
            return None;
        };
        Some(s.feed_direct(read)?.map_err(|e| match e {
            FeedError::Read(e) => FeedError::Read(e),
            FeedError::Protocol(e) => FeedError::Protocol(ConnError::from(e)),
        }))
    }

    /// The next request to answer, or URB event to handle.
    pub fn poll_event(&mut self) -> Option<ConnEvent> {
        if let Some(e) = self.events.pop_front() {
            return Some(e);
        }
        match &mut self.state {
            State::Urb(s) => s.poll_event().map(ConnEvent::Urb),
            _ => None,
        }
    }

    /// Answers OP_REQ_DEVLIST with `devices`; the connection then closes, as with usbipd.
    pub fn reply_devlist(&mut self, devices: &[ExportedDevice]) -> Result<(), NotAwaiting> {
        if !matches!(self.state, State::Awaiting(OpRequest::Devlist)) {
            return Err(NotAwaiting("devlist"));
        }
        op::encode_rep_devlist(devices, self.tx.out());
        self.state = State::Closing;
        Ok(())
    }

    /// Answers OP_REQ_IMPORT with `device` and starts the URB phase for its devid. Bytes
    /// the client sent early are decoded now, so this can report a protocol error.
    pub fn accept_import(
        &mut self,
        device: &ExportedDevice,
    ) -> Result<Result<(), ConnError>, NotAwaiting> {
        if !matches!(self.state, State::Awaiting(OpRequest::Import { .. })) {
            return Err(NotAwaiting("import"));
        }
        op::encode_rep_import(Ok(device), self.tx.out());
        let config = SessionConfig {
            devid: device.devid(),
            limits: self.limits,
            max_in_flight: self.max_in_flight,
        };
        let mut session = Box::new(Session::new(config));
        let early = std::mem::take(&mut self.rx);
        let r = session.feed(&early).map_err(ConnError::from);
        self.state = State::Urb(session);
        Ok(r)
    }

    /// Answers OP_REQ_IMPORT with a failure status; the connection then closes.
    pub fn refuse_import(&mut self, status: OpStatus) -> Result<(), NotAwaiting> {
        if !matches!(self.state, State::Awaiting(OpRequest::Import { .. })) {
            return Err(NotAwaiting("import"));
        }
        op::encode_rep_import(Err(status), self.tx.out());
        self.state = State::Closing;
        Ok(())
    }

    /// The URB session, once a device was imported.
    pub fn session(&mut self) -> Option<&mut Session> {
        match &mut self.state {
            State::Urb(s) => Some(s),
            _ => None,
        }
    }

    /// The first bytes waiting to be written (empty only when none are): the handshake
    /// reply first, then URB replies.
    pub fn pending_tx(&self) -> &[u8] {
        match (&self.state, self.tx.pending()) {
            (State::Urb(s), []) => s.pending_tx(),
            (_, own) => own,
        }
    }

    /// All the bytes waiting to be written, in order, as slices for one `writev`; returns
    /// how many slices were filled.
    pub fn pending_tx_slices<'a>(&'a self, out: &mut [IoSlice<'a>]) -> usize {
        match &self.state {
            State::Urb(s) if self.tx.is_empty() => s.pending_tx_slices(out),
            _ => self.tx.slices(out),
        }
    }

    /// Marks the first `n` bytes of [`pending_tx`](Self::pending_tx) (or of
    /// [`pending_tx_slices`](Self::pending_tx_slices)) as written.
    pub fn consume_tx(&mut self, n: usize) {
        if self.tx.pending().is_empty() {
            if let State::Urb(s) = &mut self.state {
                s.consume_tx(n);
            }
        } else {
            self.tx.consume(n);
        }
    }

    /// [`Session::take_spent_buffer`] once a device is imported.
    pub fn take_spent_buffer(&mut self) -> Option<Vec<u8>> {
        match &mut self.state {
            State::Urb(s) => s.take_spent_buffer(),
            _ => None,
        }
    }

    /// Whether the connection is over: a devlist or refused import was answered and the
    /// answer written out.
    pub fn should_close(&self) -> bool {
        matches!(self.state, State::Closing) && self.tx.pending().is_empty()
    }
}
