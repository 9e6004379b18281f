//! `/dev/xen/gntalloc`: granting this domain's pages (frontend side).
//!
//! Real-platform behaviour of ending access: `IOCTL_GNTALLOC_DEALLOC_GREF` never fails
//! because the peer still maps a page. The kernel removes the grant from the file, and once
//! our own mmap is gone it calls `gnttab_end_foreign_access`, which *defers* the free while
//! the peer maps the page (the page is leaked until the peer unmaps). Whether the peer still
//! maps a grant (`gnttab_query_foreign_access`) is not exposed to user space, so
//! [`crate::GrantedPages::end_access`] cannot refuse here; the simulated platform refuses.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use rustix::io::Errno;

use super::abi::{
    self, ArgBuf, GntallocAllocGrefHead, GntallocDeallocGref, GNTALLOC_FLAG_WRITABLE,
};
use super::XenPlatform;
use crate::error::RevokeError;
use crate::mem::{GrantOwner, Region};
use crate::{
    Access, AllocError, DomId, GrantAllocator, GrantRef, GrantedPages, MAX_PAGES_PER_CALL,
    PAGE_SIZE,
};

/// Encodes `struct ioctl_gntalloc_alloc_gref` with room for `count` grant ids.
pub fn encode_alloc(domid: DomId, count: u32, access: Access) -> ArgBuf {
    let flags = if access == Access::Writable {
        GNTALLOC_FLAG_WRITABLE
    } else {
        0
    };
    let head = GntallocAllocGrefHead {
        domid: domid.0,
        flags,
        count,
        index: 0,
    };
    ArgBuf::with(
        &head,
        &vec![0; count as usize],
        abi::SIZEOF_GNTALLOC_ALLOC_GREF,
    )
}

/// Decodes the OUT fields of an ALLOC_GREF buffer: the mmap offset and the grant refs.
pub fn decode_alloc(buf: &ArgBuf, count: usize) -> Option<(u64, Vec<GrantRef>)> {
    let head = buf.head::<GntallocAllocGrefHead>()?;
    let grefs = buf.tail(std::mem::size_of::<GntallocAllocGrefHead>(), count)?;
    Some((head.index, grefs.into_iter().map(GrantRef).collect()))
}

fn dealloc(fd: &OwnedFd, index: u64, count: u32) -> Result<(), Errno> {
    let mut buf = ArgBuf::with(
        &GntallocDeallocGref {
            index,
            count,
            pad: 0,
        },
        &[],
        0,
    );
    abi::call(fd.as_fd(), abi::IOCTL_GNTALLOC_DEALLOC_GREF, &mut buf).map(|_| ())
}

#[derive(Debug)]
struct GntallocOwner {
    fd: Arc<OwnedFd>,
    index: u64,
    count: u32,
}

impl GrantOwner for GntallocOwner {
    fn try_revoke(&mut self) -> Result<(), RevokeError> {
        // Not observable from user space: see the module documentation.
        Ok(())
    }

    fn release(self: Box<Self>) {
        if let Err(e) = dealloc(&self.fd, self.index, self.count) {
            tracing::error!(index = self.index, error = %e, "IOCTL_GNTALLOC_DEALLOC_GREF failed");
        }
    }
}

impl GrantAllocator for XenPlatform {
    fn alloc(
        &self,
        domid: DomId,
        count: usize,
        access: Access,
    ) -> Result<GrantedPages, AllocError> {
        let n = u32::try_from(count)
            .ok()
            .filter(|_| count > 0 && count <= MAX_PAGES_PER_CALL)
            .ok_or(AllocError::BadCount(count))?;
        let fd = self.gntalloc()?;
        let mut buf = encode_alloc(domid, n, access);
        abi::call(fd.as_fd(), abi::IOCTL_GNTALLOC_ALLOC_GREF, &mut buf).map_err(
            |errno| match errno {
                // gntalloc's only ENOSPC: `gref_size + count > limit`.
                Errno::NOSPC => AllocError::Limit { count },
                errno => AllocError::Os {
                    op: "IOCTL_GNTALLOC_ALLOC_GREF",
                    errno,
                },
            },
        )?;
        let Some((index, grefs)) = decode_alloc(&buf, count) else {
            return Err(AllocError::Os {
                op: "IOCTL_GNTALLOC_ALLOC_GREF reply",
                errno: Errno::INVAL,
            });
        };
        let owner = Box::new(GntallocOwner {
            fd: fd.clone(),
            index,
            count: n,
        });
        match Region::map_shared(fd.as_fd(), index, count * PAGE_SIZE, Access::Writable) {
            Ok(region) => Ok(GrantedPages::new(region, domid, grefs, access, owner)),
            Err(errno) => {
                owner.release();
                Err(AllocError::Os {
                    op: "mmap of gntalloc pages",
                    errno,
                })
            }
        }
    }
}
