//! `UsbfsDevice`: a real device opened through `/dev/bus/usb/BBB/DDD`, behind `HostDevice`.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use super::raw::{self, cap, UrbBlock};
use crate::host::{
    errno, Completion, CtrlError, Descriptors, DiscardError, HostDevice, HostSpeed, HostUrb,
    IsoPacketResult, Readiness, Refused, ResolveError, ResolvedDevice, SubmitError, XferKind,
};

/// Why a usbfs device could not be opened and claimed.
#[derive(Debug, thiserror::Error)]
pub enum UsbfsOpenError {
    #[error("opening {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Descriptors(#[from] ResolveError),
    #[error("claiming interface {iface} of {busid}: {source}")]
    Claim {
        busid: String,
        iface: u8,
        source: std::io::Error,
    },
}

/// What the kernel's usbfs supports (USBDEVFS_GET_CAPABILITIES).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities(pub u32);

impl Capabilities {
    /// BULK_CONTINUATION is honoured: a split transfer can be cancelled as a whole. The
    /// kernel withholds it on buses whose controller does not stop an endpoint at a short
    /// packet (`no_stop_on_short`: xHCI), where the URB queued after a short one may already
    /// have taken the device's next data when it is cancelled.
    pub fn bulk_continuation(self) -> bool {
        self.0 & cap::BULK_CONTINUATION != 0
    }

    /// Bulk URBs are not limited to 16 KiB.
    pub fn no_packet_size_limit(self) -> bool {
        self.0 & cap::NO_PACKET_SIZE_LIM != 0
    }

    /// URB_ZERO_PACKET is honoured.
    pub fn zero_packet(self) -> bool {
        self.0 & cap::ZERO_PACKET != 0
    }

    /// Completions can be reaped after a disconnect.
    pub fn reap_after_disconnect(self) -> bool {
        self.0 & cap::REAP_AFTER_DISCONNECT != 0
    }

    /// Largest bulk URB to submit in one piece (libusb's rule).
    pub fn max_bulk_urb(self) -> usize {
        if self.no_packet_size_limit() || self.0 & cap::BULK_SCATTER_GATHER != 0 {
            usize::MAX
        } else {
            16 * 1024
        }
    }
}

#[derive(Debug)]
struct InFlight {
    block: UrbBlock,
    urb: HostUrb,
}

/// An opened usbfs device with all interfaces of its active configuration claimed.
#[derive(Debug)]
pub struct UsbfsDevice {
    fd: OwnedFd,
    busid: String,
    instance: u32,
    descriptors: Descriptors,
    speed: HostSpeed,
    config: u8,
    claimed: Vec<u8>,
    caps: Capabilities,
    in_flight: HashMap<u64, InFlight>,
    gone: bool,
}

fn io_err(e: Errno) -> std::io::Error {
    e.into()
}

/// Maps a SUBMITURB errno to the refusal the engine sees.
pub fn submit_error(e: Errno) -> SubmitError {
    match e {
        Errno::NODEV | Errno::SHUTDOWN => SubmitError::Gone,
        Errno::NOENT => SubmitError::NoEndpoint(0),
        Errno::INVAL => SubmitError::Invalid("rejected by usbfs"),
        Errno::REMOTEIO => SubmitError::ContinuationRefused,
        Errno::NOMEM => SubmitError::NoMemory,
        e => SubmitError::Errno(e.raw_os_error()),
    }
}

impl UsbfsDevice {
    /// Opens `dev.node`, reads the active configuration from sysfs and claims every
    /// interface of it, detaching kernel drivers (DISCONNECT_CLAIM).
    pub fn open(dev: &ResolvedDevice) -> Result<Self, UsbfsOpenError> {
        let fd = rustix::fs::open(&dev.node, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| UsbfsOpenError::Open {
                path: dev.node.clone(),
                source: e.into(),
            })?;
        let descriptors = dev.parsed_descriptors()?;
        let config = std::fs::read_to_string(dev.sysdir.join("bConfigurationValue"))
            .ok()
            .and_then(|s| s.trim().parse::<u8>().ok())
            .unwrap_or(0);
        let caps = Capabilities(raw::get_capabilities(fd.as_fd()).unwrap_or(0));
        let speed = raw::get_speed(fd.as_fd())
            .ok()
            .and_then(HostSpeed::from_linux)
            .unwrap_or(dev.speed);
        let mut d = UsbfsDevice {
            fd,
            busid: dev.busid.clone(),
            instance: dev.instance(),
            descriptors,
            speed,
            config,
            claimed: Vec::new(),
            caps,
            in_flight: HashMap::new(),
            gone: false,
        };
        d.claim_all().map_err(|(iface, e)| UsbfsOpenError::Claim {
            busid: dev.busid.clone(),
            iface,
            source: io_err(e),
        })?;
        tracing::info!(
            busid = d.busid,
            config,
            caps = d.caps.0,
            bulk_continuation = d.caps.bulk_continuation(),
            "usbfs device claimed"
        );
        if !d.caps.bulk_continuation() {
            // The engine copes (pvusb_ring::urb::chain); say why large reads are slower here.
            tracing::info!(
                busid = d.busid,
                "this bus does not stop an endpoint at a short packet (xHCI): the pieces of a \
                 bulk IN transfer split over several URBs go to the device one at a time"
            );
        }
        Ok(d)
    }

    /// usbfs capabilities.
    pub fn capabilities(&self) -> Capabilities {
        self.caps
    }

    fn note(&mut self, e: Errno) -> Errno {
        if e == Errno::NODEV {
            self.gone = true;
        }
        e
    }

    fn claim_all(&mut self) -> Result<(), (u8, Errno)> {
        let ifaces = self
            .descriptors
            .config(self.config)
            .map(|c| c.interface_numbers())
            .unwrap_or_default();
        for iface in ifaces {
            if self.claimed.contains(&iface) {
                continue;
            }
            raw::disconnect_claim(self.fd.as_fd(), u32::from(iface))
                .map_err(|e| (iface, self.note(e)))?;
            self.claimed.push(iface);
        }
        Ok(())
    }

    fn release_claims(&mut self, reattach: bool) {
        for iface in std::mem::take(&mut self.claimed) {
            if let Err(e) = raw::release_interface(self.fd.as_fd(), u32::from(iface)) {
                tracing::debug!(busid = self.busid, iface, "release interface: {e}");
            }
            if reattach {
                let _ = raw::connect(self.fd.as_fd(), u32::from(iface));
            }
        }
    }

    fn ctrl<T>(&mut self, r: Result<T, Errno>) -> Result<T, CtrlError> {
        r.map_err(|e| CtrlError::from_errno(self.note(e).raw_os_error()))
    }

    fn complete(&mut self, ptr: *mut raw::usbdevfs_urb) -> Option<Completion> {
        // The tag travels in usercontext; the block at `ptr` is ours (in the table).
        let tag = self
            .in_flight
            .iter()
            .find(|(_, f)| f.block.addr() == ptr)
            .map(|(&t, _)| t)?;
        let InFlight { mut block, urb } = self.in_flight.remove(&tag)?;
        let (status, actual, start_frame, error_count) = {
            let u = block.urb();
            (u.status, u.actual_length, u.start_frame, u.error_count)
        };
        let iso_packets = block
            .iso()
            .iter()
            .map(|d| IsoPacketResult {
                actual_length: d.actual_length,
                // The header declares it unsigned; the kernel stores a negative errno.
                status: d.status as i32,
            })
            .collect();
        Some(Completion {
            tag,
            status,
            actual_length: u32::try_from(actual).unwrap_or(0),
            iso_packets,
            error_count: u32::try_from(error_count).unwrap_or(0),
            start_frame,
            buf: urb.buf,
        })
    }
}

impl HostDevice for UsbfsDevice {
    fn submit(&mut self, urb: HostUrb) -> Result<(), Refused> {
        let refuse = |error, urb| Err(Refused { error, urb });
        if self.gone {
            return refuse(SubmitError::Gone, urb);
        }
        if self.in_flight.contains_key(&urb.tag) {
            return refuse(SubmitError::DuplicateTag(urb.tag), urb);
        }
        let Ok(len) = i32::try_from(urb.buf.len()) else {
            return refuse(SubmitError::Invalid("buffer longer than 2 GiB"), urb);
        };
        let packets = if urb.kind == XferKind::Iso {
            urb.iso_packets.len()
        } else {
            0
        };
        let Ok(npackets) = i32::try_from(packets) else {
            return refuse(SubmitError::Invalid("too many iso packets"), urb);
        };
        let mut block = UrbBlock::new(packets);
        {
            let u = block.urb();
            u.type_ = urb.kind.usbfs_type();
            u.endpoint = urb.endpoint;
            u.flags = urb.flags.bits();
            u.buffer = urb.buf.as_ptr().cast();
            u.buffer_length = len;
            u.start_frame = urb.start_frame;
            u.number_of_packets = npackets;
            // The tag is also the usercontext, for debugging with usbmon; lookup is by address.
            u.usercontext = urb.tag as usize as *mut std::ffi::c_void;
        }
        for (d, &l) in block.iso().iter_mut().zip(&urb.iso_packets) {
            d.length = l;
        }
        let ptr = block.as_ptr();
        // SAFETY: the block and `urb.buf` move into `in_flight` below (a move of the Box and
        // of the UrbBuf handle, not of the memory they point to) and stay there until the
        // kernel returns the address through a reap; Drop closes the fd before freeing them.
        match unsafe { raw::submit_urb(self.fd.as_fd(), ptr) } {
            Ok(()) => {
                let tag = urb.tag;
                self.in_flight.insert(tag, InFlight { block, urb });
                Ok(())
            }
            Err(e) => {
                let mut error = submit_error(self.note(e));
                if error == SubmitError::NoEndpoint(0) {
                    error = SubmitError::NoEndpoint(urb.endpoint);
                }
                refuse(error, urb)
            }
        }
    }

    fn reap(&mut self) -> Option<Completion> {
        loop {
            match raw::reap_urb(self.fd.as_fd(), false) {
                Ok(ptr) => match self.complete(ptr) {
                    Some(c) => return Some(c),
                    None => tracing::warn!(busid = self.busid, "reaped an URB we do not know"),
                },
                Err(Errno::AGAIN) => return None,
                Err(Errno::INTR) => continue,
                Err(e) => {
                    self.note(e);
                    return None;
                }
            }
        }
    }

    fn discard(&mut self, tag: u64) -> Result<(), DiscardError> {
        let Some(f) = self.in_flight.get(&tag) else {
            return Err(DiscardError::NotInFlight(tag));
        };
        let ptr = f.block.addr();
        match raw::discard_urb(self.fd.as_fd(), ptr) {
            Ok(()) => Ok(()),
            Err(Errno::NODEV) => {
                self.gone = true;
                Err(DiscardError::Gone)
            }
            Err(_) => Err(DiscardError::NotInFlight(tag)),
        }
    }

    fn drain(&mut self) -> Vec<Completion> {
        let tags: Vec<u64> = self.in_flight.keys().copied().collect();
        for tag in tags {
            let _ = self.discard(tag);
        }
        let mut out = Vec::new();
        while !self.in_flight.is_empty() {
            match raw::reap_urb(self.fd.as_fd(), true) {
                Ok(ptr) => out.extend(self.complete(ptr)),
                Err(Errno::INTR) => {}
                Err(e) => {
                    // ENODEV with URBs left: the kernel killed and dropped them on disconnect
                    // and no longer references their memory.
                    tracing::warn!(busid = self.busid, "drain: reap failed: {e}");
                    self.note(e);
                    let left: Vec<u64> = self.in_flight.keys().copied().collect();
                    for tag in left {
                        if let Some(f) = self.in_flight.remove(&tag) {
                            out.push(Completion {
                                tag,
                                status: -errno::ESHUTDOWN,
                                actual_length: 0,
                                iso_packets: Vec::new(),
                                error_count: 0,
                                start_frame: 0,
                                buf: f.urb.buf,
                            });
                        }
                    }
                }
            }
        }
        out
    }

    fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    fn poll_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn readiness(&self) -> Readiness {
        Readiness::Writable
    }

    fn is_gone(&self) -> bool {
        self.gone
    }

    fn instance(&self) -> u32 {
        self.instance
    }

    fn speed(&self) -> HostSpeed {
        self.speed
    }

    fn descriptors(&self) -> &Descriptors {
        &self.descriptors
    }

    fn active_config(&self) -> u8 {
        self.config
    }

    fn set_configuration(&mut self, value: u8) -> Result<(), CtrlError> {
        if value != 0 && self.descriptors.config(value).is_none() {
            return Err(CtrlError::Invalid);
        }
        // Interfaces must be released for the kernel to change configuration; it then binds
        // drivers to the new interfaces, which we detach again by claiming.
        self.release_claims(false);
        let arg = if value == 0 {
            u32::MAX
        } else {
            u32::from(value)
        };
        let r = raw::set_configuration(self.fd.as_fd(), arg);
        let r = self.ctrl(r);
        if r.is_ok() {
            self.config = value;
        }
        let claimed = self
            .claim_all()
            .map_err(|(_, e)| CtrlError::from_errno(e.raw_os_error()));
        r.and(claimed)
    }

    fn set_interface(&mut self, interface: u8, alt: u8) -> Result<(), CtrlError> {
        let r = raw::set_interface(self.fd.as_fd(), u32::from(interface), u32::from(alt));
        self.ctrl(r)
    }

    fn clear_halt(&mut self, endpoint: u8) -> Result<(), CtrlError> {
        let r = raw::clear_halt(self.fd.as_fd(), u32::from(endpoint));
        self.ctrl(r)
    }

    fn reset(&mut self) -> Result<(), CtrlError> {
        let r = raw::reset(self.fd.as_fd());
        self.ctrl(r)?;
        // The reset unbinds our claims (usbfs has no pre_reset/post_reset) and the kernel
        // then rebinds host drivers to the interfaces: claim every one again (a claim we
        // still held is simply taken again).
        self.claimed.clear();
        self.claim_all()
            .map_err(|(_, e)| CtrlError::from_errno(e.raw_os_error()))
    }

    fn release(&mut self) {
        if !self.gone {
            self.release_claims(true);
        }
        self.claimed.clear();
    }

    fn max_bulk_urb(&self) -> usize {
        self.caps.max_bulk_urb()
    }

    fn bulk_continuation(&self) -> bool {
        self.caps.bulk_continuation()
    }
}

impl Drop for UsbfsDevice {
    fn drop(&mut self) {
        self.release();
        // Field order drops `fd` first: closing it makes the kernel kill and forget every
        // in-flight URB before `in_flight` frees their blocks and buffers (contract 7).
    }
}
