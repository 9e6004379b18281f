//! The simulated platform in one process: two or three domains talking through an
//! in-process broker.

mod common;

use std::time::Duration;

use common::{idle, readable, wait_until, Sim};
use pvusb_xen::error::BrokerError;
use pvusb_xen::sim::wire::Status;
use pvusb_xen::sim::Counters;
use pvusb_xen::{
    Access, DomId, EndAccessError, EventChannels, EvtchnError, EvtchnPort, GrantAllocator,
    GrantMapper, GrantRef, MapError, MemError, PAGE_SIZE,
};
use rustix::io::Errno;

const SHORT: Duration = Duration::from_millis(50);
const LONG: Duration = Duration::from_secs(5);

#[test]
fn granted_pages_carry_data_both_ways() {
    let sim = Sim::new();
    let dom0 = sim.dom0();
    let dom1 = sim.domain(1);
    let pages = dom1.alloc(DomId(0), 2, Access::Writable).unwrap();
    assert_eq!(pages.len(), 2 * PAGE_SIZE);
    pages.write_at(PAGE_SIZE + 10, b"from dom1").unwrap();
    let map = dom0.map(DomId(1), pages.grefs(), Access::Writable).unwrap();
    let mut buf = [0u8; 9];
    map.read_at(PAGE_SIZE + 10, &mut buf).unwrap();
    assert_eq!(&buf, b"from dom1");
    map.write_at(3, b"from dom0").unwrap();
    pages.read_at(3, &mut buf).unwrap();
    assert_eq!(&buf, b"from dom0");
    assert_eq!(sim.broker.counters().mappings, 1);
    assert_eq!(sim.broker.counters().grants, 2);
    drop(map);
    pages.end_access().unwrap();
    assert_eq!(
        sim.broker.counters(),
        Counters {
            domains: 2,
            connections: 2,
            ..idle(0)
        }
    );
}

#[test]
fn one_mapping_spans_refs_of_several_grants_in_order() {
    let sim = Sim::new();
    let dom0 = sim.dom0();
    let dom1 = sim.domain(1);
    let a = dom1.alloc(DomId(0), 1, Access::Writable).unwrap();
    let b = dom1.alloc(DomId(0), 2, Access::ReadOnly).unwrap();
    a.write_at(0, b"A0").unwrap();
    b.write_at(0, b"B0").unwrap();
    b.write_at(PAGE_SIZE, b"B1").unwrap();
    let refs = [b.grefs()[1], a.grefs()[0], b.grefs()[0]];
    let map = dom0.map(DomId(1), &refs, Access::ReadOnly).unwrap();
    for (i, want) in [b"B1", b"A0", b"B0"].iter().enumerate() {
        let mut got = [0u8; 2];
        map.read_at(i * PAGE_SIZE, &mut got).unwrap();
        assert_eq!(&got, *want, "page {i}");
    }
    assert_eq!(map.refs(), &refs);
}

#[test]
fn read_only_grant_cannot_be_mapped_or_made_writable() {
    let sim = Sim::new();
    let dom0 = sim.dom0();
    let dom1 = sim.domain(1);
    let pages = dom1.alloc(DomId(0), 1, Access::ReadOnly).unwrap();
    pages.write_at(0, b"ro").unwrap();
    let e = dom0
        .map(DomId(1), pages.grefs(), Access::Writable)
        .unwrap_err();
    assert!(
        matches!(
            e,
            MapError::ReadOnlyGrant {
                domid: DomId(1),
                ..
            }
        ),
        "{e:?}"
    );
    let map = dom0.map(DomId(1), pages.grefs(), Access::ReadOnly).unwrap();
    assert_eq!(map.write_at(0, b"x"), Err(MemError::ReadOnly));
    // The kernel itself refuses: the mapping is of a read-only file description.
    assert_eq!(map.try_make_writable(), Err(Errno::ACCESS));
    let mut buf = [0u8; 2];
    map.read_at(0, &mut buf).unwrap();
    assert_eq!(&buf, b"ro");
}

#[test]
fn read_only_mapping_of_a_writable_grant_is_read_only() {
    let sim = Sim::new();
    let dom0 = sim.dom0();
    let dom1 = sim.domain(1);
    let pages = dom1.alloc(DomId(0), 1, Access::Writable).unwrap();
    let map = dom0.map(DomId(1), pages.grefs(), Access::ReadOnly).unwrap();
    assert_eq!(map.try_make_writable(), Err(Errno::ACCESS));
}

#[test]
fn only_the_grantee_can_map() {
    let sim = Sim::new();
    let dom0 = sim.dom0();
    let dom1 = sim.domain(1);
    let dom2 = sim.domain(2);
    let pages = dom1.alloc(DomId(2), 1, Access::Writable).unwrap();
    let e = dom0
        .map(DomId(1), pages.grefs(), Access::ReadOnly)
        .unwrap_err();
    assert!(matches!(e, MapError::NotGranted { .. }), "{e:?}");
    let e = dom2
        .map(DomId(1), &[GrantRef(9999)], Access::ReadOnly)
        .unwrap_err();
    assert!(matches!(e, MapError::NotGranted { .. }), "{e:?}");
    let e = dom2
        .map(DomId(7), pages.grefs(), Access::ReadOnly)
        .unwrap_err();
    assert!(matches!(e, MapError::NoSuchDomain(DomId(7))), "{e:?}");
    dom2.map(DomId(1), pages.grefs(), Access::Writable).unwrap();
}

#[test]
fn bad_counts_are_refused_locally() {
    let sim = Sim::new();
    let dom0 = sim.dom0();
    assert!(matches!(
        dom0.map(DomId(0), &[], Access::ReadOnly),
        Err(MapError::BadCount(0))
    ));
    assert!(dom0.alloc(DomId(0), 0, Access::ReadOnly).is_err());
    assert!(dom0.alloc(DomId(0), 100_000, Access::ReadOnly).is_err());
}

#[test]
fn end_access_is_refused_while_mapped() {
    let sim = Sim::new();
    let dom0 = sim.dom0();
    let dom1 = sim.domain(1);
    let pages = dom1.alloc(DomId(0), 1, Access::Writable).unwrap();
    let map = dom0.map(DomId(1), pages.grefs(), Access::Writable).unwrap();
    let pages = match pages.end_access() {
        Err(EndAccessError::StillMapped { pages }) => pages,
        other => panic!("expected StillMapped, got {other:?}"),
    };
    // Still granted and shared.
    map.write_at(0, b"still").unwrap();
    let mut buf = [0u8; 5];
    pages.read_at(0, &mut buf).unwrap();
    assert_eq!(&buf, b"still");
    drop(map);
    pages.end_access().unwrap();
    assert_eq!(sim.broker.counters().grants, 0);
}

/// Unmaps are one-way messages: the granter, told by the mapper (here: program order across
/// two threads joined by a channel) that the mapping is gone, must never see StillMapped.
#[test]
fn end_access_after_a_one_way_unmap_is_never_refused() {
    let sim = Sim::new();
    let dom0 = sim.dom0();
    let dom1 = sim.domain(1);
    let (tx, rx) = std::sync::mpsc::channel::<Vec<GrantRef>>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let mapper = std::thread::spawn(move || {
        for refs in rx {
            // Several mappings of the same grant, dropped in a burst: a queue of one-way
            // unmaps for the broker to drain.
            let maps: Vec<_> = (0..8)
                .map(|_| dom0.map(DomId(1), &refs, Access::Writable).unwrap())
                .collect();
            drop(maps);
            done_tx.send(()).unwrap();
        }
    });
    for _ in 0..200 {
        let pages = dom1.alloc(DomId(0), 2, Access::Writable).unwrap();
        tx.send(pages.grefs().to_vec()).unwrap();
        done_rx.recv().unwrap();
        pages.end_access().unwrap();
    }
    drop(tx);
    mapper.join().unwrap();
    let c = sim.broker.counters();
    assert_eq!((c.grants, c.mappings), (0, 0));
}

#[test]
fn dropping_granted_pages_revokes_once_unmapped() {
    let sim = Sim::new();
    let dom0 = sim.dom0();
    let dom1 = sim.domain(1);
    let pages = dom1.alloc(DomId(0), 3, Access::Writable).unwrap();
    let grefs = pages.grefs().to_vec();
    let map = dom0.map(DomId(1), &grefs, Access::Writable).unwrap();
    drop(pages);
    assert_eq!(
        sim.broker.counters().grants,
        3,
        "deferred until the peer unmaps"
    );
    let e = dom0.map(DomId(1), &grefs, Access::Writable).unwrap_err();
    assert!(
        matches!(e, MapError::NotGranted { .. }),
        "no new mappings of a revoked grant"
    );
    map.write_at(0, b"ok").unwrap();
    drop(map);
    assert_eq!(sim.broker.counters().grants, 0);
    assert_eq!(sim.broker.counters().mappings, 0);
}

#[test]
fn event_channel_notifies_both_ways_and_masks_until_unmask() {
    let sim = Sim::new();
    let dom0 = sim.dom0();
    let dom1 = sim.domain(1);
    let fe = dom1.alloc_unbound(DomId(0)).unwrap();
    let be = dom0.bind_interdomain(DomId(1), fe.port()).unwrap();
    assert_ne!(be.port(), EvtchnPort(0));
    assert!(!readable(be.as_fd(), SHORT));
    fe.notify().unwrap();
    assert!(readable(be.as_fd(), LONG));
    assert!(be.take_pending().unwrap());
    assert!(!be.take_pending().unwrap());
    // Masked: a second event stays pending and does not wake the poller.
    fe.notify().unwrap();
    assert!(!readable(be.as_fd(), SHORT));
    assert!(!be.take_pending().unwrap());
    be.unmask().unwrap();
    assert!(
        readable(be.as_fd(), LONG),
        "the event sent while masked is delivered on unmask"
    );
    assert!(be.take_pending().unwrap());
    be.unmask().unwrap();
    assert!(!readable(be.as_fd(), SHORT));
    // And the other direction.
    be.notify().unwrap();
    assert!(readable(fe.as_fd(), LONG));
    assert!(fe.take_pending().unwrap());
    fe.unmask().unwrap();
    drop((fe, be));
    assert_eq!(sim.broker.counters().channels, 0);
}

#[test]
fn notify_before_bind_is_dropped() {
    let sim = Sim::new();
    let dom0 = sim.dom0();
    let dom1 = sim.domain(1);
    let fe = dom1.alloc_unbound(DomId(0)).unwrap();
    fe.notify().unwrap();
    let be = dom0.bind_interdomain(DomId(1), fe.port()).unwrap();
    assert!(!readable(be.as_fd(), SHORT));
    assert!(!be.take_pending().unwrap());
}

#[test]
fn only_the_offered_domain_binds_and_only_once() {
    let sim = Sim::new();
    let dom0 = sim.dom0();
    let dom1 = sim.domain(1);
    let dom2 = sim.domain(2);
    let fe = dom1.alloc_unbound(DomId(0)).unwrap();
    let e = dom2.bind_interdomain(DomId(1), fe.port()).unwrap_err();
    assert!(matches!(e, EvtchnError::NotBindable { .. }), "{e:?}");
    let e = dom0
        .bind_interdomain(DomId(1), EvtchnPort(999))
        .unwrap_err();
    assert!(matches!(e, EvtchnError::NotBindable { .. }), "{e:?}");
    let be = dom0.bind_interdomain(DomId(1), fe.port()).unwrap();
    let e = dom0.bind_interdomain(DomId(1), fe.port()).unwrap_err();
    assert!(matches!(e, EvtchnError::NotBindable { .. }), "{e:?}");
    let e = dom1.alloc_unbound(DomId(9)).unwrap_err();
    assert!(matches!(e, EvtchnError::NoSuchDomain(DomId(9))), "{e:?}");
    // When the backend closes its end, the frontend's port is offered again (Xen's
    // ECS_UNBOUND), so a restarted backend can bind it.
    drop(be);
    let be = dom0.bind_interdomain(DomId(1), fe.port()).unwrap();
    fe.notify().unwrap();
    assert!(readable(be.as_fd(), LONG));
}

#[test]
fn channel_fd_works_with_mio_edge_triggered() {
    use mio::unix::SourceFd;
    use mio::{Events, Interest, Poll, Token};
    use std::os::fd::AsRawFd;
    let sim = Sim::new();
    let dom0 = sim.dom0();
    let dom1 = sim.domain(1);
    let fe = dom1.alloc_unbound(DomId(0)).unwrap();
    let be = dom0.bind_interdomain(DomId(1), fe.port()).unwrap();
    let mut poll = Poll::new().unwrap();
    let raw = be.as_fd().as_raw_fd();
    poll.registry()
        .register(&mut SourceFd(&raw), Token(7), Interest::READABLE)
        .unwrap();
    let mut events = Events::with_capacity(4);
    for round in 0..3 {
        fe.notify().unwrap();
        poll.poll(&mut events, Some(LONG)).unwrap();
        assert!(
            events.iter().any(|e| e.token() == Token(7)),
            "round {round}"
        );
        assert!(be.take_pending().unwrap());
        // Sent while masked: must wake the edge-triggered poller after unmask.
        fe.notify().unwrap();
        be.unmask().unwrap();
        poll.poll(&mut events, Some(LONG)).unwrap();
        assert!(
            events.iter().any(|e| e.token() == Token(7)),
            "round {round} after unmask"
        );
        assert!(be.take_pending().unwrap());
        be.unmask().unwrap();
    }
}

#[test]
fn only_dom0_controls_domains() {
    let sim = Sim::new();
    let dom0 = sim.dom0();
    dom0.create_domain(DomId(5)).unwrap();
    let dom5 = pvusb_xen::sim::SimPlatform::connect(sim.dir.path(), DomId(5)).unwrap();
    let refused =
        |r: Result<(), BrokerError>| matches!(r, Err(BrokerError::Refused(Status::NotPermitted)));
    assert!(refused(dom5.create_domain(DomId(6))));
    assert!(refused(dom5.destroy_domain(DomId(5))));
    assert!(matches!(
        dom5.counters(),
        Err(BrokerError::Refused(Status::NotPermitted))
    ));
    assert!(matches!(
        dom0.create_domain(DomId(5)),
        Err(BrokerError::Refused(Status::DomainExists))
    ));
    assert!(matches!(
        dom0.destroy_domain(DomId(0)),
        Err(BrokerError::Refused(Status::NotPermitted))
    ));
    assert!(matches!(
        dom0.destroy_domain(DomId(8)),
        Err(BrokerError::Refused(Status::NoSuchDomain))
    ));
    assert_eq!(dom0.counters().unwrap().domains, 2);
}

#[test]
fn destroying_a_domain_releases_everything_it_owned() {
    let sim = Sim::new();
    let dom0 = sim.dom0();
    let dom1 = sim.domain(1);
    let pages = dom1.alloc(DomId(0), 2, Access::Writable).unwrap();
    pages.write_at(0, b"last words").unwrap();
    let fe = dom1.alloc_unbound(DomId(0)).unwrap();
    let be = dom0.bind_interdomain(DomId(1), fe.port()).unwrap();
    let map = dom0.map(DomId(1), pages.grefs(), Access::Writable).unwrap();
    dom0.destroy_domain(DomId(1)).unwrap();
    assert_eq!(sim.released(), vec![DomId(1)]);
    assert!(!pvusb_xen::sim::socket_path(sim.dir.path(), DomId(1)).exists());
    // The domain's connection is gone.
    assert!(matches!(
        dom1.alloc(DomId(0), 1, Access::ReadOnly),
        Err(pvusb_xen::AllocError::Broker(_))
    ));
    let c = sim.broker.counters();
    assert_eq!(
        (c.grants, c.mappings, c.channels, c.domains),
        (2, 1, 1, 1),
        "{c:?}"
    );
    // The backend's mapping stays valid until it unmaps; then the grants go.
    let mut buf = [0u8; 10];
    map.read_at(0, &mut buf).unwrap();
    assert_eq!(&buf, b"last words");
    drop(map);
    drop(be);
    drop((pages, fe)); // their broker calls fail quietly: the connection is closed
    assert_eq!(sim.broker.counters(), idle(1));
}

#[test]
fn last_connection_closing_kills_the_domain() {
    let sim = Sim::new();
    let dom1 = sim.domain(1);
    let again = pvusb_xen::sim::SimPlatform::connect(sim.dir.path(), DomId(1)).unwrap();
    let _g = dom1.alloc(DomId(0), 1, Access::Writable).unwrap();
    drop(dom1); // the grant holds a clone of the connection
    drop(_g);
    assert!(
        sim.released().is_empty(),
        "another process of dom1 is still connected"
    );
    drop(again);
    wait_until(|| sim.released() == vec![DomId(1)], "dom1 release");
    sim.wait_counters(idle(0));
    assert!(pvusb_xen::sim::SimPlatform::connect(sim.dir.path(), DomId(1)).is_err());
}

#[test]
fn mappings_convert_into_ring_shm_views() {
    use std::sync::Arc;
    let sim = Sim::new();
    let dom0 = sim.dom0();
    let dom1 = sim.domain(1);
    let pages = Arc::new(dom1.alloc(DomId(0), 1, Access::ReadOnly).unwrap());
    let fe = pages.shm();
    fe.write(8, b"through shm").unwrap();
    let map = Arc::new(dom0.map(DomId(1), pages.grefs(), Access::ReadOnly).unwrap());
    let be = map.shm();
    assert_eq!(be.len(), PAGE_SIZE);
    let mut buf = [0u8; 11];
    be.read(8, &mut buf).unwrap();
    assert_eq!(&buf, b"through shm");
    assert!(
        be.write(0, b"x").is_err(),
        "a read-only mapping gives a read-only view"
    );
    drop(map);
    assert_eq!(
        sim.broker.counters().mappings,
        1,
        "the view keeps the mapping"
    );
    drop(be);
    assert_eq!(sim.broker.counters().mappings, 0);
    drop(fe);
    Arc::try_unwrap(pages).unwrap().end_access().unwrap();
    assert_eq!(sim.broker.counters().grants, 0);
}

#[test]
fn map_batch_maps_each_request_on_its_own() {
    use pvusb_xen::MapRequest;
    let sim = Sim::new();
    let dom0 = sim.dom0();
    let dom1 = sim.domain(1);
    let rw = dom1.alloc(DomId(0), 3, Access::Writable).unwrap();
    let ro = dom1.alloc(DomId(0), 1, Access::ReadOnly).unwrap();
    rw.write_at(PAGE_SIZE, b"second").unwrap();
    let bad = [GrantRef(4242)];
    let two = [rw.grefs()[1], ro.grefs()[0]];
    let reqs = [
        MapRequest {
            refs: rw.grefs(),
            access: Access::Writable,
        },
        MapRequest {
            refs: &[],
            access: Access::ReadOnly,
        },
        MapRequest {
            refs: ro.grefs(),
            access: Access::Writable,
        },
        MapRequest {
            refs: &bad,
            access: Access::ReadOnly,
        },
        MapRequest {
            refs: &two,
            access: Access::ReadOnly,
        },
    ];
    let mut got = dom0.map_batch(DomId(1), &reqs).into_iter();
    let whole = got.next().unwrap().unwrap();
    assert!(matches!(got.next(), Some(Err(MapError::BadCount(0)))));
    assert!(matches!(
        got.next(),
        Some(Err(MapError::ReadOnlyGrant { .. }))
    ));
    assert!(matches!(got.next(), Some(Err(MapError::NotGranted { .. }))));
    let mixed = got.next().unwrap().unwrap();
    assert!(got.next().is_none());
    let mut buf = [0u8; 6];
    whole.read_at(PAGE_SIZE, &mut buf).unwrap();
    assert_eq!(&buf, b"second");
    mixed.read_at(0, &mut buf).unwrap();
    assert_eq!(&buf, b"second");
    assert_eq!(mixed.access(), Access::ReadOnly);
    assert_eq!(sim.broker.counters().mappings, 2);
    drop((whole, mixed));
    assert_eq!(sim.broker.counters().mappings, 0);
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// The client keeps the grant files the broker sent, but boundedly, and closes those of
/// dead allocations once the broker reports them.
#[test]
fn cached_grant_files_stay_bounded_and_close_when_the_grant_dies() {
    use pvusb_xen::sim::files::FD_CACHE_MAX;
    let sim = Sim::new();
    let dom0 = sim.dom0();
    let dom1 = sim.domain(1);
    // Other tests of this binary run in parallel threads: allow for their fds.
    let before = open_fds();
    let allocs: Vec<_> = (0..FD_CACHE_MAX + 60)
        .map(|_| dom1.alloc(DomId(0), 1, Access::Writable).unwrap())
        .collect();
    for (i, a) in allocs.iter().enumerate() {
        let m = dom0.map(DomId(1), a.grefs(), Access::Writable).unwrap();
        m.write_at(0, &(i as u32).to_ne_bytes()).unwrap();
    }
    // Every page still maps (some files were evicted and get sent again).
    for (i, a) in allocs.iter().enumerate() {
        let m = dom0.map(DomId(1), a.grefs(), Access::ReadOnly).unwrap();
        let mut b = [0u8; 4];
        m.read_at(0, &mut b).unwrap();
        assert_eq!(u32::from_ne_bytes(b), i as u32);
    }
    // (The in-process broker holds two files per allocation itself.)
    assert!(dom0.cached_files() <= FD_CACHE_MAX);
    assert!(dom0.cached_files() > FD_CACHE_MAX / 2);
    for a in allocs {
        a.end_access().unwrap();
    }
    // The next maps' replies report the dead serials (at most MAX_DEAD per reply).
    let last = dom1.alloc(DomId(0), 1, Access::Writable).unwrap();
    for _ in 0..3 {
        drop(dom0.map(DomId(1), last.grefs(), Access::Writable).unwrap());
    }
    assert_eq!(dom0.cached_files(), 1);
    drop(last);
    let left = open_fds().saturating_sub(before);
    assert!(left <= 40, "{left} more fds still open");
}
