//! The client's cache of grant files (memfds) the broker handed over, by allocation serial.
//!
//! The broker attaches a file's fd to a MAP reply only the first time this connection needs
//! it; later replies name it by `(serial, access)`. The cache keeps the fds until the broker
//! reports the serial dead (the allocation is gone) or the cache grows past
//! [`FD_CACHE_MAX`], when the least recently used are closed and the broker is told with a
//! FORGET (one-way, so it is handled before our next MAP).
//!
//! Holding a file does not let the client reach a grant the broker would refuse: every
//! mapping still goes through a MAP that checks the grant and is counted until unmapped.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use super::wire::{FileKey, FileRef, MAX_FORGET};
use crate::error::BrokerError;
use crate::Access;

/// The most files kept open per connection (each is one fd of this process).
pub const FD_CACHE_MAX: usize = 256;
/// Eviction closes files down to this many, so that it happens rarely.
const FD_CACHE_LOW: usize = FD_CACHE_MAX * 3 / 4;

/// Cached files of one broker connection.
#[derive(Debug, Default)]
pub struct FileCache {
    files: HashMap<FileKey, (Arc<OwnedFd>, u64)>,
    tick: u64,
}

impl FileCache {
    /// How many files are open.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether no file is open.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Applies a MAP reply: closes the `dead` serials' files, stores the `attached` ones
    /// (taking `fds` in order), and returns the fd of each of `files`, in order. Fails if
    /// the reply names a file we do not hold or the fds do not match; the cache is then
    /// still consistent with what the broker believes we hold, minus what we lack.
    pub fn apply(
        &mut self,
        files: &[FileRef],
        dead: &[u64],
        fds: Vec<OwnedFd>,
    ) -> Result<Vec<Arc<OwnedFd>>, BrokerError> {
        for &serial in dead {
            for access in [Access::ReadOnly, Access::Writable] {
                self.files.remove(&FileKey { serial, access });
            }
        }
        self.tick += 1;
        let tick = self.tick;
        let mut fds = fds.into_iter();
        let mut out = Vec::with_capacity(files.len());
        let mut missing = false;
        for f in files {
            if f.attached {
                let Some(fd) = fds.next() else {
                    missing = true;
                    continue;
                };
                let fd = Arc::new(fd);
                self.files.insert(f.key, (fd.clone(), tick));
                out.push(fd);
            } else if let Some((fd, used)) = self.files.get_mut(&f.key) {
                *used = tick;
                out.push(fd.clone());
            } else {
                missing = true;
            }
        }
        if missing {
            return Err(BrokerError::BadReply(
                "a MAP reply names a file we do not hold",
            ));
        }
        if fds.next().is_some() {
            return Err(BrokerError::BadReply("more fds than attached files"));
        }
        Ok(out)
    }

    /// The files of a reply that are neither attached nor cached: after a bad reply, telling
    /// the broker to forget them makes it attach them again next time.
    pub fn lacking(&self, files: &[FileRef]) -> Vec<FileKey> {
        files
            .iter()
            .filter(|f| !f.attached && !self.files.contains_key(&f.key))
            .map(|f| f.key)
            .take(MAX_FORGET)
            .collect()
    }

    /// Closes the least recently used files once more than [`FD_CACHE_MAX`] are open;
    /// returns their keys, in FORGET-sized chunks, to tell the broker.
    pub fn evict(&mut self) -> Vec<Vec<FileKey>> {
        if self.files.len() <= FD_CACHE_MAX {
            return Vec::new();
        }
        let mut by_age: Vec<(u64, FileKey)> =
            self.files.iter().map(|(k, (_, t))| (*t, *k)).collect();
        by_age.sort_unstable_by_key(|(t, _)| *t);
        let excess = self.files.len() - FD_CACHE_LOW;
        let gone: Vec<FileKey> = by_age.into_iter().take(excess).map(|(_, k)| k).collect();
        for k in &gone {
            self.files.remove(k);
        }
        gone.chunks(MAX_FORGET).map(<[FileKey]>::to_vec).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd() -> OwnedFd {
        rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap()
    }

    fn key(serial: u64) -> FileKey {
        FileKey {
            serial,
            access: Access::Writable,
        }
    }

    fn attached(serial: u64) -> FileRef {
        FileRef {
            key: key(serial),
            attached: true,
        }
    }

    fn held(serial: u64) -> FileRef {
        FileRef {
            key: key(serial),
            attached: false,
        }
    }

    #[test]
    fn attached_files_are_reused_and_dead_ones_closed() {
        let mut c = FileCache::default();
        let got = c
            .apply(&[attached(1), attached(2)], &[], vec![fd(), fd()])
            .unwrap();
        assert_eq!(got.len(), 2);
        let again = c.apply(&[held(2), held(1)], &[], vec![]).unwrap();
        assert!(Arc::ptr_eq(&again[0], &got[1]));
        assert!(Arc::ptr_eq(&again[1], &got[0]));
        c.apply(&[], &[1], vec![]).unwrap();
        assert_eq!(c.len(), 1);
        assert!(c.apply(&[held(1)], &[], vec![]).is_err());
        assert_eq!(c.lacking(&[held(1), held(2), attached(3)]), vec![key(1)]);
    }

    #[test]
    fn mismatched_fds_are_bad_replies() {
        let mut c = FileCache::default();
        assert!(c.apply(&[attached(1)], &[], vec![]).is_err());
        assert!(c.apply(&[attached(2)], &[], vec![fd(), fd()]).is_err());
    }

    #[test]
    fn eviction_closes_the_least_recently_used() {
        let mut c = FileCache::default();
        for s in 0..FD_CACHE_MAX as u64 {
            c.apply(&[attached(s)], &[], vec![fd()]).unwrap();
        }
        assert!(c.evict().is_empty());
        // Touch serial 0 so it is the most recently used.
        c.apply(&[held(0)], &[], vec![]).unwrap();
        c.apply(&[attached(9999)], &[], vec![fd()]).unwrap();
        let gone: Vec<FileKey> = c.evict().concat();
        assert_eq!(gone.len(), FD_CACHE_MAX + 1 - FD_CACHE_LOW);
        assert!(!gone.contains(&key(0)) && !gone.contains(&key(9999)));
        assert!(gone.contains(&key(1)));
        assert_eq!(c.len(), FD_CACHE_LOW);
    }
}
