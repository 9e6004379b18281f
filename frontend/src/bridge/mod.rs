//! One connected usbif port as a USB/IP device, without I/O: addressing and enumeration
//! through the backend's SET_ADDRESS emulation, the endpoint table (re-learnt after
//! SET_CONFIGURATION / SET_INTERFACE), and CMD_SUBMIT → usbif transfer mapping.
//!
//! The bridge never blocks: it names the next enumeration transfer to send
//! ([`Bridge::next_internal`]), is told how it ended ([`Bridge::internal_done`]), and once
//! [`Bridge::is_ready`] maps each client command ([`Bridge::map_submit`]).

pub mod desc;
#[doc(hidden)]
pub mod fuzzing;

use std::collections::HashMap;

use pvusb_ring::urb::split::Shape;
use pvusb_ring::wire::{Ep, Pipe, Port, XferType, ISO_DESC_SIZE, PAGE_SIZE};

use crate::usbip::{CmdSubmit, Completion, Direction, ExportedDevice, IsoPacket, Speed};
use desc::{DescError, DeviceDesc, EpInfo, EpTable};

// Standard requests the bridge looks at.
use pvusb_ring::wire::setup::request::{
    GET_CONFIGURATION, GET_DESCRIPTOR, SET_ADDRESS, SET_CONFIGURATION, SET_INTERFACE,
};
/// Most configurations read at enumeration (USB allows 255; real devices have 1-2).
const MAX_CONFIGS: u8 = 8;
/// Largest configuration descriptor accepted.
const MAX_CONFIG_LEN: u16 = 4096;
/// errno values for locally answered commands.
const EPIPE: i32 = -32;
const EINVAL: i32 = -22;

/// A control transfer on ep0 the bridge itself needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Internal {
    /// Device address to send it to (0 before SET_ADDRESS).
    pub devnum: u8,
    /// The SETUP packet.
    pub setup: [u8; 8],
}

impl Internal {
    /// The usbif pipe for this transfer on `port`.
    pub fn pipe(&self, port: Port) -> Pipe {
        let is_in = self.setup[0] & 0x80 != 0;
        Pipe::new(port.get(), self.devnum, Ep::new(0, is_in), XferType::Ctrl)
    }

    /// wLength.
    pub fn len(&self) -> u16 {
        u16::from_le_bytes([self.setup[6], self.setup[7]])
    }

    /// True for a transfer without data stage.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why enumeration failed; the port is left unexported.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnumError {
    /// A step's transfer failed.
    #[error("{step} failed with status {status}")]
    Transfer {
        /// What was being done.
        step: &'static str,
        /// The usbif status.
        status: i32,
    },
    /// The device returned an unusable descriptor.
    #[error("{step}: {source}")]
    Descriptor {
        /// What was being read.
        step: &'static str,
        /// What was wrong.
        source: DescError,
    },
    /// An internal completion arrived while none was outstanding (an engine bug).
    #[error("no enumeration step outstanding")]
    Unexpected,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    DeviceAt0,
    SetAddress,
    ConfigHeader(u8),
    Config(u8, u16),
    GetConfiguration,
    Ready,
}

/// How a client command is carried out.
#[derive(Debug, PartialEq, Eq)]
pub enum Mapped {
    /// Answer at once, without the backend (SET_ADDRESS, unknown endpoints).
    Local(Completion),
    /// Send it as a usbif transfer.
    Transfer(Transfer),
}

/// A client command turned into a usbif transfer.
#[derive(Debug, PartialEq, Eq)]
pub struct Transfer {
    /// The pipe (our port, our address, the endpoint and its learnt type).
    pub pipe: Pipe,
    /// Length, page layout (bounce buffers start page-aligned) and extra segments.
    pub shape: Shape,
    /// `USBIF_SHORT_NOT_OK`.
    pub short_not_ok: bool,
}

/// Segments an isochronous transfer of `packets` packets needs for its descriptors.
pub fn iso_desc_pages(packets: usize) -> u32 {
    let bytes = packets.saturating_mul(ISO_DESC_SIZE as usize);
    u32::try_from(bytes.div_ceil(PAGE_SIZE)).unwrap_or(u32::MAX)
}

/// The bridge of one connected port.
#[derive(Debug)]
pub struct Bridge {
    port: Port,
    speed: Speed,
    addr: u8,
    step: Step,
    outstanding: bool,
    dev: DeviceDesc,
    /// Configuration descriptors by index.
    configs: Vec<Vec<u8>>,
    active: u8,
    alts: HashMap<u8, u8>,
    eps: EpTable,
}

impl Bridge {
    /// A device of `speed` appeared on `port`; it will be given address `port`.
    pub fn new(port: Port, speed: Speed) -> Self {
        Bridge {
            port,
            speed,
            addr: port.get(),
            step: Step::DeviceAt0,
            outstanding: false,
            dev: DeviceDesc::default(),
            configs: Vec::new(),
            active: 0,
            alts: HashMap::new(),
            eps: EpTable::default(),
        }
    }

    /// The usbif port.
    pub fn port(&self) -> Port {
        self.port
    }

    /// The device's signalling speed.
    pub fn speed(&self) -> Speed {
        self.speed
    }

    /// The device address the bridge assigned.
    pub fn addr(&self) -> u8 {
        self.addr
    }

    /// Enumeration is complete; the device can be exported.
    pub fn is_ready(&self) -> bool {
        self.step == Step::Ready
    }

    /// The device descriptor (meaningful once ready).
    pub fn device(&self) -> &DeviceDesc {
        &self.dev
    }

    /// The endpoints of the active configuration and alternate settings.
    pub fn endpoints(&self) -> &EpTable {
        &self.eps
    }

    /// The next enumeration transfer to send, if one is due and none is outstanding.
    pub fn next_internal(&mut self) -> Option<Internal> {
        if self.outstanding {
            return None;
        }
        let (devnum, setup) = match self.step {
            Step::DeviceAt0 => (0, setup(0x80, GET_DESCRIPTOR, 0x0100, 0, 18)),
            Step::SetAddress => (0, setup(0x00, SET_ADDRESS, u16::from(self.addr), 0, 0)),
            Step::ConfigHeader(i) => (
                self.addr,
                setup(0x80, GET_DESCRIPTOR, 0x0200 | u16::from(i), 0, 9),
            ),
            Step::Config(i, len) => (
                self.addr,
                setup(0x80, GET_DESCRIPTOR, 0x0200 | u16::from(i), 0, len),
            ),
            Step::GetConfiguration => (self.addr, setup(0x80, GET_CONFIGURATION, 0, 0, 1)),
            Step::Ready => return None,
        };
        self.outstanding = true;
        Some(Internal { devnum, setup })
    }

    /// The outstanding enumeration transfer ended with `status` and IN `data`.
    pub fn internal_done(&mut self, status: i32, data: &[u8]) -> Result<(), EnumError> {
        if !std::mem::replace(&mut self.outstanding, false) {
            return Err(EnumError::Unexpected);
        }
        let step_name = match self.step {
            Step::DeviceAt0 => "GET_DESCRIPTOR(device) at address 0",
            Step::SetAddress => "SET_ADDRESS",
            Step::ConfigHeader(_) | Step::Config(..) => "GET_DESCRIPTOR(configuration)",
            Step::GetConfiguration => "GET_CONFIGURATION",
            Step::Ready => return Err(EnumError::Unexpected),
        };
        if status != 0 {
            return Err(EnumError::Transfer {
                step: step_name,
                status,
            });
        }
        let bad = |source| EnumError::Descriptor {
            step: step_name,
            source,
        };
        self.step = match self.step {
            Step::DeviceAt0 => {
                self.dev = DeviceDesc::parse(data).map_err(bad)?;
                Step::SetAddress
            }
            Step::SetAddress => self.first_config(),
            Step::ConfigHeader(i) => {
                let (total, _) = desc::config_header(data).map_err(bad)?;
                Step::Config(i, total.clamp(9, MAX_CONFIG_LEN))
            }
            Step::Config(i, _) => {
                desc::config_header(data).map_err(bad)?;
                self.configs.push(data.to_vec());
                let next = i.saturating_add(1);
                if next < self.dev.num_configurations.min(MAX_CONFIGS) {
                    Step::ConfigHeader(next)
                } else {
                    Step::GetConfiguration
                }
            }
            Step::GetConfiguration => {
                self.set_configuration(data.first().copied().unwrap_or(0));
                Step::Ready
            }
            Step::Ready => Step::Ready,
        };
        Ok(())
    }

    fn first_config(&self) -> Step {
        if self.dev.num_configurations == 0 {
            Step::GetConfiguration
        } else {
            Step::ConfigHeader(0)
        }
    }

    fn config(&self, value: u8) -> Option<&[u8]> {
        self.configs
            .iter()
            .find(|c| desc::config_header(c).is_ok_and(|(_, v)| v == value))
            .map(Vec::as_slice)
    }

    fn relearn(&mut self) {
        let alts = &self.alts;
        self.eps = match self.config(self.active) {
            Some(c) => desc::endpoints(c, |i| alts.get(&i).copied().unwrap_or(0)),
            None => EpTable::default(),
        };
    }

    fn set_configuration(&mut self, value: u8) {
        self.active = value;
        self.alts.clear();
        self.relearn();
    }

    /// What OP_REP_DEVLIST / OP_REP_IMPORT say about this device.
    pub fn exported(&self, busnum: u32, busid: String) -> ExportedDevice {
        let (class, sub_class, protocol) = self.dev.class;
        let interfaces = self
            .config(self.active)
            .or_else(|| self.configs.first().map(Vec::as_slice))
            .map(desc::interfaces)
            .unwrap_or_default();
        ExportedDevice {
            path: format!("/sys/devices/platform/pvusb/usb{busnum}/{busid}"),
            busid,
            busnum,
            devnum: u32::from(self.addr),
            speed: self.speed,
            id_vendor: self.dev.id_vendor,
            id_product: self.dev.id_product,
            bcd_device: self.dev.bcd_device,
            device_class: class,
            device_sub_class: sub_class,
            device_protocol: protocol,
            configuration_value: self.active,
            num_configurations: self.dev.num_configurations,
            interfaces,
        }
    }

    /// Maps a client command onto the device.
    pub fn map_submit(&self, cmd: &CmdSubmit) -> Mapped {
        let local = |status: i32| {
            Mapped::Local(Completion {
                status,
                iso: cmd
                    .iso
                    .iter()
                    .map(|p| IsoPacket {
                        actual_length: 0,
                        status,
                        ..*p
                    })
                    .collect(),
                ..Completion::default()
            })
        };
        let is_in = cmd.dir == Direction::In;
        let (xfer, max_packet) = if cmd.ep == 0 {
            // vhci swallows SET_ADDRESS; another USB/IP client may send one. The device
            // already has the address the bridge gave it: succeed without touching it.
            if cmd.setup[0] == 0x00 && cmd.setup[1] == SET_ADDRESS {
                return local(0);
            }
            (XferType::Ctrl, u16::from(self.dev.max_packet0))
        } else {
            match self.eps.get(cmd.ep, is_in) {
                Some(EpInfo { xfer, max_packet }) => (xfer, max_packet),
                None => return local(EPIPE),
            }
        };
        if (xfer == XferType::Isoc) == cmd.iso.is_empty() {
            return local(EINVAL);
        }
        // The buffers follow `direction`; a control transfer whose SETUP says otherwise
        // cannot be carried out consistently.
        if xfer == XferType::Ctrl && (cmd.setup[0] & 0x80 != 0) != is_in {
            return local(EINVAL);
        }
        let dir_in = is_in;
        Mapped::Transfer(Transfer {
            pipe: Pipe::new(self.port.get(), self.addr, Ep::new(cmd.ep, dir_in), xfer),
            shape: Shape {
                len: cmd.length,
                page_offset: 0,
                max_packet,
                extra_segs: if xfer == XferType::Isoc {
                    iso_desc_pages(cmd.iso.len())
                } else {
                    0
                },
            },
            short_not_ok: cmd
                .flags
                .contains(crate::usbip::TransferFlags::SHORT_NOT_OK),
        })
    }

    /// A control transfer with `setup` completed with `status`: a successful
    /// SET_CONFIGURATION or SET_INTERFACE changes which endpoints exist.
    pub fn observe_control(&mut self, setup: &[u8; 8], status: i32) {
        if status != 0 {
            return;
        }
        let value = u16::from_le_bytes([setup[2], setup[3]]);
        let index = u16::from_le_bytes([setup[4], setup[5]]);
        match (setup[0], setup[1]) {
            (0x00, SET_CONFIGURATION) => self.set_configuration(value.to_le_bytes()[0]),
            (0x01, SET_INTERFACE) => {
                self.alts
                    .insert(index.to_le_bytes()[0], value.to_le_bytes()[0]);
                self.relearn();
            }
            _ => {}
        }
    }
}

fn setup(request_type: u8, request: u8, value: u16, index: u16, length: u16) -> [u8; 8] {
    let [v0, v1] = value.to_le_bytes();
    let [i0, i1] = index.to_le_bytes();
    let [l0, l1] = length.to_le_bytes();
    [request_type, request, v0, v1, i0, i1, l0, l1]
}

#[cfg(test)]
mod tests;
