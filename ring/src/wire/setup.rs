//! The 8-byte USB control setup packet carried in a control request's `u.ctrl`.

/// A setup packet, in USB (little-endian) byte order, as `Transfer::Ctrl` carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Setup(pub [u8; 8]);

/// Standard `bRequest` codes the backend intercepts (USB 2.0 table 9-4).
pub mod request {
    /// GET_STATUS.
    pub const GET_STATUS: u8 = 0x00;
    /// CLEAR_FEATURE (ENDPOINT_HALT → clear halt).
    pub const CLEAR_FEATURE: u8 = 0x01;
    /// SET_FEATURE.
    pub const SET_FEATURE: u8 = 0x03;
    /// SET_ADDRESS: never reaches the device; the backend records the guest's address.
    pub const SET_ADDRESS: u8 = 0x05;
    /// GET_DESCRIPTOR: the only request allowed on address 0.
    pub const GET_DESCRIPTOR: u8 = 0x06;
    /// GET_CONFIGURATION.
    pub const GET_CONFIGURATION: u8 = 0x08;
    /// SET_CONFIGURATION.
    pub const SET_CONFIGURATION: u8 = 0x09;
    /// GET_INTERFACE.
    pub const GET_INTERFACE: u8 = 0x0a;
    /// SET_INTERFACE.
    pub const SET_INTERFACE: u8 = 0x0b;
}

impl Setup {
    /// `bmRequestType`.
    pub const fn request_type(self) -> u8 {
        self.0[0]
    }
    /// `bRequest`.
    pub const fn request(self) -> u8 {
        self.0[1]
    }
    /// `wValue`.
    pub const fn value(self) -> u16 {
        u16::from_le_bytes([self.0[2], self.0[3]])
    }
    /// `wIndex`.
    pub const fn index(self) -> u16 {
        u16::from_le_bytes([self.0[4], self.0[5]])
    }
    /// `wLength`: the data stage length.
    pub const fn length(self) -> u16 {
        u16::from_le_bytes([self.0[6], self.0[7]])
    }
    /// Data stage direction: device to host.
    pub const fn is_in(self) -> bool {
        self.0[0] & 0x80 != 0
    }
    /// Standard request (type bits 5-6 = 0).
    pub const fn is_standard(self) -> bool {
        self.0[0] & 0x60 == 0
    }
    /// Recipient (bits 0-4): 0 device, 1 interface, 2 endpoint, 3 other.
    pub const fn recipient(self) -> u8 {
        self.0[0] & 0x1f
    }
    /// Builds a setup packet.
    pub const fn new(request_type: u8, request: u8, value: u16, index: u16, length: u16) -> Self {
        let v = value.to_le_bytes();
        let i = index.to_le_bytes();
        let l = length.to_le_bytes();
        Setup([request_type, request, v[0], v[1], i[0], i[1], l[0], l[1]])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SET_ADDRESS 5, as a guest's USB core sends it.
    const SET_ADDRESS_5: [u8; 8] = [0x00, 0x05, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00];
    /// GET_DESCRIPTOR(DEVICE), 18 bytes.
    const GET_DEVICE_DESC: [u8; 8] = [0x80, 0x06, 0x00, 0x01, 0x00, 0x00, 0x12, 0x00];

    #[test]
    fn setup_fields() {
        let s = Setup(SET_ADDRESS_5);
        assert_eq!(
            (s.request(), s.value(), s.length(), s.is_in()),
            (request::SET_ADDRESS, 5, 0, false)
        );
        let g = Setup(GET_DEVICE_DESC);
        assert!(g.is_in() && g.is_standard());
        assert_eq!(
            (g.request(), g.value(), g.index(), g.length(), g.recipient()),
            (6, 0x100, 0, 18, 0)
        );
        assert_eq!(Setup::new(0x80, 6, 0x100, 0, 18), g);
    }
}
