//! xl-usb: the pvusb toolstack. xl's USB commands (`usbctrl-attach`, `usbctrl-detach`,
//! `usbdev-attach`, `usbdev-detach`, `usb-list`) plus `usb-assignable-list`, a rules daemon,
//! a simulated platform and the demo.
//!
//! Invariants:
//! - Everything written to xenstore is libxl's layout, byte for byte and with the same
//!   permissions (through `xenstore_cfg::vusb`), so stock tools and the stock xen-hcd
//!   frontend see a normal vusb controller; the one extension is a backend in a driver
//!   domain (`backend=`), which libxl refuses.
//! - A host device is on at most one port of one domain: attach checks every domain's
//!   controllers first; hubs are refused.
//! - Every command fails with a one-line reason and a non-zero exit status; nothing read
//!   from xenstore, sysfs, a rules file or a socket panics.

pub mod cli;
pub mod ctrl;
pub mod daemon;
pub mod demo;
pub mod domain;
#[doc(hidden)]
pub mod fuzzing;
pub mod guest;
pub mod hostdev;
pub mod kv;
pub mod platform;
pub mod progress;
pub mod rules;
pub mod sim;
pub mod usb_assignable_list;
pub mod usb_list;
pub mod usbctrl_attach;
pub mod usbctrl_detach;
pub mod usbdev_attach;
pub mod usbdev_detach;
pub mod usbids;
pub mod usbip_direct;

use std::path::PathBuf;
use std::time::Duration;

/// What every command gets: the platform, output mode and timeouts.
#[derive(Clone, Debug)]
pub struct Ctx {
    /// Real host or simulated directory.
    pub platform: platform::Platform,
    /// `--json`.
    pub json: bool,
    /// How long to wait for a backend.
    pub timeout: Duration,
    /// usb.ids override.
    pub usb_ids: Option<PathBuf>,
}

impl Ctx {
    /// Opens xenstore as the control domain.
    pub fn xs(&self) -> Result<xenstore_cfg::Xs, platform::ConnectError> {
        self.platform.xs()
    }
}

/// Proptest case count: `PROPTEST_CASES` if set, else `default`.
#[cfg(test)]
pub(crate) fn test_cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
