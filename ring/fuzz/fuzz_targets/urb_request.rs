//! `UrbRequest::parse` on arbitrary 148-byte requests and limits: never panics, and what it
//! accepts round-trips through `emit`. (Also covered by `tests/wire_props.rs`.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use pvusb_ring::wire::{Limits, RawUrbRequest, UrbRequest};
use zerocopy::FromBytes;

fuzz_target!(|data: &[u8]| {
    let Some((lim, req)) = data.split_first_chunk::<3>() else {
        return;
    };
    let Ok((raw, _)) = RawUrbRequest::read_from_prefix(req) else {
        return;
    };
    let limits = Limits {
        num_ports: lim[0],
        ext_flags: u16::from_le_bytes([lim[1], lim[2]]),
    };
    if let Ok(parsed) = UrbRequest::parse(&raw, &limits) {
        assert_eq!(UrbRequest::parse(&parsed.to_raw(), &limits), Ok(parsed));
    }
});
