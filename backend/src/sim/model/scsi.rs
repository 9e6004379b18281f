//! SCSI block commands for the simulated disk: CDB in, data phase plan and status out.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// Logical block size.
pub const BLOCK: u64 = 512;

/// Sense keys / additional sense codes we report.
mod sense {
    pub const ILLEGAL_REQUEST: u8 = 0x05;
    pub const MEDIUM_ERROR: u8 = 0x03;
    pub const INVALID_OPCODE: u8 = 0x20;
    pub const LBA_OUT_OF_RANGE: u8 = 0x21;
    pub const INVALID_FIELD_IN_CDB: u8 = 0x24;
    pub const WRITE_ERROR: u8 = 0x0c;
    pub const READ_ERROR: u8 = 0x11;
}

/// Where IN data comes from.
#[derive(Debug, PartialEq, Eq)]
pub enum Source {
    Bytes(Vec<u8>),
    /// `len` bytes of the disk starting at byte `offset`.
    Disk {
        offset: u64,
        len: u64,
    },
}

impl Source {
    /// Bytes this source yields.
    pub fn len(&self) -> u64 {
        match self {
            Source::Bytes(b) => b.len() as u64,
            Source::Disk { len, .. } => *len,
        }
    }

    /// True if it yields nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The data phase a command wants.
#[derive(Debug, PartialEq, Eq)]
pub enum Data {
    None,
    In(Source),
    /// Write `len` bytes to the disk at byte `offset`.
    Out {
        offset: u64,
        len: u64,
    },
}

/// A command's plan: the data phase and whether it passed (false = CHECK CONDITION).
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub good: bool,
    pub data: Data,
}

/// One logical unit over a disk image file.
#[derive(Debug)]
pub struct Lun {
    file: File,
    blocks: u64,
    serial: String,
    sense: (u8, u8),
    prevent_removal: bool,
}

fn be16(c: &[u8], at: usize) -> u64 {
    c.get(at..at + 2)
        .map_or(0, |b| u64::from(u16::from_be_bytes([b[0], b[1]])))
}

fn be32(c: &[u8], at: usize) -> u64 {
    c.get(at..at + 4).map_or(0, |b| {
        u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    })
}

fn be64(c: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    if let Some(b) = c.get(at..at + 8) {
        v.copy_from_slice(b);
    }
    u64::from_be_bytes(v)
}

fn pad(s: &str, n: usize) -> Vec<u8> {
    let mut v: Vec<u8> = s.bytes().filter(u8::is_ascii_graphic).take(n).collect();
    v.resize(n, b' ');
    v
}

impl Lun {
    /// A LUN of `blocks` blocks over `file`.
    pub fn new(file: File, blocks: u64, serial: &str) -> Self {
        Lun {
            file,
            blocks,
            serial: serial.to_string(),
            sense: (0, 0),
            prevent_removal: false,
        }
    }

    /// Capacity in blocks.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    fn fail(&mut self, key: u8, asc: u8) -> Outcome {
        self.sense = (key, asc);
        Outcome {
            good: false,
            data: Data::None,
        }
    }

    fn good(&mut self, data: Data) -> Outcome {
        Outcome { good: true, data }
    }

    fn bytes(&mut self, mut v: Vec<u8>, alloc: u64) -> Outcome {
        v.truncate(usize::try_from(alloc).unwrap_or(usize::MAX));
        self.good(Data::In(Source::Bytes(v)))
    }

    fn range(&mut self, lba: u64, count: u64) -> Option<(u64, u64)> {
        match lba.checked_add(count) {
            Some(end) if end <= self.blocks => Some((lba * BLOCK, count * BLOCK)),
            _ => None,
        }
    }

    /// Plans the command in `cdb` (the CBW's command block). Never panics.
    pub fn execute(&mut self, cdb: &[u8]) -> Outcome {
        let Some(&op) = cdb.first() else {
            return self.fail(sense::ILLEGAL_REQUEST, sense::INVALID_OPCODE);
        };
        let last_lba = self.blocks.saturating_sub(1);
        match op {
            0x00 | 0x1b | 0x2f => self.good(Data::None), // TEST UNIT READY, START STOP, VERIFY
            0x1e => {
                self.prevent_removal = cdb.get(4).is_some_and(|b| b & 1 != 0);
                self.good(Data::None)
            }
            0x03 => {
                let (key, asc) = std::mem::take(&mut self.sense);
                let v = vec![0x70, 0, key, 0, 0, 0, 0, 10, 0, 0, 0, 0, asc, 0, 0, 0, 0, 0];
                let alloc = cdb.get(4).map_or(0, |&b| u64::from(b));
                self.bytes(v, alloc)
            }
            0x12 => self.inquiry(cdb),
            0x25 => {
                let mut v = u32::try_from(last_lba)
                    .unwrap_or(u32::MAX)
                    .to_be_bytes()
                    .to_vec();
                v.extend_from_slice(&(BLOCK as u32).to_be_bytes());
                self.bytes(v, 8)
            }
            0x9e if cdb.get(1).is_some_and(|b| b & 0x1f == 0x10) => {
                let mut v = last_lba.to_be_bytes().to_vec();
                v.extend_from_slice(&(BLOCK as u32).to_be_bytes());
                v.resize(32, 0);
                self.bytes(v, be32(cdb, 10))
            }
            0x28 | 0x88 | 0x2a | 0x8a => {
                let (lba, count) = if op & 0xf0 == 0x20 {
                    (be32(cdb, 2), be16(cdb, 7))
                } else {
                    (be64(cdb, 2), be32(cdb, 10))
                };
                let min_len = if op & 0xf0 == 0x20 { 10 } else { 16 };
                if cdb.len() < min_len {
                    return self.fail(sense::ILLEGAL_REQUEST, sense::INVALID_FIELD_IN_CDB);
                }
                let Some((offset, len)) = self.range(lba, count) else {
                    return self.fail(sense::ILLEGAL_REQUEST, sense::LBA_OUT_OF_RANGE);
                };
                if op & 0x0f == 0x08 {
                    self.good(Data::In(Source::Disk { offset, len }))
                } else {
                    self.good(Data::Out { offset, len })
                }
            }
            0x1a | 0x5a => {
                let page = cdb.get(2).map_or(0, |b| b & 0x3f);
                let caching = [
                    0x08u8, 0x12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                ];
                let pages: &[u8] = match page {
                    0x3f | 0x08 => &caching,
                    0x00 => &[],
                    _ => return self.fail(sense::ILLEGAL_REQUEST, sense::INVALID_FIELD_IN_CDB),
                };
                if op == 0x1a {
                    let mut v = vec![(3 + pages.len()) as u8, 0, 0, 0];
                    v.extend_from_slice(pages);
                    self.bytes(v, cdb.get(4).map_or(0, |&b| u64::from(b)))
                } else {
                    let mut v = ((6 + pages.len()) as u16).to_be_bytes().to_vec();
                    v.extend_from_slice(&[0; 6]);
                    v.extend_from_slice(pages);
                    self.bytes(v, be16(cdb, 7))
                }
            }
            0x35 | 0x91 => match self.file.sync_data() {
                Ok(()) => self.good(Data::None),
                Err(_) => self.fail(sense::MEDIUM_ERROR, sense::WRITE_ERROR),
            },
            0xa0 => self.bytes(
                vec![0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                be32(cdb, 6),
            ),
            _ => self.fail(sense::ILLEGAL_REQUEST, sense::INVALID_OPCODE),
        }
    }

    fn inquiry(&mut self, cdb: &[u8]) -> Outcome {
        let alloc = be16(cdb, 3);
        let evpd = cdb.get(1).is_some_and(|b| b & 1 != 0);
        let page = cdb.get(2).copied().unwrap_or(0);
        if !evpd {
            if page != 0 {
                return self.fail(sense::ILLEGAL_REQUEST, sense::INVALID_FIELD_IN_CDB);
            }
            let mut v = vec![0x00, 0x80, 0x06, 0x02, 31, 0, 0, 0];
            v.extend(pad("PVUSB", 8));
            v.extend(pad("SIM DISK", 16));
            v.extend(pad("1.00", 4));
            return self.bytes(v, alloc);
        }
        match page {
            0x00 => self.bytes(vec![0, 0, 0, 2, 0x00, 0x80], alloc),
            0x80 => {
                let serial = pad(&self.serial, self.serial.len().min(64));
                let mut v = vec![0, 0x80, 0, serial.len() as u8];
                v.extend(serial);
                self.bytes(v, alloc)
            }
            _ => self.fail(sense::ILLEGAL_REQUEST, sense::INVALID_FIELD_IN_CDB),
        }
    }

    /// Reads disk bytes for a `Source::Disk` data phase; false (sense set) on I/O error.
    pub fn read_disk(&mut self, offset: u64, dst: &mut [u8]) -> bool {
        if self.file.read_exact_at(dst, offset).is_ok() {
            true
        } else {
            self.sense = (sense::MEDIUM_ERROR, sense::READ_ERROR);
            false
        }
    }

    /// Writes disk bytes for a `Data::Out` phase; false (sense set) on I/O error.
    pub fn write_disk(&mut self, offset: u64, src: &[u8]) -> bool {
        if self.file.write_all_at(src, offset).is_ok() {
            true
        } else {
            self.sense = (sense::MEDIUM_ERROR, sense::WRITE_ERROR);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lun() -> Lun {
        let f = tempfile::tempfile().unwrap();
        f.set_len(8 * BLOCK).unwrap();
        Lun::new(f, 8, "SER1")
    }

    #[test]
    fn capacity_and_inquiry() {
        let mut l = lun();
        let o = l.execute(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            o.data,
            Data::In(Source::Bytes(vec![0, 0, 0, 7, 0, 0, 2, 0]))
        );
        let o = l.execute(&[0x12, 0, 0, 0, 36, 0]);
        let Data::In(Source::Bytes(v)) = o.data else {
            panic!()
        };
        assert_eq!(v.len(), 36);
        assert_eq!(&v[8..13], b"PVUSB");
        let o = l.execute(&[0x12, 1, 0x80, 0, 255, 0]);
        let Data::In(Source::Bytes(v)) = o.data else {
            panic!()
        };
        assert_eq!(&v[4..], b"SER1");
    }

    #[test]
    fn bad_commands_set_sense() {
        let mut l = lun();
        assert!(!l.execute(&[0xff]).good);
        let o = l.execute(&[0x03, 0, 0, 0, 18, 0]);
        let Data::In(Source::Bytes(v)) = o.data else {
            panic!()
        };
        assert_eq!((v[2], v[12]), (5, 0x20));
        assert!(!l.execute(&[0x28, 0, 0, 0, 0, 7, 0, 0, 2, 0]).good);
        let o = l.execute(&[0x03, 0, 0, 0, 18, 0]);
        let Data::In(Source::Bytes(v)) = o.data else {
            panic!()
        };
        assert_eq!(v[12], 0x21);
        assert!(!l.execute(&[]).good);
        assert!(
            !l.execute(&[
                0x88, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0,
                0
            ])
            .good
        );
    }

    #[test]
    fn read_write_plan() {
        let mut l = lun();
        let o = l.execute(&[0x2a, 0, 0, 0, 0, 1, 0, 0, 2, 0]);
        assert_eq!(
            o.data,
            Data::Out {
                offset: 512,
                len: 1024
            }
        );
        assert!(l.write_disk(512, &[7; 1024]));
        let o = l.execute(&[0x88, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0]);
        assert_eq!(
            o.data,
            Data::In(Source::Disk {
                offset: 1024,
                len: 512
            })
        );
        let mut b = [0u8; 512];
        assert!(l.read_disk(1024, &mut b));
        assert_eq!(b, [7; 512]);
    }
}
