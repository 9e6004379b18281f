use super::*;

fn setup() -> (State, ConnId, ConnId) {
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
    let Reply::Mapped { map_id, .. } = ok(s.handle(
        c0,
        Request::Map {
            domid: DomId(1),
            access: Access::Writable,
            refs: grefs,
        },
    )) else {
        panic!()
    };
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
    ok(s.handle(
        c0,
        Request::Map {
            domid: DomId(1),
            access: Access::ReadOnly,
            refs: grefs,
        },
    ));
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
