//! xl-usb: the pvusb toolstack CLI.
