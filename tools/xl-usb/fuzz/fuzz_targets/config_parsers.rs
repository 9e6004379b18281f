//! Every text parser of xl-usb on arbitrary input: the rules file, usb.ids, xl-style
//! key=value numbers and simulated-device specs. None may panic; rule errors name a line
//! inside the input. Proptest twin: `xl_usb::fuzzing::tests::exercise_never_panics`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    xl_usb::fuzzing::exercise(data);
});
