//! Simulated host devices.
