//! pvusb-backend: serves usbif frontends from host USB devices.
