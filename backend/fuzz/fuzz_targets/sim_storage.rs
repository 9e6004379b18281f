//! A guest's arbitrary URB stream against the simulated mass-storage device.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    pvusb_backend::sim::fuzzing::drive_storage(data);
});
