//! Device models: the `Model` trait the simulated bus drives, and a descriptor builder.

pub mod hid;
pub mod iso;
pub mod iso_loopback;
pub mod loopback;
pub mod scsi;
pub mod storage;

use std::path::Path;
use std::time::Instant;

use crate::host::desc::{dt, Descriptors};
use crate::host::{HostSpeed, IsoPacketResult, UrbBuf};
use crate::sim::spec::{DeviceSpec, ModelSpec};

/// A control request's setup packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setup {
    pub request_type: u8,
    pub request: u8,
    pub value: u16,
    pub index: u16,
    pub length: u16,
}

impl Setup {
    /// Decodes the 8 setup bytes.
    pub fn parse(b: [u8; 8]) -> Self {
        Setup {
            request_type: b[0],
            request: b[1],
            value: u16::from_le_bytes([b[2], b[3]]),
            index: u16::from_le_bytes([b[4], b[5]]),
            length: u16::from_le_bytes([b[6], b[7]]),
        }
    }

    /// Data stage is device → host.
    pub fn is_in(&self) -> bool {
        self.request_type & 0x80 != 0
    }
}

/// How a model finished (or did not finish) a transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Poll {
    /// The device NAKs: try again later (after another endpoint moved, or `next_wakeup`).
    Pending,
    /// Done, with `io.actual()` bytes moved.
    Ok,
    /// The device answered STALL: the endpoint halts (ep 0: just this request fails).
    Stall,
    /// A transfer error, as a positive errno.
    Error(i32),
}

/// A view of one URB's data stage for a model: OUT data to consume or IN space to fill.
#[derive(Debug)]
pub struct Io<'a> {
    buf: &'a mut UrbBuf,
    start: usize,
    len: usize,
    actual: usize,
}

impl<'a> Io<'a> {
    /// Data stage of `len` bytes starting at `start` in `buf` (clamped to the buffer).
    pub fn new(buf: &'a mut UrbBuf, start: usize, len: usize) -> Self {
        let start = start.min(buf.len());
        let len = len.min(buf.len() - start);
        Io {
            buf,
            start,
            len,
            actual: 0,
        }
    }

    /// Requested length of the data stage.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if there is no data stage.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes moved so far.
    pub fn actual(&self) -> usize {
        self.actual
    }

    /// IN space not yet filled.
    pub fn remaining(&self) -> usize {
        self.len - self.actual
    }

    /// IN: appends as much of `data` as fits; returns how much.
    pub fn push(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.remaining());
        let at = self.start + self.actual;
        if n > 0 && self.buf.write_at(at, &data[..n]) {
            self.actual += n;
            n
        } else {
            0
        }
    }

    /// OUT: copies data-stage bytes `off..off + dst.len()` into `dst`; false if out of range.
    pub fn read(&self, off: usize, dst: &mut [u8]) -> bool {
        off.checked_add(dst.len())
            .is_some_and(|end| end <= self.len)
            && self.buf.read_at(self.start + off, dst)
    }

    /// Writes `data` at `off` of the data stage (iso packets); false if out of range.
    pub fn write_at(&mut self, off: usize, data: &[u8]) -> bool {
        off.checked_add(data.len())
            .is_some_and(|end| end <= self.len)
            && self.buf.write_at(self.start + off, data)
    }

    /// Records `n` bytes as moved (OUT: consumed), clamped to the length.
    pub fn set_actual(&mut self, n: usize) {
        self.actual = n.min(self.len);
    }
}

/// A simulated device's behaviour. The bus layer (`sim::core`) handles descriptors, standard
/// requests, endpoint validation, halts, ordering and faults; a model only moves data.
pub trait Model: Send + std::fmt::Debug {
    /// Class/vendor control requests (and standard ones the bus layer does not handle).
    fn control(&mut self, setup: Setup, io: &mut Io<'_>) -> Poll {
        let _ = (setup, io);
        Poll::Stall
    }

    /// A bulk or interrupt transfer on endpoint `ep` (address). A model without such
    /// endpoints never sees one (the core refuses URBs for endpoints the descriptors lack);
    /// the default stalls, as a device does for an endpoint it does not serve.
    fn transfer(&mut self, ep: u8, io: &mut Io<'_>, now: Instant) -> Poll {
        let _ = (ep, io, now);
        Poll::Stall
    }

    /// An iso transfer on `ep` starting at `frame`: fill each packet of `lengths` (laid out back
    /// to back in `io`) and report each one's result.
    fn iso(
        &mut self,
        ep: u8,
        frame: u64,
        lengths: &[u32],
        io: &mut Io<'_>,
    ) -> Vec<IsoPacketResult> {
        let _ = (ep, frame, io);
        lengths
            .iter()
            .map(|_| IsoPacketResult {
                actual_length: 0,
                status: -crate::host::errno::EPROTO,
            })
            .collect()
    }

    /// The host cleared a halt on `ep` (BOT uses this for reset recovery).
    fn clear_halt(&mut self, ep: u8) {
        let _ = ep;
    }

    /// Alternate setting `alt` of `interface` became active.
    fn set_interface(&mut self, interface: u8, alt: u8) {
        let _ = (interface, alt);
    }

    /// Port reset or configuration change: back to the power-on state (media kept).
    fn reset(&mut self) {}

    /// When a pending transfer may make progress on its own (a key press, ...).
    fn next_wakeup(&self) -> Option<Instant> {
        None
    }
}

/// Static identity of a model: what the sysfs tree shows and GET_DESCRIPTOR returns.
#[derive(Clone, Debug)]
pub struct Identity {
    pub descriptors: Descriptors,
    /// String descriptors 1.. (manufacturer, product, serial).
    pub strings: Vec<String>,
    pub speed: HostSpeed,
}

impl Identity {
    /// String descriptor `index` (0 = language list) as bytes.
    pub fn string_descriptor(&self, index: u8) -> Option<Vec<u8>> {
        let units: Vec<u16> = if index == 0 {
            vec![0x0409]
        } else {
            self.strings
                .get(usize::from(index) - 1)?
                .encode_utf16()
                .take(126)
                .collect()
        };
        let mut v = vec![(2 + 2 * units.len()) as u8, dt::STRING];
        units
            .iter()
            .for_each(|u| v.extend_from_slice(&u.to_le_bytes()));
        Some(v)
    }
}

/// One endpoint for the builder.
#[derive(Clone, Copy, Debug)]
pub struct Ep {
    pub address: u8,
    /// 1 iso, 2 bulk, 3 interrupt.
    pub attributes: u8,
    pub max_packet: u16,
    pub interval: u8,
}

/// One interface alt setting for the builder; `extra` goes between it and its endpoints.
#[derive(Clone, Debug)]
pub struct Alt {
    pub number: u8,
    pub alt: u8,
    pub class: [u8; 3],
    pub extra: Vec<u8>,
    pub endpoints: Vec<Ep>,
}

impl Alt {
    /// Interface 0, alt setting `alt`, vendor-specific class, no class descriptors.
    pub fn vendor(alt: u8, endpoints: Vec<Ep>) -> Alt {
        Alt {
            number: 0,
            alt,
            class: [0xff, 0, 0],
            extra: Vec::new(),
            endpoints,
        }
    }
}

/// Builds device + single-configuration descriptors the way a real device would send them.
pub fn build_descriptors(
    speed: HostSpeed,
    class: [u8; 3],
    vid_pid: (u16, u16),
    alts: &[Alt],
) -> Descriptors {
    let superspeed = speed.needs_ep0_fixup();
    let (bcd_usb, mps0): (u16, u8) = match speed {
        HostSpeed::Low => (0x0110, 8),
        HostSpeed::Full => (0x0110, 64),
        HostSpeed::High | HostSpeed::Wireless => (0x0200, 64),
        HostSpeed::Super | HostSpeed::SuperPlus => (0x0300, 9),
    };
    let mut dev = vec![18, dt::DEVICE];
    dev.extend_from_slice(&bcd_usb.to_le_bytes());
    dev.extend_from_slice(&[class[0], class[1], class[2], mps0]);
    dev.extend_from_slice(&vid_pid.0.to_le_bytes());
    dev.extend_from_slice(&vid_pid.1.to_le_bytes());
    dev.extend_from_slice(&0x0100u16.to_le_bytes());
    dev.extend_from_slice(&[1, 2, 3, 1]);
    let mut body = Vec::new();
    for a in alts {
        body.extend_from_slice(&[9, dt::INTERFACE, a.number, a.alt, a.endpoints.len() as u8]);
        body.extend_from_slice(&[a.class[0], a.class[1], a.class[2], 0]);
        body.extend_from_slice(&a.extra);
        for e in &a.endpoints {
            body.extend_from_slice(&[7, dt::ENDPOINT, e.address, e.attributes]);
            body.extend_from_slice(&e.max_packet.to_le_bytes());
            body.push(e.interval);
            if superspeed {
                body.extend_from_slice(&[6, 0x30, 0, 0, 0, 0]);
            }
        }
    }
    let num_ifaces = {
        let mut n: Vec<u8> = alts.iter().map(|a| a.number).collect();
        n.dedup();
        n.len() as u8
    };
    let total = (9 + body.len()) as u16;
    let mut raw = vec![9, dt::CONFIG];
    raw.extend_from_slice(&total.to_le_bytes());
    raw.extend_from_slice(&[num_ifaces, 1, 0, 0x80, 50]);
    raw.extend_from_slice(&body);
    dev.extend_from_slice(&raw);
    // The builder's output is well-formed by construction; the parser checks it anyway.
    Descriptors::parse(&dev).unwrap_or_else(|_| Descriptors {
        device: crate::host::desc::DeviceDescriptor::parse(&dev[..18]).unwrap_or(FALLBACK_DEV),
        device_raw: [0; 18],
        configs: Vec::new(),
    })
}

const FALLBACK_DEV: crate::host::desc::DeviceDescriptor = crate::host::desc::DeviceDescriptor {
    bcd_usb: 0,
    class: 0,
    subclass: 0,
    protocol: 0,
    max_packet_size0: 0,
    id_vendor: 0,
    id_product: 0,
    bcd_device: 0,
    i_manufacturer: 0,
    i_product: 0,
    i_serial: 0,
    num_configurations: 0,
};

/// Bulk max packet size for a speed.
pub fn bulk_mps(speed: HostSpeed) -> u16 {
    match speed {
        HostSpeed::Low | HostSpeed::Full => 64,
        HostSpeed::High | HostSpeed::Wireless => 512,
        HostSpeed::Super | HostSpeed::SuperPlus => 1024,
    }
}

/// The identity `spec` describes (no files touched).
pub fn identity(spec: &DeviceSpec, serial: &str) -> Identity {
    let speed = spec.speed.unwrap_or(match spec.model {
        ModelSpec::Keyboard { .. } => HostSpeed::Full,
        ModelSpec::IsoSource { .. } | ModelSpec::IsoLoopback { .. } => HostSpeed::Full,
        _ => HostSpeed::High,
    });
    let (descriptors, product) = match &spec.model {
        ModelSpec::Storage { .. } => (storage::descriptors(speed), "pvusb sim disk"),
        ModelSpec::Keyboard { .. } => (hid::descriptors(speed), "pvusb sim keyboard"),
        ModelSpec::Loopback { .. } => (loopback::descriptors(speed), "pvusb sim loopback"),
        ModelSpec::IsoSource { packet_size } => (
            iso::descriptors(speed, *packet_size),
            "pvusb sim iso source",
        ),
        ModelSpec::IsoLoopback { packet_size } => (
            iso_loopback::descriptors(speed, *packet_size),
            "pvusb sim iso loopback",
        ),
    };
    Identity {
        descriptors,
        strings: vec!["pvusb".into(), product.into(), serial.into()],
        speed,
    }
}

/// Why a model could not start.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("disk image {path}: {source}")]
    Disk {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Instantiates the model `spec` describes; `state_dir` holds its persistent files.
pub fn instantiate(
    spec: &DeviceSpec,
    identity: &Identity,
    state_dir: &Path,
) -> Result<Box<dyn Model>, ModelError> {
    Ok(match &spec.model {
        ModelSpec::Storage { size_bytes } => Box::new(storage::Storage::open(
            &state_dir.join("disk.img"),
            *size_bytes,
            identity.strings.get(2).map(String::as_str).unwrap_or(""),
            identity.speed,
        )?),
        ModelSpec::Keyboard { text } => Box::new(hid::Keyboard::new(text)),
        ModelSpec::Loopback { capacity } => Box::new(loopback::Loopback::new(*capacity)),
        ModelSpec::IsoSource { packet_size } => Box::new(iso::IsoSource::new(*packet_size)),
        ModelSpec::IsoLoopback { .. } => Box::new(iso_loopback::IsoLoopback::new()),
    })
}
