//! Drives the engine with arbitrary bytes: the body of the fuzz target, also run by proptest.

use super::{Action, Quotas, Xenstored};

/// Splits `data` into chunks sent by one of four clients (dom0, dom0, dom1, dom2, with dom1
/// and dom2 introduced first) and checks the engine's invariants after each: it never
/// panics, keeps every connection's unread input and output bounded, and closes only the
/// connection that misbehaved.
pub fn exercise(data: &[u8]) {
    let mut xs = Xenstored::new(Quotas {
        nodes_per_domain: 50,
        ..Quotas::default()
    });
    let dom0 = xs.connect(0);
    let ctl = xs.connect(0);
    if let Some(c) = ctl {
        for d in [1u8, 2] {
            let mut msg = Vec::new();
            let body = [d + b'0', 0, b'0', 0, b'0', 0];
            let _ = crate::wire::emit_msg(&mut msg, 8, 0, 0, &body);
            xs.receive(c, &msg);
        }
    }
    let conns = [dom0, ctl, xs.connect(1), xs.connect(2)];
    let mut rest = data;
    while let Some((&head, tail)) = rest.split_first() {
        let len = usize::from(head >> 2).min(tail.len());
        let (chunk, after) = tail.split_at(len);
        rest = after;
        let Some(Some(conn)) = conns.get(usize::from(head & 3)).copied() else {
            continue;
        };
        xs.receive(conn, chunk);
        let out = xs.output(conn).len();
        assert!(out <= super::OUT_HARD_LIMIT + crate::wire::PAYLOAD_MAX + 64);
        // A client that reads everything it is sent.
        if head & 0x80 != 0 {
            xs.consume_output(conn, out);
        }
        while let Some(a) = xs.poll_action() {
            if let Action::Close(c) = a {
                assert!(!xs.is_connected(c));
            }
        }
    }
}
