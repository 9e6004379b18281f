//! The daemon's USB/IP connections by id, and which of them may have something to write.
//!
//! Invariant: a connection reached through [`Links::get_mut`] (or just inserted) is marked
//! dirty until the next [`Links::take_dirty`], because anything that reaches its session may
//! have queued answers. [`super::Daemon::flush_links`] visits only the dirty ones, through
//! [`Links::peek_mut`], which does not mark: with hundreds of connections (8 controllers × 31
//! ports) an event on one port no longer costs a pass over all of them.

use std::collections::HashMap;

struct Entry<L> {
    link: L,
    dirty: bool,
}

/// Connections by id, with the set of those touched since the last flush.
pub(super) struct Links<L> {
    map: HashMap<usize, Entry<L>>,
    /// Ids marked dirty, each once (an id may have been removed since).
    dirty: Vec<usize>,
}

impl<L> Links<L> {
    pub(super) fn new() -> Self {
        Self {
            map: HashMap::new(),
            dirty: Vec::new(),
        }
    }

    /// Adds (or replaces) a connection, dirty.
    pub(super) fn insert(&mut self, id: usize, link: L) {
        self.map.insert(id, Entry { link, dirty: false });
        self.mark(id);
    }

    pub(super) fn remove(&mut self, id: usize) -> Option<L> {
        self.map.remove(&id).map(|e| e.link)
    }

    /// The connection, marked dirty.
    pub(super) fn get_mut(&mut self, id: usize) -> Option<&mut L> {
        let e = self.map.get_mut(&id)?;
        if !e.dirty {
            e.dirty = true;
            self.dirty.push(id);
        }
        Some(&mut e.link)
    }

    /// The connection, left as it is: for the flush itself.
    pub(super) fn peek_mut(&mut self, id: usize) -> Option<&mut L> {
        self.map.get_mut(&id).map(|e| &mut e.link)
    }

    /// Marks a connection to be visited by the next flush again.
    pub(super) fn mark(&mut self, id: usize) {
        let _ = self.get_mut(id);
    }

    /// Moves the dirty ids into `into` (appending) and clears their marks.
    pub(super) fn take_dirty(&mut self, into: &mut Vec<usize>) {
        for id in self.dirty.drain(..) {
            // An id removed and re-added while dirty is listed twice: report it once.
            if let Some(e) = self.map.get_mut(&id).filter(|e| e.dirty) {
                e.dirty = false;
                into.push(id);
            }
        }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (usize, &L)> {
        self.map.iter().map(|(&id, e)| (id, &e.link))
    }

    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::Links;

    fn dirty(l: &mut Links<u32>) -> Vec<usize> {
        let mut v = Vec::new();
        l.take_dirty(&mut v);
        v.sort_unstable();
        v
    }

    #[test]
    fn touched_connections_are_dirty_once_until_taken() {
        let mut l = Links::new();
        for id in 0..300 {
            l.insert(id, 0);
        }
        assert_eq!(dirty(&mut l), (0..300).collect::<Vec<_>>());
        assert_eq!(dirty(&mut l), Vec::<usize>::new());
        *l.get_mut(7).unwrap() += 1;
        *l.get_mut(7).unwrap() += 1;
        *l.get_mut(250).unwrap() += 1;
        assert_eq!(dirty(&mut l), vec![7, 250]);
        // The flush's own access leaves no mark; an explicit one does.
        *l.peek_mut(7).unwrap() += 1;
        assert_eq!(dirty(&mut l), Vec::<usize>::new());
        l.mark(9);
        l.mark(9);
        assert_eq!(dirty(&mut l), vec![9]);
        assert_eq!(l.iter().find(|&(id, _)| id == 7).map(|(_, &v)| v), Some(3));
    }

    #[test]
    fn removed_or_unknown_ids_are_not_reported() {
        let mut l = Links::new();
        l.insert(1, 0);
        l.insert(2, 0);
        assert_eq!(l.remove(1), Some(0));
        l.mark(42);
        assert!(l.get_mut(42).is_none());
        assert_eq!(dirty(&mut l), vec![2]);
        // Removed while dirty, then re-added: reported once.
        let _ = l.get_mut(2);
        l.remove(2);
        l.insert(2, 5);
        assert_eq!(dirty(&mut l), vec![2]);
        assert_eq!((l.len(), l.is_empty()), (1, false));
    }
}
