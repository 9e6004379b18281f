//! USB mass storage (Bulk-Only Transport + SCSI) over a [`Client`]: INQUIRY, READ
//! CAPACITY(10), TEST UNIT READY, and WRITE(10)/READ(10) with several commands pipelined
//! (CBW, data and CSW URBs of the next commands queued before the first one finishes).

use std::collections::VecDeque;

use pvusb_backend::host::desc::ConfigDescriptor;
use pvusb_frontend::usbip::Direction;

use super::client::{Client, ClientError};

const CBW_SIG: u32 = 0x4342_5355;
const CSW_SIG: u32 = 0x5342_5355;
const CSW_LEN: u32 = 13;

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The transport failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The device has no BOT mass-storage interface.
    #[error("device has no bulk-only mass-storage interface")]
    NotStorage,
    /// A descriptor request failed or was malformed.
    #[error("reading descriptors: {0}")]
    Descriptors(String),
    /// A URB completed with an error status.
    #[error("{what}: URB status {status} ({})", errno_name(*status))]
    Urb {
        /// Which stage.
        what: &'static str,
        /// The status (-errno).
        status: i32,
    },
    /// A malformed or failing CSW.
    #[error("{what}: {why}")]
    Csw {
        /// Which command.
        what: &'static str,
        /// What was wrong.
        why: String,
    },
    /// The data read back differs from what was written.
    #[error("verify failed at LBA {lba}: data differs")]
    Mismatch {
        /// First bad block.
        lba: u64,
    },
}

/// A short name for a USB errno.
pub fn errno_name(status: i32) -> &'static str {
    match -status {
        0 => "ok",
        2 => "ENOENT",
        19 => "ENODEV",
        32 => "EPIPE (stall)",
        71 => "EPROTO",
        104 => "ECONNRESET",
        108 => "ESHUTDOWN (device gone)",
        110 => "ETIMEDOUT",
        121 => "EREMOTEIO",
        _ => "error",
    }
}

fn setup(rt: u8, req: u8, value: u16, index: u16, len: u16) -> [u8; 8] {
    let [v0, v1] = value.to_le_bytes();
    let [i0, i1] = index.to_le_bytes();
    let [l0, l1] = len.to_le_bytes();
    [rt, req, v0, v1, i0, i1, l0, l1]
}

/// What INQUIRY says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inquiry {
    /// T10 vendor id.
    pub vendor: String,
    /// Product id.
    pub product: String,
}

/// One in-flight BOT command: its three URBs.
#[derive(Debug)]
struct Pending {
    lba: u64,
    blocks: u32,
    tag: u32,
    cbw: u32,
    data: u32,
    csw: u32,
}

/// A mass-storage device behind a USB/IP client.
#[derive(Debug)]
pub struct MassStorage {
    /// The transport (its `latencies` hold every URB's time).
    pub client: Client,
    ep_in: u8,
    ep_out: u8,
    tag: u32,
    /// Block size from READ CAPACITY.
    pub block_size: u32,
    /// Number of blocks from READ CAPACITY.
    pub blocks: u64,
}

fn check(what: &'static str, status: i32) -> Result<(), StorageError> {
    if status == 0 {
        Ok(())
    } else {
        Err(StorageError::Urb { what, status })
    }
}

/// The byte pattern of block `lba` (first 8 bytes: the LBA, then a mix of LBA, seed and
/// offset), so a misplaced block is caught as well as a corrupted one.
pub fn fill_pattern(lba: u64, seed: u8, block: &mut [u8]) {
    let lba_bytes = lba.to_le_bytes();
    let mix = (lba as u8).wrapping_mul(31).wrapping_add(seed);
    for (i, b) in block.iter_mut().enumerate() {
        *b = match lba_bytes.get(i) {
            Some(&x) => x,
            None => (i as u8).wrapping_mul(7).wrapping_add(mix),
        };
    }
}

impl MassStorage {
    /// Reads the descriptors, finds the BOT interface, configures the device if needed.
    pub fn open(mut client: Client) -> Result<Self, StorageError> {
        let (st, head) = client.control_in(setup(0x80, 6, 0x0200, 0, 9))?;
        check("GET_DESCRIPTOR(config)", st)?;
        let total = match head.get(2..4) {
            Some(&[lo, hi]) => u16::from_le_bytes([lo, hi]),
            _ => {
                return Err(StorageError::Descriptors(
                    "short configuration descriptor".into(),
                ))
            }
        };
        let (st, raw) = client.control_in(setup(0x80, 6, 0x0200, 0, total))?;
        check("GET_DESCRIPTOR(config)", st)?;
        let cfg = ConfigDescriptor::parse(&raw, 0)
            .map_err(|e| StorageError::Descriptors(e.to_string()))?;
        let alt = cfg
            .alts
            .iter()
            .find(|a| a.alt == 0 && a.class == 8 && a.protocol == 0x50)
            .ok_or(StorageError::NotStorage)?;
        let bulk = |dir_in: bool| {
            alt.endpoints
                .iter()
                .find(|e| e.attributes & 3 == 2 && (e.address & 0x80 != 0) == dir_in)
                .map(|e| e.address)
        };
        let (ep_in, ep_out) = match (bulk(true), bulk(false)) {
            (Some(i), Some(o)) => (i, o),
            _ => return Err(StorageError::NotStorage),
        };
        if client.device().configuration_value != cfg.value {
            check(
                "SET_CONFIGURATION",
                client.control_out(setup(0, 9, u16::from(cfg.value), 0, 0), Vec::new())?,
            )?;
        }
        Ok(MassStorage {
            client,
            ep_in,
            ep_out,
            tag: 1,
            block_size: 512,
            blocks: 0,
        })
    }

    fn cbw(&mut self, dir_in: bool, len: u32, cdb: &[u8]) -> (u32, Vec<u8>) {
        let tag = self.tag;
        self.tag = self.tag.wrapping_add(1);
        let mut c = Vec::with_capacity(31);
        c.extend_from_slice(&CBW_SIG.to_le_bytes());
        c.extend_from_slice(&tag.to_le_bytes());
        c.extend_from_slice(&len.to_le_bytes());
        c.push(if dir_in { 0x80 } else { 0 });
        c.push(0); // LUN
        c.push(u8::try_from(cdb.len()).unwrap_or(16).min(16));
        let mut cb = [0u8; 16];
        for (d, s) in cb.iter_mut().zip(cdb) {
            *d = *s;
        }
        c.extend_from_slice(&cb);
        (tag, c)
    }

    /// Queues one command's URBs: CBW, data (if any), CSW.
    fn queue(
        &mut self,
        cdb: &[u8],
        data: Option<(Direction, Vec<u8>, u32)>,
    ) -> Result<(u32, u32, u32, u32), StorageError> {
        let (dir_in, len) = match &data {
            Some((Direction::In, _, len)) => (true, *len),
            Some((Direction::Out, d, _)) => (false, u32::try_from(d.len()).unwrap_or(u32::MAX)),
            None => (false, 0),
        };
        let (tag, cbw) = self.cbw(dir_in, len, cdb);
        let ep_out = self.ep_out & 0x0f;
        let ep_in = self.ep_in & 0x0f;
        let s_cbw = self.client.submit(ep_out, Direction::Out, [0; 8], cbw, 0)?;
        let s_data = match data {
            Some((Direction::In, _, len)) => {
                self.client
                    .submit(ep_in, Direction::In, [0; 8], Vec::new(), len)?
            }
            Some((Direction::Out, d, _)) => {
                self.client.submit(ep_out, Direction::Out, [0; 8], d, 0)?
            }
            None => 0,
        };
        let s_csw = self
            .client
            .submit(ep_in, Direction::In, [0; 8], Vec::new(), CSW_LEN)?;
        Ok((tag, s_cbw, s_data, s_csw))
    }

    fn finish_csw(&mut self, what: &'static str, tag: u32, seq: u32) -> Result<(), StorageError> {
        let d = self.client.wait(seq)?;
        check(what, d.ret.status)?;
        let csw = d.ret.data;
        let word = |i: usize| {
            csw.get(i..i + 4)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(u32::from_le_bytes)
        };
        let bad = |why: String| StorageError::Csw { what, why };
        if csw.len() != 13 || word(0) != Some(CSW_SIG) {
            return Err(bad(format!("malformed CSW ({} bytes)", csw.len())));
        }
        if word(4) != Some(tag) {
            return Err(bad(format!("CSW tag {:?}, expected {tag}", word(4))));
        }
        match csw.get(12) {
            Some(0) => Ok(()),
            s => Err(bad(format!(
                "command failed (CSW status {s:?}, residue {:?})",
                word(8)
            ))),
        }
    }

    /// Runs one command to completion; returns IN data.
    fn command(
        &mut self,
        what: &'static str,
        cdb: &[u8],
        data: Option<(Direction, Vec<u8>, u32)>,
    ) -> Result<Vec<u8>, StorageError> {
        let has_data = data.is_some();
        let (tag, s_cbw, s_data, s_csw) = self.queue(cdb, data)?;
        check(what, self.client.wait(s_cbw)?.ret.status)?;
        let mut out = Vec::new();
        if has_data {
            let d = self.client.wait(s_data)?;
            check(what, d.ret.status)?;
            out = d.ret.data;
        }
        self.finish_csw(what, tag, s_csw)?;
        Ok(out)
    }

    /// TEST UNIT READY.
    pub fn test_unit_ready(&mut self) -> Result<(), StorageError> {
        self.command("TEST UNIT READY", &[0; 6], None).map(|_| ())
    }

    /// INQUIRY (36 bytes).
    pub fn inquiry(&mut self) -> Result<Inquiry, StorageError> {
        let d = self.command(
            "INQUIRY",
            &[0x12, 0, 0, 0, 36, 0],
            Some((Direction::In, Vec::new(), 36)),
        )?;
        let text = |r: std::ops::Range<usize>| {
            String::from_utf8_lossy(d.get(r).unwrap_or_default())
                .trim()
                .to_owned()
        };
        Ok(Inquiry {
            vendor: text(8..16),
            product: text(16..32),
        })
    }

    /// READ CAPACITY(10): sets and returns (blocks, block size).
    pub fn read_capacity(&mut self) -> Result<(u64, u32), StorageError> {
        let d = self.command(
            "READ CAPACITY",
            &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            Some((Direction::In, Vec::new(), 8)),
        )?;
        let word = |i: usize| {
            d.get(i..i + 4)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(u32::from_be_bytes)
        };
        let (Some(last), Some(bs)) = (word(0), word(4)) else {
            return Err(StorageError::Csw {
                what: "READ CAPACITY",
                why: format!("{} bytes of capacity data", d.len()),
            });
        };
        if bs == 0 || bs > 1 << 16 {
            return Err(StorageError::Csw {
                what: "READ CAPACITY",
                why: format!("block size {bs}"),
            });
        }
        self.blocks = u64::from(last) + 1;
        self.block_size = bs;
        Ok((self.blocks, bs))
    }

    fn rw_cdb(op: u8, lba: u64, blocks: u32) -> [u8; 10] {
        let l = u32::try_from(lba).unwrap_or(u32::MAX).to_be_bytes();
        let n = u16::try_from(blocks).unwrap_or(u16::MAX).to_be_bytes();
        [op, 0, l[0], l[1], l[2], l[3], 0, n[0], n[1], 0]
    }

    /// Writes the pattern over blocks `0..count` in commands of `chunk` blocks, keeping
    /// `window` commands in flight. `progress(bytes)` is called as each command completes.
    pub fn write_pattern(
        &mut self,
        count: u64,
        chunk: u32,
        window: usize,
        seed: u8,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), StorageError> {
        self.pipelined(false, count, chunk, window, seed, progress)
    }

    /// Reads blocks `0..count` back the same way and checks them against the pattern.
    pub fn verify_pattern(
        &mut self,
        count: u64,
        chunk: u32,
        window: usize,
        seed: u8,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), StorageError> {
        self.pipelined(true, count, chunk, window, seed, progress)
    }

    fn pipelined(
        &mut self,
        read: bool,
        count: u64,
        chunk: u32,
        window: usize,
        seed: u8,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), StorageError> {
        let what = if read { "READ(10)" } else { "WRITE(10)" };
        let bs = self.block_size;
        let bsz = usize::try_from(bs).unwrap_or(512);
        let mut next: u64 = 0;
        let mut q: VecDeque<Pending> = VecDeque::new();
        while next < count || !q.is_empty() {
            while next < count && q.len() < window.max(1) {
                let blocks =
                    u32::try_from((count - next).min(u64::from(chunk.max(1)))).unwrap_or(1);
                let len = blocks.saturating_mul(bs);
                let data = if read {
                    (Direction::In, Vec::new(), len)
                } else {
                    let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
                    for (i, b) in buf.chunks_mut(bsz).enumerate() {
                        fill_pattern(next + i as u64, seed, b);
                    }
                    (Direction::Out, buf, len)
                };
                let cdb = Self::rw_cdb(if read { 0x28 } else { 0x2a }, next, blocks);
                let (tag, cbw, data, csw) = self.queue(&cdb, Some(data))?;
                q.push_back(Pending {
                    lba: next,
                    blocks,
                    tag,
                    cbw,
                    data,
                    csw,
                });
                next += u64::from(blocks);
            }
            let Some(p) = q.pop_front() else { break };
            check(what, self.client.wait(p.cbw)?.ret.status)?;
            let d = self.client.wait(p.data)?;
            check(what, d.ret.status)?;
            let want = u64::from(p.blocks) * u64::from(bs);
            if u64::from(d.ret.actual_length) != want {
                return Err(StorageError::Csw {
                    what,
                    why: format!("{} of {want} bytes transferred", d.ret.actual_length),
                });
            }
            if read {
                let mut expect = vec![0u8; bsz];
                for (i, got) in d.ret.data.chunks(bsz).enumerate() {
                    let lba = p.lba + i as u64;
                    fill_pattern(lba, seed, &mut expect);
                    if got != expect.as_slice() {
                        return Err(StorageError::Mismatch { lba });
                    }
                }
            }
            self.finish_csw(what, p.tag, p.csw)?;
            progress(want);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_differs_per_block_and_seed() {
        let mut a = [0u8; 512];
        let mut b = [0u8; 512];
        fill_pattern(1, 0, &mut a);
        fill_pattern(2, 0, &mut b);
        assert_ne!(a, b);
        assert_eq!(&a[..8], &1u64.to_le_bytes());
        fill_pattern(1, 1, &mut b);
        assert_ne!(a, b);
    }

    #[test]
    fn cdb_layout() {
        assert_eq!(
            MassStorage::rw_cdb(0x28, 0x0102_0304, 0x0506),
            [0x28, 0, 1, 2, 3, 4, 0, 5, 6, 0]
        );
        assert_eq!(setup(0x80, 6, 0x0200, 0, 9), [0x80, 6, 0, 2, 0, 0, 9, 0]);
    }
}
