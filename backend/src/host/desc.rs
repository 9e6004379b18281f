//! USB descriptors: parsing sysfs's `descriptors` blob, and the SuperSpeed-as-high fix-up.

/// Descriptor type codes (USB 2.0 table 9-5).
pub mod dt {
    pub const DEVICE: u8 = 1;
    pub const CONFIG: u8 = 2;
    pub const STRING: u8 = 3;
    pub const INTERFACE: u8 = 4;
    pub const ENDPOINT: u8 = 5;
    pub const HID: u8 = 0x21;
    pub const HID_REPORT: u8 = 0x22;
}

/// Length of a device descriptor.
pub const DEVICE_DESC_LEN: usize = 18;

/// Why a descriptor blob did not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DescError {
    #[error("device descriptor is {0} bytes, need 18")]
    ShortDevice(usize),
    #[error("descriptor at byte {0} is not a device descriptor")]
    NotDevice(usize),
    #[error("configuration descriptor at byte {0} is malformed")]
    BadConfig(usize),
    #[error("descriptor at byte {0} has length {1}")]
    BadLength(usize, u8),
}

/// The fields of a device descriptor the backend uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceDescriptor {
    pub bcd_usb: u16,
    pub class: u8,
    pub subclass: u8,
    pub protocol: u8,
    pub max_packet_size0: u8,
    pub id_vendor: u16,
    pub id_product: u16,
    pub bcd_device: u16,
    pub i_manufacturer: u8,
    pub i_product: u8,
    pub i_serial: u8,
    pub num_configurations: u8,
}

/// An endpoint descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointDescriptor {
    /// `bEndpointAddress`: number | 0x80 for IN.
    pub address: u8,
    pub attributes: u8,
    pub max_packet_size: u16,
    pub interval: u8,
}

impl EndpointDescriptor {
    /// Transfer type of the endpoint.
    pub fn kind(&self) -> crate::host::XferKind {
        crate::host::XferKind::from_attributes(self.attributes)
    }

    /// Packet size in bytes (bits 0-10 of wMaxPacketSize).
    pub fn max_packet(&self) -> u16 {
        self.max_packet_size & 0x7ff
    }
}

/// One alternate setting of one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceAlt {
    pub number: u8,
    pub alt: u8,
    pub class: u8,
    pub subclass: u8,
    pub protocol: u8,
    pub endpoints: Vec<EndpointDescriptor>,
}

/// A configuration with its interfaces, plus the raw bytes (what GET_DESCRIPTOR returns).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigDescriptor {
    pub value: u8,
    pub attributes: u8,
    pub max_power: u8,
    pub num_interfaces: u8,
    pub alts: Vec<InterfaceAlt>,
    pub raw: Vec<u8>,
}

impl ConfigDescriptor {
    /// Distinct interface numbers, ascending.
    pub fn interface_numbers(&self) -> Vec<u8> {
        let mut v: Vec<u8> = self.alts.iter().map(|a| a.number).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The alt setting `alt` of interface `number`.
    pub fn alt(&self, number: u8, alt: u8) -> Option<&InterfaceAlt> {
        self.alts
            .iter()
            .find(|a| a.number == number && a.alt == alt)
    }

    /// Endpoint `address` among the active alt settings (`active(n)` = alt of interface n),
    /// with the interface it belongs to.
    pub fn find_endpoint(
        &self,
        active: impl Fn(u8) -> u8,
        address: u8,
    ) -> Option<(u8, &EndpointDescriptor)> {
        self.alts
            .iter()
            .filter(|a| active(a.number) == a.alt)
            .find_map(|a| {
                a.endpoints
                    .iter()
                    .find(|e| e.address == address)
                    .map(|e| (a.number, e))
            })
    }
}

/// sysfs `descriptors`: the device descriptor followed by every configuration descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptors {
    pub device: DeviceDescriptor,
    pub device_raw: [u8; DEVICE_DESC_LEN],
    pub configs: Vec<ConfigDescriptor>,
}

fn le16(b: &[u8], off: usize) -> u16 {
    match b.get(off..off + 2) {
        Some(&[lo, hi]) => u16::from_le_bytes([lo, hi]),
        _ => 0,
    }
}

impl DeviceDescriptor {
    /// Parses the first 18 bytes of `raw`.
    pub fn parse(raw: &[u8]) -> Result<Self, DescError> {
        let b = raw
            .get(..DEVICE_DESC_LEN)
            .ok_or(DescError::ShortDevice(raw.len()))?;
        if b[0] as usize != DEVICE_DESC_LEN || b[1] != dt::DEVICE {
            return Err(DescError::NotDevice(0));
        }
        Ok(DeviceDescriptor {
            bcd_usb: le16(b, 2),
            class: b[4],
            subclass: b[5],
            protocol: b[6],
            max_packet_size0: b[7],
            id_vendor: le16(b, 8),
            id_product: le16(b, 10),
            bcd_device: le16(b, 12),
            i_manufacturer: b[14],
            i_product: b[15],
            i_serial: b[16],
            num_configurations: b[17],
        })
    }
}

impl ConfigDescriptor {
    /// Parses one configuration descriptor with everything wTotalLength covers; `at` is the
    /// offset in the enclosing blob, for error messages.
    pub fn parse(raw: &[u8], at: usize) -> Result<Self, DescError> {
        if raw.len() < 9 || raw[0] < 9 || raw[1] != dt::CONFIG {
            return Err(DescError::BadConfig(at));
        }
        let total = usize::from(le16(raw, 2)).clamp(9, raw.len());
        let raw = &raw[..total];
        let mut cfg = ConfigDescriptor {
            value: raw[5],
            attributes: raw[7],
            max_power: raw[8],
            num_interfaces: raw[4],
            alts: Vec::new(),
            raw: raw.to_vec(),
        };
        let mut off = usize::from(raw[0]);
        while off + 2 <= raw.len() {
            let len = raw[off];
            if len < 2 {
                return Err(DescError::BadLength(at + off, len));
            }
            let end = (off + usize::from(len)).min(raw.len());
            let d = &raw[off..end];
            match d[1] {
                dt::INTERFACE if d.len() >= 9 => cfg.alts.push(InterfaceAlt {
                    number: d[2],
                    alt: d[3],
                    class: d[5],
                    subclass: d[6],
                    protocol: d[7],
                    endpoints: Vec::new(),
                }),
                dt::ENDPOINT if d.len() >= 7 => {
                    if let Some(alt) = cfg.alts.last_mut() {
                        alt.endpoints.push(EndpointDescriptor {
                            address: d[2],
                            attributes: d[3],
                            max_packet_size: le16(d, 4),
                            interval: d[6],
                        });
                    }
                }
                _ => {}
            }
            off = end;
        }
        Ok(cfg)
    }
}

impl Descriptors {
    /// Parses the sysfs `descriptors` blob. Total: any input gives `Ok` or a `DescError`.
    pub fn parse(raw: &[u8]) -> Result<Self, DescError> {
        let device = DeviceDescriptor::parse(raw)?;
        let mut device_raw = [0u8; DEVICE_DESC_LEN];
        device_raw.copy_from_slice(&raw[..DEVICE_DESC_LEN]);
        let mut configs = Vec::new();
        let mut off = DEVICE_DESC_LEN;
        while off < raw.len() {
            let cfg = ConfigDescriptor::parse(&raw[off..], off)?;
            off += cfg.raw.len();
            configs.push(cfg);
        }
        Ok(Descriptors {
            device,
            device_raw,
            configs,
        })
    }

    /// The configuration with `bConfigurationValue == value`.
    pub fn config(&self, value: u8) -> Option<&ConfigDescriptor> {
        self.configs.iter().find(|c| c.value == value)
    }

    /// The blob again (device descriptor + configs), as sysfs has it.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = self.device_raw.to_vec();
        for c in &self.configs {
            v.extend_from_slice(&c.raw);
        }
        v
    }
}

/// QEMU's `usb3ep0quirk`: a SuperSpeed device presented on a high-speed port must not report
/// bMaxPacketSize0 = 9 (an exponent: 2^9 = 512 bytes, SuperSpeed only); a USB 2.0 host reads
/// it as 9 bytes, an invalid size. Patch it to 64 in a (possibly partial, ≥ 8 byte) device
/// descriptor returned by GET_DESCRIPTOR(DEVICE). Returns true if something changed.
pub fn fixup_superspeed_as_high(desc: &mut [u8]) -> bool {
    match desc {
        [len, ty, _, _, _, _, _, mps0, ..]
            if usize::from(*len) == DEVICE_DESC_LEN && *ty == dt::DEVICE && *mps0 == 9 =>
        {
            *mps0 = 64;
            true
        }
        _ => false,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A QEMU USB stick's descriptors: device + one config (1 interface, bulk in/out).
    pub(crate) const STICK: &[u8] = &[
        18, 1, 0x00, 0x02, 0, 0, 0, 64, 0x27, 0x06, 0x01, 0x00, 0, 0, 1, 2, 3, 1, // device
        9, 2, 32, 0, 1, 1, 0, 0xc0, 50, // config
        9, 4, 0, 0, 2, 8, 6, 80, 0, // interface
        7, 5, 0x81, 2, 0x00, 0x02, 0, // ep 1 IN bulk 512
        7, 5, 0x02, 2, 0x00, 0x02, 0, // ep 2 OUT bulk 512
    ];

    #[test]
    fn parses_stick() {
        let d = Descriptors::parse(STICK).unwrap();
        assert_eq!(d.device.id_vendor, 0x0627);
        assert_eq!(d.device.max_packet_size0, 64);
        let c = d.config(1).unwrap();
        assert_eq!(c.interface_numbers(), vec![0]);
        let (iface, ep) = c.find_endpoint(|_| 0, 0x81).unwrap();
        assert_eq!(iface, 0);
        assert_eq!(ep.max_packet(), 512);
        assert_eq!(ep.kind(), crate::host::XferKind::Bulk);
        assert!(c.find_endpoint(|_| 1, 0x81).is_none());
        assert_eq!(d.to_bytes(), STICK);
    }

    #[test]
    fn rejects_short_and_wrong_type() {
        assert_eq!(
            Descriptors::parse(&STICK[..10]),
            Err(DescError::ShortDevice(10))
        );
        let mut bad = STICK.to_vec();
        bad[1] = 2;
        assert_eq!(Descriptors::parse(&bad), Err(DescError::NotDevice(0)));
        let mut bad = STICK.to_vec();
        bad[19] = 4;
        assert_eq!(Descriptors::parse(&bad), Err(DescError::BadConfig(18)));
        let mut bad = STICK.to_vec();
        bad[27] = 0;
        assert_eq!(Descriptors::parse(&bad), Err(DescError::BadLength(27, 0)));
    }

    #[test]
    fn superspeed_fixup_patches_only_mps_9() {
        let mut d = STICK[..18].to_vec();
        d[7] = 9;
        d[3] = 3;
        assert!(fixup_superspeed_as_high(&mut d[..8]));
        assert_eq!(d[7], 64);
        assert!(!fixup_superspeed_as_high(&mut d));
        let mut short = [18u8, 1, 0, 3, 0, 0, 0];
        assert!(!fixup_superspeed_as_high(&mut short));
        let mut cfg = STICK[18..].to_vec();
        cfg[7] = 9;
        assert!(!fixup_superspeed_as_high(&mut cfg));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::test_cases(256)))]
        #[test]
        fn parse_is_total(tail in proptest::collection::vec(any::<u8>(), 0..200), cut in 0usize..60) {
            let mut raw = STICK[..cut.min(STICK.len())].to_vec();
            raw.extend_from_slice(&tail);
            if let Ok(d) = Descriptors::parse(&raw) {
                prop_assert_eq!(d.to_bytes(), raw);
            }
        }
    }
}
