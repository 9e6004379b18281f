//! The simulated grant table in shared memory, so that grant copy runs on the caller's CPU
//! as `GNTTABOP_copy` runs on the calling vCPU: no broker round trip per copy.
//!
//! Each domain has one table, a sealed memfd the broker alone writes and hands read-only to
//! copiers (COPY_ATTACH). Native-endian `u32` words: a 64-byte header whose word 0 is
//! [`ALIVE`] while the domain lives and anything else once it is gone (a copier then drops
//! its mapping: the domid may be reused), then [`SLOTS`] entries of 8 words,
//! `seq, gref, serial_lo, serial_hi, meta, page, 0, 0`, `meta` = grantee | [`VALID`] |
//! [`WRITABLE`]. Reference `g` lives in slot `g % SLOTS`; the broker never hands out a
//! reference whose slot is taken, and a copier checks the slot names the reference it asked
//! for. Each entry is a seqlock (`seq` odd while the broker rewrites it).
//!
//! Ending access while a copy runs (Xen's `GTF_reading`/`GTF_writing`): every copying
//! connection has a hazard word ([`Hazard`], a page of its own the broker maps too) that
//! says "copying from domain D's grants" while a copy runs. The copier publishes it, fences,
//! then reads the entries it copies under; the broker clears the entries, fences, then waits
//! while a hazard names the granter. Either the copier sees the entry gone, or the broker
//! sees the copy and waits for it to finish: once an end of access returns, no copy touches
//! the pages.
//!
//! A copier's mapping is read-only, so it only ever loads from the table, with relaxed
//! word-sized loads and explicit fences (what Rust allows on read-only memory).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::io::Errno;

use crate::mem::Region;
use crate::{Access, DomId, PAGE_SIZE};

/// Entries per table: twice the most pages a domain may have granted at once, so a free
/// slot is always near.
pub const SLOTS: usize = 32 * 1024;
const HEADER: usize = 64;
const ENTRY: usize = 32;
/// The table's size, whole pages.
pub const TABLE_BYTES: usize = (HEADER + SLOTS * ENTRY).div_ceil(PAGE_SIZE) * PAGE_SIZE;

/// How long a copier waits for the broker to finish rewriting an entry.
pub const REWRITE_WAIT: Duration = Duration::from_secs(1);

/// Header word 0 while the domain lives.
pub const ALIVE: u32 = 0x4744_4e54;
/// `meta`: the entry is a live grant.
pub const VALID: u32 = 1 << 31;
/// `meta`: the grant is writable.
pub const WRITABLE: u32 = 1 << 30;

const SEQ: usize = 0;
const GREF: usize = 4;
const SERIAL_LO: usize = 8;
const SERIAL_HI: usize = 12;
const META: usize = 16;
const PAGE: usize = 20;

/// One live grant as the table records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The grant reference.
    pub gref: u32,
    /// The allocation's serial: names its file (see `wire::FileKey`).
    pub serial: u64,
    /// Which page of the allocation's file.
    pub page: u32,
    /// Who may copy it.
    pub grantee: DomId,
    /// Whether it may be copied into.
    pub access: Access,
}

fn slot_of(gref: u32) -> usize {
    // u32 → usize is lossless on every target this builds for (64-bit Linux).
    usize::try_from(gref).unwrap_or(usize::MAX) % SLOTS
}

/// A memfd of `len` bytes sealed at that size: a peer holding it cannot make the other
/// side's mapping fault.
fn sealed_memfd(name: &str, len: usize) -> Result<OwnedFd, Errno> {
    let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
    let memfd = rustix::fs::memfd_create(name, flags)?;
    rustix::fs::ftruncate(&memfd, len as u64)?;
    let seals = SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL;
    rustix::fs::fcntl_add_seals(&memfd, seals)?;
    Ok(memfd)
}

/// A word of `region` at `off`, if in bounds and aligned.
fn word(region: &Region, off: usize) -> Option<&AtomicU32> {
    if off.checked_add(4)? > region.len() || off % 4 != 0 {
        return None;
    }
    // SAFETY: in bounds and 4-byte aligned (the mapping is page-aligned, `off` a multiple of
    // 4); mapped for as long as `region` is borrowed. Every party reaches these words only
    // atomically; on a read-only mapping only through relaxed word-sized loads, which Rust
    // permits on read-only memory.
    Some(unsafe { AtomicU32::from_ptr(region.as_ptr().add(off).cast::<u32>()) })
}

/// A domain's grant table: the broker's writable mapping or a copier's read-only one.
#[derive(Debug)]
pub struct Table {
    region: Region,
}

impl Table {
    /// A new table (all slots free, alive) and its memfd, sealed at its size.
    pub fn create() -> Result<(Table, OwnedFd), Errno> {
        let memfd = sealed_memfd("pvusb-gnttab", TABLE_BYTES)?;
        let region = Region::map_shared(memfd.as_fd(), 0, TABLE_BYTES, Access::Writable)?;
        let table = Table { region };
        table.header().store(ALIVE, Ordering::Release);
        Ok((table, memfd))
    }

    /// A copier's read-only view of the table in `fd`.
    pub fn open(fd: &OwnedFd) -> Result<Table, Errno> {
        let region = Region::map_shared(fd.as_fd(), 0, TABLE_BYTES, Access::ReadOnly)?;
        Ok(Table { region })
    }

    fn header(&self) -> &AtomicU32 {
        // The header word is always in bounds.
        word(&self.region, 0).unwrap_or_else(|| unreachable!("table shorter than its header"))
    }

    fn field(&self, slot: usize, f: usize) -> Option<&AtomicU32> {
        word(&self.region, HEADER + slot * ENTRY + f)
    }

    /// Whether the domain still lives (relaxed: a copier that sees it late finds every
    /// entry cleared anyway).
    pub fn alive(&self) -> bool {
        self.header().load(Ordering::Relaxed) == ALIVE
    }

    /// Broker: the domain is gone.
    pub fn mark_dead(&self) {
        self.header().store(0, Ordering::Release);
    }

    /// Broker: whether `gref`'s slot holds a live grant.
    pub fn slot_taken(&self, gref: u32) -> bool {
        self.field(slot_of(gref), META)
            .is_some_and(|m| m.load(Ordering::Relaxed) & VALID != 0)
    }

    /// Broker: records a live grant (its slot must be free).
    pub fn publish(&self, e: &Entry) {
        let meta = u32::from(e.grantee.0)
            | VALID
            | if e.access == Access::Writable {
                WRITABLE
            } else {
                0
            };
        let [lo, hi] = [e.serial as u32, (e.serial >> 32) as u32];
        self.write(
            slot_of(e.gref),
            &[
                (GREF, e.gref),
                (SERIAL_LO, lo),
                (SERIAL_HI, hi),
                (PAGE, e.page),
                (META, meta),
            ],
        );
    }

    /// Broker: `gref` is no longer granted. The caller fences and waits for copiers (see
    /// [`Hazard::busy_with`]) before telling the granter access ended.
    pub fn clear(&self, gref: u32) {
        let slot = slot_of(gref);
        let ours = self
            .field(slot, GREF)
            .is_some_and(|g| g.load(Ordering::Relaxed) == gref);
        if ours {
            self.write(slot, &[(META, 0)]);
        }
    }

    /// The seqlock's writer side (the broker is the only writer).
    fn write(&self, slot: usize, fields: &[(usize, u32)]) {
        let Some(seq) = self.field(slot, SEQ) else {
            return;
        };
        let s = seq.load(Ordering::Relaxed);
        seq.store(s.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        for &(f, v) in fields {
            if let Some(w) = self.field(slot, f) {
                w.store(v, Ordering::Relaxed);
            }
        }
        seq.store(s.wrapping_add(2), Ordering::Release);
    }

    /// Copier: the live grant `gref`, if any. A consistent snapshot, retried while the
    /// broker rewrites the entry: spinning a little, then yielding (the broker may have been
    /// preempted between its stores) for up to [`REWRITE_WAIT`], which only a broker that
    /// died mid-write exceeds.
    pub fn lookup(&self, gref: u32) -> Option<Entry> {
        let slot = slot_of(gref);
        let seq = self.field(slot, SEQ)?;
        let load = |f| self.field(slot, f).map(|w| w.load(Ordering::Relaxed));
        let mut since: Option<Instant> = None;
        let mut attempt = 0u32;
        loop {
            attempt = attempt.saturating_add(1);
            if attempt > 64 {
                let start = *since.get_or_insert_with(Instant::now);
                if start.elapsed() > REWRITE_WAIT {
                    return None;
                }
                std::thread::yield_now();
            }
            let s1 = seq.load(Ordering::Relaxed);
            fence(Ordering::Acquire);
            let words = [
                load(GREF)?,
                load(SERIAL_LO)?,
                load(SERIAL_HI)?,
                load(META)?,
                load(PAGE)?,
            ];
            fence(Ordering::Acquire);
            if s1 % 2 != 0 || seq.load(Ordering::Relaxed) != s1 {
                std::hint::spin_loop();
                continue;
            }
            let [g, lo, hi, meta, page] = words;
            if g != gref || meta & VALID == 0 {
                return None;
            }
            return Some(Entry {
                gref,
                serial: u64::from(lo) | (u64::from(hi) << 32),
                page,
                grantee: DomId((meta & 0xffff) as u16),
                access: if meta & WRITABLE != 0 {
                    Access::Writable
                } else {
                    Access::ReadOnly
                },
            });
        }
    }
}

/// Hazard word: bit 16 "copying", low 16 bits the granter, high 32 bits a generation that
/// changes with every copy (so a waiter sees a new copy as a change).
const COPYING: u64 = 1 << 16;

/// A copying connection's hazard word, on a page of its own (the copier maps it writable,
/// the broker too).
#[derive(Debug)]
pub struct Hazard {
    region: Region,
}

impl Hazard {
    /// A new hazard page and its memfd (the broker creates it at COPY_ATTACH).
    pub fn create() -> Result<(Hazard, OwnedFd), Errno> {
        let memfd = sealed_memfd("pvusb-hazard", PAGE_SIZE)?;
        Ok((Hazard::open(&memfd)?, memfd))
    }

    /// Maps the hazard page in `fd`.
    pub fn open(fd: &OwnedFd) -> Result<Hazard, Errno> {
        let region = Region::map_shared(fd.as_fd(), 0, PAGE_SIZE, Access::Writable)?;
        Ok(Hazard { region })
    }

    fn word(&self) -> &AtomicU64 {
        // SAFETY: the page is mapped writable for as long as `self` lives and its first 8
        // bytes are 8-byte aligned; both processes reach the word only atomically.
        unsafe { AtomicU64::from_ptr(self.region.as_ptr().cast::<u64>()) }
    }

    /// Copier: a copy from `granter`'s grants starts; read the entries after this.
    pub fn enter(&self, granter: DomId) {
        let w = self.word();
        let gen = (w.load(Ordering::Relaxed) >> 32).wrapping_add(1);
        w.store(
            (gen << 32) | COPYING | u64::from(granter.0),
            Ordering::SeqCst,
        );
        fence(Ordering::SeqCst);
    }

    /// Copier: the copy is over.
    pub fn leave(&self) {
        let w = self.word();
        let v = w.load(Ordering::Relaxed);
        w.store(v & !(COPYING | 0xffff), Ordering::Release);
    }

    /// Broker, after clearing entries of `granter`: the word's value if a copy from
    /// `granter` may still be running (wait until it changes).
    pub fn busy_with(&self, granter: DomId) -> Option<u64> {
        fence(Ordering::SeqCst);
        let v = self.word().load(Ordering::SeqCst);
        (v & COPYING != 0 && v & 0xffff == u64::from(granter.0)).then_some(v)
    }

    /// Broker: the word's current value.
    pub fn value(&self) -> u64 {
        self.word().load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(gref: u32, serial: u64) -> Entry {
        Entry {
            gref,
            serial,
            page: 7,
            grantee: DomId(3),
            access: Access::Writable,
        }
    }

    #[test]
    fn a_copier_sees_what_the_broker_publishes_and_clears() {
        let (table, fd) = Table::create().unwrap();
        let view = Table::open(&fd).unwrap();
        assert!(view.alive());
        assert_eq!(view.lookup(9), None);
        let e = entry(9, (5 << 32) | 17);
        table.publish(&e);
        assert!(table.slot_taken(9));
        assert_eq!(view.lookup(9), Some(e));
        // Another reference in the same slot is not this one.
        assert_eq!(view.lookup(9 + SLOTS as u32), None);
        table.clear(9 + SLOTS as u32);
        assert_eq!(view.lookup(9), Some(e), "clearing another reference's slot");
        table.clear(9);
        assert_eq!(view.lookup(9), None);
        assert!(!table.slot_taken(9));
        let ro = Entry {
            access: Access::ReadOnly,
            ..entry(10, 1)
        };
        table.publish(&ro);
        assert_eq!(view.lookup(10), Some(ro));
        table.mark_dead();
        assert!(!view.alive());
    }

    #[test]
    fn a_snapshot_is_never_torn() {
        let (table, fd) = Table::create().unwrap();
        let view = Table::open(&fd).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                for i in 0..20_000u64 {
                    table.publish(&Entry {
                        page: i as u32,
                        ..entry(9, i << 32 | i)
                    });
                }
            });
            for _ in 0..20_000 {
                if let Some(e) = view.lookup(9) {
                    assert_eq!(e.serial >> 32, e.serial & 0xffff_ffff);
                    assert_eq!(u64::from(e.page), e.serial & 0xffff_ffff);
                }
            }
        });
    }

    #[test]
    fn a_copier_waits_out_a_broker_preempted_mid_write() {
        let (table, fd) = Table::create().unwrap();
        let view = Table::open(&fd).unwrap();
        let e = entry(9, 1);
        table.publish(&e);
        let seq = table.field(slot_of(9), SEQ).unwrap();
        let s = seq.load(Ordering::Relaxed);
        seq.store(s + 1, Ordering::Release);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                std::thread::sleep(Duration::from_millis(20));
                seq.store(s + 2, Ordering::Release);
            });
            assert_eq!(view.lookup(9), Some(e), "gave up on a rewrite in progress");
        });
    }

    #[test]
    fn a_hazard_names_the_granter_while_a_copy_runs() {
        let (broker, fd) = Hazard::create().unwrap();
        let copier = Hazard::open(&fd).unwrap();
        assert_eq!(broker.busy_with(DomId(4)), None);
        copier.enter(DomId(4));
        let v = broker.busy_with(DomId(4)).unwrap();
        assert_eq!(broker.busy_with(DomId(5)), None);
        copier.leave();
        assert_eq!(broker.busy_with(DomId(4)), None);
        copier.enter(DomId(4));
        assert_ne!(
            broker.busy_with(DomId(4)),
            Some(v),
            "a new copy is a new value"
        );
    }
}
