//! Node operations with xenstored's permission, quota and error rules, over a [`View`].

use super::path::{basename, child, parent};
use super::store::{Change, Node, View};
use super::Quotas;
use crate::wire::{DomId, Perms, XsErrno, PAYLOAD_MAX};

/// Who is asking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The connection's domain.
    pub domid: DomId,
    /// The control domain: full access, exempt from quotas.
    pub privileged: bool,
    /// Domain whose privileges this one also has (XS_SET_TARGET).
    pub target: Option<DomId>,
}

impl Caller {
    /// The daemon itself acting as dom0 (initial nodes, domain homes and their removal).
    pub const DOM0: Caller = Caller {
        domid: 0,
        privileged: true,
        target: None,
    };
}

/// Access rights of a caller on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// May read.
    pub read: bool,
    /// May write.
    pub write: bool,
    /// May change permissions.
    pub owner: bool,
}

/// What an operation needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Read.
    Read,
    /// Write.
    Write,
    /// Write and ownership (SET_PERMS).
    Own,
}

impl Caller {
    /// xenstored's `perm_for_conn`: owners, the owner's target and the control domain get
    /// everything; others get the first entry naming them (or their target), else the
    /// owner entry's default.
    pub fn access(&self, perms: &Perms) -> Access {
        let owner = perms.owner_id();
        if self.privileged || owner == self.domid || Some(owner) == self.target {
            return Access {
                read: true,
                write: true,
                owner: true,
            };
        }
        let mine = perms
            .as_slice()
            .iter()
            .skip(1)
            .find(|p| p.domid == self.domid);
        let theirs = || {
            let t = self.target?;
            perms.as_slice().iter().skip(1).find(|p| p.domid == t)
        };
        let kind = mine
            .or_else(theirs)
            .or_else(|| perms.as_slice().first())
            .map(|p| p.kind)
            .unwrap_or(crate::wire::PermKind::None);
        Access {
            read: kind.can_read(),
            write: kind.can_write(),
            owner: false,
        }
    }

    fn allows(&self, perms: &Perms, need: Need) -> bool {
        let a = self.access(perms);
        match need {
            Need::Read => a.read,
            Need::Write => a.write,
            Need::Own => a.write && a.owner,
        }
    }
}

/// One request's operations on a view, collecting the changes watches must hear about.
#[derive(Debug)]
pub struct Ops<'v, 'a> {
    view: &'v mut View<'a>,
    caller: Caller,
    quotas: &'v Quotas,
    /// Changes made so far.
    pub changes: Vec<Change>,
}

impl<'v, 'a> Ops<'v, 'a> {
    /// Operations by `caller` on `view`.
    pub fn new(view: &'v mut View<'a>, caller: Caller, quotas: &'v Quotas) -> Self {
        Self {
            view,
            caller,
            quotas,
            changes: Vec::new(),
        }
    }

    /// xenstored's `get_node` + `errno_from_parents`: the node if `need` is granted;
    /// otherwise ENOENT or EACCES, EACCES whenever the nearest existing ancestor does not
    /// grant `need` either (so a denied caller learns nothing about existence).
    pub fn get_node(&mut self, path: &str, need: Need) -> Result<Node, XsErrno> {
        let node = self.view.get(path);
        let errnum = match node {
            Some(n) if self.caller.allows(&n.perms, need) => return Ok(n),
            Some(_) => XsErrno::EACCES,
            None => XsErrno::ENOENT,
        };
        let mut p = path;
        let ancestor = loop {
            if p == "/" {
                break None;
            }
            p = parent(p);
            if let Some(n) = self.view.get(p) {
                break Some(n);
            }
        };
        match ancestor {
            Some(a) if self.caller.allows(&a.perms, need) => Err(errnum),
            _ => Err(XsErrno::EACCES),
        }
    }

    fn check_size(&self, node: &Node) -> Result<(), XsErrno> {
        if !self.caller.privileged && node.record_size() >= self.quotas.entry_size {
            return Err(XsErrno::ENOSPC);
        }
        Ok(())
    }

    /// XS_READ.
    pub fn read(&mut self, path: &str) -> Result<Vec<u8>, XsErrno> {
        Ok(self.get_node(path, Need::Read)?.value)
    }

    /// XS_DIRECTORY: E2BIG if the list does not fit one reply.
    pub fn directory(&mut self, path: &str) -> Result<Vec<String>, XsErrno> {
        let children = self.get_node(path, Need::Read)?.children;
        if children.iter().map(|c| c.len() + 1).sum::<usize>() > PAYLOAD_MAX {
            return Err(XsErrno::E2BIG);
        }
        Ok(children)
    }

    /// XS_DIRECTORY_PART: (generation, children from byte `offset` of the NUL-separated
    /// child list, list complete), cut to fit one reply exactly as xenstored does (an
    /// offset inside a name yields the rest of that name).
    pub fn directory_part(
        &mut self,
        path: &str,
        offset: u32,
    ) -> Result<(u64, Vec<String>, bool), XsErrno> {
        let node = self.get_node(path, Need::Read)?;
        let mut list = Vec::new();
        for c in &node.children {
            list.extend_from_slice(c.as_bytes());
            list.push(0);
        }
        let gen_len = node.generation.to_string().len() + 1;
        let max = PAYLOAD_MAX - gen_len - 1;
        let off = usize::try_from(offset).unwrap_or(usize::MAX);
        let Some(rest) = list.get(off..).filter(|r| !r.is_empty()) else {
            return Ok((node.generation, Vec::new(), true));
        };
        let mut len = 0;
        let mut part = Vec::new();
        for name in rest.split_inclusive(|&b| b == 0) {
            if len + name.len() > max {
                break;
            }
            len += name.len();
            let text = name.strip_suffix(&[0]).unwrap_or(name);
            part.push(String::from_utf8_lossy(text).into_owned());
        }
        Ok((node.generation, part, len == rest.len()))
    }

    /// XS_GET_PERMS.
    pub fn get_perms(&mut self, path: &str) -> Result<Perms, XsErrno> {
        Ok(self.get_node(path, Need::Read)?.perms)
    }

    /// XS_WRITE: replaces the value, creating the node and missing parents.
    pub fn write(&mut self, path: &str, value: Vec<u8>) -> Result<(), XsErrno> {
        match self.get_node(path, Need::Write) {
            Ok(mut node) => {
                node.value = value;
                self.replace(path, node)
            }
            Err(XsErrno::ENOENT) => self.create(path, value),
            Err(e) => Err(e),
        }
    }

    /// XS_MKDIR: creates an empty node and missing parents; fine if it exists.
    pub fn mkdir(&mut self, path: &str) -> Result<(), XsErrno> {
        match self.get_node(path, Need::Write) {
            Ok(_) => Ok(()),
            Err(XsErrno::ENOENT) => self.create(path, Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Creates `path` and any missing ancestors, inheriting permissions from the nearest
    /// existing ancestor; an unprivileged creator owns what it creates.
    fn create(&mut self, path: &str, value: Vec<u8>) -> Result<(), XsErrno> {
        let mut missing = vec![path.to_owned()];
        let mut p = path;
        let (base_path, mut base) = loop {
            p = parent(p);
            match self.view.get(p) {
                Some(n) => break (p.to_owned(), n),
                None if p == "/" => return Err(XsErrno::ENOENT),
                None => missing.push(p.to_owned()),
            }
        };
        let mut perms = base.perms.clone();
        if !self.caller.privileged {
            perms.set_owner(self.caller.domid);
            let new = i64::try_from(missing.len()).unwrap_or(i64::MAX);
            if self.view.owned_by(self.caller.domid).saturating_add(new)
                > self.quotas.nodes_per_domain
            {
                return Err(XsErrno::ENOSPC);
            }
        }
        // Build top-down, checking every record's size before changing anything.
        let mut built: Vec<(String, Node)> = Vec::with_capacity(missing.len());
        base.children
            .push(basename(missing.last().map_or(path, String::as_str)).to_owned());
        self.check_size(&base)?;
        for (i, name) in missing.iter().enumerate().rev() {
            let mut node = Node::new(Vec::new(), perms.clone());
            if i == 0 {
                node.value = value.clone();
            } else if let Some(below) = missing.get(i - 1) {
                node.children.push(basename(below).to_owned());
            }
            self.check_size(&node)?;
            built.push((name.clone(), node));
        }
        self.view.set(&base_path, Some(base));
        for (name, node) in built {
            self.view.set(&name, Some(node));
        }
        self.changes.push(Change {
            path: path.to_owned(),
            exact: false,
            perms,
        });
        Ok(())
    }

    /// XS_RM: removes the subtree; fine if the node is gone but its parent exists.
    pub fn rm(&mut self, path: &str) -> Result<(), XsErrno> {
        let node = match self.get_node(path, Need::Write) {
            Ok(n) => n,
            Err(XsErrno::ENOENT) => {
                return match self.view.get(parent(path)) {
                    Some(_) => Ok(()),
                    None => Err(XsErrno::ENOENT),
                }
            }
            Err(e) => return Err(e),
        };
        if path == "/" {
            return Err(XsErrno::EINVAL);
        }
        let parent_path = parent(path);
        if let Some(mut p) = self.view.get(parent_path) {
            let name = basename(path);
            p.children.retain(|c| c != name);
            self.view.set(parent_path, Some(p));
        }
        self.delete_tree(path, node, true);
        Ok(())
    }

    /// Deletes `node` at `path` and its descendants, children first (xenstored fires the
    /// watches of each deleted node exactly, and the top one like a modification).
    fn delete_tree(&mut self, path: &str, node: Node, top: bool) {
        for c in &node.children {
            let cp = child(path, c);
            if let Some(cn) = self.view.get(&cp) {
                self.delete_tree(&cp, cn, false);
            }
        }
        self.view.set(path, None);
        self.changes.push(Change {
            path: path.to_owned(),
            exact: !top,
            perms: node.perms,
        });
    }

    /// XS_SET_PERMS on a regular node.
    pub fn set_perms(&mut self, path: &str, perms: Perms) -> Result<(), XsErrno> {
        let mut node = self.get_node(path, Need::Own)?;
        if !self.caller.privileged {
            if perms.len() > self.quotas.perms_per_node {
                return Err(XsErrno::ENOSPC);
            }
            if perms.owner_id() != node.perms.owner_id() {
                return Err(XsErrno::EPERM);
            }
        }
        node.perms = perms;
        self.replace(path, node)
    }

    /// Stores a changed existing node (within the size quota) and records the change for
    /// the watches.
    fn replace(&mut self, path: &str, node: Node) -> Result<(), XsErrno> {
        self.check_size(&node)?;
        let perms = node.perms.clone();
        self.view.set(path, Some(node));
        self.changes.push(Change {
            path: path.to_owned(),
            exact: false,
            perms,
        });
        Ok(())
    }
}
