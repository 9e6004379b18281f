//! A hostile client of grant copy: LOCAL_REGISTER refuses memory the broker could not map
//! safely (no fd, an unsealed or short memfd, a read-only description, not a memfd at all),
//! and nobody can forget or copy with another connection's local memory.

mod common;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use common::Sim;
use pvusb_xen::sim::fdpass;
use pvusb_xen::sim::socket_path;
use pvusb_xen::sim::wire::{Reply, Request, Status, WireSeg, MAX_MESSAGE};
use pvusb_xen::{Access, CopyDir, DomId, GrantAllocator, GrantCopier, GrantRef, PAGE_SIZE};
use rustix::fs::{MemfdFlags, Mode, OFlags, SealFlags};
use rustix::net::{RecvFlags, SendFlags};

fn raw(sim: &Sim) -> OwnedFd {
    fdpass::connect(&socket_path(sim.dir.path(), DomId::DOM0)).unwrap()
}

/// Sends `req` (seq 1) with `fds` and returns the reply.
fn call(conn: &OwnedFd, req: &Request, fds: &[BorrowedFd<'_>]) -> Reply {
    fdpass::send(conn.as_fd(), &req.emit(1), fds, SendFlags::empty()).unwrap();
    let mut buf = vec![0u8; MAX_MESSAGE];
    let got = fdpass::recv(conn.as_fd(), &mut buf, 4, RecvFlags::empty()).unwrap();
    assert!(got.fds.is_empty());
    Reply::parse(&buf[..got.len]).unwrap().1
}

fn memfd(pages: u64, seals: SealFlags) -> OwnedFd {
    let fd =
        rustix::fs::memfd_create("t", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
    rustix::fs::ftruncate(&fd, pages * PAGE_SIZE as u64).unwrap();
    if !seals.is_empty() {
        rustix::fs::fcntl_add_seals(&fd, seals).unwrap();
    }
    fd
}

const BAD: Reply = Reply::Error {
    op: 14,
    status: Status::BadRequest,
};

#[test]
fn only_sealed_writable_memfds_of_the_right_size_are_registered() {
    let sim = Sim::new();
    let conn = raw(&sim);
    let reg = |pages| Request::LocalRegister { pages };
    assert_eq!(call(&conn, &reg(1), &[]), BAD, "no fd");
    let unsealed = memfd(1, SealFlags::empty());
    assert_eq!(call(&conn, &reg(1), &[unsealed.as_fd()]), BAD, "can shrink");
    let sealed = memfd(2, SealFlags::SHRINK | SealFlags::GROW);
    assert_eq!(call(&conn, &reg(3), &[sealed.as_fd()]), BAD, "too short");
    let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&sealed));
    let ro = rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).unwrap();
    assert_eq!(call(&conn, &reg(1), &[ro.as_fd()]), BAD, "read-only");
    let (r, w) = rustix::pipe::pipe().unwrap();
    assert_eq!(call(&conn, &reg(1), &[w.as_fd()]), BAD, "not a memfd");
    assert_eq!(
        call(&conn, &reg(1), &[sealed.as_fd(), sealed.as_fd()]),
        BAD,
        "two fds"
    );
    drop(w);
    let mut b = [0u8; 1];
    assert_eq!(
        rustix::io::read(&r, &mut b),
        Ok(0),
        "the broker kept no pipe end"
    );
    assert_eq!(sim.broker.counters().locals, 0);
    let Reply::Registered { id } = call(&conn, &reg(2), &[sealed.as_fd()]) else {
        panic!("a sealed memfd of the right size is registered");
    };
    assert_eq!(sim.broker.counters().locals, 1);
    // The registration is mapped by the broker: a copy into it lands in our memfd.
    let dom1 = sim.domain(1);
    let pages = dom1.alloc(DomId::DOM0, 1, Access::ReadOnly).unwrap();
    pages.write_at(0, b"granted bytes").unwrap();
    let local_off = u32::try_from(PAGE_SIZE + 1).unwrap();
    let copy = copy_one(id, pages.grefs()[0], 13, local_off, CopyDir::FromGrant);
    assert_eq!(call(&conn, &copy, &[]), Reply::Copied { statuses: vec![0] });
    let mut got = [0u8; 13];
    assert_eq!(
        rustix::io::pread(&sealed, &mut got, PAGE_SIZE as u64 + 1),
        Ok(13)
    );
    assert_eq!(&got, b"granted bytes");
}

/// A COPY of one segment of dom1's `gref` (from offset 0) against local memory `id`.
fn copy_one(id: u32, gref: GrantRef, len: u16, local: u32, dir: CopyDir) -> Request {
    Request::Copy {
        domid: DomId(1),
        local: id,
        segs: vec![WireSeg {
            gref,
            offset: 0,
            len,
            local,
            dir,
        }],
    }
}

#[test]
fn another_connections_local_memory_can_be_neither_forgotten_nor_used() {
    let sim = Sim::new();
    let owner = sim.dom0();
    let dom1 = sim.domain(1);
    let pages = dom1.alloc(DomId::DOM0, 1, Access::Writable).unwrap();
    let local = owner.alloc_local(1).unwrap();
    let thief = raw(&sim);
    // Ids are small integers; try a range of them.
    for id in 0..16 {
        let copy = copy_one(id, pages.grefs()[0], 1, 0, CopyDir::ToGrant);
        assert_eq!(
            call(&thief, &copy, &[]),
            Reply::Error {
                op: 16,
                status: Status::NoSuchObject
            }
        );
        fdpass::send(
            thief.as_fd(),
            &Request::LocalForget { id }.emit(2),
            &[],
            SendFlags::empty(),
        )
        .unwrap();
    }
    assert_eq!(sim.broker.counters().locals, 1, "still registered");
    let seg = pvusb_xen::CopySeg {
        gref: pages.grefs()[0],
        offset: 0,
        len: 1,
        local: 0,
        dir: CopyDir::ToGrant,
    };
    assert_eq!(owner.copy(DomId(1), &local, &[seg]).unwrap(), vec![Ok(())]);
}
