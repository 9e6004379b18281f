//! Bulk loopback: EP 1 OUT data comes back on EP 1 IN, in order (the benchmark device).

use std::collections::VecDeque;
use std::time::Instant;

use super::{build_descriptors, bulk_mps, Alt, Ep, Io, Model, Poll};
use crate::host::desc::Descriptors;
use crate::host::HostSpeed;

/// Descriptors: vendor class, one interface, bulk EP 0x81 IN + 0x01 OUT.
pub fn descriptors(speed: HostSpeed) -> Descriptors {
    let mps = bulk_mps(speed);
    build_descriptors(
        speed,
        [0xff, 0, 0],
        (0x1209, 0x0001),
        &[Alt {
            number: 0,
            alt: 0,
            class: [0xff, 0, 0],
            extra: Vec::new(),
            endpoints: vec![
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
            ],
        }],
    )
}

/// The echo buffer. Each OUT transfer is one record: an IN URB returns at most one record's
/// bytes (a shorter IN takes a prefix and leaves the rest), so transfer boundaries survive.
#[derive(Debug)]
pub struct Loopback {
    capacity: usize,
    queued: usize,
    records: VecDeque<(Vec<u8>, usize)>,
}

impl Loopback {
    /// An empty loopback buffering up to `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        Loopback {
            capacity: capacity.max(1),
            queued: 0,
            records: VecDeque::new(),
        }
    }
}

impl Model for Loopback {
    fn transfer(&mut self, ep: u8, io: &mut Io<'_>, _now: Instant) -> Poll {
        match ep {
            0x01 => {
                if self.queued > 0 && self.queued + io.len() > self.capacity {
                    return Poll::Pending;
                }
                let data = io.to_vec();
                io.set_actual(data.len());
                self.queued += data.len();
                self.records.push_back((data, 0));
                Poll::Ok
            }
            0x81 => {
                let Some((rec, pos)) = self.records.front_mut() else {
                    return Poll::Pending;
                };
                let n = io.push(rec.get(*pos..).unwrap_or_default());
                *pos += n;
                self.queued -= n;
                if *pos >= rec.len() {
                    self.records.pop_front();
                }
                Poll::Ok
            }
            _ => Poll::Stall,
        }
    }

    fn reset(&mut self) {
        self.records.clear();
        self.queued = 0;
    }
}
