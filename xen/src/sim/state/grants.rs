//! Grants and mappings: GRANT_ALLOC/END, batched MAP, UNMAP and FORGET.
//!
//! Files are handed out once per connection: an allocation has a serial that is never
//! reused, each connection records which (serial, access) files it was sent, and a MAP reply
//! attaches only files the connection lacks. When an allocation is freed, its serial is
//! queued as dead for every connection holding one of its files, and reported with that
//! connection's next MAP reply (the client then closes its copy).

use std::collections::HashSet;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;

use rustix::fs::{MemfdFlags, Mode, OFlags, SealFlags};

use super::{next_id, os, Alloc, ConnId, Domain, Mapping, Outcome, State};
use super::{GNTALLOC_DEFAULT_LIMIT, MAX_GRANTED_PAGES, MAX_HELD_PER_CONN, MAX_MAPPINGS_PER_CONN};
use crate::sim::gnttab::{self, Entry};
use crate::sim::wire::{
    EndMode, FileKey, FileRef, MapOutcome, MapSpec, PageLoc, Reply, Status, MAX_DEAD, MAX_FILES,
};
use crate::{Access, DomId, GrantRef, PAGE_SIZE};

/// What one MAP reply is collecting: the files it names and the fds it attaches.
#[derive(Default)]
struct Files {
    refs: Vec<FileRef>,
    fds: Vec<Arc<OwnedFd>>,
}

impl State {
    pub(super) fn grant(
        &mut self,
        conn: ConnId,
        me: DomId,
        grantee: DomId,
        count: u32,
        access: Access,
    ) -> Result<Outcome, Status> {
        if !self.is_live(grantee) {
            return Err(Status::NoSuchDomain);
        }
        let pages = usize::try_from(count).map_err(|_| Status::BadRequest)?;
        self.ensure_table(me)?;
        let dom = self.domains.get_mut(&me).ok_or(Status::NoSuchDomain)?;
        let after = dom.granted_pages.saturating_add(pages);
        if after > dom.gntalloc_limit.unwrap_or(GNTALLOC_DEFAULT_LIMIT) {
            return Err(Status::GrantLimit);
        }
        if after > MAX_GRANTED_PAGES {
            return Err(Status::Resource);
        }
        let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
        let memfd = rustix::fs::memfd_create("pvusb-grant", flags).map_err(os)?;
        let bytes = u64::from(count)
            .checked_mul(PAGE_SIZE as u64)
            .ok_or(Status::BadRequest)?;
        rustix::fs::ftruncate(&memfd, bytes).map_err(os)?;
        // A hostile peer holding the fd must not shrink it: the other side's mapping would
        // fault (SIGBUS) on the missing pages.
        let seals = SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL;
        rustix::fs::fcntl_add_seals(&memfd, seals).map_err(os)?;
        // The field, not `dom.gnttab()`: the loop below updates `dom.next_gref`.
        let table = &dom.table.as_ref().ok_or(Status::Resource)?.table;
        let mut grefs = Vec::with_capacity(pages);
        for _ in 0..pages {
            // Skip references whose table slot is taken: at most as many as are granted,
            // fewer than half the slots, so a batch never wraps onto its own slots.
            let mut g = dom.next_gref;
            for _ in 0..gnttab::SLOTS {
                if !table.slot_taken(g) {
                    break;
                }
                g = g.checked_add(1).ok_or(Status::Resource)?;
            }
            if table.slot_taken(g) {
                return Err(Status::Resource);
            }
            dom.next_gref = g.checked_add(1).ok_or(Status::Resource)?;
            grefs.push(g);
        }
        dom.granted_pages += pages;
        let handle = next_id(&mut self.next_handle, |h| self.allocs.contains_key(&h))?;
        for (i, &g) in grefs.iter().enumerate() {
            let page = u32::try_from(i).map_err(|_| Status::BadRequest)?;
            self.grants.insert((me, g), (handle, page));
        }
        let memfd = Arc::new(memfd);
        let reply = Reply::Granted {
            handle,
            grefs: grefs.iter().map(|&g| GrantRef(g)).collect(),
        };
        self.next_serial += 1;
        for (page, &gref) in (0u32..).zip(&grefs) {
            let entry = Entry {
                gref,
                serial: self.next_serial,
                page,
                grantee,
                access,
            };
            self.publish(me, &entry);
        }
        let alloc = Alloc {
            serial: self.next_serial,
            holders: HashSet::new(),
            owner: conn,
            granter: me,
            grantee,
            access,
            memfd: memfd.clone(),
            ro_fd: None,
            grefs,
            mapped_by: 0,
            revoking: false,
            view: None,
        };
        self.allocs.insert(handle, alloc);
        Ok((reply, vec![memfd]))
    }

    pub(super) fn end_grant(&mut self, handle: u32, mode: EndMode) -> Result<(), Status> {
        let alloc = self.allocs.get_mut(&handle).ok_or(Status::NoSuchObject)?;
        if alloc.mapped_by > 0 && mode == EndMode::Refuse {
            return Err(Status::StillMapped);
        }
        if !alloc.revoking {
            alloc.revoking = true;
            let (granter, grantee) = (alloc.granter, alloc.grantee);
            // Not `self.table()`: `alloc` still borrows the allocations.
            let table = self.domains.get(&granter).and_then(Domain::gnttab);
            for g in &alloc.grefs {
                self.grants.remove(&(granter, *g));
                if let Some(t) = table {
                    t.clear(*g);
                }
            }
            // Access ends only once no copy that read those entries still runs.
            self.settle_copies(granter, grantee);
        }
        let Some(alloc) = self.allocs.get(&handle) else {
            return Ok(());
        };
        if alloc.mapped_by == 0 {
            self.free_alloc(handle);
        }
        Ok(())
    }

    fn free_alloc(&mut self, handle: u32) {
        let Some(a) = self.allocs.remove(&handle) else {
            return;
        };
        if let Some(d) = self.domains.get_mut(&a.granter) {
            d.granted_pages = d.granted_pages.saturating_sub(a.grefs.len());
        }
        for c in a.holders {
            let Some(client) = self.conns.get_mut(&c) else {
                continue;
            };
            let mut held = false;
            for access in [Access::ReadOnly, Access::Writable] {
                held |= client.held.remove(&FileKey {
                    serial: a.serial,
                    access,
                });
            }
            if held {
                client.dead.push(a.serial);
            }
        }
    }

    /// A MAP batch: every map succeeds or fails on its own; the reply also carries (some
    /// of) the serials that died since the connection's last MAP reply.
    pub(super) fn map_batch(
        &mut self,
        conn: ConnId,
        me: DomId,
        domid: DomId,
        specs: &[MapSpec],
        probe: bool,
    ) -> Result<Outcome, Status> {
        if !self.is_live(domid) {
            return Err(Status::NoSuchDomain);
        }
        let mut files = Files::default();
        let maps = specs
            .iter()
            .map(
                |spec| match self.map_one(conn, me, domid, spec, &mut files, probe) {
                    Ok((map_id, pages)) => MapOutcome::Mapped { map_id, pages },
                    Err(s) => MapOutcome::Failed(s),
                },
            )
            .collect();
        let client = self.conns.get_mut(&conn).ok_or(Status::NoSuchDomain)?;
        let n = client.dead.len().min(MAX_DEAD);
        let dead = client.dead.drain(..n).collect();
        let reply = Reply::Mapped {
            files: files.refs,
            dead,
            maps,
        };
        Ok((reply, files.fds))
    }

    fn map_one(
        &mut self,
        conn: ConnId,
        me: DomId,
        domid: DomId,
        spec: &MapSpec,
        files: &mut Files,
        probe: bool,
    ) -> Result<(u32, Vec<PageLoc>), Status> {
        let client = self.conns.get(&conn).ok_or(Status::NoSuchDomain)?;
        if !probe && client.mappings.len() >= MAX_MAPPINGS_PER_CONN {
            return Err(Status::Resource);
        }
        // Check every page first: a refused map changes nothing but the file list.
        let mut handles: Vec<u32> = Vec::new();
        let mut locs = Vec::with_capacity(spec.refs.len());
        for r in &spec.refs {
            let &(handle, file_page) = self.grants.get(&(domid, r.0)).ok_or(Status::NotGranted)?;
            let alloc = self.allocs.get(&handle).ok_or(Status::NotGranted)?;
            if alloc.grantee != me || alloc.revoking {
                return Err(Status::NotGranted);
            }
            if spec.access == Access::Writable && alloc.access == Access::ReadOnly {
                return Err(Status::ReadOnlyGrant);
            }
            let k = match handles.iter().position(|&h| h == handle) {
                Some(k) => k,
                None => {
                    handles.push(handle);
                    handles.len() - 1
                }
            };
            locs.push((k, file_page));
        }
        let mut file_of = Vec::with_capacity(handles.len());
        for h in &handles {
            file_of.push(self.file_for(conn, *h, spec.access, files)?);
        }
        let pages = |file_of: Vec<u32>| {
            locs.into_iter()
                .map(|(k, file_page)| PageLoc {
                    file: file_of.get(k).copied().unwrap_or(u32::MAX),
                    file_page,
                })
                .collect()
        };
        if probe {
            // FILES: where the pages are, for a copier on its own CPU; nothing is mapped.
            return Ok((0, pages(file_of)));
        }
        let map_id = next_id(&mut self.next_map, |m| self.mappings.contains_key(&m))?;
        for h in &handles {
            if let Some(a) = self.allocs.get_mut(h) {
                a.mapped_by += 1;
            }
        }
        self.mappings.insert(
            map_id,
            Mapping {
                owner: conn,
                allocs: handles,
            },
        );
        if let Some(c) = self.conns.get_mut(&conn) {
            c.mappings.insert(map_id);
        }
        Ok((map_id, pages(file_of)))
    }

    /// The index in the reply's file list of allocation `handle`'s file with `access`,
    /// attaching its fd if `conn` does not hold it yet.
    fn file_for(
        &mut self,
        conn: ConnId,
        handle: u32,
        access: Access,
        files: &mut Files,
    ) -> Result<u32, Status> {
        let alloc = self.allocs.get_mut(&handle).ok_or(Status::NotGranted)?;
        let key = FileKey {
            serial: alloc.serial,
            access,
        };
        if let Some(i) = files.refs.iter().position(|f| f.key == key) {
            return u32::try_from(i).map_err(|_| Status::TooManyFiles);
        }
        if files.refs.len() >= MAX_FILES {
            return Err(Status::TooManyFiles);
        }
        let client = self.conns.get_mut(&conn).ok_or(Status::NoSuchDomain)?;
        let attached = !client.held.contains(&key);
        if attached {
            if client.held.len() + client.dead.len() >= MAX_HELD_PER_CONN {
                return Err(Status::Resource);
            }
            files.fds.push(match access {
                Access::Writable => alloc.memfd.clone(),
                Access::ReadOnly => read_only(alloc)?,
            });
            client.held.insert(key);
            alloc.holders.insert(conn);
        }
        files.refs.push(FileRef { key, attached });
        u32::try_from(files.refs.len() - 1).map_err(|_| Status::TooManyFiles)
    }

    pub(super) fn unmap(&mut self, map_id: u32) {
        let Some(m) = self.mappings.remove(&map_id) else {
            return;
        };
        if let Some(c) = self.conns.get_mut(&m.owner) {
            c.mappings.remove(&map_id);
        }
        for h in m.allocs {
            let Some(a) = self.allocs.get_mut(&h) else {
                continue;
            };
            a.mapped_by = a.mapped_by.saturating_sub(1);
            if a.revoking && a.mapped_by == 0 {
                self.free_alloc(h);
            }
        }
    }

    /// The client closed its copies of `files`: attach them again when next needed.
    pub(super) fn forget(&mut self, conn: ConnId, files: &[FileKey]) {
        if let Some(c) = self.conns.get_mut(&conn) {
            for f in files {
                c.held.remove(f);
            }
        }
    }
}

/// A read-only file description of the allocation's memfd: mmap(PROT_WRITE) and
/// mprotect(PROT_WRITE) of it fail with EACCES, so a read-only grant stays read-only.
fn read_only(alloc: &mut Alloc) -> Result<Arc<OwnedFd>, Status> {
    if let Some(fd) = &alloc.ro_fd {
        return Ok(fd.clone());
    }
    let path = format!("/proc/self/fd/{}", alloc.memfd.as_fd().as_raw_fd());
    let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).map_err(os)?;
    let fd = Arc::new(fd);
    alloc.ro_fd = Some(fd.clone());
    Ok(fd)
}
