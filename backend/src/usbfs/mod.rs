//! Real host devices through Linux usbfs: our own thin ioctl layer over rustix.
//!
//! Only `raw` contains `unsafe`. Splitting a large bulk transfer is the engine's job; check
//! [`Capabilities::bulk_continuation`] and [`Capabilities::max_bulk_urb`] first.

pub mod device;
pub mod raw;

pub use device::{submit_error, Capabilities, UsbfsDevice, UsbfsOpenError};

use crate::host::{HostDevice, ResolveError, UsbRoots};

/// Opens the device `busid` on the real host (resolved under `/sys`, `/dev`).
pub fn open_busid(roots: &UsbRoots, busid: &str) -> Result<Box<dyn HostDevice>, UsbfsOpenError> {
    let dev = crate::host::resolve(roots, busid)
        .map_err(|e: ResolveError| UsbfsOpenError::Descriptors(e))?;
    Ok(Box::new(UsbfsDevice::open(&dev)?))
}

#[cfg(test)]
mod tests;
