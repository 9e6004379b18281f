use super::*;
use crate::sim::wire::{FileRef, MapOutcome, MapSpec};
use crate::GrantRef;

fn map_req(domid: DomId, access: Access, refs: Vec<GrantRef>) -> Request {
    Request::Map {
        domid,
        maps: vec![MapSpec { access, refs }],
    }
}

/// The files, dead serials, map ids (None for a failed map) and fd count of a MAP answer.
fn mapped(
    r: (Result<Outcome, Status>, Vec<Effect>),
) -> (Vec<FileRef>, Vec<u64>, Vec<Option<u32>>, usize) {
    let (reply, fds) = r.0.unwrap();
    let Reply::Mapped { files, dead, maps } = reply else {
        panic!("{reply:?}")
    };
    let ids = maps
        .into_iter()
        .map(|m| match m {
            MapOutcome::Mapped { map_id, .. } => Some(map_id),
            MapOutcome::Failed(_) => None,
        })
        .collect();
    (files, dead, ids, fds.len())
}

fn alloc(s: &mut State, conn: ConnId, count: u32, access: Access) -> (u32, Vec<GrantRef>) {
    let Reply::Granted { handle, grefs } = ok(s.handle(
        conn,
        Request::GrantAlloc {
            grantee: DomId(0),
            count,
            access,
        },
    )) else {
        panic!()
    };
    (handle, grefs)
}

/// dom0 and dom1 exist, each with one connection.
pub(super) fn setup() -> (State, ConnId, ConnId) {
    let mut s = State::new();
    s.create_domain(DomId(1)).unwrap();
    let c0 = s.connect(DomId::DOM0).unwrap();
    let c1 = s.connect(DomId(1)).unwrap();
    (s, c0, c1)
}

fn ok(r: (Result<Outcome, Status>, Vec<Effect>)) -> Reply {
    r.0.unwrap().0
}

#[test]
fn another_connection_cannot_touch_my_objects() {
    let (mut s, c0, c1) = setup();
    let other = s.connect(DomId(1)).unwrap();
    let Reply::Granted { handle, grefs } = ok(s.handle(
        c1,
        Request::GrantAlloc {
            grantee: DomId(0),
            count: 1,
            access: Access::Writable,
        },
    )) else {
        panic!()
    };
    let (_, _, ids, _) = mapped(s.handle(c0, map_req(DomId(1), Access::Writable, grefs)));
    let map_id = ids[0].unwrap();
    let Reply::Port { port, .. } =
        ok(s.handle(c1, Request::EvtchnAllocUnbound { remote: DomId(0) }))
    else {
        panic!()
    };
    let refused = |r: (Result<Outcome, Status>, Vec<Effect>)| r.0.err();
    assert_eq!(
        refused(s.handle(
            other,
            Request::GrantEnd {
                handle,
                mode: EndMode::Defer
            }
        )),
        Some(Status::NoSuchObject)
    );
    assert_eq!(
        refused(s.handle(c1, Request::Unmap { map_id })),
        Some(Status::NoSuchObject)
    );
    assert_eq!(
        refused(s.handle(other, Request::EvtchnUnbind { port })),
        Some(Status::NoSuchObject)
    );
    assert_eq!(
        refused(s.handle(c0, Request::EvtchnUnbind { port })),
        Some(Status::NoSuchObject)
    );
    assert_eq!(s.counters().grants, 1);
    assert_eq!(s.counters().channels, 1);
}

#[test]
fn closing_connections_releases_everything_and_kills_the_domain() {
    let (mut s, c0, c1) = setup();
    let Reply::Granted { grefs, .. } = ok(s.handle(
        c1,
        Request::GrantAlloc {
            grantee: DomId(0),
            count: 4,
            access: Access::ReadOnly,
        },
    )) else {
        panic!()
    };
    ok(s.handle(c0, map_req(DomId(1), Access::ReadOnly, grefs)));
    let Reply::Port { port, .. } =
        ok(s.handle(c1, Request::EvtchnAllocUnbound { remote: DomId(0) }))
    else {
        panic!()
    };
    ok(s.handle(
        c0,
        Request::EvtchnBind {
            remote: DomId(1),
            remote_port: port,
        },
    ));
    assert_eq!(s.disconnect(c1), vec![Effect::Released(DomId(1))]);
    let c = s.counters();
    assert_eq!((c.grants, c.mappings, c.channels, c.domains), (4, 1, 1, 1));
    assert!(s.disconnect(c0).is_empty(), "dom0 never dies");
    assert_eq!(
        s.counters(),
        Counters {
            domains: 1,
            ..Counters::default()
        }
    );
}

#[test]
fn destroying_an_unconnected_domain_releases_it_at_once() {
    let mut s = State::new();
    s.create_domain(DomId(4)).unwrap();
    assert_eq!(
        s.destroy_domain(DomId(4)),
        Ok(vec![Effect::Released(DomId(4))])
    );
    assert_eq!(s.destroy_domain(DomId(4)), Err(Status::NoSuchDomain));
    assert_eq!(s.connect(DomId(4)), None);
}

#[test]
fn a_fresh_domain_does_not_die_before_anyone_connected() {
    let (mut s, _c0, _c1) = setup();
    s.create_domain(DomId(2)).unwrap();
    let c2 = s.connect(DomId(2)).unwrap();
    assert_eq!(s.disconnect(c2), vec![Effect::Released(DomId(2))]);
    assert!(s.disconnect(c2).is_empty(), "a second close is a no-op");
}

#[test]
fn grant_refs_start_after_the_reserved_entries() {
    let (mut s, _c0, c1) = setup();
    let Reply::Granted { grefs, .. } = ok(s.handle(
        c1,
        Request::GrantAlloc {
            grantee: DomId(0),
            count: 2,
            access: Access::ReadOnly,
        },
    )) else {
        panic!()
    };
    assert_eq!(grefs, vec![GrantRef(FIRST_GREF), GrantRef(FIRST_GREF + 1)]);
}

#[test]
fn a_file_is_attached_once_per_connection_and_access() {
    let (mut s, c0, c1) = setup();
    let other = s.connect(DomId(0)).unwrap();
    let (_, grefs) = alloc(&mut s, c1, 2, Access::Writable);
    let (files, _, ids, nfds) =
        mapped(s.handle(c0, map_req(DomId(1), Access::Writable, grefs.clone())));
    assert_eq!((files.len(), nfds), (1, 1));
    assert!(files[0].attached && ids[0].is_some());
    let (files2, _, _, nfds) =
        mapped(s.handle(c0, map_req(DomId(1), Access::Writable, grefs.clone())));
    assert_eq!(
        (files2[0].key, files2[0].attached, nfds),
        (files[0].key, false, 0)
    );
    // Read-only is another file description; another connection gets its own copy.
    let (ro, _, _, nfds) = mapped(s.handle(c0, map_req(DomId(1), Access::ReadOnly, grefs.clone())));
    assert!(ro[0].attached && ro[0].key.serial == files[0].key.serial && nfds == 1);
    let (_, _, _, nfds) = mapped(s.handle(other, map_req(DomId(1), Access::Writable, grefs)));
    assert_eq!(nfds, 1);
}

#[test]
fn forgotten_files_are_attached_again_and_dead_serials_reported_once() {
    let (mut s, c0, c1) = setup();
    let (h, grefs) = alloc(&mut s, c1, 1, Access::Writable);
    let (_, _, ids, _) = mapped(s.handle(c0, map_req(DomId(1), Access::Writable, grefs.clone())));
    let (files, _, _, _) = mapped(s.handle(c0, map_req(DomId(1), Access::Writable, grefs.clone())));
    let key = files[0].key;
    ok(s.handle(c0, Request::Forget { files: vec![key] }));
    let (files, _, _, nfds) = mapped(s.handle(c0, map_req(DomId(1), Access::Writable, grefs)));
    assert!(files[0].attached && nfds == 1);
    // End access; the grant dies once all three mappings are gone.
    ok(s.handle(
        c1,
        Request::GrantEnd {
            handle: h,
            mode: EndMode::Defer,
        },
    ));
    for id in 1..=3 {
        let _ = s.handle(c0, Request::UnmapOneway { map_id: id });
    }
    assert!(ids[0].is_some());
    assert_eq!(s.counters().grants, 0);
    let (_, g2) = alloc(&mut s, c1, 1, Access::Writable);
    let (_, dead, _, _) = mapped(s.handle(c0, map_req(DomId(1), Access::Writable, g2.clone())));
    assert_eq!(dead, vec![key.serial]);
    let (_, dead, _, _) = mapped(s.handle(c0, map_req(DomId(1), Access::Writable, g2)));
    assert!(dead.is_empty());
}

#[test]
fn each_map_of_a_batch_succeeds_or_fails_on_its_own() {
    let (mut s, c0, c1) = setup();
    let (_, rw) = alloc(&mut s, c1, 2, Access::Writable);
    let (_, ro) = alloc(&mut s, c1, 1, Access::ReadOnly);
    let spec = |access, refs| MapSpec { access, refs };
    let (r, _) = s.handle(
        c0,
        Request::Map {
            domid: DomId(1),
            maps: vec![
                spec(Access::Writable, rw.clone()),
                spec(Access::Writable, ro.clone()),
                spec(Access::ReadOnly, vec![GrantRef(9999)]),
                spec(Access::ReadOnly, vec![ro[0], rw[1]]),
            ],
        },
    );
    let (reply, fds) = r.unwrap();
    let Reply::Mapped { files, maps, .. } = reply else {
        panic!()
    };
    assert!(matches!(maps[0], MapOutcome::Mapped { .. }));
    assert_eq!(maps[1], MapOutcome::Failed(Status::ReadOnlyGrant));
    assert_eq!(maps[2], MapOutcome::Failed(Status::NotGranted));
    let MapOutcome::Mapped { pages, .. } = &maps[3] else {
        panic!()
    };
    // rw writable, ro read-only, rw read-only: three files, all new.
    assert_eq!((files.len(), fds.len()), (3, 3));
    assert_ne!(pages[0].file, pages[1].file);
    assert_eq!(s.counters().mappings, 2);
}

fn local_memfd(pages: u64) -> OwnedFd {
    let fd =
        rustix::fs::memfd_create("t", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
    rustix::fs::ftruncate(&fd, pages * PAGE_SIZE as u64).unwrap();
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW).unwrap();
    fd
}

fn copy_req(local: u32, gref: GrantRef, dir: crate::CopyDir) -> Request {
    Request::Copy {
        domid: DomId(1),
        local,
        segs: vec![crate::sim::wire::WireSeg {
            gref,
            offset: 0,
            len: 16,
            local: 0,
            dir,
        }],
    }
}

#[test]
fn a_grant_whose_access_is_ending_is_no_longer_copied() {
    let (mut s, c0, c1) = setup();
    let (handle, grefs) = alloc(&mut s, c1, 1, Access::Writable);
    let Reply::Registered { id } = s.register_local(c0, 1, local_memfd(1)).unwrap().0 else {
        panic!()
    };
    let from = || copy_req(id, grefs[0], crate::CopyDir::FromGrant);
    assert_eq!(
        ok(s.handle(c0, from())),
        Reply::Copied { statuses: vec![0] }
    );
    // Mapped, then ended lazily: the grant waits for the unmap but is not granted any more.
    ok(s.handle(c0, map_req(DomId(1), Access::Writable, grefs.clone())));
    ok(s.handle(
        c1,
        Request::GrantEnd {
            handle,
            mode: EndMode::Defer,
        },
    ));
    assert_eq!(s.counters().grants, 1);
    assert_eq!(
        ok(s.handle(c0, from())),
        Reply::Copied { statuses: vec![-3] }
    );
}

#[test]
fn local_memory_belongs_to_its_connection_and_dies_with_it() {
    let (mut s, c0, c1) = setup();
    let (_, grefs) = alloc(&mut s, c1, 1, Access::ReadOnly);
    let Reply::Registered { id } = s.register_local(c0, 1, local_memfd(1)).unwrap().0 else {
        panic!()
    };
    let other = s.connect(DomId::DOM0).unwrap();
    let to = copy_req(id, grefs[0], crate::CopyDir::ToGrant);
    assert_eq!(
        s.handle(other, to.clone()).0.unwrap_err(),
        Status::NoSuchObject
    );
    assert_eq!(
        s.handle(other, Request::LocalForget { id }).0.unwrap_err(),
        Status::NoSuchObject
    );
    assert_eq!(ok(s.handle(c0, to)), Reply::Copied { statuses: vec![-8] });
    assert_eq!(
        s.handle(c0, Request::LocalRegister { pages: 1 })
            .0
            .unwrap_err(),
        Status::BadRequest,
        "registering needs the fd the broker shell passes"
    );
    assert_eq!(s.counters().locals, 1);
    s.disconnect(c0);
    assert_eq!(s.counters().locals, 0);
    for _ in 0..locals::MAX_LOCALS_PER_CONN {
        s.register_local(other, 1, local_memfd(1)).unwrap();
    }
    assert_eq!(
        s.register_local(other, 1, local_memfd(1)).unwrap_err(),
        Status::Resource
    );
}

#[test]
fn a_domain_grants_at_most_its_gntalloc_limit() {
    let (mut s, c0, c1) = setup();
    let grant = |s: &mut State, count: u32| {
        s.handle(
            c1,
            Request::GrantAlloc {
                grantee: DomId(0),
                count,
                access: Access::Writable,
            },
        )
        .0
        .map(|(reply, _)| reply)
    };
    let limit = u32::try_from(GNTALLOC_DEFAULT_LIMIT).unwrap();
    let (big, _) = alloc(&mut s, c1, limit - 2, Access::Writable);
    let (small, grefs) = alloc(&mut s, c1, 2, Access::ReadOnly);
    assert_eq!(grant(&mut s, 1).err(), Some(Status::GrantLimit));
    // Ended but still mapped by the grantee: still counted, as gntalloc counts it.
    let (_, _, ids, _) = mapped(s.handle(c0, map_req(DomId(1), Access::ReadOnly, grefs)));
    let end = |h| Request::GrantEnd {
        handle: h,
        mode: EndMode::Defer,
    };
    ok(s.handle(c1, end(small)));
    assert_eq!(grant(&mut s, 1).err(), Some(Status::GrantLimit));
    ok(s.handle(
        c0,
        Request::Unmap {
            map_id: ids[0].unwrap(),
        },
    ));
    assert!(grant(&mut s, 2).is_ok());
    // The admin raises the limit; dropping the setting restores the default.
    s.set_gntalloc_limit(DomId(1), Some(GNTALLOC_DEFAULT_LIMIT + 64));
    assert!(grant(&mut s, 64).is_ok());
    assert_eq!(grant(&mut s, 1).err(), Some(Status::GrantLimit));
    ok(s.handle(c1, end(big)));
    s.set_gntalloc_limit(DomId(1), None);
    assert!(grant(&mut s, limit - 66).is_ok());
    assert_eq!(grant(&mut s, 1).err(), Some(Status::GrantLimit));
}
