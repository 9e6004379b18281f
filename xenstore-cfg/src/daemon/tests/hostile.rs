//! Tests for `daemon` against hostile clients: malformed input, clients that never read,
//! and arbitrary input (compiled only under `#[cfg(test)]`, see `mod hostile` in tests.rs).

use proptest::prelude::*;

use super::*;

#[test]
fn bad_input_gets_errors_or_closes_only_that_connection() {
    let mut h = H::new();
    let (a, b) = (h.conn(0), h.conn(0));
    for path in ["", "/a/", "/a//b", "/a b", "/é", "rel/../x"] {
        assert_eq!(h.write(a, path, "x"), Err(XsErrno::EINVAL), "{path:?}");
    }
    assert_eq!(
        h.read(a, &format!("/{}", "a".repeat(3100))),
        Err(XsErrno::EINVAL)
    );
    // Raw frames: unknown type, missing NUL, reply-only type, half a message.
    let (ida, idb) = (h.clients[a].id, h.clients[b].id);
    let mut raw = Vec::new();
    emit_msg(&mut raw, 20, 1, 0, b"").unwrap();
    emit_msg(&mut raw, 2, 2, 0, b"/a").unwrap();
    emit_msg(&mut raw, XsType::Error.raw(), 3, 0, b"x\0").unwrap();
    emit_msg(&mut raw, 0xffff, 4, 0, b"").unwrap();
    h.xs.receive(ida, &raw);
    let out = h.xs.output(ida).to_vec();
    let mut names = Vec::new();
    let mut rest = &out[..];
    while let Ok(m) = crate::wire::XsMsg::new_checked(rest) {
        assert_eq!(m.msg_type(), Some(XsType::Error));
        names.push(String::from_utf8_lossy(m.payload()).into_owned());
        rest = &rest[m.total_len()..];
    }
    assert_eq!(names, ["ENOSYS\0", "EINVAL\0", "ENOSYS\0", "ENOSYS\0"]);
    h.xs.consume_output(ida, out.len());
    h.xs.receive(ida, &raw[..7]);
    assert!(h.xs.output(ida).is_empty(), "half a header waits");
    // An oversized length closes that connection only.
    let mut big = Vec::new();
    emit_msg(&mut big, 2, 5, 0, b"").unwrap();
    big[12..16].copy_from_slice(&4097u32.to_ne_bytes());
    h.xs.receive(idb, &big);
    assert_eq!(h.xs.poll_action(), Some(Action::Close(idb)));
    assert!(!h.xs.is_connected(idb));
    assert!(h.xs.is_connected(ida));
}

#[test]
fn a_client_that_never_reads_is_bounded_and_dropped() {
    let mut h = H::new();
    let (a, b) = (h.conn(0), h.conn(0));
    let (ida, idb) = (h.clients[a].id, h.clients[b].id);
    assert_eq!(h.watch(b, "/", "all"), OK);
    // b never reads; a writes a lot.
    let long = "p".repeat(1900);
    for i in 0..3000 {
        let mut bytes = Vec::new();
        let body = format!("/flood/{long}\0{i}");
        emit_msg(&mut bytes, XsType::Write.raw(), i, 0, body.as_bytes()).unwrap();
        h.xs.receive(ida, &bytes);
        let n = h.xs.output(ida).len();
        h.xs.consume_output(ida, n);
    }
    assert!(!h.xs.is_connected(idb), "b was dropped for not reading");
    assert!(h.xs.is_connected(ida));
    // And a client that pipelines without reading stops being read at the soft limit.
    assert_eq!(h.write(a, "/big", &"v".repeat(4000)), OK);
    let mut many = Vec::new();
    for i in 0..100u32 {
        emit_msg(&mut many, XsType::Read.raw(), i, 0, b"/big\0").unwrap();
    }
    h.xs.receive(ida, &many);
    assert!(!h.xs.wants_input(ida));
    assert!(h.xs.output(ida).len() < OUT_SOFT_LIMIT + 8192);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(crate::wire::tests::cases()))]

    /// The fuzz target's body: arbitrary bytes from four clients never break the engine.
    #[test]
    fn engine_survives_arbitrary_input(data in prop::collection::vec(any::<u8>(), 0..2048)) {
        exercise(&data);
    }

    /// Arbitrary well-framed requests from a guest never panic and always get one reply,
    /// for as long as the guest's connection lives: a Release of its domain (sent by dom0)
    /// closes it, as `release_closes_domain_connections_and_fires` checks.
    #[test]
    fn every_request_gets_exactly_one_reply(
        reqs in prop::collection::vec(crate::wire::tests::request(), 1..20),
    ) {
        let mut h = H::new();
        let d0 = h.conn(0);
        h.introduce(d0, 1);
        let d1 = h.conn(1);
        for r in reqs {
            let c = if matches!(r, Request::Release { .. }) { d0 } else { d1 };
            if !h.xs.is_connected(h.clients[c].id) {
                break;
            }
            let _ = h.req(c, r);
        }
    }
}
