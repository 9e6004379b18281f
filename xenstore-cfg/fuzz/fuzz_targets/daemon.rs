//! Arbitrary byte streams from four clients into the xenstored engine.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    xenstore_cfg::daemon::exercise(data);
});
