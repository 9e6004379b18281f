use proptest::prelude::*;

use super::*;

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
        (
            domid(),
            access(),
            proptest::collection::vec(any::<u32>(), 1..=MAX_PAGES_PER_CALL)
        )
            .prop_map(|(domid, access, refs)| Request::Map {
                domid,
                access,
                refs: refs.into_iter().map(GrantRef).collect()
            }),
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
    ]
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
        (
            any::<u32>(),
            any::<u32>(),
            proptest::collection::vec(any::<(u32, u32)>(), 1..=64)
        )
            .prop_map(|(map_id, nfds, p)| Reply::Mapped {
                map_id,
                nfds,
                pages: p
                    .into_iter()
                    .map(|(fd_index, file_page)| PageLoc {
                        fd_index,
                        file_page
                    })
                    .collect()
            }),
        (
            prop_oneof![Just(op::EVTCHN_ALLOC_UNBOUND), Just(op::EVTCHN_BIND)],
            any::<u32>()
        )
            .prop_map(|(op, p)| Reply::Port {
                op,
                port: EvtchnPort(p)
            }),
        any::<[u32; 5]>().prop_map(|c| Reply::Counters(Counters {
            grants: c[0],
            mappings: c[1],
            channels: c[2],
            domains: c[3],
            connections: c[4]
        })),
        prop_oneof![
            Just(op::GRANT_END),
            Just(op::UNMAP),
            Just(op::EVTCHN_UNBIND),
            Just(op::DOMAIN_CREATE),
            Just(op::DOMAIN_DESTROY)
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
    push_u32s(&mut bytes, [1, 1, 2, 8]);
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
