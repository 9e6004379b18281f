//! Grant copy on the caller's CPU, as `GNTTABOP_copy` runs on the calling vCPU: the
//! granter's table (see [`crate::sim::gnttab`]) is checked here and the bytes copied between
//! this process's mappings, with no broker round trip. The broker is asked only once per
//! granter (COPY_ATTACH) and once per allocation (FILES, for its memfd, which is then mapped
//! whole and kept).
//!
//! A copy is: check every segment against the table, fetch the files not mapped yet, then
//! publish the hazard word, check every segment again (that check is the one that counts:
//! an end of access either ran before it and is seen, or waits for the hazard), copy, and
//! withdraw the hazard.

use std::collections::HashMap;
use std::os::fd::AsFd;

use super::mapper::round_trip;
use super::Conn;
use crate::copy::{CopySeg, SegError, GNTST_BAD_DOMAIN};
use crate::error::BrokerError;
use crate::mem::Region;
use crate::sim::gnttab::{Entry, Hazard, Table};
use crate::sim::wire::{FileKey, MapOutcome, MapSpec, Reply, Request, Status, MAX_BATCH};
use crate::{CopyDir, DomId, GrantRef, PAGE_SIZE};

/// Allocation files kept mapped; all are dropped when more are needed (a backend copies
/// from a few pools that live as long as their controller).
const MAX_VIEWS: usize = 256;

/// One connection's state for copying on its own CPU.
#[derive(Debug, Default)]
pub(super) struct Direct {
    tables: HashMap<DomId, Table>,
    hazard: Option<Hazard>,
    views: HashMap<FileKey, Region>,
}

/// One segment's outcome so far: the grant it copies under, or why it fails.
type Checked = Result<Entry, SegError>;

fn key(e: &Entry) -> FileKey {
    FileKey {
        serial: e.serial,
        access: e.access,
    }
}

impl Direct {
    /// Copies `segs` between `domid`'s grants and `local`; one result per segment.
    pub(super) fn copy(
        &mut self,
        conn: &Conn,
        domid: DomId,
        local: &Region,
        segs: &[CopySeg],
    ) -> Result<Vec<Result<(), SegError>>, BrokerError> {
        if !self.attach(conn, domid)? {
            let dead = SegError::from_gntst(GNTST_BAD_DOMAIN);
            return Ok(segs.iter().map(|_| dead).collect());
        }
        let first: Vec<Checked> = segs
            .iter()
            .map(|s| check(self.tables.get(&domid), conn.domid, local, s))
            .collect();
        let missing = self.fetch_files(conn, domid, segs, &first)?;
        let (Some(table), Some(hazard)) = (self.tables.get(&domid), self.hazard.as_ref()) else {
            return Err(BrokerError::BadReply("grant table not attached"));
        };
        hazard.enter(domid);
        // A request's segments nearly always lie in one file (the granter's pool): look its
        // view up once, not per segment.
        let mut last: Option<(FileKey, &Region)> = None;
        let out = segs
            .iter()
            .zip(first)
            .map(|(s, checked)| {
                let e = checked?;
                let k = key(&e);
                if missing.contains(&k) {
                    return Err(SegError::BadGref);
                }
                // The check after publishing the hazard: the grant must be unchanged.
                if table.lookup(s.gref.0) != Some(e) {
                    return Err(SegError::BadGref);
                }
                let view = match last {
                    Some((lk, v)) if lk == k => v,
                    _ => {
                        let v = self.views.get(&k).ok_or(SegError::BadGref)?;
                        last = Some((k, v));
                        v
                    }
                };
                let granted = usize::try_from(e.page)
                    .ok()
                    .and_then(|p| p.checked_mul(PAGE_SIZE))
                    .and_then(|p| p.checked_add(usize::from(s.offset)))
                    .ok_or(SegError::OutOfRange)?;
                let len = usize::from(s.len);
                match s.dir {
                    CopyDir::FromGrant => local.copy_from(s.local, view, granted, len),
                    CopyDir::ToGrant => view.copy_from(granted, local, s.local, len),
                }
                .map_err(|_| SegError::OutOfRange)
            })
            .collect();
        hazard.leave();
        Ok(out)
    }

    /// Maps `domid`'s table (again, if the one we had is of a domain now gone) and our
    /// hazard page; false if the domain does not exist.
    fn attach(&mut self, conn: &Conn, domid: DomId) -> Result<bool, BrokerError> {
        if self.tables.get(&domid).is_some_and(Table::alive) && self.hazard.is_some() {
            return Ok(true);
        }
        self.tables.remove(&domid);
        let fds = match conn.call(&Request::CopyAttach { domid }, 2)? {
            (Reply::Done { .. }, fds) if fds.len() == 2 => fds,
            (
                Reply::Error {
                    status: Status::NoSuchDomain,
                    ..
                },
                _,
            ) => return Ok(false),
            (Reply::Error { status, .. }, _) => return Err(BrokerError::Refused(status)),
            _ => return Err(BrokerError::BadReply("COPY_ATTACH")),
        };
        let Ok([table, hazard]) = <[_; 2]>::try_from(fds) else {
            return Err(BrokerError::BadReply("COPY_ATTACH fds"));
        };
        self.tables
            .insert(domid, Table::open(&table).map_err(BrokerError::Io)?);
        if self.hazard.is_none() {
            self.hazard = Some(Hazard::open(&hazard).map_err(BrokerError::Io)?);
        }
        Ok(true)
    }

    /// Maps the files of the checked segments not mapped yet (one FILES round trip per
    /// [`MAX_BATCH`] files); returns those the broker refused (ended since the check).
    fn fetch_files(
        &mut self,
        conn: &Conn,
        domid: DomId,
        segs: &[CopySeg],
        checked: &[Checked],
    ) -> Result<Vec<FileKey>, BrokerError> {
        let mut wanted: Vec<(FileKey, GrantRef)> = Vec::new();
        let mut last = None;
        for (s, c) in segs.iter().zip(checked) {
            if let Ok(e) = c {
                let k = key(e);
                if last == Some(k) {
                    continue;
                }
                last = Some(k);
                if !self.views.contains_key(&k) && !wanted.iter().any(|(w, _)| *w == k) {
                    wanted.push((k, s.gref));
                }
            }
        }
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        if self.views.len() + wanted.len() > MAX_VIEWS {
            self.views.clear();
        }
        let mut refused = Vec::new();
        for chunk in wanted.chunks(MAX_BATCH) {
            let maps = chunk
                .iter()
                .map(|(k, gref)| MapSpec {
                    access: k.access,
                    refs: vec![*gref],
                })
                .collect();
            let req = Request::Files { domid, maps };
            let (outcomes, keys, fds) = match round_trip(conn, &req)? {
                Ok(answer) => answer,
                Err(_) => {
                    refused.extend(chunk.iter().map(|(k, _)| *k));
                    continue;
                }
            };
            let fds = fds?;
            for ((k, _), o) in chunk.iter().zip(outcomes) {
                let file = match o {
                    MapOutcome::Mapped { pages, .. } => pages.first().map(|p| p.file),
                    MapOutcome::Failed(_) => None,
                };
                let fd = file
                    .and_then(|f| usize::try_from(f).ok())
                    .filter(|&f| keys.get(f) == Some(k))
                    .and_then(|f| fds.get(f));
                let Some(fd) = fd else {
                    refused.push(*k);
                    continue;
                };
                let size = rustix::fs::fstat(fd.as_fd())
                    .map_err(BrokerError::Io)?
                    .st_size;
                let len = usize::try_from(size).map_err(|_| BrokerError::BadReply("size"))?;
                let view =
                    Region::map_shared(fd.as_fd(), 0, len, k.access).map_err(BrokerError::Io)?;
                self.views.insert(*k, view);
            }
        }
        Ok(refused)
    }
}

/// The first check of a segment, in Xen's order: the arguments, the grant (in `table`, the
/// granter's), its access.
fn check(table: Option<&Table>, me: DomId, local: &Region, s: &CopySeg) -> Checked {
    s.check_bounds(local.len())?;
    let e = table
        .and_then(|t| t.lookup(s.gref.0))
        .filter(|e| e.grantee == me)
        .ok_or(SegError::BadGref)?;
    if s.dir == CopyDir::ToGrant && e.access == crate::Access::ReadOnly {
        return Err(SegError::ReadOnly);
    }
    Ok(e)
}
