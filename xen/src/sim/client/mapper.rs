//! MAP on the simulated platform: one broker round trip per batch, files from the
//! connection's cache, one mmap per run of consecutive pages of one file.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use super::Conn;
use crate::error::BrokerError;
use crate::mem::{Region, Unmap};
use crate::sim::fdpass;
use crate::sim::wire::{FileKey, MapOutcome, MapSpec, PageLoc, Reply, Request, Status};
use crate::{Access, DomId, GrantMapping, MapError, MapRequest, PAGE_SIZE};

#[derive(Debug)]
struct SimUnmap {
    conn: Arc<Conn>,
    map_id: u32,
}

impl Unmap for SimUnmap {
    /// Runs after the munmap: nothing here can touch the pages any more, so the broker is
    /// told without waiting for an answer. The broker handles our connection's messages in
    /// order, and drains them before refusing an end of access or reporting counters, so
    /// whoever learns (through us) that the pages are unmapped sees the broker agree.
    fn unmap(self: Box<Self>) {
        if let Err(e) = self.conn.send_oneway(&Request::UnmapOneway {
            map_id: self.map_id,
        }) {
            // The broker also counts our connection's close as the unmap.
            tracing::debug!(map_id = self.map_id, error = %e, "unmap report failed");
        }
    }
}

/// What a MAP (or FILES) round trip gave, taken apart under the connection lock: the
/// outcomes, the reply's files and their fds (or why the files are unusable).
pub(super) type Answer = (
    Vec<MapOutcome>,
    Vec<FileKey>,
    Result<Vec<Arc<OwnedFd>>, BrokerError>,
);

/// One MAP round trip for `reqs` (all of valid size, at most a batch): one result each.
pub(super) fn map_chunk(
    conn: &Arc<Conn>,
    domid: DomId,
    reqs: &[MapRequest<'_>],
) -> Vec<Result<GrantMapping, MapError>> {
    if reqs.is_empty() {
        return Vec::new();
    }
    let req = Request::Map {
        domid,
        maps: reqs
            .iter()
            .map(|r| MapSpec {
                access: r.access,
                refs: r.refs.to_vec(),
            })
            .collect(),
    };
    let (outcomes, _, files) = match round_trip(conn, &req) {
        Ok(Ok(answer)) => answer,
        Ok(Err(status)) => {
            return reqs
                .iter()
                .map(|r| Err(refused(domid, r, status)))
                .collect()
        }
        Err(e) => return reqs.iter().map(|_| Err(e.clone().into())).collect(),
    };
    if outcomes.len() != reqs.len() {
        // Release whatever the broker counted: nothing can be matched to a request.
        for o in outcomes {
            if let MapOutcome::Mapped { map_id, .. } = o {
                Box::new(SimUnmap {
                    conn: conn.clone(),
                    map_id,
                })
                .unmap();
            }
        }
        let e = BrokerError::BadReply("outcome count does not match the batch");
        return reqs.iter().map(|_| Err(e.clone().into())).collect();
    }
    reqs.iter()
        .zip(outcomes)
        .map(|(r, o)| finish(conn, domid, r, o, &files))
        .collect()
}

/// Sends the MAP (or FILES) and applies the reply's files to the cache, all under the connection lock
/// (the next reply may name files this one attached). The outer error is the connection's,
/// the inner a refusal of the whole batch.
pub(super) fn round_trip(
    conn: &Conn,
    req: &Request,
) -> Result<Result<Answer, Status>, BrokerError> {
    let mut wire = conn.lock();
    let seq = wire.send(req)?;
    let (reply, fds) = wire.reply(seq, req.op(), fdpass::MAX_FDS)?;
    match reply {
        Reply::Mapped { files, dead, maps } => {
            let resolved = wire.files.apply(&files, &dead, fds);
            let lacking = wire.files.lacking(&files);
            if !lacking.is_empty() {
                // Out of step with the broker: make it send those files again.
                if let Err(e) = wire.send_oneway(&Request::Forget { files: lacking }) {
                    tracing::debug!(error = %e, "forget failed");
                }
            }
            for keys in wire.files.evict() {
                // One-way and in order: the broker attaches them again if a later MAP
                // needs them. If sending fails, the connection is gone anyway.
                if let Err(e) = wire.send_oneway(&Request::Forget { files: keys }) {
                    tracing::debug!(error = %e, "forget failed");
                }
            }
            let keys = files.iter().map(|f| f.key).collect();
            Ok(Ok((maps, keys, resolved)))
        }
        Reply::Error { status, .. } => Ok(Err(status)),
        _ => Err(BrokerError::BadReply("unexpected reply")),
    }
}

fn refused(domid: DomId, r: &MapRequest<'_>, status: Status) -> MapError {
    match status {
        Status::NotGranted => MapError::NotGranted {
            domid,
            refs: r.refs.to_vec(),
        },
        Status::ReadOnlyGrant => MapError::ReadOnlyGrant {
            domid,
            refs: r.refs.to_vec(),
        },
        Status::NoSuchDomain => MapError::NoSuchDomain(domid),
        s => MapError::Broker(BrokerError::Refused(s)),
    }
}

fn finish(
    conn: &Arc<Conn>,
    domid: DomId,
    r: &MapRequest<'_>,
    outcome: MapOutcome,
    files: &Result<Vec<Arc<OwnedFd>>, BrokerError>,
) -> Result<GrantMapping, MapError> {
    let (map_id, pages) = match outcome {
        MapOutcome::Mapped { map_id, pages } => (map_id, pages),
        MapOutcome::Failed(status) => return Err(refused(domid, r, status)),
    };
    // From here the broker counts the mapping: release it on every failure path.
    let unmap = Box::new(SimUnmap {
        conn: conn.clone(),
        map_id,
    });
    let built = match files {
        Ok(files) => build_mapping(files, &pages, r.refs.len(), r.access),
        Err(e) => Err(e.clone().into()),
    };
    match built {
        Ok(region) => Ok(GrantMapping::new(region, domid, r.refs, unmap)),
        Err(e) => {
            unmap.unmap();
            Err(e)
        }
    }
}

/// Maps a reply's page list (`pages[i]` names one of `files` and a page of it) as one
/// contiguous region.
fn build_mapping(
    files: &[Arc<OwnedFd>],
    pages: &[PageLoc],
    count: usize,
    access: Access,
) -> Result<Region, MapError> {
    if pages.len() != count {
        return Err(BrokerError::BadReply("page list does not match the request").into());
    }
    // The usual case (a request's pages granted together): one run of one memfd.
    if let Some(first) = pages.first() {
        let one_run = pages.iter().enumerate().all(|(i, p)| {
            p.file == first.file && u64::from(p.file_page) == u64::from(first.file_page) + i as u64
        });
        if one_run {
            let fd = usize::try_from(first.file)
                .ok()
                .and_then(|k| files.get(k))
                .ok_or(BrokerError::BadReply("file index out of range"))?;
            let offset = u64::from(first.file_page)
                .checked_mul(PAGE_SIZE as u64)
                .ok_or(BrokerError::BadReply("page offset"))?;
            let len = count
                .checked_mul(PAGE_SIZE)
                .ok_or(BrokerError::BadReply("page count"))?;
            return Region::map_shared_populated(fd.as_fd(), offset, len, access).map_err(
                |errno| MapError::Os {
                    op: "mmap grant",
                    errno,
                },
            );
        }
    }
    let mut region = Region::reserve(count, access).map_err(|errno| MapError::Os {
        op: "mmap reserve",
        errno,
    })?;
    // Map runs of consecutive pages of one memfd with one mmap.
    let mut i = 0;
    while let Some(first) = pages.get(i) {
        let mut run = 1;
        while pages.get(i + run).is_some_and(|p| {
            p.file == first.file
                && u64::from(p.file_page) == u64::from(first.file_page) + run as u64
        }) {
            run += 1;
        }
        let fd = usize::try_from(first.file)
            .ok()
            .and_then(|k| files.get(k))
            .ok_or(BrokerError::BadReply("file index out of range"))?;
        region
            .map_fixed(i, fd.as_fd(), u64::from(first.file_page), run)
            .map_err(|errno| MapError::Os {
                op: "mmap grant",
                errno,
            })?;
        i += run;
    }
    Ok(region)
}
