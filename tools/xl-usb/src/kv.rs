//! xl-style `key=value` arguments and C `strtoul(s, NULL, 0)` numbers (0x hex, 0 octal).

/// A bad command-line argument.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ArgError {
    /// Not of the form key=value.
    #[error("expected key=value, got {0:?}")]
    NotKeyValue(String),
    /// A key the command does not know.
    #[error("unknown key {key:?} (valid: {valid})")]
    UnknownKey {
        /// The key given.
        key: String,
        /// Keys the command accepts.
        valid: &'static str,
    },
    /// The same key twice.
    #[error("{0}= given twice")]
    Duplicate(String),
    /// A value that is not a number in range.
    #[error("{key}={value:?}: {why}")]
    BadValue {
        /// The key.
        key: String,
        /// The value given.
        value: String,
        /// What is wrong with it.
        why: String,
    },
    /// A required key is missing.
    #[error("missing {0}=")]
    Missing(&'static str),
}

/// Parses an unsigned number like `strtoul(s, NULL, 0)`: `0x`/`0X` hex, a leading `0`
/// octal, decimal otherwise. Unlike strtoul, trailing garbage and empty input are errors.
pub fn parse_c_number(s: &str) -> Option<u64> {
    let s = s.trim();
    let (digits, radix) = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        (h, 16)
    } else if let Some(o) = s.strip_prefix('0').filter(|o| !o.is_empty()) {
        (o, 8)
    } else {
        (s, 10)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// Parsed `key=value` pairs, in order; every key checked against `valid`.
#[derive(Debug, Default)]
pub struct KeyValues {
    pairs: Vec<(String, String)>,
}

impl KeyValues {
    /// Splits each argument at its first '='; refuses unknown and repeated keys.
    /// `valid` is a comma-separated list of accepted keys.
    pub fn parse(args: &[String], valid: &'static str) -> Result<Self, ArgError> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for a in args {
            let (k, v) = a
                .split_once('=')
                .ok_or_else(|| ArgError::NotKeyValue(a.clone()))?;
            if !valid.split(',').any(|x| x.trim() == k) {
                return Err(ArgError::UnknownKey {
                    key: k.to_owned(),
                    valid,
                });
            }
            if pairs.iter().any(|(pk, _)| pk == k) {
                return Err(ArgError::Duplicate(k.to_owned()));
            }
            pairs.push((k.to_owned(), v.to_owned()));
        }
        Ok(KeyValues { pairs })
    }

    /// The raw value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `key` as a number (strtoul base 0) within `min..=max`, if given.
    pub fn number(&self, key: &str, min: u64, max: u64) -> Result<Option<u64>, ArgError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        match parse_c_number(v) {
            Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
            Some(_) => Err(ArgError::BadValue {
                key: key.to_owned(),
                value: v.to_owned(),
                why: format!("must be between {min} and {max}"),
            }),
            None => Err(ArgError::BadValue {
                key: key.to_owned(),
                value: v.to_owned(),
                why: "not a number".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn numbers_like_strtoul_base_0() {
        assert_eq!(parse_c_number("12"), Some(12));
        assert_eq!(parse_c_number("0x1f"), Some(31));
        assert_eq!(parse_c_number("0X1F"), Some(31));
        assert_eq!(parse_c_number("010"), Some(8));
        assert_eq!(parse_c_number("0"), Some(0));
        assert_eq!(parse_c_number("08"), None);
        assert_eq!(parse_c_number("0x"), None);
        assert_eq!(parse_c_number(""), None);
        assert_eq!(parse_c_number("1a"), None);
        assert_eq!(parse_c_number("-1"), None);
    }

    #[test]
    fn key_values_are_checked() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let kv =
            KeyValues::parse(&args(&["hostbus=0x3", "hostaddr=07"]), "hostbus,hostaddr").unwrap();
        assert_eq!(kv.number("hostbus", 1, 255).unwrap(), Some(3));
        assert_eq!(kv.number("hostaddr", 1, 127).unwrap(), Some(7));
        assert_eq!(kv.number("port", 1, 31).unwrap(), None);
        assert!(matches!(
            KeyValues::parse(&args(&["bogus=1"]), "a,b"),
            Err(ArgError::UnknownKey { .. })
        ));
        assert!(matches!(
            KeyValues::parse(&args(&["a"]), "a"),
            Err(ArgError::NotKeyValue(_))
        ));
        assert!(matches!(
            KeyValues::parse(&args(&["a=1", "a=2"]), "a"),
            Err(ArgError::Duplicate(_))
        ));
        let kv = KeyValues::parse(&args(&["a=40"]), "a").unwrap();
        assert!(kv.number("a", 1, 31).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::test_cases(256)))]
        #[test]
        fn c_numbers_round_trip(n in any::<u32>()) {
            let n = u64::from(n);
            prop_assert_eq!(parse_c_number(&n.to_string()), Some(n));
            prop_assert_eq!(parse_c_number(&format!("{n:#x}")), Some(n));
            prop_assert_eq!(parse_c_number(&format!("0{n:o}")), Some(n));
        }

        #[test]
        fn c_number_parse_is_total(s in ".{0,24}") {
            let _ = parse_c_number(&s);
        }
    }
}
