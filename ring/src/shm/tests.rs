//! `Shm` bounds, copies and atomics on heap-backed regions.

use super::*;
use crate::sync::Ordering;

#[test]
fn copies_roundtrip_at_every_alignment() {
    let shm = Shm::heap(4096);
    let src: Vec<u8> = (0..=255u8).collect();
    for off in 0..16 {
        shm.write(off, &src[..100 + off]).unwrap();
        let mut back = vec![0u8; 100 + off];
        shm.read(off, &mut back).unwrap();
        assert_eq!(back, &src[..100 + off]);
    }
}

#[test]
fn long_copies_are_exact_and_stay_in_their_range() {
    // Around and above the rep-movsb threshold, at every alignment: the bytes around
    // the copied range must be untouched.
    let shm = Shm::heap(3 * 4096);
    let src: Vec<u8> = (0..9000u32).map(|i| (i * 7 + 3) as u8).collect();
    for len in [255, 256, 257, 1000, 4096, 8191] {
        for off in [0, 1, 7, 8, 63, 4095] {
            shm.write(0, &vec![0xee; 3 * 4096]).unwrap();
            shm.write(off, &src[..len]).unwrap();
            let mut all = vec![0u8; 3 * 4096];
            shm.read(0, &mut all).unwrap();
            assert!(all[..off].iter().all(|&b| b == 0xee), "before {off}+{len}");
            assert_eq!(&all[off..off + len], &src[..len], "{off}+{len}");
            assert!(
                all[off + len..].iter().all(|&b| b == 0xee),
                "after {off}+{len}"
            );
            let mut back = vec![0u8; len];
            shm.read(off, &mut back).unwrap();
            assert_eq!(back, &src[..len]);
        }
    }
}

#[test]
fn out_of_bounds_is_an_error() {
    let shm = Shm::heap(100);
    assert_eq!(
        shm.read(90, &mut [0; 11]),
        Err(ShmError::OutOfBounds {
            off: 90,
            len: 11,
            size: 100
        })
    );
    assert!(shm.write(usize::MAX, &[1]).is_err());
    assert!(shm.copy_out::<u64>(93).is_err());
    assert!(shm.slice(50, 51).is_err());
    assert_eq!(shm.slice(50, 50).unwrap().len(), 50);
}

#[test]
fn atomics_need_alignment_and_see_byte_writes() {
    let shm = Shm::heap(64);
    assert_eq!(
        shm.atomic_u32(2).unwrap_err(),
        ShmError::Misaligned { off: 2 }
    );
    assert!(shm.atomic_u32(61).is_err());
    shm.copy_in(8, &0x1234_5678u32).unwrap();
    assert_eq!(
        shm.atomic_u32(8).unwrap().load(Ordering::Relaxed),
        0x1234_5678
    );
    let sub = shm.slice(4, 8).unwrap();
    sub.atomic_u32(4).unwrap().store(7, Ordering::Relaxed);
    assert_eq!(shm.copy_out::<u32>(8).unwrap(), 7);
}

#[test]
fn read_only_view_refuses_writes_and_sees_the_region() {
    let rw = Shm::heap(32);
    let ro = rw.slice(8, 16).unwrap().read_only();
    assert_eq!(ro.access(), Access::ReadOnly);
    assert_eq!(ro.write(0, &[1]), Err(ShmError::ReadOnly));
    rw.write(8, &[7; 16]).unwrap();
    let mut got = [0u8; 16];
    ro.read(0, &mut got).unwrap();
    assert_eq!(got, [7; 16]);
    assert_eq!(ro.as_ptr() as usize, rw.as_ptr() as usize + 8);
}

#[test]
fn read_only_refuses_writes() {
    let rw = Shm::heap(16);
    // SAFETY: `rw` (held below) keeps the heap page alive longer than `ro`.
    let ro = unsafe {
        Shm::from_raw_parts(
            core::ptr::NonNull::new(rw.0.addr() as *mut u8).unwrap(),
            16,
            Access::ReadOnly,
        )
    };
    assert_eq!(ro.write(0, &[1]), Err(ShmError::ReadOnly));
    assert_eq!(ro.fill(0, 1, 0), Err(ShmError::ReadOnly));
    rw.write(0, &[9]).unwrap();
    assert_eq!(ro.copy_out::<u8>(0).unwrap(), 9);
    drop(ro);
}
