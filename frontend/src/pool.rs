//! The pages one controller connection grants to the backend, once: the two ring pages and
//! the data pool, which transfers bounce through (gntalloc cannot grant arbitrary memory).
//!
//! The pool gives every usbif request id its own 16 pages (the most one request can use):
//! OUT data, IN data and isochronous frame descriptors alike. A request's pages are
//! therefore reused only when its id is, and the frontend engine frees an id only when the
//! backend's response for it arrived, which a backend sends only after unmapping its grants
//! (DESIGN.md contract 7). No grant is allocated per URB.
//!
//! The pool is one writable grant: a backend may map an OUT request's pages writable too,
//! but nothing is ever read back from them (only the pages of IN requests are), so that
//! costs the guest nothing, and it halves what a controller takes of gntalloc's limit, which
//! every gntalloc user of the domain shares (1024 pages by default). A controller takes
//! [`GRANTS_PER_CONTROLLER`] pages of it: three controllers fit the default limit.
use std::sync::Arc;

use pvusb_ring::shm::{Shm, ShmError};
use pvusb_ring::wire::{MAX_SEGMENTS_PER_REQUEST, PAGE_SIZE, URB_RING_SIZE};
use pvusb_xen::{Access, AllocError, DomId, GrantAllocator, GrantRef, GrantedPages};

/// Pages of one request id in the pool.
pub const PAGES_PER_ID: usize = MAX_SEGMENTS_PER_REQUEST;

/// Pages one controller connection grants: the pool of every URB ring id, and the two
/// ring pages.
pub const GRANTS_PER_CONTROLLER: usize = URB_RING_SIZE as usize * PAGES_PER_ID + 2;

/// A page index or byte range outside the pool (an engine bug, reported not panicked).
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// Id or page beyond the pool.
    #[error("pool page {page} of id {id} does not exist")]
    NoPage {
        /// Request id.
        id: u16,
        /// Page of that id.
        page: usize,
    },
    /// A copy failed.
    #[error(transparent)]
    Mem(#[from] ShmError),
}

/// Everything one controller connection granted. Dropping it ends access lazily; use
/// [`Grants::retire`] to end access eagerly where the platform allows.
#[derive(Debug)]
pub struct Grants {
    urb: Arc<GrantedPages>,
    /// `None` only while [`Grants::probe_conn`] runs.
    conn: Option<Arc<GrantedPages>>,
    pool: Arc<GrantedPages>,
    /// A view of the pool: word-wise volatile copies (GrantedPages copies byte by byte).
    pool_shm: Shm,
    ids: usize,
}

impl Grants {
    /// Grants the two ring pages and a pool for `ids` request ids to `be`, all writable.
    pub fn alloc(alloc: &dyn GrantAllocator, be: DomId, ids: usize) -> Result<Self, AllocError> {
        let pages = ids.saturating_mul(PAGES_PER_ID).max(1);
        let pool = Arc::new(alloc.alloc(be, pages, Access::Writable)?);
        Ok(Grants {
            urb: Arc::new(alloc.alloc(be, 1, Access::Writable)?),
            conn: Some(Arc::new(alloc.alloc(be, 1, Access::Writable)?)),
            pool_shm: pool.shm(),
            pool,
            ids,
        })
    }

    /// The urb ring page as ring memory.
    pub fn urb_shm(&self) -> Shm {
        self.urb.shm()
    }

    /// The conn ring page as ring memory.
    pub fn conn_shm(&self) -> Option<Shm> {
        self.conn.as_ref().map(|c| c.shm())
    }

    /// Whether the backend still maps the conn ring page, found by trying to end access
    /// to it (the simulated platform refuses while the peer maps a page). Call only with
    /// no view of the page alive. On real Xen this would end access for good: never call
    /// it there.
    pub fn probe_conn(&mut self) -> Result<Probe, pvusb_xen::EndAccessError> {
        let Some(arc) = self.conn.take() else {
            return Ok(Probe::Ended);
        };
        let pages = match Arc::try_unwrap(arc) {
            Ok(p) => p,
            Err(arc) => {
                self.conn = Some(arc);
                return Ok(Probe::Busy);
            }
        };
        match pages.end_access() {
            Ok(()) => Ok(Probe::Ended),
            Err(pvusb_xen::EndAccessError::StillMapped { pages }) => {
                self.conn = Some(Arc::new(*pages));
                Ok(Probe::Mapped)
            }
            Err(e) => Err(e),
        }
    }

    /// `urb-ring-ref`.
    pub fn urb_ref(&self) -> GrantRef {
        self.urb.grefs().first().copied().unwrap_or(GrantRef(0))
    }

    /// `conn-ring-ref`.
    pub fn conn_ref(&self) -> GrantRef {
        self.conn
            .as_ref()
            .and_then(|c| c.grefs().first().copied())
            .unwrap_or(GrantRef(0))
    }

    fn page_index(&self, id: u16, page: usize) -> Result<usize, PoolError> {
        let id_us = usize::from(id);
        if id_us >= self.ids || page >= PAGES_PER_ID {
            return Err(PoolError::NoPage { id, page });
        }
        Ok(id_us * PAGES_PER_ID + page)
    }

    /// The grant reference of page `page` of request `id`.
    pub fn gref(&self, id: u16, page: usize) -> Result<GrantRef, PoolError> {
        let i = self.page_index(id, page)?;
        self.pool
            .grefs()
            .get(i)
            .copied()
            .ok_or(PoolError::NoPage { id, page })
    }

    fn offset(&self, id: u16, page: usize, off: usize, len: usize) -> Result<usize, PoolError> {
        let i = self.page_index(id, page)?;
        if off.checked_add(len).is_none_or(|end| end > PAGE_SIZE) {
            return Err(PoolError::NoPage { id, page });
        }
        Ok(i * PAGE_SIZE + off)
    }

    /// Copies `data` into page `page` of request `id` at `off`.
    pub fn write(&self, id: u16, page: usize, off: usize, data: &[u8]) -> Result<(), PoolError> {
        let at = self.offset(id, page, off, data.len())?;
        Ok(self.pool_shm.write(at, data)?)
    }

    /// Copies bytes out of page `page` of request `id` at `off` into `buf`.
    pub fn read(&self, id: u16, page: usize, off: usize, buf: &mut [u8]) -> Result<(), PoolError> {
        let at = self.offset(id, page, off, buf.len())?;
        Ok(self.pool_shm.read(at, buf)?)
    }

    /// Ends access to everything once the ring views are gone. Pages the backend still
    /// maps come back, to be retried with [`Retired::retry`].
    pub fn retire(self) -> Retired {
        let Grants {
            urb,
            conn,
            pool,
            pool_shm,
            ..
        } = self;
        drop(pool_shm);
        let mut left = Vec::new();
        for arc in [Some(urb), conn, Some(pool)].into_iter().flatten() {
            match Arc::try_unwrap(arc) {
                Ok(pages) => left.push(pages),
                // A ring view outlives us: its drop ends access lazily.
                Err(arc) => drop(arc),
            }
        }
        let mut r = Retired { left: Vec::new() };
        r.end(left);
        r
    }
}

/// What [`Grants::probe_conn`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// The backend maps the page; access continues.
    Mapped,
    /// The backend did not map it: access has ended, the page is gone.
    Ended,
    /// A view of the page is alive, nothing was tried.
    Busy,
}

/// Granted pages whose end of access the backend has not allowed yet.
#[derive(Debug, Default)]
pub struct Retired {
    left: Vec<GrantedPages>,
}

impl Retired {
    fn end(&mut self, pages: Vec<GrantedPages>) {
        for p in pages {
            match p.end_access() {
                Ok(()) => {}
                Err(pvusb_xen::EndAccessError::StillMapped { pages }) => self.left.push(*pages),
                Err(e) => tracing::warn!(error = %e, "ending grant access failed"),
            }
        }
    }

    /// Tries again; true when nothing is left.
    pub fn retry(&mut self) -> bool {
        let left = std::mem::take(&mut self.left);
        self.end(left);
        self.left.is_empty()
    }

    /// Whether some pages are still mapped by the backend.
    pub fn is_empty(&self) -> bool {
        self.left.is_empty()
    }

    /// Takes over another batch.
    pub fn absorb(&mut self, other: Retired) {
        self.left.extend(other.left);
    }
}
