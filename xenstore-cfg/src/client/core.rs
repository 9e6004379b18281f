//! The client protocol without I/O: requests become bytes, bytes become replies and watch events.

use std::collections::{HashMap, VecDeque};

use crate::wire::{emit_msg, BadReply, FrameError, Reply, Request, XsMsg, XsType};

/// A watch firing: `path` changed; `token` names the watch.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WatchEvent {
    /// The changed path (relative when the watch was registered relative).
    pub path: String,
    /// The token given to `watch`.
    pub token: String,
}

/// Why the server's byte stream cannot be used any more.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A frame announcing more than `XENSTORE_PAYLOAD_MAX` bytes.
    #[error("server sent an oversized message: {0}")]
    Frame(FrameError),
    /// A watch event whose body is not `path\0token\0`.
    #[error("malformed watch event: {0}")]
    BadEvent(BadReply),
}

/// Client half of the xenstore protocol, sans I/O.
///
/// Call [`ClientCore::send`] to encode a request (the caller writes the bytes), feed every
/// byte read from the connection to [`ClientCore::receive`], then collect the answer with
/// [`ClientCore::take_reply`] by request id and watch events with [`ClientCore::poll_event`].
/// Replies may arrive in any order and events may interleave with them.
#[derive(Debug, Default)]
pub struct ClientCore {
    next_req_id: u32,
    rx: Vec<u8>,
    pending: HashMap<u32, XsType>,
    replies: HashMap<u32, Result<Reply, BadReply>>,
    events: VecDeque<WatchEvent>,
}

impl ClientCore {
    /// A fresh client with no outstanding requests.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `req` (in transaction `tx_id`, 0 for none) to `out`; returns its request id.
    ///
    /// Fails with the payload size if it exceeds `XENSTORE_PAYLOAD_MAX`.
    pub fn send(&mut self, tx_id: u32, req: &Request, out: &mut Vec<u8>) -> Result<u32, usize> {
        let mut body = Vec::new();
        req.emit(&mut body);
        let ty = req.msg_type();
        // Skip ids still in use after a wrap-around.
        let mut id = self.next_req_id;
        while self.pending.contains_key(&id) || self.replies.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        emit_msg(out, ty.raw(), id, tx_id, &body)?;
        self.next_req_id = id.wrapping_add(1);
        self.pending.insert(id, ty);
        Ok(id)
    }

    /// Consumes bytes read from the server: completes replies and queues watch events.
    ///
    /// A reply to an unknown request id is dropped. After an error the stream is unusable.
    pub fn receive(&mut self, bytes: &[u8]) -> Result<(), ProtocolError> {
        self.rx.extend_from_slice(bytes);
        let mut used = 0;
        let result = loop {
            let rest = self.rx.get(used..).unwrap_or_default();
            let msg = match XsMsg::new_checked(rest) {
                Ok(m) => m,
                Err(FrameError::Truncated { .. }) => break Ok(()),
                Err(e) => break Err(ProtocolError::Frame(e)),
            };
            used += msg.total_len();
            let header = msg.header();
            if header.ty == XsType::WatchEvent.raw() {
                match Reply::parse_event(msg.payload()) {
                    Ok(Reply::WatchEvent { path, token }) => {
                        self.events.push_back(WatchEvent { path, token })
                    }
                    Ok(_) => {}
                    Err(e) => break Err(ProtocolError::BadEvent(e)),
                }
                continue;
            }
            match self.pending.remove(&header.req_id) {
                Some(asked) => {
                    let reply = Reply::parse(asked, header.ty, msg.payload());
                    self.replies.insert(header.req_id, reply);
                }
                None => tracing::warn!(req_id = header.req_id, "reply to no request"),
            }
        };
        self.rx.drain(..used.min(self.rx.len()));
        result
    }

    /// The reply to request `req_id`, once it has arrived.
    pub fn take_reply(&mut self, req_id: u32) -> Option<Result<Reply, BadReply>> {
        self.replies.remove(&req_id)
    }

    /// Whether request `req_id` still awaits its reply.
    pub fn is_pending(&self, req_id: u32) -> bool {
        self.pending.contains_key(&req_id)
    }

    /// The oldest queued watch event.
    pub fn poll_event(&mut self) -> Option<WatchEvent> {
        self.events.pop_front()
    }

    /// The oldest queued event for `token`, leaving other watches' events queued.
    pub fn take_event_for(&mut self, token: &str) -> Option<WatchEvent> {
        let i = self.events.iter().position(|e| e.token == token)?;
        self.events.remove(i)
    }

    /// Drops queued events for `token` (after an unwatch).
    pub fn discard_events_for(&mut self, token: &str) {
        self.events.retain(|e| e.token != token);
    }

    /// Number of queued watch events.
    pub fn queued_events(&self) -> usize {
        self.events.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::XsErrno;

    fn frame(ty: XsType, req_id: u32, body: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        emit_msg(&mut v, ty.raw(), req_id, 0, body).unwrap();
        v
    }

    #[test]
    fn replies_match_by_req_id_and_events_interleave() {
        let mut c = ClientCore::new();
        let mut out = Vec::new();
        let a = c
            .send(0, &Request::Read { path: "/a".into() }, &mut out)
            .unwrap();
        let b = c
            .send(0, &Request::Read { path: "/b".into() }, &mut out)
            .unwrap();
        let mut input = frame(XsType::Read, b, b"bee");
        input.extend(frame(XsType::WatchEvent, 0, b"/x\0tok\0"));
        input.extend(frame(XsType::Error, a, b"ENOENT\0"));
        // Feed one byte at a time: half messages must wait for the rest.
        for byte in input {
            c.receive(&[byte]).unwrap();
        }
        assert_eq!(c.take_reply(b), Some(Ok(Reply::Read(b"bee".to_vec()))));
        assert_eq!(c.take_reply(a), Some(Ok(Reply::Error(XsErrno::ENOENT))));
        assert_eq!(
            c.poll_event(),
            Some(WatchEvent {
                path: "/x".into(),
                token: "tok".into()
            })
        );
        assert!(!c.is_pending(a));
    }

    #[test]
    fn oversized_frame_is_a_protocol_error() {
        let mut c = ClientCore::new();
        let mut bad = frame(XsType::Read, 0, b"");
        bad[12..16].copy_from_slice(&5000u32.to_ne_bytes());
        assert!(matches!(
            c.receive(&bad),
            Err(ProtocolError::Frame(FrameError::TooLong(5000)))
        ));
    }
}
