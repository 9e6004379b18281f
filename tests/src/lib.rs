//! Whole-stack tests of pvusb: backend, frontend, xenstored and the grant broker as separate
//! processes on the simulated platform, driven by a guest-side USB/IP mass-storage client.
//!
//! This crate is a test harness: its helpers panic with a message saying what was awaited
//! and the daemons' log tails when something goes wrong, so a failing test explains itself.
//! Invariants it enforces for the tests built on it:
//! - every wait has a deadline ([`wait::until`]); nothing can hang CI;
//! - every process it starts is killed when its guard drops ([`proc::Daemon`]), also on panic;
//! - every URB the guest submits is answered exactly once ([`usbip::Ledger`]), checked at
//!   each answer, and per-endpoint device order is checked against the guest's submission
//!   order from the sim device's trace ([`devtrace`]).

pub mod bins;
pub mod cpu;
pub mod devtrace;
pub mod floor;
pub mod hostile;
pub mod platform;
pub mod proc;
pub mod rig;
pub mod ring_guest;
pub mod rng;
pub mod storage;
pub mod usbip;
pub mod vhci;
pub mod wait;

/// Bytes each data-verifying test moves: `PVUSB_E2E_MIB` MiB (default 256).
pub fn e2e_bytes() -> u64 {
    let mib = std::env::var("PVUSB_E2E_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(256);
    mib << 20
}
