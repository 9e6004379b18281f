//! `sim plug <model>[:<size>] [fault=value...]` → a simulated device spec, and `sim unplug`.

use pvusb_backend::host::HostSpeed;
use pvusb_backend::sim::{DeviceSpec, FailNth, ModelSpec, ShortRead};

use crate::kv::{parse_c_number, ArgError, KeyValues};

/// Why a plug request is malformed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Unknown model name.
    #[error("unknown device model {0:?} (storage[:SIZE], hid, loopback, iso, iso-loopback)")]
    Model(String),
    /// Bad size.
    #[error("bad size {0:?} (e.g. 64M, 1G, 512K, or bytes)")]
    Size(String),
    /// A bad option.
    #[error(transparent)]
    Arg(#[from] ArgError),
}

/// Parses "64M", "1G", "512K", "4096".
pub fn parse_size(s: &str) -> Option<u64> {
    let (num, mult) = match s.chars().last()? {
        'K' | 'k' => (&s[..s.len() - 1], 1u64 << 10),
        'M' | 'm' => (&s[..s.len() - 1], 1 << 20),
        'G' | 'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    parse_c_number(num)?.checked_mul(mult).filter(|&n| n > 0)
}

fn bad(key: &str, value: &str, why: &str) -> ArgError {
    ArgError::BadValue {
        key: key.into(),
        value: value.into(),
        why: why.into(),
    }
}

/// Keys accepted after the model.
pub const FAULT_KEYS: &str = "serial,busid,speed,latency_us,fail_nth,stall,short_read,unplug_after";

/// Builds a spec from `storage:64M` / `hid` / `loopback` / `iso` / `iso-loopback` and options:
/// `serial=S busid=1-3 speed=full|high|super latency_us=N fail_nth=N:ERRNO[:EP]
/// stall=EP[,EP] short_read=BYTES[:EP] unplug_after=N`.
pub fn parse_spec(model: &str, opts: &[String]) -> Result<DeviceSpec, SpecError> {
    let (kind, size) = match model.split_once(':') {
        Some((k, s)) => (k, Some(s)),
        None => (model, None),
    };
    let model = match (kind, size) {
        ("storage" | "disk" | "stick", s) => ModelSpec::Storage {
            size_bytes: match s {
                Some(s) => parse_size(s).ok_or_else(|| SpecError::Size(s.into()))?,
                None => 64 << 20,
            },
        },
        ("hid" | "keyboard", None) => ModelSpec::Keyboard {
            text: "pvusb\n".into(),
        },
        ("loopback", None) => ModelSpec::Loopback { capacity: 1 << 20 },
        ("iso", None) => ModelSpec::IsoSource { packet_size: 192 },
        ("iso-loopback", None) => ModelSpec::IsoLoopback { packet_size: 192 },
        _ => return Err(SpecError::Model(model.into())),
    };
    let mut spec = DeviceSpec::new(model);
    let kv = KeyValues::parse(opts, FAULT_KEYS)?;
    spec.serial = kv.get("serial").map(str::to_owned);
    spec.busid = kv.get("busid").map(str::to_owned);
    if let Some(s) = kv.get("speed") {
        spec.speed = Some(match s {
            "low" => HostSpeed::Low,
            "full" => HostSpeed::Full,
            "high" => HostSpeed::High,
            "super" => HostSpeed::Super,
            _ => return Err(bad("speed", s, "low, full, high or super").into()),
        });
    }
    if let Some(n) = kv.number("latency_us", 0, 10_000_000)? {
        spec.faults.latency_us = n;
    }
    if let Some(n) = kv.number("unplug_after", 1, u64::MAX)? {
        spec.faults.unplug_after = Some(n);
    }
    if let Some(v) = kv.get("fail_nth") {
        let parts: Vec<Option<u64>> = v.split(':').map(parse_c_number).collect();
        let why = "N:ERRNO[:EP], e.g. 3:71 or 3:71:0x81";
        spec.faults.fail_nth = Some(match parts.as_slice() {
            [Some(n), Some(e)] | [Some(n), Some(e), _] if *n > 0 && *e > 0 && *e < 4096 => {
                FailNth {
                    n: *n,
                    errno: i32::try_from(*e).map_err(|_| bad("fail_nth", v, why))?,
                    endpoint: match parts.get(2) {
                        Some(Some(ep)) => {
                            Some(u8::try_from(*ep).map_err(|_| bad("fail_nth", v, why))?)
                        }
                        Some(None) => return Err(bad("fail_nth", v, why).into()),
                        None => None,
                    },
                }
            }
            _ => return Err(bad("fail_nth", v, why).into()),
        });
    }
    if let Some(v) = kv.get("stall") {
        spec.faults.stall = v
            .split(',')
            .map(|e| parse_c_number(e).and_then(|n| u8::try_from(n).ok()))
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(|| bad("stall", v, "endpoint addresses, e.g. 0x81,0x02"))?;
    }
    if let Some(v) = kv.get("short_read") {
        let why = "BYTES[:EP], e.g. 512 or 512:0x81";
        let (b, ep) = match v.split_once(':') {
            Some((b, e)) => (b, Some(e)),
            None => (v, None),
        };
        spec.faults.short_read = Some(ShortRead {
            max_bytes: parse_c_number(b)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| bad("short_read", v, why))?,
            endpoint: match ep {
                Some(e) => Some(
                    parse_c_number(e)
                        .and_then(|n| u8::try_from(n).ok())
                        .ok_or_else(|| bad("short_read", v, why))?,
                ),
                None => None,
            },
            count: None,
        });
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn models_and_faults() {
        let s = parse_spec("storage:64M", &[]).unwrap();
        assert_eq!(
            s.model,
            ModelSpec::Storage {
                size_bytes: 64 << 20
            }
        );
        let s = parse_spec(
            "storage:1G",
            &args(&[
                "serial=D1",
                "latency_us=200",
                "fail_nth=3:71:0x81",
                "stall=0x81,2",
                "short_read=512",
            ]),
        )
        .unwrap();
        assert_eq!(s.serial.as_deref(), Some("D1"));
        assert_eq!(s.faults.latency_us, 200);
        assert_eq!(
            s.faults.fail_nth,
            Some(FailNth {
                n: 3,
                errno: 71,
                endpoint: Some(0x81)
            })
        );
        assert_eq!(s.faults.stall, vec![0x81, 2]);
        assert_eq!(s.faults.short_read.map(|r| r.max_bytes), Some(512));
        assert!(matches!(
            parse_spec("hid", &[]).unwrap().model,
            ModelSpec::Keyboard { .. }
        ));
        assert!(matches!(
            parse_spec("iso", &[]).unwrap().model,
            ModelSpec::IsoSource { .. }
        ));
        assert!(matches!(
            parse_spec("iso-loopback", &[]).unwrap().model,
            ModelSpec::IsoLoopback { packet_size: 192 }
        ));
        assert!(matches!(
            parse_spec("loopback", &[]).unwrap().model,
            ModelSpec::Loopback { .. }
        ));
        assert_eq!(
            parse_spec("toaster", &[]),
            Err(SpecError::Model("toaster".into()))
        );
        assert_eq!(
            parse_spec("storage:12Q", &[]),
            Err(SpecError::Size("12Q".into()))
        );
        assert!(parse_spec("hid", &args(&["fail_nth=x"])).is_err());
        assert!(parse_spec("hid", &args(&["speed=warp"])).is_err());
        assert!(parse_spec("hid", &args(&["bogus=1"])).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64M"), Some(64 << 20));
        assert_eq!(parse_size("512k"), Some(512 << 10));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("0"), None);
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("M"), None);
    }
}
