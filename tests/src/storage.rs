//! A guest USB mass-storage driver (Bulk-Only Transport + SCSI READ/WRITE(10)) that keeps a
//! window of commands pipelined, verifies a per-block pattern that names its LBA (so data at
//! the wrong LBA — seed 004 — is a miscompare), survives errors with BOT reset recovery and
//! retries, can unlink URBs at random, and logs each endpoint's submissions in order for
//! the device-side check ([`crate::devtrace`]).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use crate::devtrace::Key;
use crate::rng::Rng;
use crate::usbip::{bulk_in, bulk_out, control, Answer, Gone, UsbipClient};

/// Block size of the simulated disk.
pub const BLOCK: u32 = 512;
const CBW_SIG: &[u8; 4] = b"USBC";
const CSW_SIG: &[u8; 4] = b"USBS";

/// How long one URB may take before the run is declared hung.
pub const URB_TIMEOUT: Duration = Duration::from_secs(20);

/// The pattern of block `lba`: its LBA in the first 8 bytes, then 64-bit words mixing LBA,
/// `seed` and position (word-wise, so debug builds fill 256 MiB quickly).
pub fn fill_block(lba: u64, seed: u8, block: &mut [u8]) {
    let base = lba.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(seed).wrapping_mul(0x0101_0101);
    for (k, w) in block.chunks_mut(8).enumerate() {
        let v = if k == 0 {
            lba
        } else {
            base.wrapping_add((k as u64).wrapping_mul(0x0100_0000_0100_0001))
        };
        let bytes = v.to_le_bytes();
        w.copy_from_slice(&bytes[..w.len()]);
    }
}

/// Random URB unlinks while commands are in flight.
#[derive(Debug)]
pub struct Chaos {
    /// Per submitted command, unlink one of its URBs with probability 1/`unlink_one_in`.
    pub unlink_one_in: u64,
    /// The generator.
    pub rng: Rng,
}

/// Why a run stopped.
#[derive(Debug)]
pub enum RunError {
    /// The device or connection went away (what unplug tests expect).
    Gone(String),
    /// The device kept failing a command beyond the retry budget.
    Stuck(String),
}

/// What a pass measured.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Bytes written and then read back (the pass's range).
    pub bytes: u64,
    /// Commands that failed and were recovered (BOT reset + retry).
    pub recoveries: u64,
    /// Commands run (including retries).
    pub commands: u64,
    /// Blocks whose read-back differed from the pattern.
    pub miscompares: u64,
    /// First few miscomparing LBAs with the LBA found in the block.
    pub bad: Vec<(u64, u64)>,
    /// The first block of the pass not yet done (where a stopped pass can resume).
    pub next_lba: u64,
}

/// What one pass does.
#[derive(Clone, Copy, Debug)]
pub struct PassSpec {
    /// Read back and compare (else write).
    pub verify: bool,
    /// First block.
    pub start: u64,
    /// Blocks.
    pub count: u64,
    /// Blocks per command (≤ 127 keeps each data stage in one usbif request).
    pub chunk: u32,
    /// Commands in flight.
    pub window: usize,
    /// Pattern seed.
    pub seed: u8,
}

/// One command in flight.
#[derive(Debug)]
struct Cmd {
    lba: u64,
    blocks: u32,
    tag: u32,
    urbs: [u32; 3],
}

/// A storage device over USB/IP.
#[derive(Debug)]
pub struct Disk {
    /// The transport (with its ledger).
    pub c: UsbipClient,
    ep_in: u8,
    ep_out: u8,
    /// Blocks on the disk.
    pub blocks: u64,
    /// Per endpoint address, the guest's submissions in order (for the device-side check).
    pub submitted: Vec<(u8, Key)>,
}

fn ok(a: &Answer) -> Option<&pvusb_frontend::usbip::RetSubmit> {
    match a {
        Answer::Done(r) if r.status == 0 => Some(r),
        _ => None,
    }
}

fn cbw(tag: u32, len: u32, dir_in: bool, cdb: &[u8]) -> Vec<u8> {
    let mut w = Vec::with_capacity(31);
    w.extend_from_slice(CBW_SIG);
    w.extend_from_slice(&tag.to_le_bytes());
    w.extend_from_slice(&len.to_le_bytes());
    w.push(if dir_in { 0x80 } else { 0 });
    w.push(0);
    w.push(cdb.len() as u8);
    let mut block = [0u8; 16];
    block[..cdb.len()].copy_from_slice(cdb);
    w.extend_from_slice(&block);
    w
}

fn rw10(op: u8, lba: u64, blocks: u32) -> [u8; 10] {
    let l = (lba as u32).to_be_bytes();
    let b = (blocks as u16).to_be_bytes();
    [op, 0, l[0], l[1], l[2], l[3], 0, b[0], b[1], 0]
}

impl Disk {
    /// Imports `busid` at `addr`, sets the configuration, finds the bulk endpoints and reads
    /// the capacity.
    pub fn open(
        addr: SocketAddr,
        busid: &str,
        logs: impl Fn() -> String + Copy,
    ) -> Result<Disk, RunError> {
        let c = UsbipClient::import_when_ready(addr, busid, Duration::from_secs(30), logs);
        let mut d = Disk {
            c,
            ep_in: 1,
            ep_out: 2,
            blocks: 0,
            submitted: Vec::new(),
        };
        let gone = |e: Gone| RunError::Gone(format!("{e:?}"));
        let head =
            d.c.transfer(control([0x80, 6, 0, 2, 0, 0, 9, 0], vec![]), URB_TIMEOUT)
                .map_err(gone)?;
        let Some(head) = ok(&head) else {
            return Err(RunError::Gone(format!("GET_DESCRIPTOR: {head:?}")));
        };
        let total = u16::from_le_bytes([head.data[2], head.data[3]]);
        let [t0, t1] = total.to_le_bytes();
        let cfg =
            d.c.transfer(control([0x80, 6, 0, 2, 0, 0, t0, t1], vec![]), URB_TIMEOUT)
                .map_err(gone)?;
        let Some(cfg) = ok(&cfg).map(|r| r.data.clone()) else {
            return Err(RunError::Gone(format!("GET_DESCRIPTOR: {cfg:?}")));
        };
        // Endpoint descriptors: [7, 5, addr, attrs, ...].
        let mut i = 0;
        while i + 4 <= cfg.len() {
            let (len, ty) = (usize::from(cfg[i]), cfg[i + 1]);
            if ty == 5 && cfg[i + 3] & 3 == 2 {
                if cfg[i + 2] & 0x80 != 0 {
                    d.ep_in = cfg[i + 2] & 0x0f;
                } else {
                    d.ep_out = cfg[i + 2] & 0x0f;
                }
            }
            i += len.max(1);
        }
        let set =
            d.c.transfer(control([0, 9, cfg[5], 0, 0, 0, 0, 0], vec![]), URB_TIMEOUT)
                .map_err(gone)?;
        if ok(&set).is_none() {
            return Err(RunError::Gone(format!("SET_CONFIGURATION: {set:?}")));
        }
        let mut cap = Vec::new();
        for _ in 0..5 {
            match d.command(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8) {
                Ok(c) => {
                    cap = c;
                    break;
                }
                Err(RunError::Gone(e)) => return Err(RunError::Gone(e)),
                Err(_) => d.recover()?,
            }
        }
        assert_eq!(cap.len(), 8, "READ CAPACITY");
        d.blocks = u64::from(u32::from_be_bytes([cap[0], cap[1], cap[2], cap[3]])) + 1;
        Ok(d)
    }

    /// CBW tags are unique in the process, so a disk reopened after a reconnect never
    /// repeats one (the device trace identifies CBWs and CSWs by tag).
    fn next_tag(&mut self) -> u32 {
        static TAGS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
        TAGS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    fn queue(&mut self, cdb: &[u8], dir_in: bool, data: Vec<u8>, len: u32, key: Key) -> Cmd {
        let tag = self.next_tag();
        let w = cbw(tag, len, dir_in, cdb);
        let s_cbw = self.c.submit(bulk_out(self.ep_out, w));
        self.submitted.push((self.ep_out, Key::Cbw(tag)));
        let s_data = if dir_in {
            self.submitted.push((self.ep_in | 0x80, key));
            self.c.submit(bulk_in(self.ep_in, len))
        } else {
            self.submitted.push((self.ep_out, key));
            self.c.submit(bulk_out(self.ep_out, data))
        };
        let s_csw = self.c.submit(bulk_in(self.ep_in, 13));
        self.submitted.push((self.ep_in | 0x80, Key::Csw(tag)));
        let (lba, blocks) = match key {
            Key::Data { lba, blocks } => (lba, blocks),
            _ => (0, 0),
        };
        Cmd {
            lba,
            blocks,
            tag,
            urbs: [s_cbw, s_data, s_csw],
        }
    }

    fn answers(&mut self, cmd: &Cmd) -> Result<[Answer; 3], RunError> {
        let mut out = Vec::with_capacity(3);
        for &s in &cmd.urbs {
            match self.c.wait_for(s, URB_TIMEOUT) {
                Ok(a) => out.push(a),
                Err(Gone::Closed) => return Err(RunError::Gone("connection closed".into())),
                Err(Gone::Timeout(t)) => panic!(
                    "URB {s} (command tag {}) unanswered after {t:?}: something hangs",
                    cmd.tag
                ),
            }
        }
        let [a, b, c]: [Answer; 3] = out.try_into().expect("three answers");
        Ok([a, b, c])
    }

    /// Checks a CSW answer; `Err` with the reason.
    fn csw_ok(a: &Answer, tag: u32) -> Result<(), String> {
        let r = ok(a).ok_or_else(|| format!("CSW URB: {}", a.status()))?;
        let d = &r.data;
        if d.len() != 13 || &d[..4] != CSW_SIG {
            return Err(format!("malformed CSW ({} bytes)", d.len()));
        }
        let got = u32::from_le_bytes([d[4], d[5], d[6], d[7]]);
        if got != tag || d[12] != 0 {
            return Err(format!("CSW tag {got} (want {tag}) status {}", d[12]));
        }
        Ok(())
    }

    /// Runs one non-data-verifying command (data IN of `len`); returns its data.
    fn command(&mut self, cdb: &[u8], len: u32) -> Result<Vec<u8>, RunError> {
        let cmd = self.queue(cdb, true, Vec::new(), len, Key::Other);
        let [a, b, c] = self.answers(&cmd)?;
        if ok(&a).is_none() {
            return Err(RunError::Stuck(format!("CBW: {}", a.status())));
        }
        let data = ok(&b)
            .map(|r| r.data.clone())
            .ok_or_else(|| RunError::Stuck(format!("data: {}", b.status())))?;
        Self::csw_ok(&c, cmd.tag).map_err(RunError::Stuck)?;
        Ok(data)
    }

    /// BOT reset recovery (mass storage reset, CLEAR_HALT both bulk endpoints); retried a
    /// few times since the recovery's own URBs may hit injected faults.
    pub fn recover(&mut self) -> Result<(), RunError> {
        let mut last = String::new();
        for _ in 0..20 {
            let steps = [
                [0x21, 0xff, 0, 0, 0, 0, 0, 0],
                [0x02, 1, 0, 0, self.ep_in | 0x80, 0, 0, 0],
                [0x02, 1, 0, 0, self.ep_out, 0, 0, 0],
            ];
            let mut all = true;
            for s in steps {
                match self.c.transfer(control(s, vec![]), URB_TIMEOUT) {
                    Ok(a) if a.status() == 0 => {}
                    Ok(a) => {
                        // -ENODEV: the device is gone for good.
                        if a.status() == -19 {
                            return Err(RunError::Gone(format!("recovery: {}", a.status())));
                        }
                        last = format!("recovery step {s:?}: {}", a.status());
                        all = false;
                        break;
                    }
                    Err(Gone::Closed) => return Err(RunError::Gone("closed in recovery".into())),
                    Err(Gone::Timeout(t)) => panic!("recovery control URB hung for {t:?}"),
                }
            }
            if all {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Err(RunError::Stuck(last))
    }

    /// Cancels every URB of `q` still in flight and waits until each is answered.
    fn drain(&mut self, q: &mut VecDeque<Cmd>) -> Result<(), RunError> {
        let seqs: Vec<u32> = q.iter().flat_map(|c| c.urbs).collect();
        for &s in &seqs {
            self.c.unlink(s);
        }
        for s in seqs {
            match self.c.wait_for(s, URB_TIMEOUT) {
                Ok(_) => {}
                Err(Gone::Closed) => return Err(RunError::Gone("connection closed".into())),
                Err(Gone::Timeout(t)) => panic!("unlinked URB {s} unanswered after {t:?}"),
            }
        }
        q.clear();
        Ok(())
    }

    /// Writes (`verify == false`) or reads back and checks (`verify == true`) the blocks
    /// of `spec`, with `window` commands of `chunk` blocks in flight; failed commands are
    /// recovered and retried. `chaos` unlinks URBs at random.
    pub fn pass(
        &mut self,
        spec: &PassSpec,
        mut chaos: Option<&mut Chaos>,
        stats: &mut Stats,
    ) -> Result<(), RunError> {
        let PassSpec {
            verify,
            start,
            count,
            chunk,
            window,
            seed,
        } = *spec;
        let end = start + count;
        let mut next = start;
        stats.next_lba = start;
        let mut q: VecDeque<Cmd> = VecDeque::new();
        let mut retries_here = 0u32;
        let mut last_failed = u64::MAX;
        while next < end || !q.is_empty() {
            while next < end && q.len() < window.max(1) {
                let blocks = (end - next).min(u64::from(chunk)) as u32;
                let len = blocks * BLOCK;
                let key = Key::Data { lba: next, blocks };
                let cmd = if verify {
                    self.queue(&rw10(0x28, next, blocks), true, Vec::new(), len, key)
                } else {
                    let mut data = vec![0u8; len as usize];
                    for (i, b) in data.chunks_mut(BLOCK as usize).enumerate() {
                        fill_block(next + i as u64, seed, b);
                    }
                    self.queue(&rw10(0x2a, next, blocks), false, data, len, key)
                };
                if let Some(ch) = chaos.as_deref_mut() {
                    if ch.unlink_one_in > 0 && ch.rng.one_in(ch.unlink_one_in) {
                        let victim = cmd.urbs[ch.rng.below(3) as usize];
                        self.c.unlink(victim);
                    }
                }
                q.push_back(cmd);
                next += u64::from(blocks);
                stats.commands += 1;
            }
            let Some(cmd) = q.pop_front() else { break };
            let [a, b, c] = self.answers(&cmd)?;
            let mut why = None;
            if ok(&a).is_none() {
                why = Some(format!("CBW {}", a.status()));
            } else if let Some(r) = ok(&b) {
                let want = cmd.blocks * BLOCK;
                if r.actual_length != want {
                    why = Some(format!("data {} of {want} bytes", r.actual_length));
                } else if verify {
                    let mut expect = vec![0u8; BLOCK as usize];
                    for (i, got) in r.data.chunks(BLOCK as usize).enumerate() {
                        let lba = cmd.lba + i as u64;
                        fill_block(lba, seed, &mut expect);
                        if got != expect.as_slice() {
                            stats.miscompares += 1;
                            if stats.bad.len() < 8 {
                                let found = u64::from_le_bytes(got[..8].try_into().unwrap());
                                stats.bad.push((lba, found));
                            }
                        }
                    }
                }
            } else {
                why = Some(format!("data {}", b.status()));
            }
            if why.is_none() {
                if let Err(e) = Self::csw_ok(&c, cmd.tag) {
                    why = Some(e);
                }
            }
            let Some(why) = why else {
                retries_here = 0;
                stats.next_lba = cmd.lba + u64::from(cmd.blocks);
                continue;
            };
            // Device gone: -ENODEV (-ESHUTDOWN is also containment's collateral answer).
            if [a.status(), b.status(), c.status()].contains(&-19) {
                self.drain(&mut q)?;
                return Err(RunError::Gone(format!("LBA {}: {why}", cmd.lba)));
            }
            if cmd.lba == last_failed {
                retries_here += 1;
            }
            last_failed = cmd.lba;
            if retries_here > 50 {
                return Err(RunError::Stuck(format!(
                    "LBA {} keeps failing: {why}",
                    cmd.lba
                )));
            }
            self.drain(&mut q)?;
            self.recover()?;
            stats.recoveries += 1;
            next = cmd.lba;
        }
        if verify {
            stats.bytes += count * u64::from(BLOCK);
        }
        Ok(())
    }
}
