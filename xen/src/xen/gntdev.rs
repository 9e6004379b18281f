//! `/dev/xen/gntdev`: mapping another domain's grants (backend side).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use rustix::io::Errno;

use super::abi::{
    self, ArgBuf, GntdevGrantRef, GntdevMapGrantRefHead, GntdevSetMaxGrants, GntdevUnmapGrantRef,
};
use super::XenPlatform;
use crate::mem::{Region, Unmap};
use crate::{
    Access, DomId, GrantMapper, GrantMapping, GrantRef, MapError, MAX_PAGES_PER_CALL, PAGE_SIZE,
};

/// The per-fd grant limit asked for; old kernels default to 1024.
const MAX_GRANTS: u32 = 16 * 1024;

/// Encodes `struct ioctl_gntdev_map_grant_ref` with its `refs[]` tail.
pub fn encode_map(domid: DomId, refs: &[GrantRef]) -> ArgBuf {
    let count = u32::try_from(refs.len()).unwrap_or(u32::MAX);
    let head = GntdevMapGrantRefHead {
        count,
        pad: 0,
        index: 0,
    };
    let tail: Vec<u32> = refs
        .iter()
        .flat_map(|r| {
            let g = GntdevGrantRef {
                domid: u32::from(domid.0),
                gref: r.0,
            };
            [g.domid, g.gref]
        })
        .collect();
    ArgBuf::with(&head, &tail, abi::SIZEOF_GNTDEV_MAP_GRANT_REF)
}

/// `IOCTL_GNTDEV_SET_MAX_GRANTS`: obsolete and absent from newer kernels, so a failure is only
/// logged (QEMU does the same).
pub(crate) fn set_max_grants(fd: &OwnedFd) {
    let mut buf = ArgBuf::with(&GntdevSetMaxGrants { count: MAX_GRANTS }, &[], 0);
    if let Err(e) = abi::call(fd.as_fd(), abi::IOCTL_GNTDEV_SET_MAX_GRANTS, &mut buf) {
        tracing::debug!(error = %e, "IOCTL_GNTDEV_SET_MAX_GRANTS failed (not fatal)");
    }
}

fn unmap_grant_ref(fd: &OwnedFd, index: u64, count: u32) -> Result<(), Errno> {
    let mut buf = ArgBuf::with(
        &GntdevUnmapGrantRef {
            index,
            count,
            pad: 0,
        },
        &[],
        0,
    );
    abi::call(fd.as_fd(), abi::IOCTL_GNTDEV_UNMAP_GRANT_REF, &mut buf).map(|_| ())
}

/// Releases the gntdev slots after the munmap.
#[derive(Debug)]
struct GntdevUnmap {
    fd: Arc<OwnedFd>,
    index: u64,
    count: u32,
}

impl Unmap for GntdevUnmap {
    fn unmap(self: Box<Self>) {
        if let Err(e) = unmap_grant_ref(&self.fd, self.index, self.count) {
            tracing::error!(index = self.index, error = %e, "IOCTL_GNTDEV_UNMAP_GRANT_REF failed");
        }
    }
}

impl GrantMapper for XenPlatform {
    fn map(
        &self,
        domid: DomId,
        refs: &[GrantRef],
        access: Access,
    ) -> Result<GrantMapping, MapError> {
        if refs.is_empty() || refs.len() > MAX_PAGES_PER_CALL {
            return Err(MapError::BadCount(refs.len()));
        }
        let fd = self.gntdev()?;
        let mut buf = encode_map(domid, refs);
        abi::call(fd.as_fd(), abi::IOCTL_GNTDEV_MAP_GRANT_REF, &mut buf).map_err(|errno| {
            MapError::Os {
                op: "IOCTL_GNTDEV_MAP_GRANT_REF",
                errno,
            }
        })?;
        let index = buf.head::<GntdevMapGrantRefHead>().map_or(0, |h| h.index);
        let count = u32::try_from(refs.len()).unwrap_or(u32::MAX);
        // The mmap performs the map hypercall: a writable mmap of a read-only grant, or a ref
        // the domain did not grant us, fails here.
        match Region::map_shared(fd.as_fd(), index, refs.len() * PAGE_SIZE, access) {
            Ok(region) => Ok(GrantMapping::new(
                region,
                domid,
                refs,
                Box::new(GntdevUnmap { fd, index, count }),
            )),
            Err(errno) => {
                unmap_grant_ref(&fd, index, count).ok();
                Err(MapError::Os {
                    op: "mmap of gntdev grant refs",
                    errno,
                })
            }
        }
    }
}
