//! Random operation sequences from several connections (two dom0, one guest), with
//! transactions and watches, through our client against the daemon, checked against a
//! simple in-memory model of xenstore:
//! - every operation outside a transaction gives the model's result;
//! - a commit never fails if nothing was committed since the transaction started, and a
//!   successful commit is serializable: replaying the transaction's operations on the
//!   model at commit time gives exactly the results the client saw;
//! - watchers (dom0 and the guest) receive exactly the events the model predicts, only for
//!   nodes they may read (or whose parent they may read), no more, no fewer.

mod common;

use std::collections::BTreeMap;

use proptest::prelude::*;
use xenstore_cfg::wire::{Perms, Reply, Request, XsErrno};
use xenstore_cfg::{Xs, XsError};

const PATHS: [&str; 8] = [
    "/m", "/m/a", "/m/a/x", "/m/a/y", "/m/b", "/m/b/x", "/m/c", "/",
];
const PERMS: [&str; 5] = ["n0", "n0,r1", "n0,b1", "n1", "b0"];
/// Connection 0 and 1 are dom0, 2 is domain 1.
const DOMS: [u16; 3] = [0, 0, 1];

#[derive(Clone, Debug)]
enum Op {
    Write(usize, usize, u8),
    Read(usize, usize),
    Mkdir(usize, usize),
    Rm(usize, usize),
    Dir(usize, usize),
    Chmod(usize, usize),
    Watch(usize, usize, u8),
    Unwatch(usize, usize, u8),
    TxStart(usize),
    TxEnd(usize, bool),
}

fn op() -> impl Strategy<Value = Op> {
    let c = 0..3usize;
    let p = 0..7usize;
    prop_oneof![
        4 => (c.clone(), p.clone(), 0..4u8).prop_map(|(c, p, v)| Op::Write(c, p, v)),
        2 => (c.clone(), p.clone()).prop_map(|(c, p)| Op::Read(c, p)),
        1 => (c.clone(), p.clone()).prop_map(|(c, p)| Op::Mkdir(c, p)),
        2 => (c.clone(), p.clone()).prop_map(|(c, p)| Op::Rm(c, p)),
        1 => (c.clone(), p.clone()).prop_map(|(c, p)| Op::Dir(c, p)),
        2 => (p.clone(), 0..PERMS.len()).prop_map(|(p, k)| Op::Chmod(p, k)),
        1 => (0..3usize, 0..8usize, 0..2u8).prop_map(|(c, p, t)| Op::Watch(c, p, t)),
        1 => (0..3usize, 0..8usize, 0..2u8).prop_map(|(c, p, t)| Op::Unwatch(c, p, t)),
        2 => c.clone().prop_map(Op::TxStart),
        2 => (c, any::<bool>()).prop_map(|(c, commit)| Op::TxEnd(c, commit)),
    ]
}

/// A change watchers hear about: path, exact (a descendant removed with its ancestor), and
/// the node's permissions at the change.
type Change = (String, bool, Perms);

/// What an operation returned, comparably.
type Outcome = Result<Reply, XsErrno>;

#[derive(Clone, Debug)]
struct MNode {
    value: Vec<u8>,
    perms: Perms,
}

#[derive(Debug)]
struct MTx {
    id: u32,
    start_version: u64,
    log: Vec<(Op, Outcome)>,
}

#[derive(Debug, Default)]
struct Model {
    nodes: BTreeMap<String, MNode>,
    version: u64,
    watches: Vec<(usize, String, String)>,
}

fn parent(p: &str) -> &str {
    match p.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &p[..i],
    }
}

fn is_child(child: &str, parent: &str) -> bool {
    parent == "/"
        || child == parent
        || child
            .strip_prefix(parent)
            .is_some_and(|r| r.starts_with('/'))
}

fn perms(s: &str) -> Perms {
    let f: Vec<&[u8]> = s.split(',').map(str::as_bytes).collect();
    Perms::parse_fields(&f).unwrap()
}

/// (read, write) for `domid`: owners and dom0 everything, else the listed entry or default.
fn access(domid: u16, p: &Perms) -> (bool, bool) {
    if domid == 0 || p.owner_id() == domid {
        return (true, true);
    }
    let k = p.kind_for(domid);
    (k.can_read(), k.can_write())
}

impl Model {
    fn new() -> Self {
        let mut m = Self::default();
        m.nodes.insert(
            "/".into(),
            MNode {
                value: vec![],
                perms: perms("n0"),
            },
        );
        m
    }

    fn allowed(&self, domid: u16, node: &MNode, write: bool) -> bool {
        let (r, w) = access(domid, &node.perms);
        if write {
            w
        } else {
            r
        }
    }

    fn get(&self, domid: u16, path: &str, write: bool) -> Result<&MNode, XsErrno> {
        let err = match self.nodes.get(path) {
            Some(n) if self.allowed(domid, n, write) => return Ok(n),
            Some(_) => XsErrno::EACCES,
            None => XsErrno::ENOENT,
        };
        let mut p = path;
        loop {
            if p == "/" {
                return Err(XsErrno::EACCES);
            }
            p = parent(p);
            if let Some(a) = self.nodes.get(p) {
                return if self.allowed(domid, a, write) {
                    Err(err)
                } else {
                    Err(XsErrno::EACCES)
                };
            }
        }
    }

    fn create(&mut self, domid: u16, path: &str, value: Vec<u8>) {
        let mut missing = vec![path.to_owned()];
        let mut p = path;
        let base = loop {
            p = parent(p);
            match self.nodes.get(p) {
                Some(n) => break n.perms.clone(),
                None => missing.push(p.to_owned()),
            }
        };
        let mut perms = base;
        if domid != 0 {
            perms.set_owner(domid);
        }
        for m in missing {
            let v = if m == path { value.clone() } else { vec![] };
            self.nodes.insert(
                m,
                MNode {
                    value: v,
                    perms: perms.clone(),
                },
            );
        }
    }

    /// Applies `op` by a connection of `domid` to the committed tree; returns the outcome
    /// and the changes (path, exact) watchers hear about.
    fn apply(&mut self, domid: u16, op: &Op) -> (Outcome, Vec<Change>) {
        let mut changes = Vec::new();
        let out = match *op {
            Op::Read(_, p) => self
                .get(domid, PATHS[p], false)
                .map(|n| Reply::Read(n.value.clone())),
            Op::Dir(_, p) => self.get(domid, PATHS[p], false).map(|_| {
                let path = PATHS[p];
                let mut kids: Vec<String> = self
                    .nodes
                    .keys()
                    .filter(|k| k.as_str() != "/" && parent(k) == path)
                    .map(|k| k.rsplit('/').next().unwrap().to_owned())
                    .collect();
                kids.sort();
                Reply::Directory(kids)
            }),
            Op::Write(_, p, v) => {
                let path = PATHS[p];
                match self.get(domid, path, true) {
                    Ok(_) => {
                        let n = self.nodes.get_mut(path).unwrap();
                        n.value = vec![b'0' + v];
                        changes.push((path.to_owned(), false, n.perms.clone()));
                        Ok(Reply::Ok)
                    }
                    Err(XsErrno::ENOENT) => {
                        self.create(domid, path, vec![b'0' + v]);
                        changes.push((path.to_owned(), false, self.nodes[path].perms.clone()));
                        Ok(Reply::Ok)
                    }
                    Err(e) => Err(e),
                }
            }
            Op::Mkdir(_, p) => {
                let path = PATHS[p];
                match self.get(domid, path, true) {
                    Ok(_) => Ok(Reply::Ok),
                    Err(XsErrno::ENOENT) => {
                        self.create(domid, path, vec![]);
                        changes.push((path.to_owned(), false, self.nodes[path].perms.clone()));
                        Ok(Reply::Ok)
                    }
                    Err(e) => Err(e),
                }
            }
            Op::Rm(_, p) => {
                let path = PATHS[p];
                match self.get(domid, path, true) {
                    Ok(_) => {
                        let doomed: Vec<String> = self
                            .nodes
                            .keys()
                            .filter(|k| is_child(k, path))
                            .cloned()
                            .collect();
                        for d in doomed {
                            let gone = self.nodes.remove(&d).unwrap();
                            changes.push((d.clone(), d != path, gone.perms));
                        }
                        Ok(Reply::Ok)
                    }
                    Err(XsErrno::ENOENT) if self.nodes.contains_key(parent(path)) => Ok(Reply::Ok),
                    Err(e) => Err(e),
                }
            }
            Op::Chmod(p, k) => {
                let path = PATHS[p];
                match self.nodes.get_mut(path) {
                    Some(n) => {
                        n.perms = perms(PERMS[k]);
                        changes.push((path.to_owned(), false, n.perms.clone()));
                        Ok(Reply::Ok)
                    }
                    None => Err(XsErrno::ENOENT),
                }
            }
            _ => unreachable!("not a node operation"),
        };
        if !changes.is_empty() {
            self.version += 1;
        }
        (out, changes)
    }

    /// Events for `changes`, judged against the tree as it is now: a watcher hears a
    /// change if it could read the node (as it was) or can read its parent.
    fn events(&self, changes: &[Change]) -> Vec<(usize, String, String)> {
        let mut v = Vec::new();
        for (path, exact, node_perms) in changes {
            for (c, w, t) in &self.watches {
                let fires = if *exact { w == path } else { is_child(path, w) };
                let domid = DOMS[*c];
                let permitted = access(domid, node_perms).0
                    || self
                        .nodes
                        .get(parent(path))
                        .is_some_and(|p| access(domid, &p.perms).0);
                if fires && permitted {
                    v.push((*c, path.clone(), t.clone()));
                }
            }
        }
        v
    }
}

fn outcome(r: Result<Reply, XsError>) -> Outcome {
    match r {
        Ok(Reply::Directory(mut d)) => {
            d.sort();
            Ok(Reply::Directory(d))
        }
        Ok(r) => Ok(r),
        Err(XsError::Xs(e)) => Err(e),
        Err(e) => panic!("transport error {e}"),
    }
}

fn request(op: &Op) -> Request {
    match *op {
        Op::Write(_, p, v) => Request::Write {
            path: PATHS[p].into(),
            value: vec![b'0' + v],
        },
        Op::Read(_, p) => Request::Read {
            path: PATHS[p].into(),
        },
        Op::Mkdir(_, p) => Request::Mkdir {
            path: PATHS[p].into(),
        },
        Op::Rm(_, p) => Request::Rm {
            path: PATHS[p].into(),
        },
        Op::Dir(_, p) => Request::Directory {
            path: PATHS[p].into(),
        },
        Op::Chmod(p, k) => Request::SetPerms {
            path: PATHS[p].into(),
            perms: perms(PERMS[k]),
        },
        _ => unreachable!(),
    }
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let sim = common::Sim::start();
    let mut boot = sim.dom0();
    boot.introduce(1, 0, 0).unwrap();
    let mut conns: Vec<Xs> = vec![sim.dom0(), sim.dom0(), sim.domain(1)];
    let mut model = Model::new();
    let mut txs: [Option<MTx>; 3] = [None, None, None];
    for op in ops {
        let mut expected: Vec<(usize, String, String)> = Vec::new();
        match &op {
            Op::TxStart(c) => {
                let c = *c;
                if txs[c].is_none() {
                    let Ok(Reply::TransactionStarted(id)) =
                        conns[c].request(0, &Request::TransactionStart)
                    else {
                        return Err(TestCaseError::fail("transaction start failed"));
                    };
                    txs[c] = Some(MTx {
                        id,
                        start_version: model.version,
                        log: vec![],
                    });
                }
            }
            Op::TxEnd(c, commit) => {
                let c = *c;
                if let Some(tx) = txs[c].take() {
                    let r = outcome(
                        conns[c].request(tx.id, &Request::TransactionEnd { commit: *commit }),
                    );
                    if !commit {
                        prop_assert_eq!(r, Ok(Reply::Ok));
                    } else if r == Err(XsErrno::EAGAIN) {
                        prop_assert_ne!(model.version, tx.start_version, "spurious conflict");
                    } else {
                        prop_assert_eq!(r, Ok(Reply::Ok));
                        let mut all = Vec::new();
                        for (op, seen) in &tx.log {
                            let (want, changes) = model.apply(DOMS[c], op);
                            prop_assert_eq!(&want, seen, "not serializable: {:?}", op);
                            all.extend(changes);
                        }
                        // xenstored fires a transaction's watches after the whole commit.
                        expected.extend(model.events(&all));
                    }
                }
            }
            Op::Watch(c, p, t) => {
                let (c, path, token) = (*c, PATHS[*p].to_owned(), format!("t{t}"));
                let r = outcome(conns[c].request(
                    0,
                    &Request::Watch {
                        path: path.clone(),
                        token: token.clone(),
                    },
                ));
                let dup = model
                    .watches
                    .iter()
                    .any(|w| *w == (c, path.clone(), token.clone()));
                if dup {
                    prop_assert_eq!(r, Err(XsErrno::EEXIST));
                } else {
                    prop_assert_eq!(r, Ok(Reply::Ok));
                    expected.push((c, path.clone(), token.clone()));
                    model.watches.push((c, path, token));
                }
            }
            Op::Unwatch(c, p, t) => {
                let (c, path, token) = (*c, PATHS[*p].to_owned(), format!("t{t}"));
                let r = outcome(conns[c].request(
                    0,
                    &Request::Unwatch {
                        path: path.clone(),
                        token: token.clone(),
                    },
                ));
                match model
                    .watches
                    .iter()
                    .position(|w| *w == (c, path.clone(), token.clone()))
                {
                    Some(i) => {
                        prop_assert_eq!(r, Ok(Reply::Ok));
                        model.watches.remove(i);
                    }
                    None => prop_assert_eq!(r, Err(XsErrno::ENOENT)),
                }
            }
            node_op => {
                let c = match node_op {
                    Op::Chmod(..) => 0,
                    Op::Write(c, ..)
                    | Op::Read(c, _)
                    | Op::Mkdir(c, _)
                    | Op::Rm(c, _)
                    | Op::Dir(c, _) => *c,
                    _ => unreachable!(),
                };
                let tx_id = txs[c].as_ref().map_or(0, |t| t.id);
                let got = outcome(conns[c].request(tx_id, &request(node_op)));
                match txs[c].as_mut() {
                    Some(tx) => tx.log.push((node_op.clone(), got)),
                    None => {
                        let (want, changes) = model.apply(DOMS[c], node_op);
                        prop_assert_eq!(got, want, "{:?}", node_op);
                        expected.extend(model.events(&changes));
                    }
                }
            }
        }
        // Round-trip on each watcher so every event sent so far has arrived.
        let mut got_events = Vec::new();
        for (c, conn) in conns.iter_mut().enumerate() {
            conn.request(0, &Request::GetDomainPath { domid: 0 })
                .unwrap();
            while let Some(e) = conn.poll_event() {
                got_events.push((c, e.path, e.token));
            }
        }
        got_events.sort();
        expected.sort();
        prop_assert_eq!(got_events, expected, "after {:?}", op);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64) / 8 + 1
    ))]

    #[test]
    fn daemon_agrees_with_model(ops in prop::collection::vec(op(), 1..60)) {
        run(ops)?;
    }
}
