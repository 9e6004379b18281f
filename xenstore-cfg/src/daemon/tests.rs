//! Tests for `daemon` (compiled only under `#[cfg(test)]`, see `mod tests` in daemon/mod.rs).
//!
//! Engine tests: xenstored's rules, byte for byte, without sockets.

use super::*;
use crate::client::{ClientCore, WatchEvent};
use crate::wire::{emit_msg, PermKind, Perms, Reply, Request, XsErrno, XsType};

struct Client {
    id: ConnId,
    core: ClientCore,
}

struct H {
    xs: Xenstored,
    clients: Vec<Client>,
}

impl H {
    fn new() -> Self {
        Self::with(Quotas::default())
    }
    fn with(q: Quotas) -> Self {
        Self {
            xs: Xenstored::new(q),
            clients: Vec::new(),
        }
    }
    /// Connects a client of `domid`; returns its index.
    fn conn(&mut self, domid: u16) -> usize {
        let id = self.xs.connect(domid).expect("domain introduced");
        self.clients.push(Client {
            id,
            core: ClientCore::new(),
        });
        self.clients.len() - 1
    }
    fn deliver(&mut self) {
        for c in &mut self.clients {
            let out = self.xs.output(c.id).to_vec();
            self.xs.consume_output(c.id, out.len());
            c.core.receive(&out).unwrap();
        }
    }
    fn tx(&mut self, c: usize, tx: u32, req: Request) -> Result<Reply, XsErrno> {
        let mut bytes = Vec::new();
        let cl = &mut self.clients[c];
        let id = cl.core.send(tx, &req, &mut bytes).unwrap();
        let conn = cl.id;
        self.xs.receive(conn, &bytes);
        self.deliver();
        match self.clients[c].core.take_reply(id).expect("reply").unwrap() {
            Reply::Error(e) => Err(e),
            r => Ok(r),
        }
    }
    fn req(&mut self, c: usize, req: Request) -> Result<Reply, XsErrno> {
        self.tx(c, 0, req)
    }
    fn write(&mut self, c: usize, path: &str, v: &str) -> Result<Reply, XsErrno> {
        self.req(
            c,
            Request::Write {
                path: path.into(),
                value: v.as_bytes().to_vec(),
            },
        )
    }
    fn read(&mut self, c: usize, path: &str) -> Result<Reply, XsErrno> {
        self.req(c, Request::Read { path: path.into() })
    }
    fn perms(&mut self, c: usize, path: &str, p: &str) -> Result<Reply, XsErrno> {
        let fields: Vec<&[u8]> = p.split(',').map(str::as_bytes).collect();
        let perms = Perms::parse_fields(&fields).unwrap();
        self.req(
            c,
            Request::SetPerms {
                path: path.into(),
                perms,
            },
        )
    }
    fn get_perms(&mut self, c: usize, path: &str) -> String {
        match self.req(c, Request::GetPerms { path: path.into() }) {
            Ok(Reply::Perms(p)) => p.to_string(),
            other => format!("{other:?}"),
        }
    }
    fn watch(&mut self, c: usize, path: &str, token: &str) -> Result<Reply, XsErrno> {
        self.req(
            c,
            Request::Watch {
                path: path.into(),
                token: token.into(),
            },
        )
    }
    fn events(&mut self, c: usize) -> Vec<(String, String)> {
        let mut v = Vec::new();
        while let Some(WatchEvent { path, token }) = self.clients[c].core.poll_event() {
            v.push((path, token));
        }
        v
    }
    fn introduce(&mut self, c: usize, domid: u16) {
        assert_eq!(
            self.req(
                c,
                Request::Introduce {
                    domid,
                    mfn: 0,
                    port: 0
                }
            ),
            Ok(Reply::Ok)
        );
        assert_eq!(self.xs.poll_action(), Some(Action::DomainIntroduced(domid)));
    }
}

fn ev(p: &str, t: &str) -> (String, String) {
    (p.into(), t.into())
}

const OK: Result<Reply, XsErrno> = Ok(Reply::Ok);

mod hostile;

#[test]
fn introduce_creates_home_with_libxl_permissions() {
    let mut h = H::new();
    let d0 = h.conn(0);
    h.introduce(d0, 1);
    assert_eq!(h.get_perms(d0, "/local/domain/1"), "n0,r1");
    assert_eq!(h.get_perms(d0, "/local/domain/1/domid"), "n0,r1");
    assert_eq!(h.get_perms(d0, "/local/domain/1/data"), "n1");
    assert_eq!(
        h.read(d0, "/local/domain/1/domid"),
        Ok(Reply::Read(b"1".to_vec()))
    );
    let d1 = h.conn(1);
    // Relative paths resolve against the domain's home.
    assert_eq!(h.read(d1, "domid"), Ok(Reply::Read(b"1".to_vec())));
    assert_eq!(h.write(d1, "data/x", "y"), OK);
    assert_eq!(h.get_perms(d1, "data/x"), "n1");
    assert_eq!(h.write(d1, "foo", "y"), Err(XsErrno::EACCES));
    assert_eq!(
        h.req(d1, Request::GetDomainPath { domid: 7 }),
        Ok(Reply::DomainPath("/local/domain/7".into()))
    );
    assert_eq!(
        h.req(d1, Request::IsDomainIntroduced { domid: 1 }),
        Ok(Reply::IsIntroduced(true))
    );
    assert_eq!(
        h.req(d1, Request::IsDomainIntroduced { domid: 2 }),
        Ok(Reply::IsIntroduced(false))
    );
    assert_eq!(
        h.req(
            d1,
            Request::Introduce {
                domid: 2,
                mfn: 0,
                port: 0
            }
        ),
        Err(XsErrno::EACCES)
    );
    assert_eq!(
        h.req(
            d0,
            Request::Introduce {
                domid: 0,
                mfn: 0,
                port: 0
            }
        ),
        Err(XsErrno::EINVAL)
    );
    assert_eq!(
        h.req(d0, Request::Release { domid: 9 }),
        Err(XsErrno::ENOENT)
    );
}

#[test]
fn permissions_follow_xenstored() {
    let mut h = H::new();
    let d0 = h.conn(0);
    h.introduce(d0, 1);
    h.introduce(d0, 2);
    let (d1, d2) = (h.conn(1), h.conn(2));
    assert_eq!(h.write(d0, "/p/secret", "s"), OK);
    assert_eq!(h.read(d1, "/p/secret"), Err(XsErrno::EACCES));
    // A node that does not exist under an unreadable parent is EACCES, not ENOENT.
    assert_eq!(h.read(d1, "/p/nothing"), Err(XsErrno::EACCES));
    assert_eq!(h.perms(d0, "/p", "n0,r1"), OK);
    assert_eq!(h.read(d1, "/p/nothing"), Err(XsErrno::ENOENT));
    assert_eq!(h.read(d1, "/p/secret"), Err(XsErrno::EACCES));
    assert_eq!(h.perms(d0, "/p/secret", "n0,r1"), OK);
    assert_eq!(h.read(d1, "/p/secret"), Ok(Reply::Read(b"s".to_vec())));
    assert_eq!(h.read(d2, "/p/secret"), Err(XsErrno::EACCES));
    assert_eq!(h.write(d1, "/p/secret", "x"), Err(XsErrno::EACCES));
    assert_eq!(h.write(d1, "/p/new", "x"), Err(XsErrno::EACCES));
    // Write access to a parent lets a guest create children, which it then owns.
    assert_eq!(h.perms(d0, "/p", "n0,b1"), OK);
    assert_eq!(h.write(d1, "/p/mine/deep", "x"), OK);
    assert_eq!(h.get_perms(d0, "/p/mine"), "n1,b1");
    assert_eq!(h.get_perms(d0, "/p/mine/deep"), "n1,b1");
    // The owner may change permissions but not give the node away.
    assert_eq!(h.perms(d1, "/p/mine", "r1,r2"), OK);
    assert_eq!(h.read(d2, "/p/mine"), Ok(Reply::Read(vec![])));
    assert_eq!(h.perms(d1, "/p/mine", "n2"), Err(XsErrno::EPERM));
    assert_eq!(h.perms(d2, "/p/mine", "n2"), Err(XsErrno::EACCES));
    assert_eq!(
        h.perms(d1, "/p/mine", "n1,r2,r3,r4,r5,r6"),
        Err(XsErrno::ENOSPC)
    );
    // rm needs write on the node itself; rm of a missing child of an existing parent is OK.
    assert_eq!(
        h.req(
            d2,
            Request::Rm {
                path: "/p/mine".into()
            }
        ),
        Err(XsErrno::EACCES)
    );
    assert_eq!(
        h.req(
            d1,
            Request::Rm {
                path: "/p/mine".into()
            }
        ),
        OK
    );
    assert_eq!(
        h.req(
            d1,
            Request::Rm {
                path: "/p/mine".into()
            }
        ),
        OK
    );
    assert_eq!(
        h.req(
            d0,
            Request::Rm {
                path: "/q/r".into()
            }
        ),
        Err(XsErrno::ENOENT)
    );
    assert_eq!(
        h.req(d0, Request::Rm { path: "/".into() }),
        Err(XsErrno::EINVAL)
    );
    // Special nodes have their own permissions.
    assert_eq!(h.get_perms(d0, "@releaseDomain"), "n0");
    assert_eq!(
        h.req(
            d1,
            Request::GetPerms {
                path: "@releaseDomain".into()
            }
        ),
        Err(XsErrno::EACCES)
    );
}

#[test]
fn watches_fire_on_registration_subtree_and_removal() {
    let mut h = H::new();
    let d0 = h.conn(0);
    h.introduce(d0, 1);
    let d1 = h.conn(1);
    assert_eq!(h.watch(d0, "/w", "t"), OK);
    assert_eq!(h.events(d0), vec![ev("/w", "t")]);
    assert_eq!(h.watch(d0, "/w", "t"), Err(XsErrno::EEXIST));
    assert_eq!(h.watch(d0, "/w/a/b", "deep"), OK);
    h.events(d0);
    assert_eq!(h.write(d0, "/w/a/b", "1"), OK);
    assert_eq!(h.events(d0), vec![ev("/w/a/b", "t"), ev("/w/a/b", "deep")]);
    assert_eq!(h.write(d0, "/other", "1"), OK);
    assert_eq!(h.events(d0), vec![]);
    // Removing an ancestor fires the watch on the removed descendant, with its own path.
    assert_eq!(h.req(d0, Request::Rm { path: "/w".into() }), OK);
    assert_eq!(h.events(d0), vec![ev("/w/a/b", "deep"), ev("/w", "t")]);
    // A guest's relative watch reports relative paths; it hears nothing it cannot read.
    assert_eq!(h.watch(d1, "device", "rel"), OK);
    assert_eq!(h.events(d1), vec![ev("device", "rel")]);
    assert_eq!(h.write(d0, "/local/domain/1/device/vusb/0/state", "1"), OK);
    assert_eq!(h.events(d1), vec![ev("device/vusb/0/state", "rel")]);
    assert_eq!(h.perms(d0, "/local/domain/1/device/vusb/0/state", "n0"), OK);
    h.events(d1);
    assert_eq!(h.perms(d0, "/local/domain/1/device/vusb/0", "n0"), OK);
    h.events(d1);
    assert_eq!(h.write(d0, "/local/domain/1/device/vusb/0/state", "2"), OK);
    assert_eq!(h.events(d1), vec![]);
    assert_eq!(
        h.req(
            d1,
            Request::Unwatch {
                path: "device".into(),
                token: "rel".into()
            }
        ),
        OK
    );
    assert_eq!(
        h.req(
            d1,
            Request::Unwatch {
                path: "device".into(),
                token: "rel".into()
            }
        ),
        Err(XsErrno::ENOENT)
    );
    // Special watches: dom0 hears introductions, the guest does not (perms n0).
    assert_eq!(h.watch(d0, "@introduceDomain", "i"), OK);
    assert_eq!(h.watch(d1, "@introduceDomain", "i"), OK);
    h.events(d0);
    assert_eq!(h.events(d1), vec![ev("@introduceDomain", "i")]);
    h.introduce(d0, 2);
    assert!(h.events(d0).contains(&ev("@introduceDomain", "i")));
    assert_eq!(h.events(d1), vec![]);
}

#[test]
fn transactions_are_isolated_and_conflicts_are_eagain() {
    let mut h = H::new();
    let (a, b) = (h.conn(0), h.conn(0));
    assert_eq!(h.write(a, "/t/x", "0"), OK);
    assert_eq!(h.watch(b, "/t", "w"), OK);
    h.events(b);
    let Ok(Reply::TransactionStarted(t)) = h.req(a, Request::TransactionStart) else {
        panic!()
    };
    assert_eq!(
        h.tx(
            a,
            t,
            Request::Read {
                path: "/t/x".into()
            }
        ),
        Ok(Reply::Read(b"0".to_vec()))
    );
    assert_eq!(
        h.tx(
            a,
            t,
            Request::Write {
                path: "/t/x".into(),
                value: b"1".to_vec()
            }
        ),
        OK
    );
    assert_eq!(
        h.tx(
            a,
            t,
            Request::Read {
                path: "/t/x".into()
            }
        ),
        Ok(Reply::Read(b"1".to_vec()))
    );
    assert_eq!(h.read(b, "/t/x"), Ok(Reply::Read(b"0".to_vec())));
    assert_eq!(h.events(b), vec![], "no event before commit");
    assert_eq!(h.tx(a, t, Request::TransactionStart), Err(XsErrno::EBUSY));
    assert_eq!(
        h.tx(
            a,
            999,
            Request::Read {
                path: "/t/x".into()
            }
        ),
        Err(XsErrno::ENOENT)
    );
    assert_eq!(
        h.tx(
            b,
            t,
            Request::Read {
                path: "/t/x".into()
            }
        ),
        Err(XsErrno::ENOENT),
        "tx ids are per connection"
    );
    assert_eq!(h.tx(a, t, Request::TransactionEnd { commit: true }), OK);
    assert_eq!(h.events(b), vec![ev("/t/x", "w")]);
    assert_eq!(h.read(b, "/t/x"), Ok(Reply::Read(b"1".to_vec())));
    // Conflict: another writer changes what the transaction read.
    let Ok(Reply::TransactionStarted(t)) = h.req(a, Request::TransactionStart) else {
        panic!()
    };
    assert_eq!(
        h.tx(
            a,
            t,
            Request::Read {
                path: "/t/x".into()
            }
        ),
        Ok(Reply::Read(b"1".to_vec()))
    );
    assert_eq!(h.write(b, "/t/x", "2"), OK);
    assert_eq!(
        h.tx(
            a,
            t,
            Request::Read {
                path: "/t/x".into()
            }
        ),
        Ok(Reply::Read(b"1".to_vec())),
        "snapshot"
    );
    assert_eq!(
        h.tx(
            a,
            t,
            Request::Write {
                path: "/t/y".into(),
                value: vec![]
            }
        ),
        OK
    );
    assert_eq!(
        h.tx(a, t, Request::TransactionEnd { commit: true }),
        Err(XsErrno::EAGAIN)
    );
    assert_eq!(h.read(b, "/t/y"), Err(XsErrno::ENOENT));
    assert_eq!(
        h.tx(a, t, Request::TransactionEnd { commit: true }),
        Err(XsErrno::ENOENT),
        "ended"
    );
}

#[test]
fn quotas_match_xenstored() {
    let mut h = H::with(Quotas {
        nodes_per_domain: 12,
        ..Quotas::default()
    });
    let d0 = h.conn(0);
    h.introduce(d0, 1);
    let d1 = h.conn(1);
    // The introduce made 5 nodes owned by dom1 (attr, data, drivers, error, feature).
    for i in 0..7 {
        assert_eq!(h.write(d1, &format!("data/{i}"), "x"), OK);
    }
    assert_eq!(h.write(d1, "data/full", "x"), Err(XsErrno::ENOSPC));
    assert_eq!(h.write(d0, "/local/domain/1/data/dom0-exempt", "x"), OK);
    assert_eq!(
        h.write(d1, "data/0", &"v".repeat(2100)),
        Err(XsErrno::ENOSPC)
    );
    assert_eq!(h.write(d1, "data/0", &"v".repeat(1900)), OK);
    for i in 0..10 {
        assert!(
            h.req(d1, Request::TransactionStart).is_ok(),
            "transaction {i}"
        );
    }
    assert_eq!(h.req(d1, Request::TransactionStart), Err(XsErrno::ENOSPC));
    for i in 0..128 {
        assert_eq!(h.watch(d1, &format!("data/w{i}"), "t"), OK);
    }
    assert_eq!(h.watch(d1, "data/w128", "t"), Err(XsErrno::E2BIG));
    assert_eq!(h.req(d1, Request::ResetWatches), OK);
    assert_eq!(h.watch(d1, "data/w128", "t"), OK);
    assert!(
        h.req(d1, Request::TransactionStart).is_ok(),
        "reset also ended transactions"
    );
}

#[test]
fn release_closes_domain_connections_and_fires() {
    let mut h = H::new();
    let d0 = h.conn(0);
    h.introduce(d0, 3);
    let d3 = h.conn(3);
    assert_eq!(h.write(d0, "/x", ""), OK);
    assert_eq!(h.perms(d0, "/x", "n3"), OK);
    assert_eq!(h.watch(d0, "@releaseDomain", "r"), OK);
    assert_eq!(h.watch(d0, "/local/domain/3", "home"), OK);
    h.events(d0);
    assert_eq!(h.req(d0, Request::Release { domid: 3 }), OK);
    let d3id = h.clients[d3].id;
    assert_eq!(h.xs.poll_action(), Some(Action::Close(d3id)));
    assert_eq!(h.xs.poll_action(), Some(Action::DomainReleased(3)));
    let evs = h.events(d0);
    assert!(evs.contains(&ev("@releaseDomain", "r")), "{evs:?}");
    assert!(evs.contains(&ev("/local/domain/3", "home")), "{evs:?}");
    assert_eq!(h.read(d0, "/local/domain/3"), Err(XsErrno::ENOENT));
    assert_eq!(
        h.get_perms(d0, "/x"),
        "n0",
        "a dead domain's nodes go to dom0"
    );
    assert!(h.xs.connect(3).is_none());
}

#[test]
fn directory_part_pages_long_child_lists() {
    let mut h = H::new();
    let d0 = h.conn(0);
    for i in 0..300 {
        assert_eq!(
            h.write(d0, &format!("/big/child-with-a-long-name-{i:04}"), ""),
            OK
        );
    }
    assert_eq!(
        h.req(
            d0,
            Request::Directory {
                path: "/big".into()
            }
        ),
        Err(XsErrno::E2BIG)
    );
    let mut all = Vec::new();
    let mut offset = 0u32;
    loop {
        let Ok(Reply::DirectoryPart {
            children, complete, ..
        }) = h.req(
            d0,
            Request::DirectoryPart {
                path: "/big".into(),
                offset,
            },
        )
        else {
            panic!()
        };
        offset += children.iter().map(|c| c.len() as u32 + 1).sum::<u32>();
        all.extend(children);
        if complete {
            break;
        }
    }
    assert_eq!(all.len(), 300);
    assert_eq!(all[299], "child-with-a-long-name-0299");
}

#[test]
fn perms_display_like_xenstore_ls() {
    let p = Perms::owner(1, PermKind::None).with(PermKind::Read, 0);
    assert_eq!(p.to_string(), "n1,r0");
}
