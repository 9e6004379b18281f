//! The node tree with generation counts, and transactions as lazily copied private views.
//!
//! Every modification gives the node a fresh generation. A transaction copies each node on
//! first access (read or write) and remembers the generation it saw; commit succeeds only if
//! every accessed node still has that generation (or is still absent), which makes commits
//! serializable, like xenstored 4.17's transaction.c. Reads inside a transaction are served
//! from its copies, so it sees its own writes and never a later commit of someone else.

use std::collections::HashMap;

use crate::wire::{DomId, Perms};

/// One node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Value bytes.
    pub value: Vec<u8>,
    /// Permissions, owner first.
    pub perms: Perms,
    /// Child names, in creation order (xenstored appends to its child list).
    pub children: Vec<String>,
    /// Generation of the last modification.
    pub generation: u64,
}

impl Node {
    /// A new node without children.
    pub fn new(value: Vec<u8>, perms: Perms) -> Self {
        Self {
            value,
            perms,
            children: Vec::new(),
            generation: 0,
        }
    }

    /// Size of xenstored's database record for this node (header, perms, value, children),
    /// which its entry-size quota bounds.
    pub fn record_size(&self) -> usize {
        const HEADER: usize = 24;
        const PERM: usize = 8;
        HEADER
            + PERM * self.perms.len()
            + self.value.len()
            + self.children.iter().map(|c| c.len() + 1).sum::<usize>()
    }
}

/// A change for watches: `exact` changes fire only watches on exactly `path` (descendants
/// deleted with their parent), others fire watches on `path` and its ancestors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// Changed node.
    pub path: String,
    /// Only watches on exactly this path.
    pub exact: bool,
    /// The node's permissions at the change (for deleted nodes, before deletion).
    pub perms: Perms,
}

/// The committed tree.
#[derive(Debug)]
pub struct Store {
    nodes: HashMap<String, Node>,
    next_generation: u64,
    owned: HashMap<DomId, i64>,
}

/// A transaction's private view.
#[derive(Debug, Default)]
pub struct Txn {
    copies: HashMap<String, Copy>,
    /// Changes to announce at commit.
    pub changes: Vec<Change>,
    owned_delta: HashMap<DomId, i64>,
}

#[derive(Debug)]
struct Copy {
    node: Option<Node>,
    seen: Option<u64>,
    dirty: bool,
}

impl Store {
    /// A tree holding only `/` with the given permissions.
    pub fn new(root_perms: Perms) -> Self {
        let mut s = Self {
            nodes: HashMap::new(),
            next_generation: 1,
            owned: HashMap::new(),
        };
        s.set("/", Some(Node::new(Vec::new(), root_perms)));
        s
    }

    /// The committed node at `path`.
    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    /// Number of nodes (never 0: `/` always exists).
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Nodes owned by `domid`.
    pub fn owned_by(&self, domid: DomId) -> i64 {
        self.owned.get(&domid).copied().unwrap_or(0)
    }

    /// Replaces (`Some`) or deletes (`None`) one node, giving it a fresh generation.
    pub fn set(&mut self, path: &str, node: Option<Node>) {
        if let Some(old) = self.nodes.remove(path) {
            *self.owned.entry(old.perms.owner_id()).or_default() -= 1;
        }
        if let Some(mut node) = node {
            node.generation = self.next_generation;
            self.next_generation += 1;
            *self.owned.entry(node.perms.owner_id()).or_default() += 1;
            self.nodes.insert(path.to_owned(), node);
        }
    }

    /// Every path, for owner rewrites and dumps.
    pub fn paths(&self) -> Vec<String> {
        self.nodes.keys().cloned().collect()
    }

    /// Commits `txn`: `false` (nothing applied) if any node it accessed changed since.
    pub fn commit(&mut self, txn: &mut Txn) -> bool {
        let conflict = txn
            .copies
            .iter()
            .any(|(path, c)| self.nodes.get(path).map(|n| n.generation) != c.seen);
        if conflict {
            return false;
        }
        for (path, c) in txn.copies.drain() {
            if c.dirty {
                self.set(&path, c.node);
            }
        }
        true
    }
}

/// Access to the tree for one request: either the committed tree or a transaction's view.
#[derive(Debug)]
pub struct View<'a> {
    store: &'a mut Store,
    txn: Option<&'a mut Txn>,
}

impl<'a> View<'a> {
    /// A view for one request, inside `txn` if given.
    pub fn new(store: &'a mut Store, txn: Option<&'a mut Txn>) -> Self {
        Self { store, txn }
    }

    /// The node at `path` as this view sees it (recording the access in a transaction).
    pub fn get(&mut self, path: &str) -> Option<Node> {
        match self.txn.as_deref_mut() {
            None => self.store.get(path).cloned(),
            Some(txn) => {
                let store = &*self.store;
                txn.copies
                    .entry(path.to_owned())
                    .or_insert_with(|| {
                        let node = store.get(path).cloned();
                        Copy {
                            seen: node.as_ref().map(|n| n.generation),
                            node,
                            dirty: false,
                        }
                    })
                    .node
                    .clone()
            }
        }
    }

    /// Replaces or deletes one node (no recursion, parents untouched).
    pub fn set(&mut self, path: &str, node: Option<Node>) {
        let old_owner = self.get(path).map(|n| n.perms.owner_id());
        match self.txn.as_deref_mut() {
            None => self.store.set(path, node),
            Some(txn) => {
                if let Some(o) = old_owner {
                    *txn.owned_delta.entry(o).or_default() -= 1;
                }
                if let Some(n) = &node {
                    *txn.owned_delta.entry(n.perms.owner_id()).or_default() += 1;
                }
                if let Some(c) = txn.copies.get_mut(path) {
                    c.node = node;
                    c.dirty = true;
                }
            }
        }
    }

    /// Nodes `domid` owns as this view sees them.
    pub fn owned_by(&self, domid: DomId) -> i64 {
        let delta = self
            .txn
            .as_deref()
            .and_then(|t| t.owned_delta.get(&domid).copied())
            .unwrap_or(0);
        self.store.owned_by(domid) + delta
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::PermKind;

    fn node(v: &str) -> Node {
        Node::new(v.as_bytes().to_vec(), Perms::owner(0, PermKind::None))
    }

    #[test]
    fn transaction_sees_own_writes_and_conflicts_on_concurrent_change() {
        let mut store = Store::new(Perms::owner(0, PermKind::None));
        store.set("/a", Some(node("1")));
        let mut t = Txn::default();
        let mut v = View::new(&mut store, Some(&mut t));
        assert_eq!(v.get("/a").unwrap().value, b"1");
        v.set("/a", Some(node("2")));
        assert_eq!(v.get("/a").unwrap().value, b"2");
        assert_eq!(store.get("/a").unwrap().value, b"1");
        store.set("/a", Some(node("3")));
        assert!(!store.commit(&mut t));
        assert_eq!(store.get("/a").unwrap().value, b"3");

        let mut t2 = Txn::default();
        View::new(&mut store, Some(&mut t2)).set("/b", Some(node("x")));
        assert!(store.commit(&mut t2));
        assert_eq!(store.get("/b").unwrap().value, b"x");
        assert_eq!(store.owned_by(0), 3);
    }
}
