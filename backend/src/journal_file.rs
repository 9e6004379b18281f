//! Where a controller's journal ([`crate::engine::journal`]) lives: one page-sized file per
//! controller under the runtime directory (`/run/pvusb-backend` on Xen, which systemd keeps
//! across a restart of the unit), mapped shared so that every store reaches the page cache
//! at once and outlives a process killed at any instruction.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;

use pvusb_ring::shm::{Access, Shm};
use rustix::mm::{MapFlags, ProtFlags};
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
    let map = Mapping::new(&file)?;
    // SAFETY: `map` is a live MAP_SHARED read-write mapping of JOURNAL_BYTES bytes, kept
    // alive by the owner attached below for as long as any view of it exists; Shm only
    // reaches it through volatile and atomic accesses.
    let shm = unsafe { Shm::from_raw_parts(map.ptr, JOURNAL_BYTES, Access::ReadWrite) };
    Ok(shm.with_owner(Arc::new(map)))
}

/// Removes the journal of a controller that is gone.
pub fn remove(dir: &Path, id: &VusbId) {
    let _ = std::fs::remove_file(path(dir, id));
}

/// A shared mapping of a journal file, unmapped on drop.
#[derive(Debug)]
struct Mapping {
    ptr: NonNull<u8>,
}

// SAFETY: the mapping is an address range reached only through `Shm`'s volatile and atomic
// accesses, valid from any thread until dropped.
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` gives no access at all.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new(file: &File) -> io::Result<Self> {
        // SAFETY: a fresh mapping at an address the kernel picks (no MAP_FIXED), so it
        // aliases no Rust object; it is unmapped once, in Drop.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                JOURNAL_BYTES,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                file,
                0,
            )?
        };
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(io::ErrorKind::OutOfMemory)?;
        Ok(Mapping { ptr })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped only here; no view outlives it (every
        // Shm over it holds this owner).
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), JOURNAL_BYTES) };
    }
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
