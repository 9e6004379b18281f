use super::*;
use crate::xen::{gntalloc, gntdev};
use crate::{Access, DomId, GrantRef};

#[test]
fn opcodes_match_the_documented_values() {
    // protocol.md §2.4–2.6, computed on x86_64 from the uapi headers.
    assert_eq!(IOCTL_EVTCHN_BIND_INTERDOMAIN, 0x0008_4501);
    assert_eq!(IOCTL_EVTCHN_BIND_UNBOUND_PORT, 0x0004_4502);
    assert_eq!(IOCTL_EVTCHN_RESET, 0x0000_4505);
    assert_eq!(IOCTL_EVTCHN_RESTRICT_DOMID, 0x0002_4506);
    assert_eq!(IOCTL_GNTDEV_MAP_GRANT_REF, 0x0018_4700);
    assert_eq!(IOCTL_GNTDEV_UNMAP_GRANT_REF, 0x0010_4701);
    assert_eq!(IOCTL_GNTDEV_SET_MAX_GRANTS, 0x0004_4703);
    assert_eq!(IOCTL_GNTALLOC_ALLOC_GREF, 0x0018_4705);
    assert_eq!(IOCTL_GNTALLOC_DEALLOC_GREF, 0x0010_4706);
}

#[test]
fn map_grant_ref_encodes_count_then_domid_ref_pairs() {
    let buf = gntdev::encode_map(DomId(7), &[GrantRef(8), GrantRef(9)]);
    let b = buf.bytes();
    assert_eq!(b.len(), 32);
    assert_eq!(&b[0..4], &2u32.to_ne_bytes());
    assert_eq!(&b[8..16], &0u64.to_ne_bytes(), "index is an OUT field");
    assert_eq!(&b[16..20], &7u32.to_ne_bytes());
    assert_eq!(&b[20..24], &8u32.to_ne_bytes());
    assert_eq!(&b[24..28], &7u32.to_ne_bytes());
    assert_eq!(&b[28..32], &9u32.to_ne_bytes());
}

#[test]
fn map_grant_ref_buffer_is_at_least_the_c_sizeof() {
    let buf = gntdev::encode_map(DomId(1), &[GrantRef(1)]);
    assert_eq!(buf.bytes().len(), SIZEOF_GNTDEV_MAP_GRANT_REF);
}

#[test]
fn alloc_gref_encodes_domid_flags_count_and_room_for_ids() {
    let buf = gntalloc::encode_alloc(DomId(3), 3, Access::Writable);
    let b = buf.bytes();
    assert!(b.len() >= 16 + 12);
    assert_eq!(&b[0..2], &3u16.to_ne_bytes());
    assert_eq!(&b[2..4], &GNTALLOC_FLAG_WRITABLE.to_ne_bytes());
    assert_eq!(&b[4..8], &3u32.to_ne_bytes());
    let ro = gntalloc::encode_alloc(DomId(3), 1, Access::ReadOnly);
    assert_eq!(&ro.bytes()[2..4], &0u16.to_ne_bytes());
    assert_eq!(ro.bytes().len(), SIZEOF_GNTALLOC_ALLOC_GREF);
}

#[test]
fn alloc_gref_decodes_the_kernel_answer() {
    let head = GntallocAllocGrefHead {
        domid: 0,
        flags: 1,
        count: 2,
        index: 0x2000,
    };
    let buf = ArgBuf::with(&head, &[41, 42], 0);
    let (index, grefs) = gntalloc::decode_alloc(&buf, 2).unwrap();
    assert_eq!(index, 0x2000);
    assert_eq!(grefs, vec![GrantRef(41), GrantRef(42)]);
    assert!(
        gntalloc::decode_alloc(&buf, 3).is_none(),
        "a short buffer is not read past"
    );
}

#[test]
fn fixed_structs_have_the_c_sizes() {
    assert_eq!(std::mem::size_of::<GntdevUnmapGrantRef>(), 16);
    assert_eq!(std::mem::size_of::<GntallocDeallocGref>(), 16);
    assert_eq!(std::mem::size_of::<UnmapNotify>(), 16);
    assert_eq!(SIZEOF_GNTALLOC_ALLOC_GREF, 24);
}
