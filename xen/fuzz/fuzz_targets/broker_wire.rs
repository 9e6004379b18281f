//! Any datagram a hostile client (or a confused broker) sends parses without panicking,
//! and whatever parses re-encodes to the same value. The same checks run as proptests in
//! `src/sim/wire/tests.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pvusb_xen::sim::wire::{Reply, Request};

fuzz_target!(|data: &[u8]| {
    if let Ok((seq, req)) = Request::parse(data) {
        assert_eq!(Request::parse(&req.emit(seq)), Ok((seq, req)));
    }
    if let Ok((seq, rep)) = Reply::parse(data) {
        assert_eq!(Reply::parse(&rep.emit(seq)), Ok((seq, rep)));
    }
});
