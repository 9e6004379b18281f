//! Executes one parsed request for one connection: transaction lookup, path rules, dispatch.

use super::core::{Xenstored, SPECIAL_NODES};
use super::ops::Ops;
use super::path::{canonicalize, domain_path, is_special, is_valid_node, is_valid_special};
use super::store::{Txn, View};
use super::watch::Watch;
use super::ConnId;
use crate::wire::{Perms, Reply, Request, XsErrno};

/// Requests that ignore the header's transaction id (xenstored's `XS_FLAG_NOTID`).
fn ignores_tx(req: &Request) -> bool {
    matches!(
        req,
        Request::Watch { .. }
            | Request::Unwatch { .. }
            | Request::Introduce { .. }
            | Request::Release { .. }
            | Request::GetDomainPath { .. }
            | Request::IsDomainIntroduced { .. }
            | Request::Resume { .. }
            | Request::SetTarget { .. }
            | Request::ResetWatches
            | Request::Control { .. }
    )
}

/// A node path the request may name: canonical and valid, else EINVAL.
fn node_path(domid: u16, path: &str) -> Result<String, XsErrno> {
    let p = canonicalize(domid, path, false);
    if is_valid_node(&p) {
        Ok(p)
    } else {
        Err(XsErrno::EINVAL)
    }
}

impl Xenstored {
    pub(crate) fn execute(
        &mut self,
        conn: ConnId,
        tx_id: u32,
        req: Request,
    ) -> Result<Reply, XsErrno> {
        let domid = self.conns.get(&conn).ok_or(XsErrno::EIO)?.domid;
        let caller = self.caller(domid);
        let tx = if ignores_tx(&req) || tx_id == 0 {
            None
        } else {
            Some(tx_id)
        };
        if let Some(t) = tx {
            let known = self
                .conns
                .get(&conn)
                .is_some_and(|c| c.txns.contains_key(&t));
            if !known {
                return Err(XsErrno::ENOENT);
            }
        }
        match req {
            Request::TransactionStart => {
                if tx.is_some() {
                    return Err(XsErrno::EBUSY);
                }
                let limit = self.quotas.transactions_per_conn;
                let c = self.conns.get_mut(&conn).ok_or(XsErrno::EIO)?;
                if !caller.privileged && c.txns.len() >= limit {
                    return Err(XsErrno::ENOSPC);
                }
                let mut id = c.next_tx;
                while id == 0 || c.txns.contains_key(&id) {
                    id = id.wrapping_add(1);
                }
                c.next_tx = id.wrapping_add(1);
                c.txns.insert(id, Txn::default());
                Ok(Reply::TransactionStarted(id))
            }
            Request::TransactionEnd { commit } => {
                let t = tx.ok_or(XsErrno::ENOENT)?;
                let c = self.conns.get_mut(&conn).ok_or(XsErrno::EIO)?;
                let mut txn = c.txns.remove(&t).ok_or(XsErrno::ENOENT)?;
                if commit {
                    if !self.store.commit(&mut txn) {
                        return Err(XsErrno::EAGAIN);
                    }
                    self.fire(&txn.changes);
                }
                Ok(Reply::Ok)
            }
            Request::Watch { path, token } => self.watch(conn, domid, path, token),
            Request::Unwatch { path, token } => {
                let (node, _) = watch_node(domid, &path)?;
                let c = self.conns.get_mut(&conn).ok_or(XsErrno::EIO)?;
                let i = c
                    .watches
                    .iter()
                    .position(|w| w.node == node && w.token == token)
                    .ok_or(XsErrno::ENOENT)?;
                c.watches.remove(i);
                Ok(Reply::Ok)
            }
            Request::ResetWatches => {
                let c = self.conns.get_mut(&conn).ok_or(XsErrno::EIO)?;
                c.watches.clear();
                c.txns.clear();
                Ok(Reply::Ok)
            }
            Request::GetDomainPath { domid } => Ok(Reply::DomainPath(domain_path(domid))),
            Request::IsDomainIntroduced { domid } => {
                Ok(Reply::IsIntroduced(self.domains.contains_key(&domid)))
            }
            Request::Introduce { domid: d, .. } => {
                self.require_privileged(caller.privileged)?;
                self.introduce(d)
            }
            Request::Release { domid: d } => {
                self.require_privileged(caller.privileged)?;
                self.release(d)
            }
            Request::Resume { domid: d } => {
                self.require_privileged(caller.privileged)?;
                if d == 0 || !self.domains.contains_key(&d) {
                    return Err(XsErrno::ENOENT);
                }
                Ok(Reply::Ok)
            }
            Request::SetTarget { domid: d, target } => {
                self.require_privileged(caller.privileged)?;
                if !self.domains.contains_key(&d) || !self.domains.contains_key(&target) {
                    return Err(XsErrno::ENOENT);
                }
                self.domains.insert(d, Some(target));
                Ok(Reply::Ok)
            }
            Request::Control { args } => {
                self.require_privileged(caller.privileged)?;
                self.control(&args)
            }
            Request::GetPerms { path } if is_special(&path) => {
                let p = self.special_perms(&path)?;
                if !caller.access(p).read {
                    return Err(XsErrno::EACCES);
                }
                Ok(Reply::Perms(p.clone()))
            }
            Request::SetPerms { path, perms } if is_special(&path) => {
                let p = self.special_perms(&path)?;
                if !caller.access(p).owner {
                    return Err(XsErrno::EACCES);
                }
                let key = SPECIAL_NODES
                    .iter()
                    .find(|&&n| n == path)
                    .ok_or(XsErrno::ENOENT)?;
                self.special.insert(key, perms);
                Ok(Reply::Ok)
            }
            other => self.node_op(conn, domid, tx, other),
        }
    }

    fn require_privileged(&self, privileged: bool) -> Result<(), XsErrno> {
        if privileged {
            Ok(())
        } else {
            Err(XsErrno::EACCES)
        }
    }

    fn special_perms(&self, path: &str) -> Result<&Perms, XsErrno> {
        self.special.get(path).ok_or(XsErrno::ENOENT)
    }

    /// Requests that read or change nodes, inside the connection's transaction if any.
    fn node_op(
        &mut self,
        conn: ConnId,
        domid: u16,
        tx: Option<u32>,
        req: Request,
    ) -> Result<Reply, XsErrno> {
        let caller = self.caller(domid);
        let mut txn = match tx {
            Some(t) => Some(
                self.conns
                    .get_mut(&conn)
                    .and_then(|c| c.txns.remove(&t))
                    .ok_or(XsErrno::ENOENT)?,
            ),
            None => None,
        };
        let mut view = View::new(&mut self.store, txn.as_mut());
        let mut ops = Ops::new(&mut view, caller, &self.quotas);
        let result = match req {
            Request::Read { path } => ops.read(&node_path(domid, &path)?).map(Reply::Read),
            Request::Directory { path } => ops
                .directory(&node_path(domid, &path)?)
                .map(Reply::Directory),
            Request::DirectoryPart { path, offset } => ops
                .directory_part(&node_path(domid, &path)?, offset)
                .map(|(generation, children, complete)| Reply::DirectoryPart {
                    generation,
                    children,
                    complete,
                }),
            Request::GetPerms { path } => {
                ops.get_perms(&node_path(domid, &path)?).map(Reply::Perms)
            }
            Request::Write { path, value } => ops
                .write(&node_path(domid, &path)?, value)
                .map(|()| Reply::Ok),
            Request::Mkdir { path } => ops.mkdir(&node_path(domid, &path)?).map(|()| Reply::Ok),
            Request::Rm { path } => ops.rm(&node_path(domid, &path)?).map(|()| Reply::Ok),
            Request::SetPerms { path, perms } => ops
                .set_perms(&node_path(domid, &path)?, perms)
                .map(|()| Reply::Ok),
            _ => Err(XsErrno::EINVAL),
        };
        let changes = std::mem::take(&mut ops.changes);
        match (tx, txn) {
            (Some(t), Some(mut txn)) => {
                txn.changes.extend(changes);
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.txns.insert(t, txn);
                }
            }
            _ => self.fire(&changes),
        }
        result
    }

    fn watch(
        &mut self,
        conn: ConnId,
        domid: u16,
        path: String,
        token: String,
    ) -> Result<Reply, XsErrno> {
        let (node, relative) = watch_node(domid, &path)?;
        let caller = self.caller(domid);
        if !caller.privileged && self.watches_of_domain(domid) >= self.quotas.watches_per_domain {
            return Err(XsErrno::E2BIG);
        }
        let c = self.conns.get_mut(&conn).ok_or(XsErrno::EIO)?;
        if c.watches.iter().any(|w| w.node == node && w.token == token) {
            return Err(XsErrno::EEXIST);
        }
        let w = Watch {
            node,
            token,
            relative,
        };
        let first = w.event_path(domid, &w.node);
        self.pending_initial_event = Some((first, w.token.clone()));
        c.watches.push(w);
        Ok(Reply::Ok)
    }

    fn control(&mut self, args: &[Vec<u8>]) -> Result<Reply, XsErrno> {
        match args.first().map(Vec::as_slice) {
            Some(b"check") => Ok(Reply::Control(b"OK\0".to_vec())),
            Some(b"print") => {
                let text: Vec<String> = args
                    .iter()
                    .skip(1)
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                tracing::info!(message = %text.join(" "), "xenstore-control print");
                Ok(Reply::Control(b"OK\0".to_vec()))
            }
            Some(b"quota") => {
                let q = &self.quotas;
                let text = format!(
                    "nodes {}\nentry-size {}\nwatches {}\ntransactions {}\nperms {}\n\0",
                    q.nodes_per_domain,
                    q.entry_size,
                    q.watches_per_domain,
                    q.transactions_per_conn,
                    q.perms_per_node
                );
                Ok(Reply::Control(text.into_bytes()))
            }
            Some(b"help") => Ok(Reply::Control(
                b"Available commands:\ncheck\nhelp\nprint\nquota\n\0".to_vec(),
            )),
            _ => Err(XsErrno::EINVAL),
        }
    }
}

/// The canonical node a WATCH/UNWATCH names, and whether it was relative.
fn watch_node(domid: u16, path: &str) -> Result<(String, bool), XsErrno> {
    if is_special(path) {
        return if is_valid_special(path) {
            Ok((path.to_owned(), false))
        } else {
            Err(XsErrno::EINVAL)
        };
    }
    let relative = !path.starts_with('/');
    Ok((node_path(domid, path)?, relative))
}
