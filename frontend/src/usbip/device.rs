//! The frontend's model of a device it exports over USB/IP: what OP_REP_DEVLIST and
//! OP_REP_IMPORT describe, filled by the engine from the device's descriptors.

use zerocopy::{FromZeros, IntoBytes};

use super::wire::{RawUsbDevice, RawUsbInterface, BUSID_SIZE, PATH_SIZE};

/// `enum usb_device_speed` (linux `include/uapi/linux/usb/ch9.h`), as vhci's `attach` and
/// `usbip_usb_device.speed` take it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Speed {
    /// `USB_SPEED_UNKNOWN` (0).
    #[default]
    Unknown,
    /// `USB_SPEED_LOW` (1), 1.5 Mbit/s.
    Low,
    /// `USB_SPEED_FULL` (2), 12 Mbit/s.
    Full,
    /// `USB_SPEED_HIGH` (3), 480 Mbit/s.
    High,
    /// `USB_SPEED_WIRELESS` (4).
    Wireless,
    /// `USB_SPEED_SUPER` (5), 5 Gbit/s.
    Super,
    /// `USB_SPEED_SUPER_PLUS` (6), 10 Gbit/s and up.
    SuperPlus,
}

impl Speed {
    /// The kernel's number for this speed.
    pub fn to_wire(self) -> u32 {
        match self {
            Speed::Unknown => 0,
            Speed::Low => 1,
            Speed::Full => 2,
            Speed::High => 3,
            Speed::Wireless => 4,
            Speed::Super => 5,
            Speed::SuperPlus => 6,
        }
    }

    /// Parses the kernel's number; values above 6 are `None`.
    pub fn from_wire(v: u32) -> Option<Self> {
        Some(match v {
            0 => Speed::Unknown,
            1 => Speed::Low,
            2 => Speed::Full,
            3 => Speed::High,
            4 => Speed::Wireless,
            5 => Speed::Super,
            6 => Speed::SuperPlus,
            _ => return None,
        })
    }

    /// SuperSpeed and faster sit on vhci's "ss" hub, everything else on its "hs" hub.
    pub fn is_superspeed(self) -> bool {
        self >= Speed::Super
    }
}

/// Class triple of one interface of the active configuration (`usbip_usb_interface`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct InterfaceClass {
    /// `bInterfaceClass`.
    pub class: u8,
    /// `bInterfaceSubClass`.
    pub sub_class: u8,
    /// `bInterfaceProtocol`.
    pub protocol: u8,
}

/// A device offered for import. Strings longer than their wire field (255 bytes of path,
/// 31 of busid) are cut at encoding, so the field always ends in NUL as C readers expect.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportedDevice {
    /// sysfs-style path, informational.
    pub path: String,
    /// Bus id the client names in OP_REQ_IMPORT, e.g. "1-1".
    pub busid: String,
    /// Bus number (high half of the devid).
    pub busnum: u32,
    /// Device number (low half of the devid).
    pub devnum: u32,
    /// Signalling speed.
    pub speed: Speed,
    /// `idVendor`.
    pub id_vendor: u16,
    /// `idProduct`.
    pub id_product: u16,
    /// `bcdDevice`.
    pub bcd_device: u16,
    /// `bDeviceClass`.
    pub device_class: u8,
    /// `bDeviceSubClass`.
    pub device_sub_class: u8,
    /// `bDeviceProtocol`.
    pub device_protocol: u8,
    /// `bConfigurationValue` of the active configuration (0 if unconfigured).
    pub configuration_value: u8,
    /// `bNumConfigurations`.
    pub num_configurations: u8,
    /// Interfaces of the active configuration (at most 255 are described).
    pub interfaces: Vec<InterfaceClass>,
}

fn put_cstr(field: &mut [u8], s: &str) {
    let n = s.len().min(field.len().saturating_sub(1));
    if let (Some(dst), Some(src)) = (field.get_mut(..n), s.as_bytes().get(..n)) {
        dst.copy_from_slice(src);
    }
}

/// The bytes before the first NUL (the whole field if there is none), lossily as UTF-8.
pub(crate) fn get_cstr(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(field.get(..end).unwrap_or_default()).into_owned()
}

impl ExportedDevice {
    /// The USB/IP device id: `(busnum << 16) | devnum`, echoed in every CMD_SUBMIT.
    pub fn devid(&self) -> u32 {
        (self.busnum << 16) | (self.devnum & 0xFFFF)
    }

    /// Number of interfaces described on the wire.
    pub fn wire_interfaces(&self) -> &[InterfaceClass] {
        let n = self.interfaces.len().min(usize::from(u8::MAX));
        self.interfaces.get(..n).unwrap_or_default()
    }

    /// The 312-byte `usbip_usb_device`.
    pub fn to_raw(&self) -> RawUsbDevice {
        let mut raw = RawUsbDevice::new_zeroed();
        put_cstr(&mut raw.path, &self.path);
        put_cstr(&mut raw.busid, &self.busid);
        raw.busnum = self.busnum.into();
        raw.devnum = self.devnum.into();
        raw.speed = self.speed.to_wire().into();
        raw.id_vendor = self.id_vendor.into();
        raw.id_product = self.id_product.into();
        raw.bcd_device = self.bcd_device.into();
        raw.b_device_class = self.device_class;
        raw.b_device_sub_class = self.device_sub_class;
        raw.b_device_protocol = self.device_protocol;
        raw.b_configuration_value = self.configuration_value;
        raw.b_num_configurations = self.num_configurations;
        raw.b_num_interfaces = u8::try_from(self.wire_interfaces().len()).unwrap_or(u8::MAX);
        raw
    }

    /// Reads a `usbip_usb_device`; `interfaces` is left empty (they follow separately,
    /// and only in OP_REP_DEVLIST). An unknown speed reads as [`Speed::Unknown`].
    pub fn from_raw(raw: &RawUsbDevice) -> Self {
        ExportedDevice {
            path: get_cstr(&raw.path),
            busid: get_cstr(&raw.busid),
            busnum: raw.busnum.get(),
            devnum: raw.devnum.get(),
            speed: Speed::from_wire(raw.speed.get()).unwrap_or_default(),
            id_vendor: raw.id_vendor.get(),
            id_product: raw.id_product.get(),
            bcd_device: raw.bcd_device.get(),
            device_class: raw.b_device_class,
            device_sub_class: raw.b_device_sub_class,
            device_protocol: raw.b_device_protocol,
            configuration_value: raw.b_configuration_value,
            num_configurations: raw.b_num_configurations,
            interfaces: Vec::new(),
        }
    }

    /// Appends the `usbip_usb_device` and, if `with_interfaces`, one `usbip_usb_interface`
    /// per interface (OP_REP_DEVLIST does, OP_REP_IMPORT does not).
    pub fn encode(&self, with_interfaces: bool, out: &mut Vec<u8>) {
        out.extend_from_slice(self.to_raw().as_bytes());
        if with_interfaces {
            for i in self.wire_interfaces() {
                let raw = RawUsbInterface {
                    class: i.class,
                    sub_class: i.sub_class,
                    protocol: i.protocol,
                    padding: 0,
                };
                out.extend_from_slice(raw.as_bytes());
            }
        }
    }
}

const _: () = assert!(PATH_SIZE == 256 && BUSID_SIZE == 32);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devid_is_busnum_shifted_or_devnum() {
        let d = ExportedDevice {
            busnum: 3,
            devnum: 7,
            ..Default::default()
        };
        assert_eq!(d.devid(), 0x0003_0007);
    }

    #[test]
    fn long_busid_is_cut_and_nul_terminated() {
        let d = ExportedDevice {
            busid: "x".repeat(40),
            ..Default::default()
        };
        let raw = d.to_raw();
        assert_eq!(raw.busid[30], b'x');
        assert_eq!(raw.busid[31], 0);
        assert_eq!(ExportedDevice::from_raw(&raw).busid, "x".repeat(31));
    }

    #[test]
    fn speed_numbers_match_ch9() {
        for v in 0..=6 {
            assert_eq!(Speed::from_wire(v).map(Speed::to_wire), Some(v));
        }
        assert_eq!(Speed::from_wire(7), None);
        assert!(Speed::Super.is_superspeed() && !Speed::High.is_superspeed());
    }
}
