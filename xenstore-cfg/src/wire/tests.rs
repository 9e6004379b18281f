//! Tests for `wire` (compiled only under `#[cfg(test)]`, see `mod tests` in wire/mod.rs).
//!
//! Wire fixtures and properties: parse is total and `parse(emit(x)) == x`.

use proptest::prelude::*;

use super::*;

/// PROPTEST_CASES from the environment (CI sets 1000), default 256.
pub(crate) fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

const READ_REQ: &[u8] = &[
    2, 0, 0, 0, // XS_READ
    7, 0, 0, 0, // req_id
    0, 0, 0, 0, // tx_id
    3, 0, 0, 0, // len
    b'/', b'a', 0,
];

#[test]
fn header_layout_matches_xs_wire_h() {
    let msg = XsMsg::new_checked(READ_REQ).unwrap();
    assert_eq!(msg.msg_type(), Some(XsType::Read));
    assert_eq!(msg.req_id(), 7);
    assert_eq!(msg.tx_id(), 0);
    assert_eq!(msg.payload(), b"/a\0");
    assert_eq!(msg.total_len(), 19);
    let mut out = Vec::new();
    emit_msg(&mut out, 2, 7, 0, b"/a\0").unwrap();
    assert_eq!(out, READ_REQ);
    assert_eq!(core::mem::size_of::<RawHeader>(), HEADER_LEN);
}

#[test]
fn type_numbers_match_xs_wire_h() {
    assert_eq!(XsType::Control.raw(), 0);
    assert_eq!(XsType::SetPerms.raw(), 14);
    assert_eq!(XsType::Error.raw(), 16);
    assert_eq!(XsType::SetTarget.raw(), 19);
    assert_eq!(XsType::from_raw(20), None);
    assert_eq!(XsType::ResetWatches.raw(), 21);
    assert_eq!(XsType::DirectoryPart.raw(), 22);
    assert_eq!(XsType::from_raw(0xffff), None);
    assert_eq!(XsType::ALL.len(), 22);
}

#[test]
fn new_checked_rejects_truncated_and_oversized() {
    assert!(matches!(
        XsMsg::new_checked(&READ_REQ[..10]),
        Err(FrameError::Truncated { have: 10, need: 16 })
    ));
    assert!(matches!(
        XsMsg::new_checked(&READ_REQ[..18]),
        Err(FrameError::Truncated { have: 18, need: 19 })
    ));
    let mut big = READ_REQ.to_vec();
    big[12..16].copy_from_slice(&4097u32.to_ne_bytes());
    assert_eq!(
        XsMsg::new_checked(&big[..]).unwrap_err(),
        FrameError::TooLong(4097)
    );
    assert!(emit_msg(&mut Vec::new(), 2, 0, 0, &[0; PAYLOAD_MAX + 1]).is_err());
}

#[test]
fn request_parse_rejects_malformed_bodies() {
    use BadRequest::*;
    assert_eq!(Request::parse(XsType::Read, b"/a"), Err(NotOneArg));
    assert_eq!(Request::parse(XsType::Read, b"/a\0/b\0"), Err(NotOneArg));
    assert_eq!(Request::parse(XsType::Read, b""), Err(NotOneArg));
    assert!(matches!(
        Request::parse(XsType::Watch, b"/a\0"),
        Err(FieldCount { .. })
    ));
    assert_eq!(
        Request::parse(XsType::TransactionEnd, b"X\0"),
        Err(BadTransactionEnd)
    );
    assert!(matches!(
        Request::parse(XsType::Release, b"x1\0"),
        Err(BadNumber(_))
    ));
    assert!(matches!(
        Request::parse(XsType::Release, b"70000\0"),
        Err(BadNumber(_))
    ));
    assert!(matches!(
        Request::parse(XsType::SetPerms, b"/a\0q1\0"),
        Err(BadPerm(_))
    ));
    assert!(matches!(
        Request::parse(XsType::SetPerms, b"/a\0"),
        Err(FieldCount { .. })
    ));
    assert_eq!(Request::parse(XsType::Write, b"/a"), Err(NotOneArg));
    assert_eq!(Request::parse(XsType::Read, b"\xff\0"), Err(NotUtf8));
    assert_eq!(
        Request::parse(XsType::Error, b"").unwrap_err().errno(),
        XsErrno::ENOSYS
    );
    assert_eq!(
        Request::parse(XsType::Write, b"/a\0v\0x").unwrap(),
        Request::Write {
            path: "/a".into(),
            value: b"v\0x".to_vec()
        }
    );
    assert_eq!(
        Request::parse(XsType::Introduce, b"3\x000\x000\0").unwrap(),
        Request::Introduce {
            domid: 3,
            mfn: 0,
            port: 0
        }
    );
}

#[test]
fn reply_fixtures() {
    assert_eq!(Reply::parse(XsType::Write, 11, b"OK\0"), Ok(Reply::Ok));
    assert_eq!(
        Reply::parse(XsType::Read, 16, b"EACCES\0"),
        Ok(Reply::Error(XsErrno::EACCES))
    );
    assert_eq!(
        Reply::parse(XsType::Read, 16, b"EQUOTA\0"),
        Err(BadReply::UnknownError("EQUOTA".into()))
    );
    assert_eq!(
        Reply::parse(XsType::GetPerms, 3, b"n0\0r1\0").unwrap(),
        Reply::Perms(Perms::owner(0, PermKind::None).with(PermKind::Read, 1))
    );
    assert_eq!(
        Reply::parse(XsType::DirectoryPart, 22, b"17\0a\0b\0\0").unwrap(),
        Reply::DirectoryPart {
            generation: 17,
            children: vec!["a".into(), "b".into()],
            complete: true
        }
    );
    assert_eq!(
        Reply::parse(XsType::DirectoryPart, 22, b"17\0\0").unwrap(),
        Reply::DirectoryPart {
            generation: 17,
            children: vec![],
            complete: true
        }
    );
    assert!(matches!(
        Reply::parse(XsType::Read, 2 + 100, b""),
        Err(BadReply::WrongType { .. })
    ));
    assert_eq!(
        Reply::parse(XsType::Directory, 1, b"").unwrap(),
        Reply::Directory(vec![])
    );
}

fn name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_@-]{1,8}"
}

fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(name(), 0..4).prop_map(|v| format!("/{}", v.join("/")))
}

fn perms() -> impl Strategy<Value = Perms> {
    let kind = prop_oneof![
        Just(PermKind::None),
        Just(PermKind::Read),
        Just(PermKind::Write),
        Just(PermKind::Both)
    ];
    prop::collection::vec((kind, any::<DomId>()), 1..5).prop_map(|v| {
        Perms::from_vec(v.into_iter().map(|(k, d)| Perm::new(k, d)).collect()).unwrap()
    })
}

pub(crate) fn request() -> impl Strategy<Value = Request> {
    let d = any::<DomId>;
    prop_oneof![
        path().prop_map(|path| Request::Read { path }),
        path().prop_map(|path| Request::Directory { path }),
        path().prop_map(|path| Request::GetPerms { path }),
        path().prop_map(|path| Request::Mkdir { path }),
        path().prop_map(|path| Request::Rm { path }),
        (path(), name()).prop_map(|(path, token)| Request::Watch { path, token }),
        (path(), name()).prop_map(|(path, token)| Request::Unwatch { path, token }),
        Just(Request::TransactionStart),
        any::<bool>().prop_map(|commit| Request::TransactionEnd { commit }),
        (d(), any::<u64>(), any::<u32>()).prop_map(|(domid, mfn, port)| Request::Introduce {
            domid,
            mfn,
            port
        }),
        d().prop_map(|domid| Request::Release { domid }),
        d().prop_map(|domid| Request::GetDomainPath { domid }),
        d().prop_map(|domid| Request::IsDomainIntroduced { domid }),
        d().prop_map(|domid| Request::Resume { domid }),
        (d(), d()).prop_map(|(domid, target)| Request::SetTarget { domid, target }),
        (path(), prop::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(path, value)| Request::Write { path, value }),
        (path(), perms()).prop_map(|(path, perms)| Request::SetPerms { path, perms }),
        Just(Request::ResetWatches),
        (path(), any::<u32>()).prop_map(|(path, offset)| Request::DirectoryPart { path, offset }),
        prop::collection::vec(prop::collection::vec(1u8..=255, 0..8), 0..4).prop_map(|args| {
            Request::Control {
                args: args.into_iter().filter(|a| !a.is_empty()).collect(),
            }
        }),
    ]
}

fn reply_for() -> impl Strategy<Value = (XsType, Reply)> {
    let names = || prop::collection::vec(name(), 0..5);
    prop_oneof![
        Just((XsType::Write, Reply::Ok)),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(|v| (XsType::Read, Reply::Read(v))),
        names().prop_map(|v| (XsType::Directory, Reply::Directory(v))),
        perms().prop_map(|p| (XsType::GetPerms, Reply::Perms(p))),
        any::<u32>().prop_map(|id| (XsType::TransactionStart, Reply::TransactionStarted(id))),
        path().prop_map(|p| (XsType::GetDomainPath, Reply::DomainPath(p))),
        any::<bool>().prop_map(|b| (XsType::IsDomainIntroduced, Reply::IsIntroduced(b))),
        (any::<u64>(), names(), any::<bool>()).prop_map(|(generation, children, complete)| (
            XsType::DirectoryPart,
            Reply::DirectoryPart {
                generation,
                children,
                complete
            }
        )),
        prop::sample::select(XsErrno::ALL.to_vec()).prop_map(|e| (XsType::Read, Reply::Error(e))),
        (path(), name())
            .prop_map(|(path, token)| (XsType::Read, Reply::WatchEvent { path, token })),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn request_round_trips(req in request()) {
        let mut body = Vec::new();
        req.emit(&mut body);
        prop_assert_eq!(Request::parse(req.msg_type(), &body), Ok(req));
    }

    #[test]
    fn reply_round_trips((asked, reply) in reply_for()) {
        let mut body = Vec::new();
        reply.emit(&mut body);
        prop_assert_eq!(Reply::parse(asked, reply.wire_type(asked).raw(), &body), Ok(reply));
    }

    #[test]
    fn parsers_are_total(bytes in prop::collection::vec(any::<u8>(), 0..64), ty in 0u32..24) {
        if let Some(t) = XsType::from_raw(ty) {
            let _ = Request::parse(t, &bytes);
            let _ = Reply::parse(t, ty, &bytes);
            let _ = Reply::parse(t, XsType::Error.raw(), &bytes);
        }
        let _ = XsMsg::new_checked(&bytes[..]).map(|m| (m.payload().len(), m.msg_type()));
    }
}
