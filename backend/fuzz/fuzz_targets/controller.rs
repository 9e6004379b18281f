//! A whole vusb controller against a hostile guest: arbitrary ring page contents, requests,
//! unlinks, device completions, unplugs and reconnects (see `engine::testing`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    pvusb_backend::engine::testing::fuzz_controller(data);
});
