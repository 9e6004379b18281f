//! usbif completion status (`USBIF_STATUS_*`), speeds and spec versions.

/// The seven status codes usbif.h defines. Linux xen-hcd turns any other value into
/// -ESHUTDOWN, so a stock peer only ever gets one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum Status {
    Ok = 0,
    /// -ENODEV: device gone or unknown address.
    NoDev = -19,
    /// -EINVAL: malformed or refused request.
    Inval = -22,
    /// -EPIPE: endpoint stalled.
    Stall = -32,
    /// -EPROTO: transfer error (CRC, timeout, bit-stuff...); also a cancelled request.
    IoError = -71,
    /// -EOVERFLOW: babble, or data longer than the buffer.
    Babble = -75,
    /// -ESHUTDOWN: controller shut down; what xen-hcd maps every unknown code to.
    Shutdown = -108,
}

impl Status {
    pub const ALL: [Status; 7] = [
        Status::Ok,
        Status::NoDev,
        Status::Inval,
        Status::Stall,
        Status::IoError,
        Status::Babble,
        Status::Shutdown,
    ];

    /// The wire value (a negative Linux errno, or 0).
    pub const fn to_wire(self) -> i32 {
        self as i32
    }

    /// Decodes a wire value exactly; `None` for a value usbif.h does not define.
    pub const fn from_wire(v: i32) -> Option<Self> {
        Some(match v {
            0 => Status::Ok,
            -19 => Status::NoDev,
            -22 => Status::Inval,
            -32 => Status::Stall,
            -71 => Status::IoError,
            -75 => Status::Babble,
            -108 => Status::Shutdown,
            _ => return None,
        })
    }

    /// Decodes the way Linux xen-hcd does (`xenhcd_translate_status`): unknown → Shutdown.
    pub const fn from_wire_lossy(v: i32) -> Self {
        match Self::from_wire(v) {
            Some(s) => s,
            None => Status::Shutdown,
        }
    }

    /// Maps any Linux errno (negative, as usbfs reports it) to the nearest usbif code.
    ///
    /// usbif has six error codes and Linux xen-hcd reads any other as -ESHUTDOWN ("the host
    /// controller is going away": drivers stop resubmitting). So only the host's own
    /// -ESHUTDOWN maps there; every other failure of one transfer is a transfer error the
    /// guest's driver can retry or report.
    pub const fn from_errno(neg_errno: i32) -> Self {
        match neg_errno {
            0 => Status::Ok,
            -19 => Status::NoDev,
            -108 => Status::Shutdown,
            // EINVAL, EFAULT, EFBIG, EMSGSIZE, EPERM, EACCES, ENOTTY, ENOSYS, EOPNOTSUPP:
            // the request itself cannot be carried out as asked.
            -22 | -14 | -27 | -90 | -1 | -13 | -25 | -38 | -95 => Status::Inval,
            -32 => Status::Stall,
            -75 => Status::Babble,
            // ENOENT / ECONNRESET (cancelled), ETIMEDOUT, EILSEQ, EREMOTEIO (short), ECOMM,
            // ENOSR, EPROTO, EIO, EXDEV (partial iso), and transient host shortages: ENOMEM
            // (usbfs_memory_mb), ENOSPC (no periodic bandwidth), EBUSY, EAGAIN, EINTR; and
            // anything unknown.
            _ => Status::IoError,
        }
    }

    pub const fn is_ok(self) -> bool {
        matches!(self, Status::Ok)
    }
}

/// Port speed on the conn ring (`USBIF_SPEED_*`, numerically Linux's `enum usb_device_speed`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Speed {
    /// No device: the port was unplugged.
    None = 0,
    Low = 1,
    Full = 2,
    High = 3,
}

impl Speed {
    pub const fn from_wire(v: u8) -> Option<Self> {
        Some(match v {
            0 => Speed::None,
            1 => Speed::Low,
            2 => Speed::Full,
            3 => Speed::High,
            _ => return None,
        })
    }
    pub const fn to_wire(self) -> u8 {
        self as u8
    }
}

/// `enum usb_spec_version` as the `usb-ver` xenstore key carries it (only 1 and 2 are valid).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum UsbVer {
    Usb11 = 1,
    Usb20 = 2,
}

impl UsbVer {
    pub const fn from_wire(v: u32) -> Option<Self> {
        match v {
            1 => Some(UsbVer::Usb11),
            2 => Some(UsbVer::Usb20),
            _ => None,
        }
    }
    /// The fastest speed a controller of this version may announce.
    pub const fn max_speed(self) -> Speed {
        match self {
            UsbVer::Usb11 => Speed::Full,
            UsbVer::Usb20 => Speed::High,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_roundtrip() {
        for s in Status::ALL {
            assert_eq!(Status::from_wire(s.to_wire()), Some(s));
        }
        assert_eq!(Status::from_wire(-110), None);
        assert_eq!(Status::from_wire_lossy(-110), Status::Shutdown);
    }

    #[test]
    fn errno_maps_into_usbif() {
        assert_eq!(Status::from_errno(-104), Status::IoError);
        assert_eq!(Status::from_errno(-32), Status::Stall);
        assert_eq!(Status::from_errno(-19), Status::NoDev);
        assert_eq!(Status::from_errno(-108), Status::Shutdown);
        assert_eq!(Status::from_errno(-999), Status::IoError);
        assert_eq!(Status::from_errno(-12), Status::IoError, "ENOMEM");
        assert_eq!(Status::from_errno(-28), Status::IoError, "ENOSPC");
        assert_eq!(Status::from_errno(-90), Status::Inval, "EMSGSIZE");
    }

    #[test]
    fn usb_ver_limits_speed() {
        assert_eq!(UsbVer::Usb11.max_speed(), Speed::Full);
        assert_eq!(UsbVer::from_wire(3), None);
    }
}
