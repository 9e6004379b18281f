//! USB/IP management messages (OP_REQ/REP_DEVLIST, OP_REQ/REP_IMPORT, version 0x0111):
//! a streaming decoder for requests, decoders for replies, and infallible encoders.

use zerocopy::{FromBytes, IntoBytes};

use super::device::{get_cstr, ExportedDevice, InterfaceClass};
use super::wire::{
    self, RawOpCommon, RawUsbDevice, RawUsbInterface, BUSID_SIZE, OP_COMMON_LEN, USB_DEVICE_LEN,
    USB_INTERFACE_LEN,
};

/// Most devices a decoded OP_REP_DEVLIST may announce.
pub const MAX_DEVLIST: u32 = 4096;

/// A non-zero `op_common.status` (`ST_*`, linux `usbip_common.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpStatus {
    /// `ST_NA` (1): not available.
    NotAvailable,
    /// `ST_DEV_BUSY` (2): already imported by someone.
    DevBusy,
    /// `ST_DEV_ERR` (3): the device is in an error state.
    DevErr,
    /// `ST_NODEV` (4): no device with that busid.
    NoDev,
    /// `ST_ERROR` (5): unexpected failure.
    Error,
    /// Any other non-zero value.
    Other(u32),
}

impl OpStatus {
    /// The wire value.
    pub fn to_wire(self) -> u32 {
        match self {
            OpStatus::NotAvailable => 1,
            OpStatus::DevBusy => 2,
            OpStatus::DevErr => 3,
            OpStatus::NoDev => 4,
            OpStatus::Error => 5,
            OpStatus::Other(v) => v,
        }
    }

    /// Parses a wire value; 0 (ST_OK) is `None`.
    pub fn from_wire(v: u32) -> Option<Self> {
        Some(match v {
            0 => return None,
            1 => OpStatus::NotAvailable,
            2 => OpStatus::DevBusy,
            3 => OpStatus::DevErr,
            4 => OpStatus::NoDev,
            5 => OpStatus::Error,
            v => OpStatus::Other(v),
        })
    }
}

/// A request a USB/IP client makes before the URB phase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpRequest {
    /// `OP_REQ_DEVLIST`: list what is exported (the connection ends after the reply).
    Devlist,
    /// `OP_REQ_IMPORT`: import the device on `busid`; on success the URB phase follows on
    /// the same connection.
    Import {
        /// Bus id, the bytes before the first NUL of the 32-byte field.
        busid: String,
    },
}

/// Why a management message is not acceptable. Fatal for the connection.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    /// `op_common.version` is not 0x0111 (usbipd refuses it too).
    #[error("USB/IP version {0:#06x}, expected 0x0111")]
    BadVersion(u16),
    /// An op code this side does not handle.
    #[error("unexpected USB/IP op code {0:#06x}")]
    UnexpectedOp(u16),
    /// An OP_REP_DEVLIST announcing more devices than [`MAX_DEVLIST`].
    #[error("devlist announces {0} devices")]
    TooManyDevices(u32),
    /// The server refused a devlist request.
    #[error("devlist refused with status {0:?}")]
    Refused(OpStatus),
}

fn common(code: u16, status: u32) -> RawOpCommon {
    RawOpCommon {
        version: wire::USBIP_VERSION.into(),
        code: code.into(),
        status: status.into(),
    }
}

fn read_common(bytes: &[u8], expect: &[u16]) -> Result<Option<RawOpCommon>, OpError> {
    let Some(head) = bytes.get(..OP_COMMON_LEN) else {
        return Ok(None);
    };
    let Ok(c) = RawOpCommon::read_from_bytes(head) else {
        return Ok(None);
    };
    if c.version.get() != wire::USBIP_VERSION {
        return Err(OpError::BadVersion(c.version.get()));
    }
    if !expect.contains(&c.code.get()) {
        return Err(OpError::UnexpectedOp(c.code.get()));
    }
    Ok(Some(c))
}

/// Decodes one request from the start of `bytes`: `Ok(None)` if incomplete, else the
/// request and how many bytes it used.
pub fn decode_request(bytes: &[u8]) -> Result<Option<(OpRequest, usize)>, OpError> {
    let Some(c) = read_common(bytes, &[wire::OP_REQ_DEVLIST, wire::OP_REQ_IMPORT])? else {
        return Ok(None);
    };
    if c.code.get() == wire::OP_REQ_DEVLIST {
        return Ok(Some((OpRequest::Devlist, OP_COMMON_LEN)));
    }
    let end = OP_COMMON_LEN + BUSID_SIZE;
    let Some(busid) = bytes.get(OP_COMMON_LEN..end) else {
        return Ok(None);
    };
    Ok(Some((
        OpRequest::Import {
            busid: get_cstr(busid),
        },
        end,
    )))
}

/// Appends `OP_REQ_DEVLIST`.
pub fn encode_req_devlist(out: &mut Vec<u8>) {
    out.extend_from_slice(common(wire::OP_REQ_DEVLIST, 0).as_bytes());
}

/// Appends `OP_REQ_IMPORT` for `busid` (cut to 31 bytes).
pub fn encode_req_import(busid: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(common(wire::OP_REQ_IMPORT, 0).as_bytes());
    let mut field = [0u8; BUSID_SIZE];
    let n = busid.len().min(BUSID_SIZE - 1);
    if let (Some(dst), Some(src)) = (field.get_mut(..n), busid.as_bytes().get(..n)) {
        dst.copy_from_slice(src);
    }
    out.extend_from_slice(&field);
}

/// Appends `OP_REP_DEVLIST`: status 0, the device count, then each device followed by its
/// interfaces.
pub fn encode_rep_devlist(devices: &[ExportedDevice], out: &mut Vec<u8>) {
    out.extend_from_slice(common(wire::OP_REP_DEVLIST, 0).as_bytes());
    let n = u32::try_from(devices.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&n.to_be_bytes());
    for d in devices {
        d.encode(true, out);
    }
}

/// Appends `OP_REP_IMPORT`: status 0 and the device, or the failure status alone (as
/// usbipd sends it: no device record follows a failure).
pub fn encode_rep_import(result: Result<&ExportedDevice, OpStatus>, out: &mut Vec<u8>) {
    match result {
        Ok(d) => {
            out.extend_from_slice(common(wire::OP_REP_IMPORT, 0).as_bytes());
            d.encode(false, out);
        }
        Err(s) => out.extend_from_slice(common(wire::OP_REP_IMPORT, s.to_wire()).as_bytes()),
    }
}

/// Decodes an `OP_REP_IMPORT` from the start of `bytes`: `Ok(None)` if incomplete, else
/// the device or the server's refusal, and the bytes used.
#[allow(clippy::type_complexity)]
pub fn decode_rep_import(
    bytes: &[u8],
) -> Result<Option<(Result<ExportedDevice, OpStatus>, usize)>, OpError> {
    let Some(c) = read_common(bytes, &[wire::OP_REP_IMPORT])? else {
        return Ok(None);
    };
    if let Some(s) = OpStatus::from_wire(c.status.get()) {
        return Ok(Some((Err(s), OP_COMMON_LEN)));
    }
    let end = OP_COMMON_LEN + USB_DEVICE_LEN;
    let Some(raw) = bytes
        .get(OP_COMMON_LEN..end)
        .and_then(|b| RawUsbDevice::read_from_bytes(b).ok())
    else {
        return Ok(None);
    };
    Ok(Some((Ok(ExportedDevice::from_raw(&raw)), end)))
}

/// Decodes an `OP_REP_DEVLIST` from the start of `bytes`: `Ok(None)` if incomplete, else
/// the devices (with their interfaces) and the bytes used.
pub fn decode_rep_devlist(bytes: &[u8]) -> Result<Option<(Vec<ExportedDevice>, usize)>, OpError> {
    let Some(c) = read_common(bytes, &[wire::OP_REP_DEVLIST])? else {
        return Ok(None);
    };
    if let Some(s) = OpStatus::from_wire(c.status.get()) {
        return Err(OpError::Refused(s));
    }
    let mut pos = OP_COMMON_LEN;
    let Some(n) = bytes
        .get(pos..pos + 4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
    else {
        return Ok(None);
    };
    let n = u32::from_be_bytes(n);
    if n > MAX_DEVLIST {
        return Err(OpError::TooManyDevices(n));
    }
    pos += 4;
    let mut devices = Vec::new();
    for _ in 0..n {
        let Some(raw) = bytes
            .get(pos..pos + USB_DEVICE_LEN)
            .and_then(|b| RawUsbDevice::read_from_bytes(b).ok())
        else {
            return Ok(None);
        };
        pos += USB_DEVICE_LEN;
        let mut d = ExportedDevice::from_raw(&raw);
        for _ in 0..raw.b_num_interfaces {
            let Some(i) = bytes
                .get(pos..pos + USB_INTERFACE_LEN)
                .and_then(|b| RawUsbInterface::read_from_bytes(b).ok())
            else {
                return Ok(None);
            };
            pos += USB_INTERFACE_LEN;
            d.interfaces.push(InterfaceClass {
                class: i.class,
                sub_class: i.sub_class,
                protocol: i.protocol,
            });
        }
        devices.push(d);
    }
    Ok(Some((devices, pos)))
}
