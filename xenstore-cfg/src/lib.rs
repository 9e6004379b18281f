//! Xenstore for pvusb: the xs_wire protocol, a client, an embedded xenstored and the vusb schema.
