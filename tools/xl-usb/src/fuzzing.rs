//! One entry point that runs every text parser of the crate on arbitrary bytes, for the
//! cargo-fuzz target in `fuzz/` and the proptest twin below.

use std::path::Path;

/// Feeds `data` to the rules, usb.ids, key=value and device-spec parsers. Panics only if
/// a parser breaks its contract (a rule error must name a line of the input).
pub fn exercise(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match crate::rules::parse(Path::new("fuzz.toml"), &text) {
        Err(crate::rules::RulesError::Invalid { line, .. }) => {
            assert!(
                line >= 1 && line <= text.lines().count() + 1,
                "line {line} outside the input"
            );
        }
        Err(crate::rules::RulesError::Io { .. }) => unreachable!("parse does no I/O"),
        Ok(_) => {}
    }
    let _ = crate::usbids::UsbIds::parse(&text, &[0x1209, 0x46f4]);
    for word in text.split_whitespace().take(16) {
        let _ = crate::kv::parse_c_number(word);
        let _ = crate::sim::plug::parse_size(word);
    }
    let mut words = text.split_whitespace().map(str::to_owned);
    if let Some(model) = words.next() {
        let opts: Vec<String> = words.take(8).collect();
        let _ = crate::sim::plug::parse_spec(&model, &opts);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::test_cases(256)))]
        #[test]
        fn exercise_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            super::exercise(&data);
        }

        #[test]
        fn exercise_never_panics_on_likely_text(text in "(\\[\\[rule\\]\\]|device = \"[0-9a-f:]{0,9}\"|busid = \"[0-9.-]{0,5}\"|domain = [0-9]{0,3}|storage:[0-9]{0,3}[KMG]?|fail_nth=[0-9:x]{0,6}|\t[0-9a-f]{4}  x|[0-9a-f]{4}  v|C 00|[ -~]{0,6}|\n){0,24}") {
            super::exercise(text.as_bytes());
        }
    }
}
