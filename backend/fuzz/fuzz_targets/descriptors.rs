//! sysfs `descriptors` parsing: total, and re-emits exactly what it parsed.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(d) = pvusb_backend::host::Descriptors::parse(data) {
        assert_eq!(d.to_bytes(), data);
    }
});
