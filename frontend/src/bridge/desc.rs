//! USB descriptors as the bridge needs them: the device descriptor, and which endpoints
//! (type, wMaxPacketSize) a configuration with given alternate settings exposes.

use pvusb_ring::wire::XferType;

use crate::usbip::InterfaceClass;

/// `bDescriptorType` values (USB 2.0 table 9-5).
pub const DT_DEVICE: u8 = 1;
/// Configuration descriptor.
pub const DT_CONFIG: u8 = 2;
/// Interface descriptor.
pub const DT_INTERFACE: u8 = 4;
/// Endpoint descriptor.
pub const DT_ENDPOINT: u8 = 5;

/// A descriptor the device returned that cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DescError {
    /// Shorter than its fixed part, or of another type.
    #[error("descriptor of type {expected} too short or of the wrong type")]
    Malformed {
        /// The descriptor type that was asked for.
        expected: u8,
    },
    /// bMaxPacketSize0 is not one of 8, 16, 32, 64 (or 9 for SuperSpeed shown as high).
    #[error("bMaxPacketSize0 {0} is invalid")]
    BadMaxPacket0(u8),
}

/// The fields of the 18-byte device descriptor the bridge uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceDesc {
    /// `bcdUSB`.
    pub bcd_usb: u16,
    /// `bDeviceClass`, `bDeviceSubClass`, `bDeviceProtocol`.
    pub class: (u8, u8, u8),
    /// `bMaxPacketSize0`.
    pub max_packet0: u8,
    /// `idVendor`.
    pub id_vendor: u16,
    /// `idProduct`.
    pub id_product: u16,
    /// `bcdDevice`.
    pub bcd_device: u16,
    /// `bNumConfigurations`.
    pub num_configurations: u8,
}

fn le16(b: &[u8], at: usize) -> u16 {
    match (b.get(at), b.get(at + 1)) {
        (Some(&lo), Some(&hi)) => u16::from_le_bytes([lo, hi]),
        _ => 0,
    }
}

impl DeviceDesc {
    /// Parses a device descriptor (at least 18 bytes of type 1).
    pub fn parse(b: &[u8]) -> Result<Self, DescError> {
        let malformed = DescError::Malformed {
            expected: DT_DEVICE,
        };
        if b.len() < 18 || b.get(1) != Some(&DT_DEVICE) {
            return Err(malformed);
        }
        let byte = |i: usize| b.get(i).copied().unwrap_or(0);
        let max_packet0 = byte(7);
        if !matches!(max_packet0, 8 | 9 | 16 | 32 | 64) {
            return Err(DescError::BadMaxPacket0(max_packet0));
        }
        Ok(DeviceDesc {
            bcd_usb: le16(b, 2),
            class: (byte(4), byte(5), byte(6)),
            max_packet0,
            id_vendor: le16(b, 8),
            id_product: le16(b, 10),
            bcd_device: le16(b, 12),
            num_configurations: byte(17),
        })
    }
}

/// `wTotalLength` and `bConfigurationValue` of a configuration descriptor's first 9 bytes.
pub fn config_header(b: &[u8]) -> Result<(u16, u8), DescError> {
    if b.len() < 9 || b.get(1) != Some(&DT_CONFIG) {
        return Err(DescError::Malformed {
            expected: DT_CONFIG,
        });
    }
    Ok((le16(b, 2), b.get(5).copied().unwrap_or(0)))
}

/// One endpoint as the bridge needs it to build pipes and split transfers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpInfo {
    /// Transfer type from `bmAttributes`.
    pub xfer: XferType,
    /// Packet size (bits 0..10 of `wMaxPacketSize`).
    pub max_packet: u16,
}

/// The non-zero endpoints by address: index `num + 16 * is_in`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EpTable([Option<EpInfo>; 32]);

impl EpTable {
    /// The endpoint `num` in direction `is_in`.
    pub fn get(&self, num: u8, is_in: bool) -> Option<EpInfo> {
        let i = usize::from(num & 0x0f) + if is_in { 16 } else { 0 };
        self.0.get(i).copied().flatten()
    }

    fn set(&mut self, addr: u8, ep: EpInfo) {
        let i = usize::from(addr & 0x0f) + if addr & 0x80 != 0 { 16 } else { 0 };
        if let Some(slot) = self.0.get_mut(i) {
            *slot = Some(ep);
        }
    }

    /// Number of endpoints known.
    pub fn len(&self) -> usize {
        self.0.iter().flatten().count()
    }

    /// True when no endpoint besides ep0 is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Walks the descriptors of a configuration: `(type, bytes)` for each well-formed one;
/// stops at the first that is too short or runs past the end.
fn walk(config: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut rest = config;
    std::iter::from_fn(move || {
        let len = usize::from(*rest.first()?);
        if len < 2 || len > rest.len() {
            return None;
        }
        let (d, tail) = rest.split_at(len);
        rest = tail;
        Some((d.get(1).copied().unwrap_or(0), d))
    })
}

/// The endpoints of `config` when interface `i` is at alternate setting `alt(i)`.
pub fn endpoints(config: &[u8], alt: impl Fn(u8) -> u8) -> EpTable {
    let mut table = EpTable::default();
    let mut active = false;
    for (ty, d) in walk(config) {
        match ty {
            DT_INTERFACE if d.len() >= 9 => {
                let (num, setting) = (d.get(2).copied(), d.get(3).copied());
                active = matches!((num, setting), (Some(n), Some(s)) if alt(n) == s);
            }
            DT_ENDPOINT if active && d.len() >= 7 => {
                let addr = d.get(2).copied().unwrap_or(0);
                let attrs = d.get(3).copied().unwrap_or(0);
                let ep = EpInfo {
                    xfer: match attrs & 3 {
                        0 => XferType::Ctrl,
                        1 => XferType::Isoc,
                        2 => XferType::Bulk,
                        _ => XferType::Int,
                    },
                    max_packet: le16(d, 4) & 0x07ff,
                };
                if addr & 0x0f != 0 {
                    table.set(addr, ep);
                }
            }
            _ => {}
        }
    }
    table
}

/// The class triples of the interfaces of `config` (alternate setting 0), in order.
pub fn interfaces(config: &[u8]) -> Vec<InterfaceClass> {
    walk(config)
        .filter(|(ty, d)| *ty == DT_INTERFACE && d.len() >= 9 && d.get(3) == Some(&0))
        .map(|(_, d)| InterfaceClass {
            class: d.get(5).copied().unwrap_or(0),
            sub_class: d.get(6).copied().unwrap_or(0),
            protocol: d.get(7).copied().unwrap_or(0),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEVICE: [u8; 18] = [
        18, 1, 0x00, 0x02, 0, 0, 0, 64, 0x09, 0x12, 0x01, 0x00, 0x00, 0x01, 1, 2, 3, 1,
    ];
    /// One interface, two alternate settings: alt 0 bulk 0x81/0x02 (512), alt 1 iso 0x83.
    const CONFIG: [u8; 55] = [
        9, 2, 55, 0, 1, 1, 0, 0x80, 50, //
        9, 4, 0, 0, 2, 8, 6, 0x50, 0, //
        7, 5, 0x81, 2, 0x00, 0x02, 0, //
        7, 5, 0x02, 2, 0x00, 0x02, 0, //
        9, 4, 0, 1, 1, 0xff, 0, 0, 0, //
        7, 5, 0x83, 1, 0x00, 0x14, 1, //
        7, 5, 0x04, 3, 0x40, 0x00, 1, // interrupt OUT on alt 1 too (not in alt 0)
    ];

    #[test]
    fn device_descriptor_fields() {
        let d = DeviceDesc::parse(&DEVICE).unwrap();
        assert_eq!((d.id_vendor, d.id_product, d.max_packet0), (0x1209, 1, 64));
        assert_eq!(d.num_configurations, 1);
        assert!(DeviceDesc::parse(&DEVICE[..17]).is_err());
        let mut bad = DEVICE;
        bad[7] = 7;
        assert_eq!(DeviceDesc::parse(&bad), Err(DescError::BadMaxPacket0(7)));
    }

    #[test]
    fn endpoints_follow_the_alternate_setting() {
        assert_eq!(config_header(&CONFIG), Ok((55, 1)));
        let alt0 = endpoints(&CONFIG, |_| 0);
        assert_eq!(alt0.len(), 2);
        assert_eq!(
            alt0.get(1, true),
            Some(EpInfo {
                xfer: XferType::Bulk,
                max_packet: 512
            })
        );
        assert_eq!(alt0.get(3, true), None);
        let alt1 = endpoints(&CONFIG, |_| 1);
        assert_eq!(
            alt1.get(3, true).map(|e| (e.xfer, e.max_packet)),
            Some((XferType::Isoc, 1024))
        );
        assert_eq!(alt1.get(4, false).map(|e| e.xfer), Some(XferType::Int));
        assert_eq!(alt1.get(1, true), None);
        assert_eq!(interfaces(&CONFIG).len(), 1);
    }

    #[test]
    fn truncated_configs_do_not_panic() {
        for n in 0..CONFIG.len() {
            let _ = endpoints(&CONFIG[..n], |_| 0);
            let _ = interfaces(&CONFIG[..n]);
            let _ = config_header(&CONFIG[..n]);
        }
        let zero_len = [0u8, 4, 0, 0];
        assert!(endpoints(&zero_len, |_| 0).is_empty());
    }
}
