//! What `plug` is asked for: the device model, its parameters, and fault injection (TOML).

use serde::{Deserialize, Serialize};

use crate::host::HostSpeed;

/// A simulated device to plug: `sim-spec.toml` in its sysfs directory.
///
/// ```toml
/// speed = "high"            # optional; the model's natural speed otherwise
/// serial = "DISK1"          # optional; names the persistent state too
/// no_stop_on_short = true   # optional; an xHCI-like bus (no BULK_CONTINUATION)
/// [model]
/// kind = "storage"          # storage | keyboard | loopback | iso-source | iso-loopback
/// size_bytes = 67108864
/// [faults]                  # optional; see `Faults`
/// latency_us = 200
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSpec {
    pub model: ModelSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed: Option<HostSpeed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Requested bus id ("1-3"); otherwise the first free port of the first bus with a free
    /// device number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busid: Option<String>,
    #[serde(default)]
    pub faults: Faults,
    /// Append one line per URB the device executes to `<state dir>/urb-trace` (the device
    /// side of the end-to-end tests' URB ledger; see [`super::core::TRACE_FILE`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub trace: bool,
    /// The device sits on a host controller that does not stop an endpoint's queue at a
    /// short packet (xHCI; the kernel's `usb_bus::no_stop_on_short`): usbfs then withholds
    /// BULK_CONTINUATION, and a URB queued behind a short SHORT_NOT_OK read runs before it
    /// is cancelled.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_stop_on_short: bool,
}

impl DeviceSpec {
    /// A spec for `model` with defaults for everything else.
    pub fn new(model: ModelSpec) -> Self {
        DeviceSpec {
            model,
            speed: None,
            serial: None,
            busid: None,
            faults: Faults::default(),
            trace: false,
            no_stop_on_short: false,
        }
    }

    /// Parses `sim-spec.toml` text.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Renders `sim-spec.toml` text.
    pub fn to_toml(&self) -> String {
        // Serialising plain data with string keys cannot fail.
        toml::to_string(self).unwrap_or_default()
    }
}

fn default_disk_size() -> u64 {
    64 << 20
}

fn default_text() -> String {
    "pvusb\n".to_string()
}

fn default_loop_capacity() -> usize {
    1 << 20
}

fn default_iso_packet() -> u16 {
    192
}

/// The device model and its parameters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ModelSpec {
    /// USB mass storage, Bulk-Only Transport + SCSI, over a disk image kept in a file.
    Storage {
        #[serde(default = "default_disk_size")]
        size_bytes: u64,
    },
    /// HID boot keyboard that types `text` (once, after the host starts polling).
    Keyboard {
        #[serde(default = "default_text")]
        text: String,
    },
    /// Bulk echo: data written to EP 1 OUT is read back from EP 1 IN, in order.
    Loopback {
        /// Bytes buffered before OUT URBs wait (NAK) for IN URBs to drain them.
        #[serde(default = "default_loop_capacity")]
        capacity: usize,
    },
    /// Isochronous IN source on EP 1 (interface 0 alt 1): one packet per 1 ms frame whose
    /// bytes are a counter: byte i of frame f is `(f * 7 + i) as u8`.
    IsoSource {
        #[serde(default = "default_iso_packet")]
        packet_size: u16,
    },
    /// Isochronous loopback (interface 0 alt 1): packets sent on EP 0x01 OUT come back, one
    /// per IN packet, on EP 0x82 IN; both endpoints' wMaxPacketSize is `packet_size`.
    IsoLoopback {
        #[serde(default = "default_iso_packet")]
        packet_size: u16,
    },
}

/// Fault injection, set at plug time (`DeviceSpec::faults`) or at run time
/// ([`super::set_faults`]). Counters restart whenever new faults are applied.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Endpoints (addresses, 0x80 = IN) to halt when these faults are applied: URBs on them
    /// fail with -EPIPE until CLEAR_HALT.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stall: Vec<u8>,
    /// Fail the `n`th URB (1-based, counted over the whole device, or over `endpoint` only)
    /// with status `-errno`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_nth: Option<FailNth>,
    /// Truncate IN transfers to at most `max_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub short_read: Option<ShortRead>,
    /// Unplug the device after this many URBs have been processed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unplug_after: Option<u64>,
    /// Added latency per URB, in microseconds.
    #[serde(default)]
    pub latency_us: u64,
}

/// See [`Faults::fail_nth`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailNth {
    pub n: u64,
    /// Positive errno; the URB completes with `-errno` (e.g. 71 = EPROTO).
    pub errno: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<u8>,
}

/// See [`Faults::short_read`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShortRead {
    pub max_bytes: u32,
    /// Only this endpoint (address); every IN endpoint but ep 0 otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<u8>,
    /// Only the next `count` IN URBs; all of them otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_round_trips_through_toml() {
        let mut spec = DeviceSpec::new(ModelSpec::Storage {
            size_bytes: 1 << 20,
        });
        spec.speed = Some(HostSpeed::Super);
        spec.faults.fail_nth = Some(FailNth {
            n: 3,
            errno: 71,
            endpoint: Some(0x81),
        });
        spec.faults.stall = vec![0x02];
        spec.no_stop_on_short = true;
        let text = spec.to_toml();
        assert!(text.contains("no_stop_on_short = true"), "{text}");
        assert_eq!(DeviceSpec::from_toml(&text).unwrap(), spec);
    }

    #[test]
    fn defaults_fill_in() {
        let spec = DeviceSpec::from_toml("[model]\nkind = \"keyboard\"\n").unwrap();
        assert_eq!(
            spec.model,
            ModelSpec::Keyboard {
                text: "pvusb\n".into()
            }
        );
        assert_eq!(spec.faults, Faults::default());
        assert!(!spec.no_stop_on_short);
        assert!(!DeviceSpec::new(spec.model.clone())
            .to_toml()
            .contains("no_stop_on_short"));
        assert_eq!(
            DeviceSpec::from_toml("[model]\nkind = \"iso-loopback\"\npacket_size = 1023\n")
                .unwrap()
                .model,
            ModelSpec::IsoLoopback { packet_size: 1023 }
        );
        assert_eq!(
            DeviceSpec::from_toml("[model]\nkind = \"iso-loopback\"\n")
                .unwrap()
                .model,
            ModelSpec::IsoLoopback { packet_size: 192 }
        );
        assert!(DeviceSpec::from_toml("[model]\nkind = \"toaster\"\n").is_err());
        assert!(DeviceSpec::from_toml("bogus = 1\n[model]\nkind = \"loopback\"\n").is_err());
    }
}
