//! Grant copy for a stock peer: a request's data pages are copied, not mapped.
//!
//! Mapping and unmapping every request's pages (an ioctl, an mmap and a munmap with its TLB
//! shootdown on Xen; a broker round trip and the same mmap/munmap on the sim) dominated the
//! stock protocol's profile. Here the hypervisor copies instead ([`GrantCopier`]): an OUT
//! request's pages into a bounce buffer before the host sees it, an IN request's result back
//! into the guest's pages before its response is published. The bounce buffers are carved
//! out of one [`LocalPages`] arena per connection, allocated once.
//!
//! Invariants:
//! - a read-only grant is only ever copied *from*; IN bytes go back only to the pages the
//!   guest granted writable, and the hypervisor checks that again;
//! - only bytes the host produced are copied back ([`super::payload::GuestBuf::written`]),
//!   so what a bounce buffer held for an earlier request (of any guest) never reaches this
//!   one, and guest bytes past the transfer's actual length are left as they were;
//! - every queued write-back is performed by [`GuestMemory::flush`], which the engine calls
//!   before it publishes responses: a guest never sees a response before its data (contract
//!   7's intent; there is no mapping left to unmap). A bounce buffer is reused only after
//!   its request is answered and its write-back is done;
//! - the arena is bounded (at most [`ARENA_PAGES`] pages per connection); a request that
//!   finds it full is mapped as before instead of refused, so a guest cannot make the
//!   backend allocate more.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use pvusb_ring::shm::Shm;
use pvusb_ring::wire::PAGE_SIZE;
use pvusb_xen::{AllocError, CopyDir, CopySeg, DomId, GrantCopier, GrantRef, LocalPages, MapError};

use super::memory::{GuestMemory, Mapped, WriteBack};

/// [`PAGE_SIZE`] as a copy segment length.
const PAGE_LEN: u16 = 4096;

/// Bounce pages per connection: a full one-page ring (32 requests) of 16-page requests.
pub const ARENA_PAGES: usize = 512;

/// Locks a mutex whose data stays consistent across a panic (each update is one push, one
/// swap or one bit flip).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The bounce pages and which of them are taken.
struct Arena {
    local: Arc<LocalPages>,
    view: Shm,
    used: Mutex<Vec<bool>>,
}

impl fmt::Debug for Arena {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let used = lock(&self.used).iter().filter(|&&u| u).count();
        f.debug_struct("Arena")
            .field("pages", &(self.view.len() / PAGE_SIZE))
            .field("used", &used)
            .finish()
    }
}

impl Arena {
    /// First fit of `pages` contiguous free pages.
    fn take(self: &Arc<Self>, pages: usize) -> Option<Arc<Slot>> {
        let mut used = lock(&self.used);
        let mut run = 0;
        let mut first = None;
        for (i, u) in used.iter().enumerate() {
            run = if *u { 0 } else { run + 1 };
            if run == pages {
                first = Some(i + 1 - pages);
                break;
            }
        }
        let first = first?;
        used.get_mut(first..first + pages)?.fill(true);
        Some(Arc::new(Slot {
            arena: self.clone(),
            first,
            pages,
        }))
    }
}

/// Contiguous bounce pages lent to one request; given back when the last holder (the
/// request's views, a queued write-back) lets go.
#[derive(Debug)]
struct Slot {
    arena: Arc<Arena>,
    first: usize,
    pages: usize,
}

impl Slot {
    /// Byte offset of the slot in the arena.
    fn base(&self) -> usize {
        self.first * PAGE_SIZE
    }

    /// The slot's pages as a view holding the slot.
    fn view(self: &Arc<Self>, writable: bool) -> Option<Shm> {
        let v = self
            .arena
            .view
            .slice(self.base(), self.pages * PAGE_SIZE)
            .ok()?;
        let v = if writable { v } else { v.read_only() };
        let owner: Arc<dyn Send + Sync> = self.clone();
        Some(v.with_owner(owner))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(pages) = lock(&self.arena.used).get_mut(self.first..self.first + self.pages) {
            pages.fill(false);
        }
    }
}

/// IN bytes waiting for the next flush, each holding its request's write-back (and so its
/// slot).
type Pending = Mutex<Vec<(Arc<BackState>, CopySeg)>>;

/// Copies made ahead by [`GuestMemory::prefetch`]: `(refs, writable, copy)` in request order.
type Ahead = Mutex<VecDeque<(Vec<u32>, bool, Box<dyn Mapped>)>>;

/// A frontend's memory, copied through a bounce arena; `M` maps what the arena cannot hold.
pub struct Copied<M> {
    inner: M,
    copier: Arc<dyn GrantCopier>,
    domid: DomId,
    arena: Arc<Arena>,
    pending: Arc<Pending>,
    /// Copies made ahead, not yet taken.
    prefetched: Ahead,
}

impl<M: fmt::Debug> fmt::Debug for Copied<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Copied")
            .field("inner", &self.inner)
            .field("domid", &self.domid)
            .field("arena", &self.arena)
            .finish()
    }
}

impl<M> Copied<M> {
    /// `domid`'s memory through `copier`, with an arena of `pages` bounce pages (one
    /// allocation now); `inner` maps what does not fit.
    pub fn new(
        inner: M,
        copier: Arc<dyn GrantCopier>,
        domid: DomId,
        pages: usize,
    ) -> Result<Self, AllocError> {
        let local = Arc::new(copier.alloc_local(pages)?);
        let view = local.shm();
        let used = Mutex::new(vec![false; local.len() / PAGE_SIZE]);
        Ok(Copied {
            inner,
            copier,
            domid,
            arena: Arc::new(Arena { local, view, used }),
            pending: Arc::new(Mutex::new(Vec::new())),
            prefetched: Mutex::new(VecDeque::new()),
        })
    }

    /// Bounce pages in use (by requests in flight and queued write-backs).
    pub fn pages_in_use(&self) -> usize {
        lock(&self.arena.used).iter().filter(|&&u| u).count()
    }

    /// A slot for `refs` and, unless `fetch` is false, the segments that fill it from the
    /// guest. `None` when the arena is full.
    fn slot_for(&self, refs: &[u32], fetch: bool) -> Option<(Arc<Slot>, Vec<CopySeg>)> {
        let slot = self.arena.take(refs.len())?;
        let segs = if fetch {
            whole_pages(refs, slot.base(), CopyDir::FromGrant).collect()
        } else {
            Vec::new()
        };
        Some((slot, segs))
    }

    fn copy_map(&self, slot: Arc<Slot>, refs: &[u32], writable: bool) -> Box<dyn Mapped> {
        Box::new(CopyMap {
            slot,
            refs: refs.to_vec(),
            writable,
            pending: self.pending.clone(),
        })
    }

    /// Fills slots from the guest in one copy call; one result per entry of `jobs`.
    fn fetch(&self, jobs: &[(Arc<Slot>, Vec<CopySeg>)]) -> Vec<bool> {
        let segs: Vec<CopySeg> = jobs.iter().flat_map(|(_, s)| s.iter().copied()).collect();
        if segs.is_empty() {
            return vec![true; jobs.len()];
        }
        let Ok(results) = self.copier.copy(self.domid, &self.arena.local, &segs) else {
            return vec![false; jobs.len()];
        };
        let mut results = results.into_iter();
        jobs.iter()
            .map(|(_, s)| {
                // Every segment of the job must have succeeded (and a short answer fails).
                let got: Vec<_> = results.by_ref().take(s.len()).collect();
                got.len() == s.len() && got.iter().all(Result::is_ok)
            })
            .collect()
    }

    fn not_granted(&self, refs: &[u32]) -> MapError {
        MapError::NotGranted {
            domid: self.domid,
            refs: refs.iter().copied().map(GrantRef).collect(),
        }
    }

    fn copy_in(
        &self,
        refs: &[u32],
        writable: bool,
        fetch: bool,
    ) -> Option<Result<Box<dyn Mapped>, MapError>> {
        let (slot, segs) = self.slot_for(refs, fetch)?;
        let job = [(slot, segs)];
        let ok = self.fetch(&job).first().copied().unwrap_or(false);
        let [(slot, _)] = job;
        Some(if ok {
            Ok(self.copy_map(slot, refs, writable))
        } else {
            Err(self.not_granted(refs))
        })
    }
}

/// Segments covering whole pages `refs`, the first at arena byte `base`.
fn whole_pages(refs: &[u32], base: usize, dir: CopyDir) -> impl Iterator<Item = CopySeg> + '_ {
    refs.iter().enumerate().map(move |(i, &r)| CopySeg {
        gref: GrantRef(r),
        offset: 0,
        len: PAGE_LEN,
        local: base + i * PAGE_SIZE,
        dir,
    })
}

fn check_count(refs: &[u32]) -> Result<(), MapError> {
    if refs.is_empty() || refs.len() > pvusb_xen::MAX_PAGES_PER_CALL {
        return Err(MapError::BadCount(refs.len()));
    }
    Ok(())
}

impl<M: GuestMemory> GuestMemory for Copied<M> {
    fn map(&self, refs: &[u32], writable: bool) -> Result<Box<dyn Mapped>, MapError> {
        check_count(refs)?;
        {
            let mut ahead = lock(&self.prefetched);
            if let Some(i) = ahead
                .iter()
                .position(|(r, w, _)| *w == writable && r.as_slice() == refs)
            {
                if let Some((_, _, m)) = ahead.remove(i) {
                    return Ok(m);
                }
            }
        }
        // IN pages need not be fetched: only bytes the host writes go back.
        match self.copy_in(refs, writable, !writable) {
            Some(r) => r,
            None => self.inner.map(refs, writable),
        }
    }

    fn map_update(&self, refs: &[u32]) -> Result<Box<dyn Mapped>, MapError> {
        check_count(refs)?;
        match self.copy_in(refs, true, true) {
            Some(r) => r,
            None => self.inner.map_update(refs),
        }
    }

    fn prefetch(&self, maps: &[(Vec<u32>, bool)]) {
        let mut wanted = Vec::new();
        let mut jobs = Vec::new();
        for (refs, writable) in maps {
            if check_count(refs).is_err() {
                continue;
            }
            let Some(job) = self.slot_for(refs, !writable) else {
                break;
            };
            wanted.push((refs, *writable));
            jobs.push(job);
        }
        let ok = self.fetch(&jobs);
        let mut ahead = lock(&self.prefetched);
        // A failed copy is not kept: `map` tries it again and reports the error then.
        for (((refs, writable), (slot, _)), ok) in wanted.into_iter().zip(jobs).zip(ok) {
            if ok {
                ahead.push_back((refs.clone(), writable, self.copy_map(slot, refs, writable)));
            }
        }
    }

    fn end_prefetch(&self) {
        lock(&self.prefetched).clear();
    }

    fn flush(&self) -> usize {
        let queued = std::mem::take(&mut *lock(&self.pending));
        if queued.is_empty() {
            return 0;
        }
        let segs: Vec<CopySeg> = queued.iter().map(|(_, s)| *s).collect();
        let results = match self.copier.copy(self.domid, &self.arena.local, &segs) {
            Ok(r) if r.len() == segs.len() => r.into_iter().map(|r| r.is_ok()).collect(),
            Ok(_) => vec![false; segs.len()],
            Err(e) => {
                tracing::debug!(error = %e, "grant copy to the guest failed");
                vec![false; segs.len()]
            }
        };
        let mut failed = 0;
        for ((back, _), ok) in queued.iter().zip(results) {
            if !ok {
                back.failed.store(true, Ordering::Relaxed);
                failed += 1;
            }
        }
        // The slots are given back only now (dropping `queued`), after their bytes left.
        drop(queued);
        failed
    }
}

/// A request's bounce pages standing in for its granted pages.
#[derive(Debug)]
struct CopyMap {
    slot: Arc<Slot>,
    refs: Vec<u32>,
    writable: bool,
    pending: Arc<Pending>,
}

impl Mapped for CopyMap {
    fn into_shm(self: Box<Self>) -> Option<Shm> {
        // A copy is never a ring: rings are mapped.
        None
    }
    fn into_data(self: Box<Self>) -> Option<Shm> {
        self.slot.view(self.writable)
    }
    fn len(&self) -> usize {
        self.refs.len() * PAGE_SIZE
    }
    fn write_back(&self) -> Option<Arc<dyn WriteBack>> {
        if !self.writable {
            return None;
        }
        Some(Arc::new(Back(Arc::new(BackState {
            slot: self.slot.clone(),
            refs: self.refs.clone(),
            pending: Arc::downgrade(&self.pending),
            failed: AtomicBool::new(false),
        }))))
    }
}

/// Queues a writable copy's bytes for its guest pages.
#[derive(Debug)]
struct Back(Arc<BackState>);

/// A write-back, shared by its request and its queued segments.
#[derive(Debug)]
struct BackState {
    slot: Arc<Slot>,
    refs: Vec<u32>,
    /// Weak: the queue holds these, which must not keep the queue alive in turn.
    pending: Weak<Pending>,
    failed: AtomicBool,
}

impl WriteBack for Back {
    fn failed(&self) -> bool {
        self.0.failed.load(Ordering::Relaxed)
    }

    fn queue(&self, off: usize, len: usize) {
        let this = &self.0;
        let Some(end) = off
            .checked_add(len)
            .filter(|&e| e <= this.refs.len() * PAGE_SIZE)
        else {
            return;
        };
        let Some(pending) = this.pending.upgrade() else {
            return;
        };
        let mut pending = lock(&pending);
        let mut pos = off;
        while pos < end {
            let page = pos / PAGE_SIZE;
            let in_page = pos % PAGE_SIZE;
            let n = (PAGE_SIZE - in_page).min(end - pos);
            let Some(&gref) = this.refs.get(page) else {
                return;
            };
            let (Ok(offset), Ok(n16)) = (u16::try_from(in_page), u16::try_from(n)) else {
                return;
            };
            pending.push((
                this.clone(),
                CopySeg {
                    gref: GrantRef(gref),
                    offset,
                    len: n16,
                    local: this.slot.base() + pos,
                    dir: CopyDir::ToGrant,
                },
            ));
            pos += n;
        }
    }
}

#[cfg(test)]
mod tests;
