//! The daemon's protocol engine without I/O: connections in, reply and event bytes out.

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::ops::{Caller, Ops};
use super::store::{Store, Txn, View};
use super::watch::Watch;
use super::{Action, ConnId, Quotas};
use crate::wire::{
    emit_msg, DomId, FrameError, PermKind, Perms, Reply, Request, XsErrno, XsMsg, XsType,
    HEADER_LEN,
};

/// Output a connection may have pending before we stop reading its requests.
pub const OUT_SOFT_LIMIT: usize = 64 * 1024;
/// Output beyond which a connection that does not read is dropped.
pub const OUT_HARD_LIMIT: usize = 4 * 1024 * 1024;
/// Unprocessed input we buffer per connection.
pub const IN_LIMIT: usize = 64 * 1024;

/// Special watch nodes xenstored keeps outside the tree.
pub const SPECIAL_NODES: [&str; 2] = ["@introduceDomain", "@releaseDomain"];

#[derive(Debug)]
pub(crate) struct Conn {
    pub domid: DomId,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    pub watches: Vec<Watch>,
    pub txns: HashMap<u32, Txn>,
    pub next_tx: u32,
}

/// The xenstored engine.
///
/// Call [`Xenstored::connect`] for each new client, feed its bytes to
/// [`Xenstored::receive`], send what [`Xenstored::output`] holds (then
/// [`Xenstored::consume_output`]), and perform every [`Action`] from
/// [`Xenstored::poll_action`]. Read more input only while [`Xenstored::wants_input`].
#[derive(Debug)]
pub struct Xenstored {
    pub(crate) store: Store,
    pub(crate) conns: HashMap<ConnId, Conn>,
    /// Introduced domains (and dom0) with their XS_SET_TARGET target.
    pub(crate) domains: BTreeMap<DomId, Option<DomId>>,
    pub(crate) special: HashMap<&'static str, Perms>,
    pub(crate) quotas: Quotas,
    next_conn: u64,
    actions: VecDeque<Action>,
    /// A new watch's first firing, sent right after the WATCH reply.
    pub(crate) pending_initial_event: Option<(String, String)>,
}

impl Xenstored {
    /// A store holding xenstored's initial tree plus dom0's home.
    pub fn new(quotas: Quotas) -> Self {
        let dom0 = Perms::owner(0, PermKind::None);
        let mut s = Self {
            store: Store::new(dom0.clone()),
            conns: HashMap::new(),
            domains: BTreeMap::from([(0, None)]),
            special: SPECIAL_NODES.iter().map(|&n| (n, dom0.clone())).collect(),
            quotas,
            next_conn: 1,
            actions: VecDeque::new(),
            pending_initial_event: None,
        };
        let caller = Caller::DOM0;
        let mut view = View::new(&mut s.store, None);
        let mut ops = Ops::new(&mut view, caller, &s.quotas);
        for (path, value) in [
            ("/tool/xenstored", ""),
            ("/local/domain/0/domid", "0"),
            ("/local/domain/0/name", "Domain-0"),
        ] {
            // Cannot fail: privileged writes of valid paths into an empty tree.
            let _ = ops.write(path, value.as_bytes().to_vec());
        }
        s
    }

    /// Registers a client of `domid`; `None` if that domain is not introduced.
    pub fn connect(&mut self, domid: DomId) -> Option<ConnId> {
        self.domains.get(&domid)?;
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        self.conns.insert(
            id,
            Conn {
                domid,
                inbuf: Vec::new(),
                out: Vec::new(),
                watches: Vec::new(),
                txns: HashMap::new(),
                next_tx: 1,
            },
        );
        Some(id)
    }

    /// Forgets a client: its watches and open transactions go with it.
    pub fn disconnect(&mut self, conn: ConnId) {
        self.conns.remove(&conn);
    }

    /// Number of nodes in the committed tree.
    pub fn node_count(&self) -> usize {
        self.store.len()
    }

    /// The committed subtree at `root` in depth-first child order: (path, value, perms).
    pub fn dump(&self, root: &str) -> Vec<(String, Vec<u8>, Perms)> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_owned()];
        while let Some(p) = stack.pop() {
            let Some(n) = self.store.get(&p) else {
                continue;
            };
            out.push((p.clone(), n.value.clone(), n.perms.clone()));
            for c in n.children.iter().rev() {
                stack.push(super::path::child(&p, c));
            }
        }
        out
    }

    /// Whether `conn` is still open.
    pub fn is_connected(&self, conn: ConnId) -> bool {
        self.conns.contains_key(&conn)
    }

    /// Whether the shell should read more from `conn` (its output is draining and its
    /// input buffer has room); this is what keeps a client that never reads bounded.
    pub fn wants_input(&self, conn: ConnId) -> bool {
        self.conns
            .get(&conn)
            .is_some_and(|c| c.out.len() < OUT_SOFT_LIMIT && c.inbuf.len() < IN_LIMIT)
    }

    /// Bytes waiting to be sent to `conn`.
    pub fn output(&self, conn: ConnId) -> &[u8] {
        self.conns.get(&conn).map_or(&[], |c| &c.out)
    }

    /// Marks `n` output bytes as sent and processes input held back while output was full.
    pub fn consume_output(&mut self, conn: ConnId, n: usize) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.out.drain(..n.min(c.out.len()));
        }
        self.process(conn);
    }

    /// The next thing the shell must do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Feeds bytes read from `conn` and handles every complete request.
    pub fn receive(&mut self, conn: ConnId, bytes: &[u8]) {
        match self.conns.get_mut(&conn) {
            Some(c) => c.inbuf.extend_from_slice(bytes),
            None => return,
        }
        self.process(conn);
    }

    fn process(&mut self, conn: ConnId) {
        loop {
            let Some(c) = self.conns.get_mut(&conn) else {
                return;
            };
            if c.out.len() >= OUT_SOFT_LIMIT {
                return;
            }
            let (header, payload) = match XsMsg::new_checked(&c.inbuf[..]) {
                Ok(m) => (m.header(), m.payload().to_vec()),
                Err(FrameError::Truncated { .. }) => return,
                Err(FrameError::TooLong(len)) => {
                    tracing::warn!(?conn, domid = c.domid, len, "oversized message, closing");
                    self.close(conn);
                    return;
                }
            };
            c.inbuf.drain(..HEADER_LEN + payload.len());
            let span = tracing::debug_span!("xs", domid = c.domid, conn = conn.0);
            let _enter = span.enter();
            self.dispatch(conn, header.ty, header.req_id, header.tx_id, &payload);
        }
    }

    pub(crate) fn close(&mut self, conn: ConnId) {
        if self.conns.remove(&conn).is_some() {
            self.actions.push_back(Action::Close(conn));
        }
    }

    pub(crate) fn push_action(&mut self, a: Action) {
        self.actions.push_back(a);
    }

    pub(crate) fn caller(&self, domid: DomId) -> Caller {
        Caller {
            domid,
            privileged: domid == 0,
            target: self.domains.get(&domid).copied().flatten(),
        }
    }

    fn send(&mut self, conn: ConnId, ty: XsType, req_id: u32, tx_id: u32, reply: &Reply) {
        let mut body = Vec::new();
        reply.emit(&mut body);
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let wire = reply.wire_type(ty).raw();
        if emit_msg(&mut c.out, wire, req_id, tx_id, &body).is_err() {
            // Only a too-long reply can fail; xenstored answers E2BIG.
            let mut e = Vec::new();
            Reply::Error(XsErrno::E2BIG).emit(&mut e);
            let _ = emit_msg(&mut c.out, XsType::Error.raw(), req_id, tx_id, &e);
        }
    }

    /// Queues a watch event, dropping a client whose unread output has grown past the limit.
    pub(crate) fn send_event(&mut self, conn: ConnId, path: &str, token: &str) {
        let over = match self.conns.get_mut(&conn) {
            Some(c) => {
                let mut body = Vec::with_capacity(path.len() + token.len() + 2);
                Reply::WatchEvent {
                    path: path.into(),
                    token: token.into(),
                }
                .emit(&mut body);
                if emit_msg(&mut c.out, XsType::WatchEvent.raw(), 0, 0, &body).is_err() {
                    tracing::warn!(
                        ?conn,
                        "watch event longer than XENSTORE_PAYLOAD_MAX dropped"
                    );
                }
                c.out.len() > OUT_HARD_LIMIT
            }
            None => false,
        };
        if over {
            tracing::warn!(?conn, "client does not read its events, closing");
            self.close(conn);
        }
    }

    fn dispatch(&mut self, conn: ConnId, raw_ty: u32, req_id: u32, tx_id: u32, payload: &[u8]) {
        let Some(ty) = XsType::from_raw(raw_ty) else {
            tracing::debug!(?conn, raw_ty, "unknown message type");
            let e = Reply::Error(XsErrno::ENOSYS);
            return self.send(conn, XsType::Error, req_id, tx_id, &e);
        };
        tracing::trace!(?conn, ?ty, req_id, tx_id, len = payload.len(), "request");
        let reply = match Request::parse(ty, payload) {
            Ok(req) => self.execute(conn, tx_id, req).unwrap_or_else(Reply::Error),
            Err(e) => Reply::Error(e.errno()),
        };
        self.send(conn, ty, req_id, tx_id, &reply);
        if let Some((path, token)) = self.pending_initial_event.take() {
            self.send_event(conn, &path, &token);
        }
    }
}
