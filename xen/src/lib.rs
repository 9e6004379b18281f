//! Grant tables and event channels: one trait per resource, a real (/dev/xen) and a simulated implementation.
