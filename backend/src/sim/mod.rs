//! Simulated host devices: device models behind the `HostDevice` trait, and the simulated
//! USB bus (`plug`/`unplug`, a sysfs-like tree resolved by the same code as a real host).

pub mod bus;
pub mod core;
pub mod device;
pub mod fuzzing;
pub mod model;
pub mod spec;

pub use bus::{plug, set_faults, unplug, BusError, SIM_BUSES};
pub use device::{SimDevice, SimOpenError};
pub use spec::{DeviceSpec, FailNth, Faults, ModelSpec, ShortRead};

#[cfg(test)]
mod continuation_tests;
#[cfg(test)]
mod storage_tests;
#[cfg(test)]
pub(crate) mod tests;
