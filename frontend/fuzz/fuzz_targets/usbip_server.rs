//! A whole USB/IP server connection (handshake, URB session, engine answers steered by
//! the input) must never panic and must answer every URB exactly once.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| pvusb_frontend::usbip::fuzzing::drive(data));
