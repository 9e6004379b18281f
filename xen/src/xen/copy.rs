//! Grant copy on real Xen: `IOCTL_GNTDEV_GRANT_COPY` on the gntdev fd, local memory named by
//! virtual address.

use std::os::fd::AsFd;

use super::abi::{
    self, GntdevGrantCopySegment, GrantCopyForeign, GrantCopyPtr, GNTCOPY_DEST_GREF,
    GNTCOPY_SOURCE_GREF,
};
use super::XenPlatform;
use crate::copy::{CopyDir, CopyError, CopySeg, GrantCopier, LocalPages, SegError};
use crate::{AllocError, DomId};

/// Encodes one segment whose bounds were checked against `local`: the grant side is
/// `foreign`, the local side `virt` = `local.as_ptr() + seg.local`.
pub fn encode_seg(domid: DomId, local: &LocalPages, seg: &CopySeg) -> GntdevGrantCopySegment {
    let foreign = GrantCopyPtr::foreign(GrantCopyForeign {
        gref: seg.gref.0,
        offset: seg.offset,
        domid: domid.0,
    });
    let virt = GrantCopyPtr::virt((local.as_ptr() as usize).wrapping_add(seg.local));
    let (source, dest, flags) = match seg.dir {
        CopyDir::FromGrant => (foreign, virt, GNTCOPY_SOURCE_GREF),
        CopyDir::ToGrant => (virt, foreign, GNTCOPY_DEST_GREF),
    };
    GntdevGrantCopySegment {
        source,
        dest,
        len: seg.len,
        flags,
        status: 0,
        pad: 0,
    }
}

impl GrantCopier for XenPlatform {
    fn alloc_local(&self, pages: usize) -> Result<LocalPages, AllocError> {
        LocalPages::anonymous(pages)
    }

    fn copy(
        &self,
        domid: DomId,
        local: &LocalPages,
        segs: &[CopySeg],
    ) -> Result<Vec<Result<(), SegError>>, CopyError> {
        crate::copy::check_count(segs)?;
        // A segment crossing the granted page fails the whole ioctl (EINVAL) and one outside
        // `local` would let the kernel reach other memory: both are answered here and left
        // out of the ioctl.
        let mut out: Vec<Result<(), SegError>> =
            segs.iter().map(|s| s.check_bounds(local.len())).collect();
        let mut raw: Vec<GntdevGrantCopySegment> = segs
            .iter()
            .zip(&out)
            .filter(|(_, r)| r.is_ok())
            .map(|(s, _)| encode_seg(domid, local, s))
            .collect();
        if raw.is_empty() {
            return Ok(out);
        }
        let fd = self.gntdev()?;
        // SAFETY: every segment in `raw` passed `check_bounds`, so its virt side is
        // `local.as_ptr() + seg.local .. + seg.len` inside `local`'s own read-write mapping,
        // which `local` (borrowed for the call) keeps mapped; LocalPages never hands out a
        // Rust reference into its pages (only raw pointers and volatile `Shm` views).
        unsafe { abi::grant_copy(fd.as_fd(), &mut raw) }.map_err(CopyError::Ioctl)?;
        let mut done = raw.iter();
        for r in out.iter_mut().filter(|r| r.is_ok()) {
            *r = match done.next() {
                Some(seg) => SegError::from_gntst(seg.status),
                None => Err(SegError::Status(crate::copy::GNTST_GENERAL_ERROR)),
            };
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GrantRef;

    #[test]
    fn from_grant_puts_the_grant_in_source_and_our_address_in_dest() {
        let local = LocalPages::anonymous(2).unwrap();
        let seg = CopySeg {
            gref: GrantRef(77),
            offset: 100,
            len: 3000,
            local: 5000,
            dir: CopyDir::FromGrant,
        };
        let raw = encode_seg(DomId(5), &local, &seg);
        assert_eq!(raw.flags, GNTCOPY_SOURCE_GREF);
        assert_eq!(&raw.source.bytes[0..4], &77u32.to_ne_bytes());
        assert_eq!(&raw.source.bytes[4..6], &100u16.to_ne_bytes());
        assert_eq!(&raw.source.bytes[6..8], &5u16.to_ne_bytes());
        let addr = local.as_ptr() as usize + 5000;
        assert_eq!(raw.dest.bytes, (addr as u64).to_ne_bytes());
        assert_eq!(raw.len, 3000);
        assert_eq!(raw.status, 0);
    }

    #[test]
    fn to_grant_swaps_the_sides() {
        let local = LocalPages::anonymous(1).unwrap();
        let seg = CopySeg {
            gref: GrantRef(9),
            offset: 0,
            len: 4096,
            local: 0,
            dir: CopyDir::ToGrant,
        };
        let raw = encode_seg(DomId(1), &local, &seg);
        assert_eq!(raw.flags, GNTCOPY_DEST_GREF);
        assert_eq!(&raw.dest.bytes[0..4], &9u32.to_ne_bytes());
        assert_eq!(raw.source.bytes, (local.as_ptr() as u64).to_ne_bytes());
    }

    #[test]
    fn bad_segments_never_reach_the_device() {
        // Without Xen the ioctl cannot run, so a call whose segments all fail their bounds
        // must answer without opening gntdev at all.
        let p = XenPlatform::new();
        let local = LocalPages::anonymous(1).unwrap();
        let seg = |offset, len, local| CopySeg {
            gref: GrantRef(8),
            offset,
            len,
            local,
            dir: CopyDir::FromGrant,
        };
        let segs = [seg(4000, 97, 0), seg(0, 10, 4090), seg(0, 1, usize::MAX)];
        let out = p.copy(DomId(1), &local, &segs).unwrap();
        assert_eq!(out, vec![Err(SegError::OutOfRange); 3]);
        let many = vec![seg(0, 1, 0); crate::copy::MAX_COPY_SEGS + 1];
        assert!(matches!(
            p.copy(DomId(1), &local, &many),
            Err(CopyError::TooMany(n)) if n == crate::copy::MAX_COPY_SEGS + 1
        ));
        assert!(p.copy(DomId(1), &local, &[]).unwrap().is_empty());
    }

    #[test]
    fn gntst_statuses_map_to_segment_errors() {
        assert_eq!(SegError::from_gntst(0), Ok(()));
        assert_eq!(SegError::from_gntst(-3), Err(SegError::BadGref));
        assert_eq!(SegError::from_gntst(-2), Err(SegError::BadGref));
        assert_eq!(SegError::from_gntst(-8), Err(SegError::ReadOnly));
        assert_eq!(SegError::from_gntst(-10), Err(SegError::OutOfRange));
        assert_eq!(SegError::from_gntst(-1), Err(SegError::Status(-1)));
        assert_eq!(SegError::from_gntst(-12), Err(SegError::Status(-12)));
        for e in [SegError::BadGref, SegError::ReadOnly, SegError::OutOfRange] {
            assert_eq!(SegError::from_gntst(e.to_gntst()), Err(e));
        }
    }
}
