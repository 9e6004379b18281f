//! Loopback (the benchmark device): bulk EP 1 OUT data comes back on EP 1 IN, interrupt
//! EP 2 OUT data on EP 2 IN, each in order.

use std::collections::VecDeque;
use std::time::Instant;

use super::{build_descriptors, bulk_mps, Alt, Ep, Io, Model, Poll};
use crate::host::desc::Descriptors;
use crate::host::HostSpeed;

/// Largest interrupt packet: what full speed allows, so one descriptor fits every speed.
const INT_MPS: u16 = 64;

/// Descriptors: vendor class, one interface, bulk EP 0x81 IN + 0x01 OUT, interrupt EP 0x82
/// IN + 0x02 OUT (every (micro)frame).
pub fn descriptors(speed: HostSpeed) -> Descriptors {
    let mps = bulk_mps(speed);
    build_descriptors(
        speed,
        [0xff, 0, 0],
        (0x1209, 0x0001),
        &[Alt::vendor(
            0,
            vec![
                Ep {
                    address: 0x81,
                    attributes: 2,
                    max_packet: mps,
                    interval: 0,
                },
                Ep {
                    address: 0x01,
                    attributes: 2,
                    max_packet: mps,
                    interval: 0,
                },
                Ep {
                    address: 0x82,
                    attributes: 3,
                    max_packet: INT_MPS,
                    interval: 1,
                },
                Ep {
                    address: 0x02,
                    attributes: 3,
                    max_packet: INT_MPS,
                    interval: 1,
                },
            ],
        )],
    )
}

/// Drained records kept for reuse, so a device that echoes steadily allocates (and
/// zeroes) nothing per transfer, as a device's own buffer memory is there already.
const SPARE_RECORDS: usize = 64;

/// One echo buffer. Each OUT transfer is one record: an IN URB returns at most one
/// record's bytes (a shorter IN takes a prefix and leaves the rest), so transfer boundaries
/// survive.
#[derive(Debug)]
struct Echo {
    capacity: usize,
    queued: usize,
    records: VecDeque<(Vec<u8>, usize)>,
    spare: Vec<Vec<u8>>,
}

impl Echo {
    fn new(capacity: usize) -> Self {
        Echo {
            capacity: capacity.max(1),
            queued: 0,
            records: VecDeque::new(),
            spare: Vec::new(),
        }
    }

    fn out(&mut self, io: &mut Io<'_>) -> Poll {
        if self.queued > 0 && self.queued + io.len() > self.capacity {
            return Poll::Pending;
        }
        let mut data = self.spare.pop().unwrap_or_default();
        // Only growth is zeroed; every byte kept is then overwritten by the read.
        data.resize(io.len(), 0);
        if !io.read(0, &mut data) {
            data.fill(0);
        }
        io.set_actual(data.len());
        self.queued += data.len();
        self.records.push_back((data, 0));
        Poll::Ok
    }

    fn inp(&mut self, io: &mut Io<'_>) -> Poll {
        let Some((rec, pos)) = self.records.front_mut() else {
            return Poll::Pending;
        };
        let n = io.push(rec.get(*pos..).unwrap_or_default());
        *pos += n;
        self.queued -= n;
        if *pos >= rec.len() {
            if let Some((rec, _)) = self.records.pop_front() {
                if self.spare.len() < SPARE_RECORDS {
                    self.spare.push(rec);
                }
            }
        }
        Poll::Ok
    }

    fn clear(&mut self) {
        self.records.clear();
        self.queued = 0;
    }
}

/// The bulk and interrupt echo buffers.
#[derive(Debug)]
pub struct Loopback {
    bulk: Echo,
    int: Echo,
}

impl Loopback {
    /// An empty loopback buffering up to `capacity` bytes per endpoint pair.
    pub fn new(capacity: usize) -> Self {
        Loopback {
            bulk: Echo::new(capacity),
            int: Echo::new(capacity),
        }
    }
}

impl Model for Loopback {
    fn transfer(&mut self, ep: u8, io: &mut Io<'_>, _now: Instant) -> Poll {
        match ep {
            0x01 => self.bulk.out(io),
            0x81 => self.bulk.inp(io),
            0x02 => self.int.out(io),
            0x82 => self.int.inp(io),
            _ => Poll::Stall,
        }
    }

    fn reset(&mut self) {
        self.bulk.clear();
        self.int.clear();
    }
}
