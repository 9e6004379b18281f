//! pvusb-frontend: bridges usbif to the guest kernel's vhci_hcd over USB/IP.

pub mod usbip;
