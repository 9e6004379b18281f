//! The host-device trait the URB engine drives, and bus-id resolution shared by usbfs and sim.
//!
//! Semantics follow Linux usbfs exactly, so the engine is written once:
//! - `submit` either accepts an URB (it then completes exactly once, through `reap`, maybe
//!   before `submit` returns) or refuses it (`Refused` hands the URB and its buffer back; it
//!   never completes);
//! - URBs on one endpoint reach the device in submission order and complete in that order;
//! - `discard(tag)` cancels an URB that is still in flight; it is still reaped, with
//!   -ECONNRESET (started) or -ENOENT (not started) — or its real status if it finished first;
//! - a bulk URB that fails, or is short with SHORT_NOT_OK, cancels the BULK_CONTINUATION URBs
//!   queued behind it on that endpoint; later continuation URBs are refused with -EREMOTEIO
//!   until a URB without BULK_CONTINUATION is submitted;
//! - a stalled endpoint fails every URB with -EPIPE until `clear_halt`;
//! - when the device goes away, in-flight URBs complete with -ESHUTDOWN (or -ENODEV) and
//!   later submits are refused with `SubmitError::Gone`, each exactly once.

pub mod busid;
pub mod desc;
pub mod hotplug;
pub mod open;
pub mod urb;

use std::os::fd::BorrowedFd;

pub use busid::{
    check_busid, list_busids, resolve, HostSpeed, ResolveError, ResolvedDevice, UsbRoots,
};
pub use desc::{fixup_superspeed_as_high, Descriptors};
pub use hotplug::{HotplugEvent, HotplugMonitor};
pub use open::{OpenError, Platform};
pub use urb::{
    errno, Completion, CtrlError, DiscardError, HostUrb, IsoPacketResult, Refused, SubmitError,
    UrbBuf, UrbFlags, XferKind,
};

/// Which readiness of [`HostDevice::poll_fd`] means "completions can be reaped".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// POLLIN (the sim's eventfd).
    Readable,
    /// POLLOUT (usbfs).
    Writable,
}

/// An opened host USB device: usbfs on a real host, a device model on the sim platform.
///
/// Opening a device claims all interfaces of its active configuration (detaching host
/// drivers); dropping it, or `release`, releases them and lets host drivers bind again.
/// Buffers of URBs still in flight are dropped (never reused) only after the host has let
/// go of them; an engine with borrowed buffers calls `drain` before unmapping them.
pub trait HostDevice: Send + std::fmt::Debug {
    /// Queues an URB. See the module doc for the guarantees.
    fn submit(&mut self, urb: HostUrb) -> Result<(), Refused>;

    /// Returns one finished URB if any, without blocking.
    fn reap(&mut self) -> Option<Completion>;

    /// Cancels the in-flight URB `tag`; it will still be reaped (usually -ECONNRESET/-ENOENT).
    fn discard(&mut self, tag: u64) -> Result<(), DiscardError>;

    /// Cancels everything in flight and blocks until every outstanding completion is back;
    /// returns them (including ones that were already reapable). Afterwards nothing is in
    /// flight and no buffer is referenced by the host.
    fn drain(&mut self) -> Vec<Completion>;

    /// URBs accepted and not yet reaped.
    fn in_flight(&self) -> usize;

    /// A descriptor that becomes ready (see [`HostDevice::readiness`]) when `reap` has
    /// something, and also when the device goes away (usbfs: POLLHUP/POLLERR; treat those as
    /// readiness too). On readiness: drain `reap` to `None`, then check `is_gone`.
    fn poll_fd(&self) -> BorrowedFd<'_>;

    /// Which readiness of `poll_fd` to wait for.
    fn readiness(&self) -> Readiness;

    /// True once the device has been unplugged (ENODEV seen); it never comes back.
    fn is_gone(&self) -> bool;

    /// Speed the device runs at (present SuperSpeed as HIGH: [`HostSpeed::usbif_speed`]).
    fn speed(&self) -> HostSpeed;

    /// Which enumeration of a device this is: its bus and device number
    /// (`busnum << 16 | devnum`, never 0), which the host kernel gives anew each time a
    /// device is plugged in (a port reset keeps them). Equal values mean the same device,
    /// attached all along.
    fn instance(&self) -> u32;

    /// Device and configuration descriptors (sysfs `descriptors`).
    fn descriptors(&self) -> &Descriptors;

    /// bConfigurationValue of the active configuration, 0 if unconfigured.
    fn active_config(&self) -> u8;

    /// SET_CONFIGURATION, done as the host stack needs it (release, set, re-claim).
    fn set_configuration(&mut self, value: u8) -> Result<(), CtrlError>;

    /// SET_INTERFACE.
    fn set_interface(&mut self, interface: u8, alt: u8) -> Result<(), CtrlError>;

    /// CLEAR_FEATURE(ENDPOINT_HALT) on `endpoint` (address, 0x80 = IN), resetting the toggle.
    fn clear_halt(&mut self, endpoint: u8) -> Result<(), CtrlError>;

    /// Port reset of the device (re-enumerates; the configuration is kept when possible).
    fn reset(&mut self) -> Result<(), CtrlError>;

    /// Releases every claimed interface and reattaches host drivers. Idempotent; `Drop`
    /// calls it too.
    fn release(&mut self);

    /// Largest bulk URB the host takes in one piece; the engine splits larger transfers
    /// (BULK_CONTINUATION, as libusb does). Unlimited unless the host says otherwise.
    fn max_bulk_urb(&self) -> usize {
        usize::MAX
    }

    /// The host stops an endpoint at a short packet, so a BULK_CONTINUATION URB queued
    /// behind one that ends short (SHORT_NOT_OK) is cancelled before the device runs it
    /// (usbfs USBDEVFS_CAP_BULK_CONTINUATION; xHCI buses withhold it). True unless the
    /// host says otherwise.
    fn bulk_continuation(&self) -> bool {
        true
    }
}
