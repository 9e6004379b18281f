//! USB mass storage, Bulk-Only Transport (BOT 1.0) over `scsi::Lun`, disk in a file.
//!
//! Phase handling follows BOT §6.7's thirteen cases: when the device has less data than the
//! host asked for it ends with a short packet, or STALLs the bulk-in pipe when the data ended
//! on a packet boundary; host/device direction mismatches STALL and report phase error; an
//! invalid or unexpected CBW STALLs both pipes until a Bulk-Only Mass Storage Reset
//! (§6.6.1: CLEAR_HALT alone does not recover).

use std::path::Path;
use std::time::Instant;

use super::scsi::{Data, Lun, Source, BLOCK};
use super::{build_descriptors, bulk_mps, Alt, Ep, Io, Model, ModelError, Poll, Setup};
use crate::host::desc::Descriptors;
use crate::host::HostSpeed;

const CBW_SIG: u32 = 0x4342_5355;
const CSW_SIG: u32 = 0x5342_5355;
const EP_IN: u8 = 0x81;
const EP_OUT: u8 = 0x02;

/// Descriptors: mass storage class, SCSI transparent, BOT; bulk 0x81 IN, 0x02 OUT.
pub fn descriptors(speed: HostSpeed) -> Descriptors {
    let mps = bulk_mps(speed);
    build_descriptors(
        speed,
        [0, 0, 0],
        (0x1209, 0x0002),
        &[Alt {
            number: 0,
            alt: 0,
            class: [0x08, 0x06, 0x50],
            extra: Vec::new(),
            endpoints: vec![
                Ep {
                    address: EP_IN,
                    attributes: 2,
                    max_packet: mps,
                    interval: 0,
                },
                Ep {
                    address: EP_OUT,
                    attributes: 2,
                    max_packet: mps,
                    interval: 0,
                },
            ],
        }],
    )
}

/// CSW status byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum CswStatus {
    Passed = 0,
    Failed = 1,
    PhaseError = 2,
}

#[derive(Debug)]
enum State {
    /// Waiting for a CBW on bulk-out.
    Cbw,
    /// Sending data on bulk-in. `host_left` = what the host still expects.
    DataIn {
        tag: u32,
        src: Source,
        pos: u64,
        host_left: u64,
        status: CswStatus,
    },
    /// Receiving data on bulk-out; bytes beyond `dev_len` (or all, if `!write`) are dropped.
    DataOut {
        tag: u32,
        offset: u64,
        dev_len: u64,
        got: u64,
        host_left: u64,
        write: bool,
        status: CswStatus,
    },
    /// Bulk-out STALLs (case 10), then the CSW.
    StallOut {
        tag: u32,
        residue: u32,
        status: CswStatus,
    },
    /// Bulk-in STALLs once (data ended on a packet boundary / cases 4, 8), then the CSW.
    StallIn {
        tag: u32,
        residue: u32,
        status: CswStatus,
    },
    /// The CSW goes out on the next bulk-in.
    Csw {
        tag: u32,
        residue: u32,
        status: CswStatus,
    },
    /// Invalid CBW: both pipes STALL until a mass storage reset.
    NeedsReset,
}

/// The storage device model.
#[derive(Debug)]
pub struct Storage {
    lun: Lun,
    state: State,
    mps: u64,
    scratch: Vec<u8>,
}

impl Storage {
    /// Opens (creating or growing as needed) the disk image at `path` of `size` bytes, for a
    /// device running at `speed` (which sets the bulk packet size).
    pub fn open(
        path: &Path,
        size: u64,
        serial: &str,
        speed: HostSpeed,
    ) -> Result<Self, ModelError> {
        let err = |source| ModelError::Disk {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(err)?;
        let size = size - size % BLOCK;
        if file.metadata().map_err(err)?.len() < size {
            file.set_len(size).map_err(err)?;
        }
        Ok(Self::with_lun(Lun::new(file, size / BLOCK, serial), speed))
    }

    /// A storage device over `lun`, with bulk packets of `speed`.
    pub fn with_lun(lun: Lun, speed: HostSpeed) -> Self {
        Storage {
            lun,
            state: State::Cbw,
            mps: u64::from(bulk_mps(speed)),
            scratch: Vec::new(),
        }
    }

    fn csw(tag: u32, residue: u32, status: CswStatus) -> [u8; 13] {
        let mut c = [0u8; 13];
        c[..4].copy_from_slice(&CSW_SIG.to_le_bytes());
        c[4..8].copy_from_slice(&tag.to_le_bytes());
        c[8..12].copy_from_slice(&residue.to_le_bytes());
        c[12] = status as u8;
        c
    }

    fn on_cbw(&mut self, io: &mut Io<'_>) -> Poll {
        let mut cbw = [0u8; 31];
        if io.len() != 31 || !io.read(0, &mut cbw) {
            self.state = State::NeedsReset;
            return Poll::Stall;
        }
        io.set_actual(31);
        let le32 = |at: usize| u32::from_le_bytes([cbw[at], cbw[at + 1], cbw[at + 2], cbw[at + 3]]);
        let cb_len = usize::from(cbw[14] & 0x1f);
        if le32(0) != CBW_SIG || cbw[13] & 0x0f != 0 || !(1..=16).contains(&cb_len) {
            self.state = State::NeedsReset;
            return Poll::Stall;
        }
        let tag = le32(4);
        let host_len = u64::from(le32(8));
        let host_in = cbw[12] & 0x80 != 0;
        let out = self.lun.execute(&cbw[15..15 + cb_len]);
        let status = if out.good {
            CswStatus::Passed
        } else {
            CswStatus::Failed
        };
        let residue = le32(8);
        // A zero-length data phase (e.g. READ of 0 blocks) is no data phase.
        let data = match out.data {
            Data::In(src) if src.is_empty() => Data::None,
            Data::Out { len: 0, .. } => Data::None,
            d => d,
        };
        self.state = match (host_len, host_in, data) {
            (0, _, Data::None) => State::Csw {
                tag,
                residue: 0,
                status,
            },
            (0, _, _) => State::Csw {
                tag,
                residue: 0,
                status: CswStatus::PhaseError,
            },
            (_, true, Data::None) => State::DataIn {
                tag,
                src: Source::Bytes(Vec::new()),
                pos: 0,
                host_left: host_len,
                status,
            },
            (_, true, Data::In(src)) => {
                let status = if src.len() > host_len {
                    CswStatus::PhaseError
                } else {
                    status
                };
                State::DataIn {
                    tag,
                    src,
                    pos: 0,
                    host_left: host_len,
                    status,
                }
            }
            (_, true, Data::Out { .. }) => State::StallIn {
                tag,
                residue,
                status: CswStatus::PhaseError,
            },
            (_, false, Data::None) => State::DataOut {
                tag,
                offset: 0,
                dev_len: 0,
                got: 0,
                host_left: host_len,
                write: false,
                status,
            },
            (_, false, Data::In(_)) => State::StallOut {
                tag,
                residue,
                status: CswStatus::PhaseError,
            },
            (_, false, Data::Out { offset, len }) => {
                let (write, status) = if len > host_len {
                    (false, CswStatus::PhaseError)
                } else {
                    (true, status)
                };
                State::DataOut {
                    tag,
                    offset,
                    dev_len: len,
                    got: 0,
                    host_left: host_len,
                    write,
                    status,
                }
            }
        };
        Poll::Ok
    }

    fn data_in(&mut self, io: &mut Io<'_>) -> Poll {
        let State::DataIn {
            tag,
            src,
            pos,
            host_left,
            status,
        } = &mut self.state
        else {
            return Poll::Stall;
        };
        let dev_left = src.len() - *pos;
        let n = usize::try_from(dev_left.min(*host_left))
            .unwrap_or(usize::MAX)
            .min(io.len());
        match src {
            Source::Bytes(b) => {
                let start = usize::try_from(*pos).unwrap_or(usize::MAX);
                io.push(b.get(start..start.saturating_add(n)).unwrap_or_default());
            }
            Source::Disk { offset, .. } => {
                self.scratch.resize(n, 0);
                if !self.lun.read_disk(*offset + *pos, &mut self.scratch) {
                    *status = CswStatus::Failed;
                }
                io.push(&self.scratch);
            }
        }
        *pos += n as u64;
        *host_left -= n as u64;
        let (tag, status, residue) = (*tag, *status, u32::try_from(*host_left).unwrap_or(u32::MAX));
        let exhausted = *pos >= src.len();
        if *host_left == 0 {
            self.state = State::Csw {
                tag,
                residue,
                status,
            };
            Poll::Ok
        } else if exhausted && (n < io.len() && n as u64 % self.mps != 0) {
            // Short packet ends the data phase.
            self.state = State::Csw {
                tag,
                residue,
                status,
            };
            Poll::Ok
        } else if exhausted && n < io.len() {
            // Data ended on a packet boundary: STALL ends it (case 4/5).
            self.state = State::Csw {
                tag,
                residue,
                status,
            };
            Poll::Stall
        } else if exhausted {
            // The URB is full; the host will ask for more and get the STALL.
            self.state = State::StallIn {
                tag,
                residue,
                status,
            };
            Poll::Ok
        } else {
            Poll::Ok
        }
    }

    fn data_out(&mut self, io: &mut Io<'_>) -> Poll {
        let State::DataOut {
            tag,
            offset,
            dev_len,
            got,
            host_left,
            write,
            status,
        } = &mut self.state
        else {
            return Poll::Stall;
        };
        let n = usize::try_from(*host_left)
            .unwrap_or(usize::MAX)
            .min(io.len());
        let keep = usize::try_from(dev_len.saturating_sub(*got))
            .unwrap_or(usize::MAX)
            .min(n);
        if *write && keep > 0 {
            self.scratch.resize(keep, 0);
            if !io.read(0, &mut self.scratch) || !self.lun.write_disk(*offset + *got, &self.scratch)
            {
                *status = CswStatus::Failed;
            }
        }
        io.set_actual(n);
        *got += n as u64;
        *host_left -= n as u64;
        if *host_left == 0 {
            // Everything the device did not take counts as residue.
            let residue = if *write {
                *got - (*dev_len).min(*got)
            } else {
                *got
            };
            self.state = State::Csw {
                tag: *tag,
                residue: u32::try_from(residue).unwrap_or(u32::MAX),
                status: *status,
            };
        }
        Poll::Ok
    }
}

impl Model for Storage {
    fn control(&mut self, setup: Setup, io: &mut Io<'_>) -> Poll {
        match (setup.request_type, setup.request) {
            // Bulk-Only Mass Storage Reset.
            (0x21, 0xff) if setup.value == 0 && setup.length == 0 => {
                self.state = State::Cbw;
                Poll::Ok
            }
            // Get Max LUN.
            (0xa1, 0xfe) if setup.value == 0 && setup.length >= 1 => {
                io.push(&[0]);
                Poll::Ok
            }
            _ => Poll::Stall,
        }
    }

    fn transfer(&mut self, ep: u8, io: &mut Io<'_>, _now: Instant) -> Poll {
        match (ep, &self.state) {
            (_, State::NeedsReset) => Poll::Stall,
            (EP_OUT, State::Cbw) => self.on_cbw(io),
            (EP_OUT, State::DataOut { .. }) => self.data_out(io),
            (
                EP_OUT,
                State::StallOut {
                    tag,
                    residue,
                    status,
                },
            )
            | (
                EP_IN,
                State::StallIn {
                    tag,
                    residue,
                    status,
                },
            ) => {
                self.state = State::Csw {
                    tag: *tag,
                    residue: *residue,
                    status: *status,
                };
                Poll::Stall
            }
            (EP_OUT, _) => {
                // A CBW while a command is still open: the host lost track (§6.6.1).
                self.state = State::NeedsReset;
                Poll::Stall
            }
            (EP_IN, State::DataIn { .. }) => self.data_in(io),
            (
                EP_IN,
                State::Csw {
                    tag,
                    residue,
                    status,
                },
            ) => {
                io.push(&Self::csw(*tag, *residue, *status));
                self.state = State::Cbw;
                Poll::Ok
            }
            // Nothing to send: NAK until the host sends the next CBW.
            (EP_IN, _) => Poll::Pending,
            _ => Poll::Stall,
        }
    }

    fn reset(&mut self) {
        self.state = State::Cbw;
    }
}
