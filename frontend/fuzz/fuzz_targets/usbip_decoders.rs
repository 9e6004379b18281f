//! The streaming decoders (both directions) and the OP_* decoders on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| pvusb_frontend::usbip::fuzzing::decoders(data));
