use proptest::prelude::*;

use super::*;
use crate::copy::{CopyDir, MAX_COPY_SEGS};

fn cases() -> ProptestConfig {
    let n = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    ProptestConfig::with_cases(n)
}

fn domid() -> impl Strategy<Value = DomId> {
    any::<u16>().prop_map(DomId)
}

fn access() -> impl Strategy<Value = Access> {
    prop_oneof![Just(Access::ReadOnly), Just(Access::Writable)]
}

/// At most 128 pages each, so 8 of them stay within MAX_BATCH_PAGES.
fn map_spec() -> impl Strategy<Value = MapSpec> {
    (access(), proptest::collection::vec(any::<u32>(), 1..=128)).prop_map(|(access, refs)| {
        MapSpec {
            access,
            refs: refs.into_iter().map(GrantRef).collect(),
        }
    })
}

fn file_key() -> impl Strategy<Value = FileKey> {
    (any::<u64>(), access()).prop_map(|(serial, access)| FileKey { serial, access })
}

fn map_outcome() -> impl Strategy<Value = MapOutcome> {
    prop_oneof![
        status().prop_map(MapOutcome::Failed),
        (
            any::<u32>(),
            proptest::collection::vec(any::<(u32, u32)>(), 1..=128)
        )
            .prop_map(|(map_id, p)| MapOutcome::Mapped {
                map_id,
                pages: p
                    .into_iter()
                    .map(|(file, file_page)| PageLoc { file, file_page })
                    .collect()
            }),
    ]
}

fn mapped() -> impl Strategy<Value = Reply> {
    (
        proptest::collection::vec((file_key(), any::<bool>()), 0..=MAX_FILES),
        proptest::collection::vec(any::<u64>(), 0..=MAX_DEAD),
        proptest::collection::vec(map_outcome(), 1..=8),
    )
        .prop_map(|(files, dead, maps)| Reply::Mapped {
            files: files
                .into_iter()
                .map(|(key, attached)| FileRef { key, attached })
                .collect(),
            dead,
            maps,
        })
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (domid(), 1..=MAX_PAGES_PER_CALL as u32, access()).prop_map(|(grantee, count, access)| {
            Request::GrantAlloc {
                grantee,
                count,
                access,
            }
        }),
        (any::<u32>(), any::<bool>()).prop_map(|(handle, d)| Request::GrantEnd {
            handle,
            mode: if d { EndMode::Defer } else { EndMode::Refuse }
        }),
        (domid(), proptest::collection::vec(map_spec(), 1..=8),)
            .prop_map(|(domid, maps)| Request::Map { domid, maps }),
        (domid(), proptest::collection::vec(map_spec(), 1..=8),)
            .prop_map(|(domid, maps)| Request::Files { domid, maps }),
        domid().prop_map(|domid| Request::CopyAttach { domid }),
        proptest::collection::vec(file_key(), 1..=MAX_FORGET)
            .prop_map(|files| Request::Forget { files }),
        any::<u32>().prop_map(|map_id| Request::Unmap { map_id }),
        any::<u32>().prop_map(|map_id| Request::UnmapOneway { map_id }),
        domid().prop_map(|remote| Request::EvtchnAllocUnbound { remote }),
        (domid(), any::<u32>()).prop_map(|(remote, p)| Request::EvtchnBind {
            remote,
            remote_port: EvtchnPort(p)
        }),
        any::<u32>().prop_map(|p| Request::EvtchnUnbind {
            port: EvtchnPort(p)
        }),
        domid().prop_map(|domid| Request::DomainCreate { domid }),
        domid().prop_map(|domid| Request::DomainDestroy { domid }),
        Just(Request::Counters),
        Just(Request::SideOpen),
        (1..=MAX_LOCAL_PAGES as u32).prop_map(|pages| Request::LocalRegister { pages }),
        any::<u32>().prop_map(|id| Request::LocalForget { id }),
        (
            domid(),
            any::<u32>(),
            proptest::collection::vec(wire_seg(), 1..=MAX_COPY_SEGS)
        )
            .prop_map(|(domid, local, segs)| Request::Copy { domid, local, segs }),
    ]
}

fn wire_seg() -> impl Strategy<Value = WireSeg> {
    (any::<(u32, u16, u16, u32)>(), any::<bool>()).prop_map(|((gref, offset, len, local), to)| {
        WireSeg {
            gref: GrantRef(gref),
            offset,
            len,
            local,
            dir: if to {
                CopyDir::ToGrant
            } else {
                CopyDir::FromGrant
            },
        }
    })
}

fn status() -> impl Strategy<Value = Status> {
    proptest::sample::select(STATUSES[1..].to_vec())
}

fn reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        (1..=10u32, status()).prop_map(|(op, status)| Reply::Error { op, status }),
        (
            any::<u32>(),
            proptest::collection::vec(any::<u32>(), 1..=MAX_PAGES_PER_CALL)
        )
            .prop_map(|(handle, g)| Reply::Granted {
                handle,
                grefs: g.into_iter().map(GrantRef).collect()
            }),
        mapped(),
        (
            prop_oneof![Just(op::EVTCHN_ALLOC_UNBOUND), Just(op::EVTCHN_BIND)],
            any::<u32>()
        )
            .prop_map(|(op, p)| Reply::Port {
                op,
                port: EvtchnPort(p)
            }),
        any::<[u32; 6]>().prop_map(|c| Reply::Counters(Counters {
            grants: c[0],
            mappings: c[1],
            channels: c[2],
            domains: c[3],
            connections: c[4],
            locals: c[5],
        })),
        any::<u32>().prop_map(|id| Reply::Registered { id }),
        proptest::collection::vec(any::<i16>(), 1..=MAX_COPY_SEGS)
            .prop_map(|statuses| Reply::Copied { statuses }),
        prop_oneof![
            Just(op::GRANT_END),
            Just(op::UNMAP),
            Just(op::SIDE_OPEN),
            Just(op::EVTCHN_UNBIND),
            Just(op::DOMAIN_CREATE),
            Just(op::DOMAIN_DESTROY),
            Just(op::COPY_ATTACH)
        ]
        .prop_map(|op| Reply::Done { op }),
    ]
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn request_roundtrips(req in request(), seq in any::<u32>()) {
        let bytes = req.emit(seq);
        prop_assert!(bytes.len() <= MAX_MESSAGE);
        prop_assert_eq!(Request::parse(&bytes), Ok((seq, req)));
    }

    #[test]
    fn reply_roundtrips(rep in reply(), seq in any::<u32>()) {
        let bytes = rep.emit(seq);
        prop_assert!(bytes.len() <= MAX_MESSAGE);
        prop_assert_eq!(Reply::parse(&bytes), Ok((seq, rep)));
    }

    #[test]
    fn request_parse_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = Request::parse(&bytes);
    }

    #[test]
    fn reply_parse_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = Reply::parse(&bytes);
    }

    #[test]
    fn truncated_requests_are_refused(req in request(), cut in 1usize..16) {
        let bytes = req.emit(1);
        let short = &bytes[..bytes.len().saturating_sub(cut)];
        prop_assert!(Request::parse(short).is_err());
    }
}

#[test]
fn parse_rejects_unknown_op() {
    let bytes = RawHeader { op: 99, seq: 1 }.as_bytes().to_vec();
    assert_eq!(Request::parse(&bytes), Err(BadMessage::UnknownOp(99)));
}

#[test]
fn parse_rejects_trailing_bytes() {
    let mut bytes = Request::Counters.emit(1);
    bytes.push(0);
    assert_eq!(Request::parse(&bytes), Err(BadMessage::Trailing));
}

#[test]
fn parse_rejects_zero_and_oversized_counts() {
    for n in [0u32, MAX_PAGES_PER_CALL as u32 + 1] {
        let mut bytes = RawHeader {
            op: op::GRANT_ALLOC,
            seq: 1,
        }
        .as_bytes()
        .to_vec();
        push_u32s(&mut bytes, [1, n, 1]);
        assert_eq!(
            Request::parse(&bytes),
            Err(BadMessage::BadField),
            "count {n}"
        );
    }
}

#[test]
fn parse_rejects_domid_above_u16() {
    let mut bytes = RawHeader {
        op: op::DOMAIN_CREATE,
        seq: 1,
    }
    .as_bytes()
    .to_vec();
    push_u32s(&mut bytes, [0x1_0000]);
    assert_eq!(Request::parse(&bytes), Err(BadMessage::BadField));
}

#[test]
fn parse_rejects_bad_flags_and_modes() {
    let mut bytes = RawHeader {
        op: op::MAP,
        seq: 1,
    }
    .as_bytes()
    .to_vec();
    push_u32s(&mut bytes, [1, 1, 1, 2, 8]);
    assert_eq!(Request::parse(&bytes), Err(BadMessage::BadField));
    let mut bytes = RawHeader {
        op: op::GRANT_END,
        seq: 1,
    }
    .as_bytes()
    .to_vec();
    push_u32s(&mut bytes, [1, 2]);
    assert_eq!(Request::parse(&bytes), Err(BadMessage::BadField));
}

#[test]
fn parse_rejects_truncated_header() {
    assert_eq!(Request::parse(&[1, 0, 0]), Err(BadMessage::Truncated));
    assert_eq!(Reply::parse(&[0; 11]), Err(BadMessage::Truncated));
}

#[test]
fn reply_rejects_unknown_status_and_error_bodies() {
    let bytes = RawReplyHeader {
        seq: 1,
        op: 1,
        status: 77,
    }
    .as_bytes()
    .to_vec();
    assert_eq!(Reply::parse(&bytes), Err(BadMessage::UnknownStatus(77)));
    let mut bytes = RawReplyHeader {
        seq: 1,
        op: 1,
        status: 1,
    }
    .as_bytes()
    .to_vec();
    bytes.push(0);
    assert_eq!(Reply::parse(&bytes), Err(BadMessage::Trailing));
}

#[test]
fn status_numbers_are_stable() {
    for (i, s) in STATUSES.iter().enumerate() {
        assert_eq!(s.to_wire(), i as u32);
        assert_eq!(Status::from_wire(i as u32), Ok(*s));
    }
}

#[test]
fn map_batches_are_bounded_in_maps_and_pages() {
    let spec = |n: usize| MapSpec {
        access: Access::Writable,
        refs: vec![GrantRef(9); n],
    };
    let req = |maps: Vec<MapSpec>| Request::Map {
        domid: DomId(1),
        maps,
    };
    let full = req((0..4).map(|_| spec(MAX_PAGES_PER_CALL)).collect());
    assert!(full.emit(1).len() <= MAX_MESSAGE);
    assert!(Request::parse(&full.emit(1)).is_ok());
    let too_many_pages = req((0..5).map(|_| spec(MAX_PAGES_PER_CALL)).collect());
    assert_eq!(
        Request::parse(&too_many_pages.emit(1)),
        Err(BadMessage::BadField)
    );
    let too_many_maps = req((0..=MAX_BATCH).map(|_| spec(1)).collect());
    assert_eq!(
        Request::parse(&too_many_maps.emit(1)),
        Err(BadMessage::BadField)
    );
    assert_eq!(
        Request::parse(&req(Vec::new()).emit(1)),
        Err(BadMessage::BadField)
    );
}

#[test]
fn the_largest_map_reply_fits_a_message() {
    let key = FileKey {
        serial: u64::MAX,
        access: Access::Writable,
    };
    let mut maps: Vec<MapOutcome> = (0..4)
        .map(|_| MapOutcome::Mapped {
            map_id: 1,
            pages: vec![
                PageLoc {
                    file: 0,
                    file_page: 0
                };
                MAX_PAGES_PER_CALL
            ],
        })
        .collect();
    maps.extend((4..MAX_BATCH).map(|_| MapOutcome::Failed(Status::NotGranted)));
    let reply = Reply::Mapped {
        files: vec![
            FileRef {
                key,
                attached: true
            };
            MAX_FILES
        ],
        dead: vec![u64::MAX; MAX_DEAD],
        maps,
    };
    let bytes = reply.emit(1);
    assert!(bytes.len() <= MAX_MESSAGE, "{} bytes", bytes.len());
    assert_eq!(Reply::parse(&bytes), Ok((1, reply)));
}

#[test]
fn a_failed_map_carries_no_id_or_pages_and_forget_never_attaches() {
    let mut bytes = RawReplyHeader {
        seq: 1,
        op: op::MAP,
        status: 0,
    }
    .as_bytes()
    .to_vec();
    push_u32s(&mut bytes, [1, 0, 0, Status::NotGranted.to_wire(), 7, 0]);
    assert_eq!(Reply::parse(&bytes), Err(BadMessage::BadField));
    let mut bytes = RawHeader {
        op: op::FORGET,
        seq: 1,
    }
    .as_bytes()
    .to_vec();
    push_u32s(&mut bytes, [1, 5, 0, 3]);
    assert_eq!(Request::parse(&bytes), Err(BadMessage::BadField));
}

#[test]
fn the_largest_one_way_message_fits_the_side_channel_buffer() {
    let forget = Request::Forget {
        files: vec![
            FileKey {
                serial: u64::MAX,
                access: Access::Writable,
            };
            MAX_FORGET
        ],
    };
    assert!(forget.emit(u32::MAX).len() <= MAX_ONEWAY);
    assert!(Request::UnmapOneway { map_id: 1 }.emit(1).len() <= MAX_ONEWAY);
}

#[test]
fn copy_messages_are_bounded_and_strict() {
    let seg = WireSeg {
        gref: GrantRef(8),
        offset: 100,
        len: 3000,
        local: 5000,
        dir: CopyDir::ToGrant,
    };
    let full = Request::Copy {
        domid: DomId(3),
        local: 1,
        segs: vec![seg; MAX_COPY_SEGS],
    };
    let bytes = full.emit(1);
    assert!(bytes.len() <= MAX_MESSAGE, "{} bytes", bytes.len());
    assert_eq!(Request::parse(&bytes), Ok((1, full)));
    let copied = Reply::Copied {
        statuses: vec![-3; MAX_COPY_SEGS],
    };
    assert!(copied.emit(1).len() <= MAX_MESSAGE);
    // One segment too many, zero segments, an unknown direction bit.
    let mut too_many = RawHeader {
        op: op::COPY,
        seq: 1,
    }
    .as_bytes()
    .to_vec();
    push_u32s(&mut too_many, [3, 1, len32(MAX_COPY_SEGS + 1)]);
    for _ in 0..=MAX_COPY_SEGS {
        too_many.extend_from_slice(RawCopySeg::default().as_bytes());
    }
    assert_eq!(Request::parse(&too_many), Err(BadMessage::BadField));
    let mut none = RawHeader {
        op: op::COPY,
        seq: 1,
    }
    .as_bytes()
    .to_vec();
    push_u32s(&mut none, [3, 1, 0]);
    assert_eq!(Request::parse(&none), Err(BadMessage::BadField));
    let mut bad_dir = RawHeader {
        op: op::COPY,
        seq: 1,
    }
    .as_bytes()
    .to_vec();
    push_u32s(&mut bad_dir, [3, 1, 1]);
    bad_dir.extend_from_slice(
        RawCopySeg {
            flags: 2,
            ..RawCopySeg::default()
        }
        .as_bytes(),
    );
    assert_eq!(Request::parse(&bad_dir), Err(BadMessage::BadField));
    // A count promising more segments than the datagram holds.
    let mut short = RawHeader {
        op: op::COPY,
        seq: 1,
    }
    .as_bytes()
    .to_vec();
    push_u32s(&mut short, [3, 1, 2]);
    short.extend_from_slice(RawCopySeg::default().as_bytes());
    assert_eq!(Request::parse(&short), Err(BadMessage::Truncated));
    // LOCAL_REGISTER: 1..=MAX_LOCAL_PAGES pages.
    for pages in [0, MAX_LOCAL_PAGES as u32 + 1] {
        let mut b = RawHeader {
            op: op::LOCAL_REGISTER,
            seq: 1,
        }
        .as_bytes()
        .to_vec();
        push_u32s(&mut b, [pages]);
        assert_eq!(Request::parse(&b), Err(BadMessage::BadField));
    }
    assert!(!Request::LocalForget { id: 1 }.wants_reply());
    assert!(Request::LocalRegister { pages: 1 }.wants_reply());
}
