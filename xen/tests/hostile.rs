//! The broker treats every client as hostile: garbage gets an error reply or a closed
//! connection, and the broker keeps serving everyone else.

mod common;

use std::os::fd::{AsFd, OwnedFd};

use common::{idle, Sim};
use proptest::prelude::*;
use pvusb_xen::sim::fdpass;
use pvusb_xen::sim::wire::{MapSpec, RawHeader, Reply, Request, Status, MAX_MESSAGE};
use pvusb_xen::sim::{socket_path, SimPlatform};
use pvusb_xen::DomId;
use rustix::net::{RecvFlags, SendFlags};
use zerocopy::IntoBytes;

fn raw(sim: &Sim, domid: DomId) -> OwnedFd {
    fdpass::connect(&socket_path(sim.dir.path(), domid)).unwrap()
}

fn send(fd: &OwnedFd, bytes: &[u8]) {
    fdpass::send(fd.as_fd(), bytes, &[], SendFlags::empty()).unwrap();
}

/// The reply, or `None` when the broker closed the connection.
fn answer(fd: &OwnedFd) -> Option<(u32, Reply)> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let got = fdpass::recv(fd.as_fd(), &mut buf, 4, RecvFlags::empty()).ok()?;
    (got.len > 0).then(|| Reply::parse(&buf[..got.len]).unwrap())
}

/// A raw dom0 client's MAP (seq 1) of dom1's `pages` with `access`: the reply datagram and
/// the memfds passed with it. The connection stays open as long as this lives.
struct RawMap {
    _conn: OwnedFd,
    reply: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl RawMap {
    fn new(sim: &Sim, pages: &pvusb_xen::GrantedPages, access: pvusb_xen::Access) -> RawMap {
        let conn = raw(sim, DomId::DOM0);
        let req = Request::Map {
            domid: DomId(1),
            maps: vec![MapSpec {
                access,
                refs: pages.grefs().to_vec(),
            }],
        };
        send(&conn, &req.emit(1));
        let mut buf = vec![0u8; MAX_MESSAGE];
        let got = fdpass::recv(conn.as_fd(), &mut buf, 4, RecvFlags::empty()).unwrap();
        RawMap {
            _conn: conn,
            reply: buf[..got.len].to_vec(),
            fds: got.fds,
        }
    }
}

fn still_serving(sim: &Sim) {
    let dom0 = SimPlatform::connect(sim.dir.path(), DomId::DOM0).unwrap();
    assert_eq!(
        dom0.counters().unwrap().domains,
        sim.broker.counters().domains
    );
}

#[test]
fn short_garbage_closes_the_connection() {
    let sim = Sim::new();
    let fd = raw(&sim, DomId::DOM0);
    send(&fd, &[1, 2, 3]);
    assert!(answer(&fd).is_none());
    still_serving(&sim);
}

#[test]
fn zero_length_datagram_closes_the_connection() {
    let sim = Sim::new();
    let fd = raw(&sim, DomId::DOM0);
    send(&fd, &[]);
    assert!(answer(&fd).is_none());
    sim.wait_counters(idle(0));
}

#[test]
fn unknown_op_gets_bad_request_with_its_seq() {
    let sim = Sim::new();
    let fd = raw(&sim, DomId::DOM0);
    send(&fd, RawHeader { op: 4242, seq: 77 }.as_bytes());
    assert_eq!(
        answer(&fd),
        Some((
            77,
            Reply::Error {
                op: 4242,
                status: Status::BadRequest
            }
        ))
    );
    // The connection stays usable.
    send(&fd, &Request::Counters.emit(78));
    assert!(matches!(answer(&fd), Some((78, Reply::Counters(_)))));
}

#[test]
fn oversized_datagram_gets_bad_request() {
    let sim = Sim::new();
    let fd = raw(&sim, DomId::DOM0);
    let mut big = Request::Counters.emit(5);
    big.resize(MAX_MESSAGE + 100, 0xff);
    send(&fd, &big);
    assert_eq!(
        answer(&fd),
        Some((
            5,
            Reply::Error {
                op: 10,
                status: Status::BadRequest
            }
        ))
    );
}

#[test]
fn fds_sent_to_the_broker_are_refused_and_closed() {
    let sim = Sim::new();
    let fd = raw(&sim, DomId::DOM0);
    let (reader, writer) = rustix::pipe::pipe().unwrap();
    fdpass::send(
        fd.as_fd(),
        &Request::Counters.emit(9),
        &[writer.as_fd()],
        SendFlags::empty(),
    )
    .unwrap();
    drop(writer);
    assert_eq!(
        answer(&fd),
        Some((
            9,
            Reply::Error {
                op: 10,
                status: Status::BadRequest
            }
        ))
    );
    // The broker kept no copy of the write end: the pipe reports EOF.
    let mut buf = [0u8; 1];
    assert_eq!(rustix::io::read(&reader, &mut buf), Ok(0));
}

#[test]
fn a_client_that_never_reads_is_disconnected() {
    let sim = Sim::new();
    let fd = raw(&sim, DomId::DOM0);
    let req = Request::Counters.emit(1);
    let mut sent = 0;
    // Flood until our sends fail (the broker closed us) or many more replies than any
    // socket buffer holds are queued.
    while sent < 200_000 {
        match fdpass::send(fd.as_fd(), &req, &[], SendFlags::DONTWAIT) {
            Ok(()) => sent += 1,
            Err(rustix::io::Errno::AGAIN) => {
                std::thread::sleep(std::time::Duration::from_millis(1))
            }
            Err(_) => break,
        }
    }
    assert!(
        sent < 200_000,
        "the broker should have closed the flooding connection"
    );
    sim.wait_counters(idle(0));
    still_serving(&sim);
}

#[test]
fn dom_u_cannot_reach_control_operations_or_other_domains_objects() {
    let sim = Sim::new();
    sim.broker.create_domain(DomId(3)).unwrap();
    let fd = raw(&sim, DomId(3));
    for (seq, req) in [
        Request::DomainCreate { domid: DomId(4) },
        Request::DomainDestroy { domid: DomId(0) },
        Request::Counters,
    ]
    .into_iter()
    .enumerate()
    {
        let seq = seq as u32;
        send(&fd, &req.emit(seq));
        assert_eq!(
            answer(&fd),
            Some((
                seq,
                Reply::Error {
                    op: req.op(),
                    status: Status::NotPermitted
                }
            ))
        );
    }
    for (seq, req) in [
        Request::Unmap { map_id: 1 },
        Request::GrantEnd {
            handle: 1,
            mode: pvusb_xen::sim::wire::EndMode::Refuse,
        },
        Request::EvtchnUnbind {
            port: pvusb_xen::EvtchnPort(1),
        },
    ]
    .into_iter()
    .enumerate()
    {
        let seq = seq as u32 + 10;
        send(&fd, &req.emit(seq));
        assert_eq!(
            answer(&fd),
            Some((
                seq,
                Reply::Error {
                    op: req.op(),
                    status: Status::NoSuchObject
                }
            ))
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse::<u32>().ok()).unwrap_or(64).min(256)
    ))]

    /// Any datagram gets a well-formed reply or a close; the broker never stops serving.
    #[test]
    fn random_datagrams_never_hurt_the_broker(
        datagrams in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..8)
    ) {
        let sim = Sim::new();
        sim.broker.create_domain(DomId(1)).unwrap();
        let fd = raw(&sim, DomId(1));
        for d in &datagrams {
            if fdpass::send(fd.as_fd(), d, &[], SendFlags::empty()).is_err() {
                break;
            }
            if answer(&fd).is_none() {
                break;
            }
        }
        drop(fd);
        still_serving(&sim);
    }
}

#[test]
fn a_read_only_grant_fd_refuses_writable_mmap_even_for_a_raw_client() {
    use pvusb_xen::{Access, GrantAllocator};
    use rustix::mm::{MapFlags, ProtFlags};
    let sim = Sim::new();
    let dom1 = sim.domain(1);
    let pages = dom1.alloc(DomId(0), 1, Access::ReadOnly).unwrap();
    // A hostile dom0 client asks for a read-only mapping and tries to map the fd writable.
    let map = RawMap::new(&sim, &pages, Access::ReadOnly);
    let Ok((1, Reply::Mapped { files, .. })) = Reply::parse(&map.reply) else {
        panic!("not mapped")
    };
    assert!(files.len() == 1 && files[0].attached && map.fds.len() == 1);
    let memfd = &map.fds[0];
    // SAFETY: a fresh kernel-chosen mapping (no MAP_FIXED) that nothing references; it is
    // unmapped below if the kernel wrongly grants it.
    let r = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            4096,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED,
            memfd,
            0,
        )
    };
    if let Ok(p) = r {
        // SAFETY: `p` is the 4096-byte mapping just made and not used otherwise.
        unsafe { rustix::mm::munmap(p, 4096).unwrap() };
        panic!("a read-only grant was mapped writable");
    }
    assert_eq!(r.unwrap_err(), rustix::io::Errno::ACCESS);
    assert_eq!(rustix::io::write(memfd, b"x"), Err(rustix::io::Errno::BADF));
}

#[test]
fn a_grantee_cannot_resize_granted_memory() {
    use pvusb_xen::{Access, GrantAllocator};
    let sim = Sim::new();
    let dom1 = sim.domain(1);
    let pages = dom1.alloc(DomId(0), 1, Access::Writable).unwrap();
    let map = RawMap::new(&sim, &pages, Access::Writable);
    let memfd = &map.fds[0];
    assert_eq!(
        rustix::fs::ftruncate(memfd, 0),
        Err(rustix::io::Errno::PERM)
    );
    assert_eq!(
        rustix::fs::ftruncate(memfd, 1 << 20),
        Err(rustix::io::Errno::PERM)
    );
    // The granter's pages are still all there.
    pages.write_at(4095, b"z").unwrap();
}

#[test]
fn a_one_way_unmap_gets_no_reply_even_when_it_fails() {
    let sim = Sim::new();
    let fd = raw(&sim, DomId::DOM0);
    send(&fd, &Request::UnmapOneway { map_id: 4242 }.emit(1));
    send(&fd, &Request::Counters.emit(2));
    // The first datagram back answers the second request.
    assert!(matches!(answer(&fd), Some((2, Reply::Counters(_)))));
}

#[test]
fn a_malformed_one_way_message_is_still_answered() {
    let sim = Sim::new();
    let fd = raw(&sim, DomId::DOM0);
    let mut bad = Request::UnmapOneway { map_id: 1 }.emit(5);
    bad.push(0);
    send(&fd, &bad);
    assert_eq!(
        answer(&fd),
        Some((
            5,
            Reply::Error {
                op: Request::UnmapOneway { map_id: 1 }.op(),
                status: Status::BadRequest
            }
        ))
    );
}

/// The side channel takes one-way messages only; anything else closes the connection.
#[test]
fn a_side_channel_carrying_a_request_closes_the_connection() {
    let sim = Sim::new();
    let fd = raw(&sim, DomId::DOM0);
    send(&fd, &Request::SideOpen.emit(1));
    let mut buf = vec![0u8; MAX_MESSAGE];
    let got = fdpass::recv(fd.as_fd(), &mut buf, 4, RecvFlags::empty()).unwrap();
    assert_eq!(
        Reply::parse(&buf[..got.len]),
        Ok((
            1,
            Reply::Done {
                op: Request::SideOpen.op()
            }
        ))
    );
    let side = got.fds.into_iter().next().unwrap();
    // A one-way message is fine (and gets no answer anywhere).
    send(&side, &Request::UnmapOneway { map_id: 9 }.emit(2));
    send(&fd, &Request::Counters.emit(3));
    assert!(matches!(answer(&fd), Some((3, Reply::Counters(_)))));
    // A request that wants a reply is not.
    send(&side, &Request::Counters.emit(4));
    send(&fd, &Request::Counters.emit(5));
    assert_eq!(answer(&fd), None);
    sim.wait_counters(idle(0));
    still_serving(&sim);
}
