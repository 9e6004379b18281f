//! Persistent grants (`feature-persistent`): each of a frontend's grant references is mapped
//! once per ring connection and reused by every request that names it.
//!
//! Negotiated only when both ends write `feature-persistent = "1"`: the frontend then
//! promises to use only pages of its long-lived pools and to keep them granted while
//! connected, so the backend may keep them mapped past each response. Contract 7's
//! "unmapped before the response" rule is lifted for those mappings only; a stock peer
//! (no key) gets the plain [`GuestMemory`] and keeps the rule.
//!
//! What is cached is a run: the grant references of one request, mapped together as one
//! contiguous range (one gntdev/broker call), keyed by the first reference and the access.
//! A later request whose references are a prefix of a cached run reuses a slice of it, so a
//! multi-page buffer is handed to the host zero copy exactly as with per-request mappings.
//! Our frontend gives every request id fixed pool pages, so each id settles on one run per
//! direction (a longer request for the id replaces the shorter run it started with).
//!
//! Bounds against a hostile guest: at most [`MAX_PERSISTENT`] pages are cached per
//! connection (a page in two runs counts twice); a request whose run is not cached once the
//! cache is full is mapped per request (as for a stock peer) rather than refused, and so is a
//! request whose first reference starts a different cached run that is not its prefix once
//! replacing it would exceed the cap. Every mapping, cached or not, is checked by the
//! hypervisor (a read-only grant never maps writable). Dropping the cache (disconnect,
//! Closed, controller teardown) unmaps everything once the last in-flight view is gone; a
//! replaced run is unmapped when the requests still using it are answered.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use pvusb_ring::shm::Shm;
use pvusb_ring::wire::PAGE_SIZE;
use pvusb_xen::MapError;

use super::memory::{GuestMemory, Mapped};

/// The xenstore key both ends write to negotiate persistent grants.
pub const FEATURE_PERSISTENT: &str = "feature-persistent";

/// Most pages cached per connection: our frontend's 256-page pool mapped both ways, with
/// room.
pub const MAX_PERSISTENT: usize = 1024;

/// The cached runs of one connection.
#[derive(Default)]
struct Runs {
    /// (first reference, writable) → (the run's references, its contiguous mapping).
    by_first: HashMap<(u32, bool), (Vec<u32>, Shm)>,
    /// Pages in `by_first`.
    pages: usize,
}

/// A frontend's memory with every page mapped once and kept.
pub struct Persistent<M> {
    inner: M,
    cap: usize,
    cache: Mutex<Runs>,
}

impl<M: fmt::Debug> fmt::Debug for Persistent<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Persistent")
            .field("inner", &self.inner)
            .field("cap", &self.cap)
            .field("cached", &self.cached())
            .finish()
    }
}

impl<M> Persistent<M> {
    /// A cache of at most `cap` pages over `inner`.
    pub fn new(inner: M, cap: usize) -> Self {
        Persistent {
            inner,
            cap,
            cache: Mutex::new(Runs::default()),
        }
    }

    /// Pages mapped and kept.
    pub fn cached(&self) -> usize {
        self.lock().pages
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Runs> {
        // A panic elsewhere cannot leave the runs half-updated: each update is one insert
        // followed by an addition.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<M: GuestMemory> GuestMemory for Persistent<M> {
    fn map(&self, refs: &[u32], writable: bool) -> Result<Box<dyn Mapped>, MapError> {
        let Some(&first) = refs.first() else {
            return Err(MapError::BadCount(0));
        };
        if refs.len() > pvusb_xen::MAX_PAGES_PER_CALL {
            return Err(MapError::BadCount(refs.len()));
        }
        let bytes = refs.len() * PAGE_SIZE;
        let mut runs = self.lock();
        let key = (first, writable);
        let replaced = match runs.by_first.get(&key) {
            Some((run, shm)) if run.starts_with(refs) => {
                let view = shm
                    .slice(0, bytes)
                    .map_err(|_| MapError::BadCount(refs.len()))?;
                return Ok(Box::new(Run(view)));
            }
            Some((run, _)) => run.len(),
            None => 0,
        };
        if runs
            .pages
            .saturating_sub(replaced)
            .saturating_add(refs.len())
            > self.cap
        {
            drop(runs);
            return self.inner.map(refs, writable);
        }
        let shm = self
            .inner
            .map(refs, writable)?
            .into_data()
            .ok_or(MapError::BadCount(refs.len()))?;
        runs.by_first.insert(key, (refs.to_vec(), shm.clone()));
        runs.pages = runs.pages.saturating_sub(replaced) + refs.len();
        Ok(Box::new(Run(shm)))
    }
}

/// A cached run (or a prefix of it) lent to one request.
#[derive(Debug)]
struct Run(Shm);

impl Mapped for Run {
    fn into_shm(self: Box<Self>) -> Option<Shm> {
        None
    }
    fn into_data(self: Box<Self>) -> Option<Shm> {
        Some(self.0)
    }
    fn len(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::payload::GuestBuf;
    use crate::engine::testing::FakeMemory;

    fn buf(m: Box<dyn Mapped>, pages: usize) -> GuestBuf {
        let segs = std::iter::repeat_n((0u16, 4096u16), pages);
        GuestBuf::new(m, segs, pages * 4096).unwrap()
    }

    #[test]
    fn maps_each_run_once_and_keeps_it_contiguous() {
        let mem = FakeMemory::new(8);
        mem.arena().write(3 * 4096, b"hello").unwrap();
        mem.arena().write(4 * 4096, b"world").unwrap();
        let p = Persistent::new(mem.clone(), 16);
        for _ in 0..100 {
            let g = buf(p.map(&[3, 4], false).unwrap(), 2);
            assert!(g.is_contiguous(), "a multi-page buffer stays zero copy");
            assert!(g.window(0, 8192).is_some());
            let mut b = [0u8; 5];
            assert!(g.gather(4096, &mut b));
            assert_eq!(&b, b"world");
        }
        assert_eq!(p.cached(), 2);
        assert_eq!(mem.live_mappings(), 1, "one mapping for the run");
        drop(p);
        assert_eq!(mem.live_mappings(), 0);
    }

    #[test]
    fn a_prefix_reuses_the_run_and_a_longer_run_replaces_it() {
        let mem = FakeMemory::new(8);
        let p = Persistent::new(mem.clone(), 16);
        let short = buf(p.map(&[1, 2], true).unwrap(), 2);
        drop(p.map(&[1], true).unwrap());
        assert_eq!(mem.live_mappings(), 1, "[1] is a prefix of [1, 2]");
        let long = buf(p.map(&[1, 2, 3], true).unwrap(), 3);
        assert!(long.is_contiguous());
        assert_eq!((p.cached(), mem.live_mappings()), (3, 2));
        drop(short);
        assert_eq!(
            mem.live_mappings(),
            1,
            "the replaced run goes with its last user"
        );
        drop(p.map(&[1, 2], true).unwrap());
        assert_eq!(mem.live_mappings(), 1);
    }

    #[test]
    fn single_page_stays_zero_copy() {
        let mem = FakeMemory::new(4);
        let p = Persistent::new(mem.clone(), 16);
        let g = buf(p.map(&[1], true).unwrap(), 1);
        assert!(g.is_contiguous());
        assert!(g.window(0, 4096).is_some());
        assert!(g.scatter(10, b"abc"));
    }

    #[test]
    fn each_access_is_its_own_run() {
        let mem = FakeMemory::new(4);
        let p = Persistent::new(mem.clone(), 16);
        let ro = p.map(&[2], false).unwrap().into_data().unwrap();
        assert_eq!(ro.write(0, b"x"), Err(pvusb_ring::shm::ShmError::ReadOnly));
        let rw = p.map(&[2], true).unwrap().into_data().unwrap();
        assert!(rw.write(0, b"x").is_ok());
        assert_eq!((p.cached(), mem.live_mappings()), (2, 2));
    }

    #[test]
    fn full_cache_falls_back_to_per_request_maps() {
        let mem = FakeMemory::new(8);
        let p = Persistent::new(mem.clone(), 2);
        drop(p.map(&[0, 1], true).unwrap());
        let m = p.map(&[5], true).unwrap();
        assert_eq!(mem.live_mappings(), 2);
        drop(m);
        assert_eq!(
            mem.live_mappings(),
            1,
            "the overflow mapping is per request"
        );
        assert_eq!(p.cached(), 2);
        // Replacing a run may not push the cache over its cap either.
        drop(p.map(&[0, 2, 3], true).unwrap());
        assert_eq!((p.cached(), mem.live_mappings()), (2, 1));
    }

    #[test]
    fn churning_runs_stays_bounded() {
        // A hostile guest alternating runs that share a first page: each replaces the
        // other; the cache never holds more than the cap.
        let mem = FakeMemory::new(64);
        let p = Persistent::new(mem.clone(), 8);
        for i in 0..200u32 {
            let refs: Vec<u32> = (0..1 + i % 7).map(|k| (k * 5 + i) % 64).collect();
            drop(p.map(&refs, i % 2 == 0).unwrap());
            assert!(p.cached() <= 8);
            assert!(mem.live_mappings() <= 8);
        }
    }

    #[test]
    fn unmappable_reference_is_an_error_and_not_cached() {
        let mem = FakeMemory::new(2);
        let p = Persistent::new(mem.clone(), 16);
        assert!(p.map(&[7], false).is_err());
        assert!(p.map(&[0, 7], false).is_err());
        assert!(p.map(&[], false).is_err());
        assert_eq!(p.cached(), 0);
        assert_eq!(mem.live_mappings(), 0);
    }

    #[test]
    fn views_outlive_the_cache_until_dropped() {
        let mem = FakeMemory::new(2);
        let p = Persistent::new(mem.clone(), 16);
        let g = buf(p.map(&[1], true).unwrap(), 1);
        drop(p);
        assert_eq!(
            mem.live_mappings(),
            1,
            "an in-flight view keeps its page mapped"
        );
        drop(g);
        assert_eq!(mem.live_mappings(), 0);
    }
}
