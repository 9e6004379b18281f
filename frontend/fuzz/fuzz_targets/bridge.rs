//! The per-port bridge: enumeration answers and client commands from arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| pvusb_frontend::bridge::fuzzing::exercise(data));
