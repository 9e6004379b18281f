//! Domain lifecycle: XS_INTRODUCE creates a domain's home and socket, XS_RELEASE tears them down.

use super::core::Xenstored;
use super::ops::{Caller, Ops};
use super::path::{child, domain_path};
use super::store::{Change, View};
use super::Action;
use crate::wire::{DomId, PermKind, Perms, Reply, XsErrno};

/// `DOMID_FIRST_RESERVED`: ids from here on are special (DOMID_SELF, DOMID_IO, ...).
pub const DOMID_FIRST_RESERVED: DomId = 0x7ff0;

impl Xenstored {
    fn special_change(&self, name: &str) -> Change {
        Change {
            path: name.to_owned(),
            exact: false,
            perms: self
                .special
                .get(name)
                .cloned()
                .unwrap_or_else(|| Perms::owner(0, PermKind::None)),
        }
    }

    /// XS_INTRODUCE: registers `domid`, creates `/local/domain/<domid>` as libxl does
    /// (`n0,r<domid>`, with the guest-writable `data`, `drivers`, `feature`, `attr` and
    /// `error` directories) unless it exists, and fires `@introduceDomain`.
    /// Re-introducing an introduced domain is a no-op, as in xenstored.
    pub(crate) fn introduce(&mut self, domid: DomId) -> Result<Reply, XsErrno> {
        if domid == 0 || domid >= DOMID_FIRST_RESERVED {
            return Err(XsErrno::EINVAL);
        }
        if self.domains.contains_key(&domid) {
            return Ok(Reply::Ok);
        }
        self.domains.insert(domid, None);
        let home = domain_path(domid);
        let mut changes = Vec::new();
        if self.store.get(&home).is_none() {
            let caller = Caller::DOM0;
            let mut view = View::new(&mut self.store, None);
            let mut ops = Ops::new(&mut view, caller, &self.quotas);
            let tool = Perms::owner(0, PermKind::None).with(PermKind::Read, domid);
            let guest = Perms::owner(domid, PermKind::None);
            let mut make = || -> Result<(), XsErrno> {
                ops.mkdir(&home)?;
                ops.set_perms(&home, tool.clone())?;
                ops.write(&child(&home, "domid"), domid.to_string().into_bytes())?;
                for d in ["control", "device"] {
                    ops.mkdir(&child(&home, d))?;
                }
                for d in ["attr", "data", "drivers", "error", "feature"] {
                    let p = child(&home, d);
                    ops.mkdir(&p)?;
                    ops.set_perms(&p, guest.clone())?;
                }
                Ok(())
            };
            let made = make();
            changes = std::mem::take(&mut ops.changes);
            made?;
        }
        changes.push(self.special_change("@introduceDomain"));
        self.fire(&changes);
        self.push_action(Action::DomainIntroduced(domid));
        tracing::info!(domid, "domain introduced");
        Ok(Reply::Ok)
    }

    /// XS_RELEASE: closes the domain's connections (dropping their watches and
    /// transactions), removes its home, gives its remaining nodes to dom0 (as xenstored
    /// does for a dead domain's nodes) and fires `@releaseDomain`.
    pub(crate) fn release(&mut self, domid: DomId) -> Result<Reply, XsErrno> {
        if domid == 0 || domid >= DOMID_FIRST_RESERVED {
            return Err(XsErrno::EINVAL);
        }
        if self.domains.remove(&domid).is_none() {
            return Err(XsErrno::ENOENT);
        }
        let conns: Vec<_> = self
            .conns
            .iter()
            .filter(|(_, c)| c.domid == domid)
            .map(|(&id, _)| id)
            .collect();
        for id in conns {
            self.close(id);
        }
        for t in self.domains.values_mut() {
            if *t == Some(domid) {
                *t = None;
            }
        }
        let caller = Caller::DOM0;
        let mut view = View::new(&mut self.store, None);
        let mut ops = Ops::new(&mut view, caller, &self.quotas);
        // ENOENT if the toolstack already removed the home: nothing to do.
        let _ = ops.rm(&domain_path(domid));
        let mut changes = std::mem::take(&mut ops.changes);
        for path in self.store.paths() {
            if let Some(node) = self.store.get(&path) {
                if node.perms.owner_id() == domid {
                    let mut node = node.clone();
                    node.perms.set_owner(0);
                    self.store.set(&path, Some(node));
                }
            }
        }
        changes.push(self.special_change("@releaseDomain"));
        self.fire(&changes);
        self.push_action(Action::DomainReleased(domid));
        tracing::info!(domid, "domain released");
        Ok(Reply::Ok)
    }
}
