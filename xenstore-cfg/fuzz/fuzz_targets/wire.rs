//! The xs_wire parsers: frame, request and reply bodies of every type.
#![no_main]

use xenstore_cfg::wire::{Reply, Request, XsMsg, XsType};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = XsMsg::new_checked(data) {
        if let Some(ty) = msg.msg_type() {
            if let Ok(req) = Request::parse(ty, msg.payload()) {
                // Whatever parses re-emits to a body that parses the same.
                let mut body = Vec::new();
                req.emit(&mut body);
                assert_eq!(Request::parse(ty, &body).as_ref(), Ok(&req));
            }
        }
    }
    if let Some((&t, rest)) = data.split_first() {
        if let Some(asked) = XsType::from_raw(u32::from(t % 23)) {
            let _ = Reply::parse(asked, u32::from(t % 23), rest);
            let _ = Reply::parse(asked, XsType::Error.raw(), rest);
            let _ = Reply::parse_event(rest);
        }
    }
});
