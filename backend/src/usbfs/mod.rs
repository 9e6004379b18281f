//! Real usbfs.
