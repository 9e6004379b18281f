//! Copiers on their own CPU (see [`crate::sim::gnttab`]): COPY_ATTACH hands a connection a
//! domain's grant table, read-only, and a hazard word of its own; every live grant is
//! published in its granter's table; ending access clears the entries and waits for copies
//! in flight.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags};

use super::{os, ConnId, Outcome, State};
use crate::sim::gnttab::{Entry, Hazard, Table};
use crate::sim::wire::{Reply, Request, Status};
use crate::DomId;

/// How long an end of access waits for one copier's copy in flight. A copy is a few
/// memcpys; a copier still inside one after this has stopped (killed or frozen mid-copy),
/// and is skipped until its hazard word changes.
pub const HAZARD_WAIT: Duration = Duration::from_millis(200);

/// A domain's table and the read-only file description copiers get. Dropped with the
/// domain, which marks it dead for copiers still mapping it.
#[derive(Debug)]
pub(super) struct SharedTable {
    pub(super) table: Table,
    ro_fd: Arc<OwnedFd>,
}

impl Drop for SharedTable {
    fn drop(&mut self) {
        self.table.mark_dead();
    }
}

/// A copying connection's hazard word.
#[derive(Debug)]
pub(super) struct Copier {
    hazard: Hazard,
    fd: Arc<OwnedFd>,
    /// A value seen still set after [`HAZARD_WAIT`]: not waited for again.
    stalled: Option<u64>,
}

impl super::Domain {
    /// The domain's grant table, if it has one yet.
    pub(super) fn gnttab(&self) -> Option<&Table> {
        self.table.as_ref().map(|t| &t.table)
    }
}

impl State {
    /// Makes `domid`'s table if it has none yet.
    pub(super) fn ensure_table(&mut self, domid: DomId) -> Result<(), Status> {
        let dom = self.domains.get_mut(&domid).ok_or(Status::NoSuchDomain)?;
        if dom.table.is_none() {
            let (table, memfd) = Table::create().map_err(os)?;
            // A read-only description: a copier's mmap(PROT_WRITE) of it fails.
            let path = format!("/proc/self/fd/{}", memfd.as_fd().as_raw_fd());
            let ro = rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
                .map_err(os)?;
            dom.table = Some(SharedTable {
                table,
                ro_fd: Arc::new(ro),
            });
        }
        Ok(())
    }

    /// `domid`'s table, if it has one.
    pub(super) fn table(&self, domid: DomId) -> Option<&Table> {
        self.domains.get(&domid).and_then(super::Domain::gnttab)
    }

    /// Records a live grant in its granter's table (made by [`State::ensure_table`]).
    pub(super) fn publish(&self, granter: DomId, entry: &Entry) {
        if let Some(t) = self.table(granter) {
            t.publish(entry);
        }
    }

    /// COPY_ATTACH: `domid`'s table (read-only) and the connection's hazard page.
    pub(super) fn attach_copier(&mut self, conn: ConnId, domid: DomId) -> Result<Outcome, Status> {
        if !self.is_live(domid) {
            return Err(Status::NoSuchDomain);
        }
        self.ensure_table(domid)?;
        let table_fd = self
            .domains
            .get(&domid)
            .and_then(|d| d.table.as_ref())
            .map(|t| t.ro_fd.clone())
            .ok_or(Status::NoSuchDomain)?;
        let client = self.conns.get_mut(&conn).ok_or(Status::NoSuchDomain)?;
        if client.hazard.is_none() {
            let (hazard, fd) = Hazard::create().map_err(os)?;
            client.hazard = Some(Copier {
                hazard,
                fd: Arc::new(fd),
                stalled: None,
            });
        }
        let hazard_fd = client
            .hazard
            .as_ref()
            .map(|c| c.fd.clone())
            .ok_or(Status::Resource)?;
        let op = Request::CopyAttach { domid }.op();
        Ok((Reply::Done { op }, vec![table_fd, hazard_fd]))
    }

    /// After entries of `granter`'s grants to `grantee` were cleared: waits until no copy
    /// that may have read them before is still running. Only the grantee's connections can
    /// be copying those grants, so only theirs are waited for (another domain's copier
    /// cannot hold this end of access up).
    pub(super) fn settle_copies(&mut self, granter: DomId, grantee: DomId) {
        let start = Instant::now();
        for (&conn, client) in &mut self.conns {
            let Some(c) = client.hazard.as_mut().filter(|_| client.domid == grantee) else {
                continue;
            };
            let Some(seen) = c.hazard.busy_with(granter) else {
                continue;
            };
            if c.stalled == Some(seen) {
                continue;
            }
            while c.hazard.value() == seen {
                if start.elapsed() > HAZARD_WAIT {
                    tracing::warn!(
                        conn,
                        granter = granter.0,
                        "a copier has been inside one copy for {HAZARD_WAIT:?}; ending access without it"
                    );
                    c.stalled = Some(seen);
                    break;
                }
                std::thread::yield_now();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::mem::Region;
    use crate::sim::gnttab::SLOTS;
    use crate::sim::wire::{EndMode, MapOutcome, MapSpec};
    use crate::{Access, GrantRef, PAGE_SIZE};

    use crate::sim::state::tests::setup;

    /// GRANT_END (refuse if mapped) of `handle` as `conn`, which must succeed.
    fn end(s: &mut State, conn: ConnId, handle: u32) {
        let req = Request::GrantEnd {
            handle,
            mode: EndMode::Refuse,
        };
        s.handle(conn, req).0.unwrap();
    }

    fn grant(s: &mut State, c1: ConnId, count: u32, access: Access) -> (u32, Vec<GrantRef>) {
        let req = Request::GrantAlloc {
            grantee: DomId::DOM0,
            count,
            access,
        };
        match s.handle(c1, req).0.unwrap().0 {
            Reply::Granted { handle, grefs } => (handle, grefs),
            r => panic!("{r:?}"),
        }
    }

    /// COPY_ATTACH as `conn`: dom1's table and the connection's hazard page.
    fn attach(s: &mut State, conn: ConnId) -> (Table, Hazard, Arc<OwnedFd>) {
        let (reply, fds) = s
            .handle(conn, Request::CopyAttach { domid: DomId(1) })
            .0
            .unwrap();
        assert!(matches!(reply, Reply::Done { .. }), "{reply:?}");
        let [t, h] = <[Arc<OwnedFd>; 2]>::try_from(fds).unwrap();
        (Table::open(&t).unwrap(), Hazard::open(&h).unwrap(), h)
    }

    #[test]
    fn a_copier_gets_the_table_read_only_and_sees_live_grants_only() {
        let (mut s, c0, c1) = setup();
        let (handle, grefs) = grant(&mut s, c1, 2, Access::ReadOnly);
        let (table, _, hazard_fd) = attach(&mut s, c0);
        let e = table.lookup(grefs[1].0).unwrap();
        assert_eq!(
            (e.page, e.grantee, e.access),
            (1, DomId::DOM0, Access::ReadOnly)
        );
        let serial = table.lookup(grefs[0].0).unwrap().serial;
        assert_eq!(serial, e.serial, "one allocation, one file");
        // The table's description is read-only: a copier cannot write the broker's record.
        let (_, fds) = s
            .handle(c0, Request::CopyAttach { domid: DomId(1) })
            .0
            .unwrap();
        let ro = Region::map_shared(fds[0].as_fd(), 0, PAGE_SIZE, Access::Writable);
        assert_eq!(ro.err(), Some(rustix::io::Errno::ACCESS));
        let same = |a: &OwnedFd, b: &OwnedFd| {
            rustix::fs::fstat(a).unwrap().st_ino == rustix::fs::fstat(b).unwrap().st_ino
        };
        assert!(same(&fds[1], &hazard_fd), "one hazard page per connection");
        end(&mut s, c1, handle);
        assert_eq!(table.lookup(grefs[0].0), None);
        assert_eq!(table.lookup(grefs[1].0), None);
        let missing = s.handle(c0, Request::CopyAttach { domid: DomId(9) }).0;
        assert_eq!(missing.err(), Some(Status::NoSuchDomain));
    }

    #[test]
    fn ending_access_waits_for_a_copy_in_flight() {
        let (mut s, c0, c1) = setup();
        let (handle, grefs) = grant(&mut s, c1, 1, Access::Writable);
        let (table, hazard, _) = attach(&mut s, c0);
        hazard.enter(DomId(1));
        let ended = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let ender = scope.spawn(|| {
                end(&mut s, c1, handle);
                ended.store(true, Ordering::SeqCst);
            });
            std::thread::sleep(Duration::from_millis(50));
            assert!(
                !ended.load(Ordering::SeqCst),
                "access ended under a running copy"
            );
            // The entry is already gone: a copy starting now would not use it.
            assert_eq!(table.lookup(grefs[0].0), None);
            hazard.leave();
            ender.join().unwrap();
        });
        assert!(ended.load(Ordering::SeqCst));
        // Neither a copy from another granter nor one by a domain dom1 did not grant the
        // pages to holds dom1's end up (waiting would have marked the word stalled).
        s.create_domain(DomId(2)).unwrap();
        let c2 = s.connect(DomId(2)).unwrap();
        let (_, other, _) = attach(&mut s, c2);
        other.enter(DomId(1));
        let (handle, _) = grant(&mut s, c1, 1, Access::Writable);
        hazard.enter(DomId(7));
        end(&mut s, c1, handle);
        hazard.leave();
        other.leave();
        for c in [c0, c2] {
            let stalled = s.conns[&c].hazard.as_ref().unwrap().stalled;
            assert_eq!(stalled, None, "waited for connection {c}");
        }
    }

    #[test]
    fn a_copier_stopped_inside_a_copy_delays_one_end_only() {
        let (mut s, c0, c1) = setup();
        let (_, _, _) = attach(&mut s, c0);
        let (h1, _) = grant(&mut s, c1, 1, Access::Writable);
        let (h2, _) = grant(&mut s, c1, 1, Access::Writable);
        let (_, hazard, _) = attach(&mut s, c0);
        hazard.enter(DomId(1));
        let start = Instant::now();
        end(&mut s, c1, h1);
        assert!(start.elapsed() >= HAZARD_WAIT);
        assert!(s.conns[&c0].hazard.as_ref().unwrap().stalled.is_some());
        // Skipped from now on while its word stays the same (a lower bound only: no test
        // asserts how fast something is).
        end(&mut s, c1, h2);
        assert_eq!(s.counters().grants, 0);
    }

    #[test]
    fn files_names_the_pages_without_mapping_them() {
        let (mut s, c0, c1) = setup();
        let (handle, grefs) = grant(&mut s, c1, 2, Access::Writable);
        let maps = vec![
            MapSpec {
                access: Access::Writable,
                refs: vec![grefs[1]],
            },
            MapSpec {
                access: Access::Writable,
                refs: vec![GrantRef(999)],
            },
        ];
        let (reply, fds) = s
            .handle(
                c0,
                Request::Files {
                    domid: DomId(1),
                    maps,
                },
            )
            .0
            .unwrap();
        let Reply::Mapped { files, maps, .. } = reply else {
            panic!("{reply:?}")
        };
        assert_eq!((files.len(), fds.len()), (1, 1));
        assert!(
            matches!(&maps[0], MapOutcome::Mapped { map_id: 0, pages } if pages[0].file_page == 1)
        );
        assert_eq!(maps[1], MapOutcome::Failed(Status::NotGranted));
        assert_eq!(s.counters().mappings, 0);
        // Nothing is mapped, so nothing holds the end of access up.
        end(&mut s, c1, handle);
    }

    #[test]
    fn a_reference_whose_slot_is_taken_is_skipped_and_a_dead_domain_says_so() {
        let (mut s, c0, c1) = setup();
        let (_, first) = grant(&mut s, c1, 1, Access::Writable);
        // Wrap the counter round so that the next reference would share the first's slot.
        let wrapped = first[0].0 + SLOTS as u32;
        s.domains.get_mut(&DomId(1)).unwrap().next_gref = wrapped;
        let (_, next) = grant(&mut s, c1, 2, Access::ReadOnly);
        assert_eq!(next, [GrantRef(wrapped + 1), GrantRef(wrapped + 2)]);
        let (table, _, _) = attach(&mut s, c0);
        assert_eq!(table.lookup(first[0].0).unwrap().access, Access::Writable);
        assert_eq!(table.lookup(next[0].0).unwrap().access, Access::ReadOnly);
        assert_eq!(table.lookup(wrapped), None);
        assert!(table.alive());
        s.disconnect(c1);
        assert!(
            !table.alive(),
            "a copier must drop the table of a dead domain"
        );
    }
}
