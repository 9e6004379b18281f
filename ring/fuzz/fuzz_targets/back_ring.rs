//! A hostile frontend's URB ring page: back-ring overflow checks, copy-out and parse of
//! every request it reaches. (Also covered by `tests/wire_props.rs`.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use pvusb_ring::test_utils::fuzz_back_ring;
use pvusb_ring::wire::Limits;

fuzz_target!(|data: &[u8]| {
    let Some((start, page)) = data.split_first_chunk::<4>() else {
        return;
    };
    fuzz_back_ring(page, u32::from_le_bytes(*start), &Limits::stock(8));
});
