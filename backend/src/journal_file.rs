//! Where a controller's journal ([`crate::engine::journal`]) lives: one page-sized file per
//! controller under the runtime directory (`/run/pvusb-backend` on Xen, which systemd keeps
//! across a restart of the unit), mapped shared so that every store reaches the page cache
//! at once and outlives a process killed at any instruction.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use pvusb_ring::shm::Shm;
use xenstore_cfg::vusb::VusbId;

use crate::engine::journal::JOURNAL_BYTES;

/// The journal file of controller `id`.
pub fn path(dir: &Path, id: &VusbId) -> PathBuf {
    dir.join(format!("vusb-{}-{}-{}", id.be, id.fe, id.devid))
}

/// Opens (creating it and `dir` if needed, owner-only) the journal of controller `id`, as it
/// was left.
pub fn open(dir: &Path, id: &VusbId) -> io::Result<Shm> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path(dir, id))?;
    // Only this daemon writes it; a file of another size is not one of its journals.
    if file.metadata()?.len() != JOURNAL_BYTES as u64 {
        file.set_len(0)?;
        file.set_len(JOURNAL_BYTES as u64)?;
    }
    Ok(pvusb_xen::mem::map_file(file.as_fd(), JOURNAL_BYTES)?)
}

/// Removes the journal of a controller that is gone.
pub fn remove(dir: &Path, id: &VusbId) {
    let _ = std::fs::remove_file(path(dir, id));
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;

    /// What one opening stores, the next opening of the same controller finds; another
    /// controller has its own file.
    #[test]
    fn a_journal_outlives_its_mapping() {
        let dir = tempfile::tempdir().unwrap();
        let id = VusbId {
            fe: 3,
            be: 0,
            devid: 1,
        };
        let sub = dir.path().join("run");
        open(&sub, &id)
            .unwrap()
            .atomic_u32(8)
            .unwrap()
            .store(77, Ordering::Release);
        let again = open(&sub, &id).unwrap();
        assert_eq!(again.atomic_u32(8).unwrap().load(Ordering::Acquire), 77);
        let other = VusbId { devid: 2, ..id };
        let fresh = open(&sub, &other).unwrap();
        assert_eq!(fresh.atomic_u32(8).unwrap().load(Ordering::Acquire), 0);
        remove(&sub, &id);
        assert!(!path(&sub, &id).exists());
    }
}
