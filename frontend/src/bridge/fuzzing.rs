//! Fuzz driver for the bridge: arbitrary bytes as the device's enumeration answers, then
//! as client commands and control completions. Shared by `fuzz/` and a proptest.

use pvusb_ring::wire::Port;

use super::{Bridge, Mapped};
use crate::usbip::{CmdSubmit, Direction, IsoPacket, Speed, TransferFlags};

/// Runs `data` through enumeration and command mapping; panics only on a broken
/// invariant (a mapped transfer whose pipe is not on our port and address).
pub fn exercise(data: &[u8]) {
    let Some(port) = Port::new(data.first().map_or(1, |b| b % 31 + 1)) else {
        return;
    };
    let mut b = Bridge::new(port, Speed::High);
    let mut chunks = data.get(1..).unwrap_or_default().split(|&x| x == 0xa5);
    // Enumeration: each chunk is one answer (first byte: status 0 unless odd).
    while let Some(i) = b.next_internal() {
        let Some(c) = chunks.next() else { return };
        let status = if c.first().is_some_and(|s| s & 1 == 1) {
            -32
        } else {
            0
        };
        let len = usize::from(i.len()).min(c.len().saturating_sub(1));
        if b.internal_done(status, c.get(1..1 + len).unwrap_or_default())
            .is_err()
        {
            return;
        }
    }
    let _ = b.exported(1, "1-1".into());
    for c in chunks {
        let byte = |i: usize| c.get(i).copied().unwrap_or(0);
        let mut setup = [0u8; 8];
        for (k, s) in setup.iter_mut().enumerate() {
            *s = byte(3 + k);
        }
        let length = u32::from(u16::from_le_bytes([byte(1), byte(2)]));
        let npk = usize::from(byte(11) % 4);
        let cmd = CmdSubmit {
            seqnum: 1,
            ep: byte(0) & 0x0f,
            dir: if byte(0) & 0x80 != 0 {
                Direction::In
            } else {
                Direction::Out
            },
            flags: TransferFlags::from_bits_truncate(u32::from(byte(12))),
            length,
            setup,
            iso: (0..npk)
                .map(|k| IsoPacket {
                    offset: 0,
                    length: u32::try_from(k).unwrap_or(0),
                    ..IsoPacket::default()
                })
                .collect(),
            ..CmdSubmit::default()
        };
        if let Mapped::Transfer(t) = b.map_submit(&cmd) {
            assert_eq!(t.pipe.port(), port.get());
            assert_eq!(t.pipe.devnum(), b.addr());
            assert_eq!(t.shape.len, length);
        }
        b.observe_control(&setup, if byte(13) & 1 == 0 { 0 } else { -32 });
    }
}
