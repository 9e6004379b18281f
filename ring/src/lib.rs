//! Xen PV USB without I/O: the usbif wire format, the shared ring, and URB semantics.

pub mod wire;
