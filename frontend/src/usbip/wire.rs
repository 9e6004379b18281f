//! Raw USB/IP structures, byte for byte (linux `drivers/usb/usbip/usbip_common.h`,
//! `tools/usb/usbip/libsrc/usbip_common.h`, `tools/usb/usbip/src/usbip_network.h`).
//!
//! Every field is big-endian on the wire except the 8-byte SETUP packet, which is carried
//! verbatim as on the USB bus (little-endian fields). Any bit pattern is a valid raw value;
//! the typed views in [`super::pdu`] and [`super::op`] do the checking.

use zerocopy::byteorder::{BigEndian, I32, U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// `USBIP_CMD_SUBMIT`: the client asks for a transfer.
pub const CMD_SUBMIT: u32 = 0x0001;
/// `USBIP_CMD_UNLINK`: the client cancels an earlier `CMD_SUBMIT`.
pub const CMD_UNLINK: u32 = 0x0002;
/// `USBIP_RET_SUBMIT`: the server answers a `CMD_SUBMIT`.
pub const RET_SUBMIT: u32 = 0x0003;
/// `USBIP_RET_UNLINK`: the server answers a `CMD_UNLINK`.
pub const RET_UNLINK: u32 = 0x0004;

/// `USBIP_VERSION`, carried only by the management (OP_*) messages.
pub const USBIP_VERSION: u16 = 0x0111;
/// `OP_REQ_DEVLIST` = OP_REQUEST | OP_DEVLIST.
pub const OP_REQ_DEVLIST: u16 = 0x8005;
/// `OP_REP_DEVLIST` = OP_REPLY | OP_DEVLIST.
pub const OP_REP_DEVLIST: u16 = 0x0005;
/// `OP_REQ_IMPORT` = OP_REQUEST | OP_IMPORT.
pub const OP_REQ_IMPORT: u16 = 0x8003;
/// `OP_REP_IMPORT` = OP_REPLY | OP_IMPORT.
pub const OP_REP_IMPORT: u16 = 0x0003;

/// `SYSFS_BUS_ID_SIZE`: the busid field, NUL padded.
pub const BUSID_SIZE: usize = 32;
/// `SYSFS_PATH_MAX`: the sysfs path field, NUL padded.
pub const PATH_SIZE: usize = 256;

/// `USBIP_DIR_OUT`.
pub const DIR_OUT: u32 = 0;
/// `USBIP_DIR_IN`.
pub const DIR_IN: u32 = 1;

/// `-ECONNRESET`: the status of a URB that was unlinked before it completed.
pub const ECONNRESET: i32 = -104;
/// `-EPROTO`: what a URB gets when its completion could not be encoded faithfully.
pub const EPROTO: i32 = -71;

/// `struct usbip_header`: the fixed 48-byte header of every URB PDU. The last 28 bytes
/// are a union whose meaning depends on `command`; [`super::pdu`] reads them by name.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(C)]
pub struct RawHeader {
    /// `base.command`.
    pub command: U32<BigEndian>,
    /// `base.seqnum`.
    pub seqnum: U32<BigEndian>,
    /// `base.devid`: (busnum << 16) | devnum for CMD_*, 0 for RET_*.
    pub devid: U32<BigEndian>,
    /// `base.direction`: 0 OUT, 1 IN.
    pub direction: U32<BigEndian>,
    /// `base.ep`: endpoint number 0..15.
    pub ep: U32<BigEndian>,
    /// CMD_SUBMIT `transfer_flags`, RET_* `status`, CMD_UNLINK `seqnum` (the victim).
    pub word0: U32<BigEndian>,
    /// CMD_SUBMIT `transfer_buffer_length`, RET_SUBMIT `actual_length`.
    pub word1: I32<BigEndian>,
    /// `start_frame`.
    pub start_frame: I32<BigEndian>,
    /// `number_of_packets`.
    pub number_of_packets: I32<BigEndian>,
    /// CMD_SUBMIT `interval`, RET_SUBMIT `error_count`.
    pub word4: I32<BigEndian>,
    /// CMD_SUBMIT `setup`, as on the USB wire.
    pub setup: [u8; 8],
}

/// `struct usbip_iso_packet_descriptor`, 16 bytes, big-endian.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(C)]
pub struct RawIsoPacket {
    /// Offset of the packet in the (unpacked) transfer buffer.
    pub offset: U32<BigEndian>,
    /// Requested length.
    pub length: U32<BigEndian>,
    /// Transferred length.
    pub actual_length: U32<BigEndian>,
    /// Per-packet status (-errno).
    pub status: U32<BigEndian>,
}

/// `struct op_common`: the 8-byte header of every management message.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(C)]
pub struct RawOpCommon {
    /// Always [`USBIP_VERSION`].
    pub version: U16<BigEndian>,
    /// `OP_REQ_*` / `OP_REP_*`.
    pub code: U16<BigEndian>,
    /// `ST_*` in replies, 0 in requests.
    pub status: U32<BigEndian>,
}

/// `struct usbip_usb_device`, 312 bytes.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct RawUsbDevice {
    /// sysfs path of the device, NUL padded.
    pub path: [u8; PATH_SIZE],
    /// bus id ("1-1.4"), NUL padded.
    pub busid: [u8; BUSID_SIZE],
    /// USB bus number.
    pub busnum: U32<BigEndian>,
    /// Device address on its bus.
    pub devnum: U32<BigEndian>,
    /// `enum usb_device_speed`.
    pub speed: U32<BigEndian>,
    /// Device descriptor `idVendor`.
    pub id_vendor: U16<BigEndian>,
    /// Device descriptor `idProduct`.
    pub id_product: U16<BigEndian>,
    /// Device descriptor `bcdDevice`.
    pub bcd_device: U16<BigEndian>,
    /// Device descriptor `bDeviceClass`.
    pub b_device_class: u8,
    /// Device descriptor `bDeviceSubClass`.
    pub b_device_sub_class: u8,
    /// Device descriptor `bDeviceProtocol`.
    pub b_device_protocol: u8,
    /// Active configuration's `bConfigurationValue`.
    pub b_configuration_value: u8,
    /// Device descriptor `bNumConfigurations`.
    pub b_num_configurations: u8,
    /// Active configuration's `bNumInterfaces`.
    pub b_num_interfaces: u8,
}

/// `struct usbip_usb_interface`, 4 bytes.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(C)]
pub struct RawUsbInterface {
    /// `bInterfaceClass`.
    pub class: u8,
    /// `bInterfaceSubClass`.
    pub sub_class: u8,
    /// `bInterfaceProtocol`.
    pub protocol: u8,
    /// Alignment padding, 0.
    pub padding: u8,
}

/// Size of [`RawHeader`].
pub const HEADER_LEN: usize = size_of::<RawHeader>();
/// Size of [`RawIsoPacket`].
pub const ISO_PACKET_LEN: usize = size_of::<RawIsoPacket>();
/// Size of [`RawOpCommon`].
pub const OP_COMMON_LEN: usize = size_of::<RawOpCommon>();
/// Size of [`RawUsbDevice`].
pub const USB_DEVICE_LEN: usize = size_of::<RawUsbDevice>();
/// Size of [`RawUsbInterface`].
pub const USB_INTERFACE_LEN: usize = size_of::<RawUsbInterface>();

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::FromZeros;

    #[test]
    fn sizes_match_usbip_common_h() {
        assert_eq!(HEADER_LEN, 48);
        assert_eq!(ISO_PACKET_LEN, 16);
        assert_eq!(OP_COMMON_LEN, 8);
        assert_eq!(USB_DEVICE_LEN, 312);
        assert_eq!(USB_INTERFACE_LEN, 4);
    }

    #[test]
    fn header_field_offsets_match_usbip_protocol_rst() {
        let raw = RawHeader {
            word0: 0x0102_0304.into(),
            number_of_packets: (-1).into(),
            setup: [0xAA; 8],
            ..Default::default()
        };
        let b = raw.as_bytes();
        assert_eq!(&b[20..24], &[1, 2, 3, 4]);
        assert_eq!(&b[32..36], &[0xFF; 4]);
        assert_eq!(&b[40..48], &[0xAA; 8]);
    }

    #[test]
    fn usb_device_field_offsets_match_python_struct_format() {
        // PyPI usbip 0.7.0 protocol.py: ">256s32sIIIHHHBBBBBB".
        let mut raw = RawUsbDevice::new_zeroed();
        raw.busnum = 0x0A0B_0C0D.into();
        raw.id_vendor = 0x1209.into();
        raw.b_num_interfaces = 7;
        let b = raw.as_bytes();
        assert_eq!(&b[288..292], &[0x0A, 0x0B, 0x0C, 0x0D]);
        assert_eq!(&b[300..302], &[0x12, 0x09]);
        assert_eq!(b[311], 7);
    }
}
