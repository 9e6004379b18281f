//! Tests for the simulated disk (compiled only under `#[cfg(test)]`, see sim/mod.rs).
//!
//! The simulated disk driven like Linux usb-storage: BOT transactions, stalls, reset
//! recovery, persistence across reopen, and a proptest over random valid/invalid sequences.

use proptest::prelude::*;

use super::tests::{open, reap_n};
use super::*;
use crate::host::{errno, Completion, HostDevice, HostUrb, UrbBuf, UrbFlags, XferKind};

const BLOCKS: u64 = 16;

/// A minimal BOT host, like usb-storage's transport.c.
struct Host<'a> {
    dev: &'a mut SimDevice,
    tag: u64,
}

/// What one command returned: CSW status (None if the CBW was rejected), residue, IN data.
#[derive(Debug)]
struct Reply {
    csw: Option<(u8, u32)>,
    data: Vec<u8>,
}

impl Host<'_> {
    fn xfer(&mut self, kind: XferKind, ep: u8, buf: UrbBuf) -> Completion {
        self.tag += 1;
        self.dev
            .submit(HostUrb::new(self.tag, kind, ep, UrbFlags::empty(), buf))
            .unwrap();
        reap_n(self.dev, 1).pop().unwrap()
    }

    fn reset_recovery(&mut self) {
        let c = self.xfer(
            XferKind::Control,
            0,
            UrbBuf::from_vec(vec![0x21, 0xff, 0, 0, 0, 0, 0, 0]),
        );
        assert_eq!(c.status, 0);
        self.dev.clear_halt(0x81).unwrap();
        self.dev.clear_halt(0x02).unwrap();
    }

    fn raw_cbw(&mut self, cbw: Vec<u8>) -> bool {
        let c = self.xfer(XferKind::Bulk, 0x02, UrbBuf::from_vec(cbw));
        if c.status == -errno::EPIPE {
            // Invalid CBW: both pipes stall until reset recovery.
            let c = self.xfer(XferKind::Bulk, 0x81, UrbBuf::zeroed(13));
            assert_eq!(c.status, -errno::EPIPE);
            self.reset_recovery();
            return false;
        }
        assert_eq!(c.status, 0);
        true
    }

    fn command(&mut self, cdb: &[u8], dir_in: bool, len: u32, out: &[u8]) -> Reply {
        let mut cbw = vec![0x55, 0x53, 0x42, 0x43];
        cbw.extend_from_slice(&(self.tag as u32).to_le_bytes());
        cbw.extend_from_slice(&len.to_le_bytes());
        cbw.extend_from_slice(&[if dir_in { 0x80 } else { 0 }, 0, cdb.len() as u8]);
        cbw.extend_from_slice(cdb);
        cbw.resize(31, 0);
        let mut data = Vec::new();
        if !self.raw_cbw(cbw) {
            return Reply { csw: None, data };
        }
        if len > 0 {
            let c = if dir_in {
                self.xfer(XferKind::Bulk, 0x81, UrbBuf::zeroed(len as usize))
            } else {
                let mut v = out.to_vec();
                v.resize(len as usize, 0);
                self.xfer(XferKind::Bulk, 0x02, UrbBuf::from_vec(v))
            };
            if c.status == -errno::EPIPE {
                self.dev
                    .clear_halt(if dir_in { 0x81 } else { 0x02 })
                    .unwrap();
            } else {
                assert_eq!(c.status, 0);
            }
            if dir_in {
                data = c.buf.into_vec().unwrap();
                data.truncate(c.actual_length as usize);
            }
        }
        let c = self.xfer(XferKind::Bulk, 0x81, UrbBuf::zeroed(13));
        assert_eq!((c.status, c.actual_length), (0, 13), "CSW");
        let csw = c.buf.into_vec().unwrap();
        assert_eq!(&csw[..4], b"USBS");
        let residue = u32::from_le_bytes([csw[8], csw[9], csw[10], csw[11]]);
        Reply {
            csw: Some((csw[12], residue)),
            data,
        }
    }

    fn write(&mut self, lba: u32, blocks: u16, data: &[u8]) -> Reply {
        let mut cdb = vec![0x2a, 0];
        cdb.extend_from_slice(&lba.to_be_bytes());
        cdb.extend_from_slice(&[0, (blocks >> 8) as u8, blocks as u8, 0]);
        self.command(&cdb, false, u32::from(blocks) * 512, data)
    }

    fn read(&mut self, lba: u32, blocks: u16) -> Reply {
        let mut cdb = vec![0x28, 0];
        cdb.extend_from_slice(&lba.to_be_bytes());
        cdb.extend_from_slice(&[0, (blocks >> 8) as u8, blocks as u8, 0]);
        self.command(&cdb, true, u32::from(blocks) * 512, &[])
    }
}

fn disk(size: u64) -> DeviceSpec {
    DeviceSpec::new(ModelSpec::Storage { size_bytes: size })
}

#[test]
fn bot_commands_and_phase_cases() {
    let (_tmp, mut dev, _) = open(disk(BLOCKS * 512));
    let max_lun = UrbBuf::from_vec(vec![0xa1, 0xfe, 0, 0, 0, 0, 1, 0, 0xff]);
    dev.submit(HostUrb::new(
        1,
        XferKind::Control,
        0,
        UrbFlags::empty(),
        max_lun,
    ))
    .unwrap();
    let c = reap_n(&mut dev, 1).pop().unwrap();
    assert_eq!(
        (c.status, c.actual_length, c.buf.as_slice().unwrap()[8]),
        (0, 1, 0)
    );
    let mut h = Host {
        dev: &mut dev,
        tag: 100,
    };
    let r = h.command(&[0x12, 0, 0, 0, 36, 0], true, 36, &[]);
    assert_eq!((r.csw, r.data.len()), (Some((0, 0)), 36));
    let r = h.command(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], true, 8, &[]);
    assert_eq!(r.data, vec![0, 0, 0, 15, 0, 0, 2, 0]);
    // Case 5: host wants more than the device has; 8 bytes end with a short packet.
    let r = h.command(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], true, 64, &[]);
    assert_eq!((r.csw, r.data.len()), (Some((0, 56)), 8));
    // Case 5 on a packet boundary: 512 of 1024 bytes, then a bulk-in STALL ends the data.
    let r = h.command(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], true, 1024, &[]);
    assert_eq!((r.csw, r.data.len()), (Some((0, 512)), 512));
    // Case 4: Hi > Dn: bulk-in stall, residue = everything.
    let r = h.command(&[0x00, 0, 0, 0, 0, 0], true, 512, &[]);
    assert_eq!(r.csw, Some((0, 512)));
    // Case 8 / 10: direction mismatch → phase error.
    let r = h.command(&[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0], true, 512, &[]);
    assert_eq!(r.csw.map(|c| c.0), Some(2));
    let r = h.command(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], false, 512, &[]);
    assert_eq!(r.csw.map(|c| c.0), Some(2));
    // Unknown opcode: CHECK CONDITION, REQUEST SENSE says ILLEGAL REQUEST / invalid opcode.
    let r = h.command(&[0xee, 0, 0, 0, 0, 0], false, 0, &[]);
    assert_eq!(r.csw, Some((1, 0)));
    let r = h.command(&[0x03, 0, 0, 0, 18, 0], true, 18, &[]);
    assert_eq!((r.data[2], r.data[12]), (5, 0x20));
    // Invalid CBW → stall both pipes until reset recovery; then commands work again.
    assert!(!h.raw_cbw(vec![0; 31]));
    assert!(!h.raw_cbw(vec![0x55; 12]));
    assert_eq!(
        h.command(&[0, 0, 0, 0, 0, 0], false, 0, &[]).csw,
        Some((0, 0))
    );
    // Mode sense, sync cache, prevent/allow, start/stop, read capacity 16.
    for cdb in [
        &[0x1a, 0, 0x3f, 0, 192, 0][..],
        &[0x5a, 0, 0x08, 0, 0, 0, 0, 0, 192, 0],
    ] {
        let r = h.command(cdb, true, 192, &[]);
        assert_eq!(r.csw.map(|c| c.0), Some(0));
    }
    for cdb in [
        &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0][..],
        &[0x1e, 0, 0, 0, 1, 0],
        &[0x1b, 0, 0, 0, 1, 0],
    ] {
        assert_eq!(h.command(cdb, false, 0, &[]).csw, Some((0, 0)));
    }
    let mut rc16 = vec![0x9e, 0x10];
    rc16.resize(16, 0);
    rc16[13] = 32;
    let r = h.command(&rc16, true, 32, &[]);
    assert_eq!(r.data[7], 15);
}

#[test]
fn disk_survives_reopen() {
    let (tmp, mut dev, busid) = open(disk(BLOCKS * 512));
    let pattern: Vec<u8> = (0..1024u32).map(|i| (i * 13) as u8).collect();
    let mut h = Host {
        dev: &mut dev,
        tag: 1,
    };
    assert_eq!(h.write(3, 2, &pattern).csw, Some((0, 0)));
    drop(dev);
    let img = bus::state_dir(tmp.path(), "SIM11").join("disk.img");
    assert_eq!(std::fs::metadata(&img).unwrap().len(), BLOCKS * 512);
    let mut dev = SimDevice::open_busid(tmp.path(), &busid).unwrap();
    let mut h = Host {
        dev: &mut dev,
        tag: 1,
    };
    assert_eq!(h.read(3, 2).data, pattern);
    assert_eq!(h.read(BLOCKS as u32 - 1, 2).csw.map(|c| c.0), Some(1));
}

#[derive(Clone, Debug)]
enum Op {
    Write {
        lba: u32,
        blocks: u16,
        fill: u8,
    },
    Read {
        lba: u32,
        blocks: u16,
    },
    BadCbw(Vec<u8>),
    Random {
        cdb: Vec<u8>,
        dir_in: bool,
        len: u32,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u32..20, 0u16..5, any::<u8>()).prop_map(|(lba, blocks, fill)| Op::Write {
            lba,
            blocks,
            fill
        }),
        (0u32..20, 0u16..5).prop_map(|(lba, blocks)| Op::Read { lba, blocks }),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(Op::BadCbw),
        (
            proptest::collection::vec(any::<u8>(), 1..17),
            any::<bool>(),
            0u32..2048
        )
            .prop_map(|(cdb, dir_in, len)| Op::Random { cdb, dir_in, len }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(crate::test_cases(64)))]
    #[test]
    fn random_bot_sequences_keep_data(ops in proptest::collection::vec(op(), 1..25)) {
        // One plugged disk per test thread (tree removal is slow on some filesystems); each
        // case reopens it, so the data also has to survive every close/open.
        thread_local! {
            static DISK: (tempfile::TempDir, String) = {
                let tmp = tempfile::tempdir().unwrap();
                let busid = plug(tmp.path(), &disk(BLOCKS * 512)).unwrap();
                (tmp, busid)
            };
        }
        let mut dev = DISK.with(|(tmp, busid)| SimDevice::open_busid(tmp.path(), busid).unwrap());
        let mut h = Host { dev: &mut dev, tag: 1 };
        let mut shadow = h.read(0, BLOCKS as u16).data;
        prop_assert_eq!(shadow.len() as u64, BLOCKS * 512);
        for op in ops {
            match op {
                Op::Write { lba, blocks, fill } => {
                    let data = vec![fill; usize::from(blocks) * 512];
                    let r = h.write(lba, blocks, &data);
                    let fits = u64::from(lba) + u64::from(blocks) <= BLOCKS;
                    prop_assert_eq!(r.csw.map(|c| c.0), Some(if fits { 0 } else { 1 }));
                    if fits {
                        let at = lba as usize * 512;
                        shadow[at..at + data.len()].copy_from_slice(&data);
                    }
                }
                Op::Read { lba, blocks } => {
                    let r = h.read(lba, blocks);
                    if u64::from(lba) + u64::from(blocks) <= BLOCKS {
                        let at = lba as usize * 512;
                        prop_assert_eq!(r.csw, Some((0, 0)));
                        prop_assert_eq!(&r.data[..], &shadow[at..at + usize::from(blocks) * 512]);
                    } else {
                        prop_assert_eq!(r.csw.map(|c| c.0), Some(1));
                    }
                }
                Op::BadCbw(mut raw) => {
                    if raw.len() == 31 { raw[0] ^= 0xff; }
                    prop_assert!(!h.raw_cbw(raw));
                }
                Op::Random { cdb, dir_in, len } => {
                    // Writes with random CDBs would scribble on the disk: keep them out.
                    if matches!(cdb[0], 0x2a | 0x8a) { continue; }
                    let r = h.command(&cdb, dir_in, len, &[]);
                    prop_assert!(r.csw.is_some_and(|c| c.0 <= 2));
                }
            }
        }
        let r = h.read(0, BLOCKS as u16);
        prop_assert_eq!(r.data, shadow);
    }
}
