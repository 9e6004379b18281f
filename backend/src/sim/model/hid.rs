//! HID boot keyboard: types its text as interrupt-IN reports; GET_REPORT, SET/GET_IDLE,
//! SET/GET_PROTOCOL, SET_REPORT (LEDs) and the report descriptor.

use std::time::{Duration, Instant};

use super::{build_descriptors, Alt, Ep, Io, Model, Poll, Setup};
use crate::host::desc::{dt, Descriptors};
use crate::host::HostSpeed;

/// The standard boot keyboard report descriptor (HID 1.11 appendix B.1).
pub const REPORT_DESCRIPTOR: &[u8] = &[
    0x05, 0x01, 0x09, 0x06, 0xa1, 0x01, 0x05, 0x07, 0x19, 0xe0, 0x29, 0xe7, 0x15, 0x00, 0x25, 0x01,
    0x75, 0x01, 0x95, 0x08, 0x81, 0x02, 0x95, 0x01, 0x75, 0x08, 0x81, 0x01, 0x95, 0x05, 0x75, 0x01,
    0x05, 0x08, 0x19, 0x01, 0x29, 0x05, 0x91, 0x02, 0x95, 0x01, 0x75, 0x03, 0x91, 0x01, 0x95, 0x06,
    0x75, 0x08, 0x15, 0x00, 0x25, 0x65, 0x05, 0x07, 0x19, 0x00, 0x29, 0x65, 0x81, 0x00, 0xc0,
];

/// Report interval (bInterval, ms).
const INTERVAL: u8 = 10;

fn hid_descriptor() -> Vec<u8> {
    let len = (REPORT_DESCRIPTOR.len() as u16).to_le_bytes();
    vec![9, dt::HID, 0x11, 0x01, 0, 1, dt::HID_REPORT, len[0], len[1]]
}

/// Descriptors: HID boot keyboard, interrupt EP 0x81, 8-byte reports.
pub fn descriptors(speed: HostSpeed) -> Descriptors {
    build_descriptors(
        speed,
        [0, 0, 0],
        (0x1209, 0x0003),
        &[Alt {
            number: 0,
            alt: 0,
            class: [0x03, 0x01, 0x01],
            extra: hid_descriptor(),
            endpoints: vec![Ep {
                address: 0x81,
                attributes: 3,
                max_packet: 8,
                interval: INTERVAL,
            }],
        }],
    )
}

/// Boot-protocol report for one character: (modifiers, usage), or `None` if untypable.
pub fn key_for(c: char) -> Option<(u8, u8)> {
    const SHIFT: u8 = 0x02;
    Some(match c {
        'a'..='z' => (0, 4 + (c as u8 - b'a')),
        'A'..='Z' => (SHIFT, 4 + (c as u8 - b'A')),
        '1'..='9' => (0, 30 + (c as u8 - b'1')),
        '0' => (0, 39),
        '\n' => (0, 40),
        ' ' => (0, 44),
        '-' => (0, 45),
        '.' => (0, 55),
        _ => return None,
    })
}

/// The keyboard model.
#[derive(Debug)]
pub struct Keyboard {
    /// Reports still to send: press, release, press, release...
    script: Vec<[u8; 8]>,
    next: usize,
    next_at: Option<Instant>,
    last: [u8; 8],
    last_sent: Option<Instant>,
    idle: Duration,
    protocol: u8,
    leds: u8,
}

impl Keyboard {
    /// A keyboard that will type `text`.
    pub fn new(text: &str) -> Self {
        let script = text
            .chars()
            .filter_map(key_for)
            .flat_map(|(m, k)| [[m, 0, k, 0, 0, 0, 0, 0], [0; 8]])
            .collect();
        Keyboard {
            script,
            next: 0,
            next_at: None,
            last: [0; 8],
            last_sent: None,
            idle: Duration::ZERO,
            protocol: 1,
            leds: 0,
        }
    }

    /// LED state from the last SET_REPORT.
    pub fn leds(&self) -> u8 {
        self.leds
    }
}

impl Model for Keyboard {
    fn control(&mut self, setup: Setup, io: &mut Io<'_>) -> Poll {
        let [lo, hi] = setup.value.to_le_bytes();
        match (setup.request_type, setup.request) {
            (0x81, 6) if hi == dt::HID_REPORT => {
                io.push(REPORT_DESCRIPTOR);
                Poll::Ok
            }
            (0x81, 6) if hi == dt::HID => {
                io.push(&hid_descriptor());
                Poll::Ok
            }
            (0xa1, 0x01) => {
                io.push(&self.last);
                Poll::Ok
            }
            (0xa1, 0x02) => {
                io.push(&[u8::try_from(self.idle.as_millis() / 4).unwrap_or(u8::MAX)]);
                Poll::Ok
            }
            (0xa1, 0x03) => {
                io.push(&[self.protocol]);
                Poll::Ok
            }
            (0x21, 0x09) => {
                let mut led = [0u8; 1];
                if io.read(0, &mut led) {
                    self.leds = led[0];
                }
                io.set_actual(io.len());
                Poll::Ok
            }
            (0x21, 0x0a) => {
                self.idle = Duration::from_millis(u64::from(hi) * 4);
                Poll::Ok
            }
            (0x21, 0x0b) if lo <= 1 => {
                self.protocol = lo;
                Poll::Ok
            }
            _ => Poll::Stall,
        }
    }

    fn transfer(&mut self, ep: u8, io: &mut Io<'_>, now: Instant) -> Poll {
        if ep != 0x81 {
            return Poll::Stall;
        }
        let next_at = *self.next_at.get_or_insert(now);
        if self.next < self.script.len() && now >= next_at {
            self.last = self.script[self.next];
            self.next += 1;
            self.next_at = Some(now + Duration::from_millis(u64::from(INTERVAL)));
        } else if self.idle.is_zero() || self.last_sent.is_some_and(|t| now < t + self.idle) {
            return Poll::Pending;
        }
        self.last_sent = Some(now);
        io.push(&self.last);
        Poll::Ok
    }

    fn next_wakeup(&self) -> Option<Instant> {
        let typing = self.next_at.filter(|_| self.next < self.script.len());
        let repeat = self
            .last_sent
            .filter(|_| !self.idle.is_zero())
            .map(|t| t + self.idle);
        typing.into_iter().chain(repeat).min()
    }

    fn reset(&mut self) {
        self.idle = Duration::ZERO;
        self.protocol = 1;
    }
}
