//! Watches: registration rules and firing (which watch hears which change, and under what name).

use super::core::Xenstored;
use super::path::{domain_path, is_child, is_special, parent};
use super::store::Change;
use super::ConnId;

/// One registered watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watch {
    /// Canonical watched path (or `@special`).
    pub node: String,
    /// Token echoed in events.
    pub token: String,
    /// Registered with a relative path: events report paths relative to the domain home.
    pub relative: bool,
}

impl Watch {
    /// Whether `change` fires this watch (xenstored's `fire_watches`).
    pub fn matches(&self, change: &Change) -> bool {
        if change.exact {
            self.node == change.path
        } else {
            is_child(&change.path, &self.node)
        }
    }

    /// The path reported to the watcher.
    pub fn event_path(&self, domid: u16, path: &str) -> String {
        if self.relative {
            let home = domain_path(domid);
            if let Some(rest) = path.strip_prefix(&home) {
                return rest.strip_prefix('/').unwrap_or(rest).to_owned();
            }
        }
        path.to_owned()
    }
}

impl Xenstored {
    /// Sends each change to every watch it fires and whose connection may see it: special
    /// nodes by their own permissions, others if the watcher can read the node (as it was)
    /// or its parent (xenstored's `watch_permitted`).
    pub(crate) fn fire(&mut self, changes: &[Change]) {
        let mut events: Vec<(ConnId, String, String)> = Vec::new();
        let mut ids: Vec<ConnId> = self.conns.keys().copied().collect();
        ids.sort();
        for change in changes {
            for &id in &ids {
                let Some(conn) = self.conns.get(&id) else {
                    continue;
                };
                let caller = self.caller(conn.domid);
                let mut permitted = None;
                for w in conn.watches.iter().filter(|w| w.matches(change)) {
                    let ok = *permitted.get_or_insert_with(|| {
                        if is_special(&change.path) {
                            self.special
                                .get(change.path.as_str())
                                .is_some_and(|p| caller.access(p).read)
                        } else {
                            caller.access(&change.perms).read
                                || self
                                    .store
                                    .get(parent(&change.path))
                                    .is_some_and(|n| caller.access(&n.perms).read)
                        }
                    });
                    if ok {
                        events.push((id, w.event_path(conn.domid, &change.path), w.token.clone()));
                    }
                }
            }
        }
        for (id, path, token) in events {
            self.send_event(id, &path, &token);
        }
    }

    /// Watches registered by connections of `domid`.
    pub(crate) fn watches_of_domain(&self, domid: u16) -> usize {
        self.conns
            .values()
            .filter(|c| c.domid == domid)
            .map(|c| c.watches.len())
            .sum()
    }
}
