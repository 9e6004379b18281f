//! The usbif `pipe` bit field (usbif.h `USBIF_PIPE_*`): Linux's `urb->pipe` with the port in bits 0-4.

use core::fmt;
use core::num::NonZeroU8;

use super::MAX_PORTNR;

/// A virtual root-hub port, 1..=31 (usbif ports are 1-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Port(NonZeroU8);

impl Port {
    /// `None` for 0 or anything above `USBIF_MAX_PORTNR`.
    pub const fn new(port: u8) -> Option<Self> {
        if port > MAX_PORTNR {
            return None;
        }
        match NonZeroU8::new(port) {
            Some(p) => Some(Port(p)),
            None => None,
        }
    }
    /// The port number, 1..=31.
    pub const fn get(self) -> u8 {
        self.0.get()
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.get())
    }
}

/// Transfer type in pipe bits 30-31 (`USBIF_PIPE_TYPE_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum XferType {
    Isoc = 0,
    Int = 1,
    Ctrl = 2,
    Bulk = 3,
}

impl XferType {
    /// Decodes the two type bits; every value is valid.
    pub const fn from_bits(bits: u32) -> Self {
        match bits & 3 {
            0 => Self::Isoc,
            1 => Self::Int,
            2 => Self::Ctrl,
            _ => Self::Bulk,
        }
    }
}

/// An endpoint address as USB writes it: number 0..=15 plus the IN direction bit (0x80).
/// Endpoint 0 IN and OUT are the same control endpoint but distinct `Ep` values.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ep(u8);

impl Ep {
    /// Builds an endpoint from its number (masked to 4 bits) and direction.
    pub const fn new(num: u8, is_in: bool) -> Self {
        Ep((num & 0x0f) | if is_in { 0x80 } else { 0 })
    }
    /// From a USB `bEndpointAddress`; the reserved bits 4-6 are dropped.
    pub const fn from_address(addr: u8) -> Self {
        Ep(addr & 0x8f)
    }
    /// The USB `bEndpointAddress` (0x81 = EP 1 IN).
    pub const fn address(self) -> u8 {
        self.0
    }
    pub const fn num(self) -> u8 {
        self.0 & 0x0f
    }
    pub const fn is_in(self) -> bool {
        self.0 & 0x80 != 0
    }
}

impl fmt::Debug for Ep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ep{}{}",
            self.num(),
            if self.is_in() { "in" } else { "out" }
        )
    }
}

impl fmt::Display for Ep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// usbif.h pipe bit layout.
pub mod bits {
    pub const PORT_MASK: u32 = 0x0000_001f;
    pub const UNLINK: u32 = 0x0000_0020;
    pub const RESERVED_6: u32 = 0x0000_0040;
    pub const DIR: u32 = 0x0000_0080;
    pub const DEV_MASK: u32 = 0x7f;
    pub const DEV_SHIFT: u32 = 8;
    pub const EP_MASK: u32 = 0xf;
    pub const EP_SHIFT: u32 = 15;
    pub const RESERVED_19_29: u32 = 0x3ff8_0000;
    pub const TYPE_MASK: u32 = 3;
    pub const TYPE_SHIFT: u32 = 30;
    /// Every bit usbif.h leaves undefined (6 and 19-29): must be zero on the wire.
    pub const RESERVED: u32 = RESERVED_6 | RESERVED_19_29;
}

/// The raw 32-bit pipe. Any value can be held; [`Pipe::reserved_bits`] tells whether the
/// peer set bits usbif.h leaves undefined (parsing a request rejects those).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Pipe(pub u32);

impl Pipe {
    /// Builds a submit pipe. `port` and `devnum` are masked to their field widths.
    pub const fn new(port: u8, devnum: u8, ep: Ep, ty: XferType) -> Self {
        let mut v = (port as u32) & bits::PORT_MASK;
        v |= ((devnum as u32) & bits::DEV_MASK) << bits::DEV_SHIFT;
        v |= ((ep.num() as u32) & bits::EP_MASK) << bits::EP_SHIFT;
        if ep.is_in() {
            v |= bits::DIR;
        }
        v |= (ty as u32) << bits::TYPE_SHIFT;
        Pipe(v)
    }
    /// Root-hub port, 1..=31 when valid (0 is representable and rejected by parsing).
    pub const fn port(self) -> u8 {
        (self.0 & bits::PORT_MASK) as u8
    }
    pub const fn is_unlink(self) -> bool {
        self.0 & bits::UNLINK != 0
    }
    pub const fn is_in(self) -> bool {
        self.0 & bits::DIR != 0
    }
    /// Guest-assigned USB device address (0 before SET_ADDRESS).
    pub const fn devnum(self) -> u8 {
        ((self.0 >> bits::DEV_SHIFT) & bits::DEV_MASK) as u8
    }
    pub const fn ep_num(self) -> u8 {
        ((self.0 >> bits::EP_SHIFT) & bits::EP_MASK) as u8
    }
    /// Endpoint number and direction.
    pub const fn endpoint(self) -> Ep {
        Ep::new(self.ep_num(), self.is_in())
    }
    pub const fn xfer_type(self) -> XferType {
        XferType::from_bits(self.0 >> bits::TYPE_SHIFT)
    }
    pub const fn is_isoc(self) -> bool {
        matches!(self.xfer_type(), XferType::Isoc)
    }
    pub const fn is_int(self) -> bool {
        matches!(self.xfer_type(), XferType::Int)
    }
    pub const fn is_ctrl(self) -> bool {
        matches!(self.xfer_type(), XferType::Ctrl)
    }
    pub const fn is_bulk(self) -> bool {
        matches!(self.xfer_type(), XferType::Bulk)
    }
    /// The bits usbif.h leaves undefined, as set by the peer (0 for a well-formed pipe).
    pub const fn reserved_bits(self) -> u32 {
        self.0 & bits::RESERVED
    }
    /// This pipe with the unlink bit set (the form of an unlink request).
    pub const fn with_unlink(self) -> Self {
        Pipe(self.0 | bits::UNLINK)
    }
    /// This pipe with the unlink bit cleared.
    pub const fn without_unlink(self) -> Self {
        Pipe(self.0 & !bits::UNLINK)
    }
}

impl fmt::Debug for Pipe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Pipe({:#010x}: port {} dev {} {} {:?}{})",
            self.0,
            self.port(),
            self.devnum(),
            self.endpoint(),
            self.xfer_type(),
            if self.is_unlink() { " unlink" } else { "" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipe_fields_roundtrip() {
        let p = Pipe::new(5, 42, Ep::new(3, true), XferType::Bulk);
        assert_eq!(p.port(), 5);
        assert_eq!(p.devnum(), 42);
        assert_eq!(p.endpoint(), Ep::from_address(0x83));
        assert_eq!(p.xfer_type(), XferType::Bulk);
        assert!(!p.is_unlink());
        assert_eq!(p.reserved_bits(), 0);
        assert!(p.with_unlink().is_unlink());
        assert_eq!(p.with_unlink().without_unlink(), p);
    }

    #[test]
    fn pipe_matches_linux_layout() {
        // usb_rcvbulkpipe(dev=2, ep=1) = (3<<30)|(2<<8)|(1<<15)|0x80, plus port 1 in bits 0-4.
        let p = Pipe(0xc000_8281);
        assert_eq!(p, Pipe::new(1, 2, Ep::new(1, true), XferType::Bulk));
    }

    #[test]
    fn reserved_bits_detected() {
        assert_eq!(Pipe(0x40).reserved_bits(), 0x40);
        assert_eq!(Pipe(1 << 19).reserved_bits(), 1 << 19);
        assert_eq!(Pipe(1 << 29).reserved_bits(), 1 << 29);
    }
}
