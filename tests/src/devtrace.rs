//! The device side of the URB ledger: the sim device's trace (`DeviceSpec::trace`, one line
//! per URB it executed) checked against the guest's per-endpoint submission order
//! (DESIGN.md contract 2: requests for one endpoint reach the device in submission order).

use std::path::Path;

/// What identifies a guest URB in the device's trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    /// A CBW with this tag (bulk OUT).
    Cbw(u32),
    /// A CSW with this tag (bulk IN, identified by what the device returned).
    Csw(u32),
    /// Pattern data for `blocks` blocks from `lba` (OUT as sent, IN as returned; a piece of
    /// a split transfer starts at a block inside the range).
    Data {
        /// First block.
        lba: u64,
        /// Blocks.
        blocks: u32,
    },
    /// Something else (e.g. INQUIRY data): matches any data record.
    Other,
    /// Device side only: a 13-byte IN that did not return a CSW (it met leftover data).
    AnyCsw,
    /// Device side only: an IN data URB whose returned bytes do not start at a block.
    AnyData,
}

/// One line of the device trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Endpoint address (0x80 = IN).
    pub ep: u8,
    /// Transfer kind as the device saw it.
    pub kind: String,
    /// Requested length.
    pub len: u64,
    /// Bytes transferred.
    pub actual: u64,
    /// Completion status.
    pub status: i32,
    /// Up to 16 data bytes (OUT as sent, IN as returned).
    pub head: Vec<u8>,
}

/// Reads a device trace (empty if the device never ran traced).
pub fn read(path: &Path) -> Vec<Record> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Record> {
    let mut r = Record {
        ep: 0,
        kind: String::new(),
        len: 0,
        actual: 0,
        status: 0,
        head: Vec::new(),
    };
    for field in line.split_whitespace() {
        let (k, v) = field.split_once('=')?;
        match k {
            "ep" => r.ep = u8::from_str_radix(v, 16).ok()?,
            "kind" => r.kind = v.to_owned(),
            "len" => r.len = v.parse().ok()?,
            "actual" => r.actual = v.parse().ok()?,
            "status" => r.status = v.parse().ok()?,
            "head" => {
                r.head = (0..v.len() / 2)
                    .filter_map(|i| u8::from_str_radix(v.get(2 * i..2 * i + 2)?, 16).ok())
                    .collect()
            }
            _ => {}
        }
    }
    Some(r)
}

impl Record {
    /// What this record says about the guest URB it came from; `None` if it cannot say
    /// (an IN that returned nothing).
    pub fn key(&self) -> Option<Key> {
        let h = &self.head;
        let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let is_in = self.ep & 0x80 != 0;
        if !is_in && self.len == 31 && h.len() >= 8 && &h[..4] == b"USBC" {
            return Some(Key::Cbw(word(4)));
        }
        if is_in && self.len == 13 {
            if self.actual == 13 && h.len() >= 8 && &h[..4] == b"USBS" {
                return Some(Key::Csw(word(4)));
            }
            return (self.actual > 0).then_some(Key::AnyCsw);
        }
        if h.len() >= 8 {
            // A block of the pattern starts with its LBA; anything else is mid-block data
            // (after a short read) whose first bytes read as a huge number.
            let lba = u64::from_le_bytes(h[..8].try_into().ok()?);
            if lba < 1 << 40 {
                return Some(Key::Data { lba, blocks: 0 });
            }
        }
        if is_in && self.actual > 0 {
            return Some(Key::AnyData);
        }
        None
    }
}

/// Checks that, for each bulk endpoint, the device executed a subsequence of what the guest
/// submitted, in the guest's order (retried or cancelled URBs may be missing; nothing may
/// come early). Pieces of a split transfer must come in increasing block order.
///
/// OUT records are identified by what the guest sent. IN records are identified by what
/// the device returned only if `in_by_content`: once faults desynchronise the storage
/// model (a data or CSW URB answered with another command's bytes, which the guest
/// detects and recovers from), only their lengths say which guest URB they were.
/// Returns the number of device records matched; panics with the first violation.
pub fn check_order(records: &[Record], submitted: &[(u8, Key)], in_by_content: bool) -> usize {
    let mut matched = 0;
    let mut eps: Vec<u8> = submitted.iter().map(|(e, _)| *e).collect();
    eps.sort_unstable();
    eps.dedup();
    for ep in eps {
        let guest: Vec<Key> = submitted
            .iter()
            .filter(|(e, _)| *e == ep)
            .map(|(_, k)| *k)
            .collect();
        if ep & 0x80 != 0 && !in_by_content {
            matched += check_in_by_length(records, ep, &guest);
            continue;
        }
        // `i`: the next guest URB not consumed; `cur`: the data URB whose pieces are
        // arriving, with the lowest block the next piece may start at.
        let mut i = 0usize;
        let mut cur: Option<(usize, u64)> = None;
        for (n, r) in records.iter().enumerate().filter(|(_, r)| r.ep == ep) {
            let Some(k) = r.key() else { continue };
            let fits = |g: &Key, cursor: u64| match (g, k) {
                (Key::Other, Key::Data { .. } | Key::AnyData) => true,
                (Key::Csw(_), Key::AnyCsw) | (Key::Data { .. }, Key::AnyData) => true,
                (Key::Cbw(a), Key::Cbw(b)) | (Key::Csw(a), Key::Csw(b)) => *a == b,
                (Key::Data { lba, blocks }, Key::Data { lba: x, .. }) => {
                    x >= *lba && x < lba + u64::from(*blocks) && x >= cursor
                }
                _ => false,
            };
            let x = match k {
                Key::Data { lba, .. } => lba,
                _ => cur.map_or(0, |(_, c)| c.saturating_sub(1)),
            };
            if let Some((j, c)) = cur {
                if k == Key::AnyData || fits(&guest[j], c) {
                    cur = Some((j, x + 1));
                    matched += 1;
                    continue;
                }
            }
            while i < guest.len() && !fits(&guest[i], 0) {
                i += 1;
            }
            assert!(
                i < guest.len(),
                "device trace line {n} on ep {ep:02x} ({r:?} = {k:?}) is out of the guest's \
                 submission order (or was never submitted) — contract 2 broken"
            );
            cur = matches!(guest[i], Key::Data { .. }).then_some((i, x + 1));
            i += 1;
            matched += 1;
        }
    }
    matched
}

/// The IN half of [`check_order`] by lengths: a 13-byte record is a CSW URB, anything else a
/// piece of the current data URB while its bytes last, else of the next one.
fn check_in_by_length(records: &[Record], ep: u8, guest: &[Key]) -> usize {
    let fits = |g: &Key, len: u64| match g {
        Key::Other => true,
        Key::Csw(_) => len == 13,
        Key::Data { blocks, .. } => len != 13 && len <= u64::from(*blocks) * 512,
        _ => false,
    };
    let (mut i, mut left, mut matched) = (0usize, 0u64, 0usize);
    for (n, r) in records.iter().enumerate().filter(|(_, r)| r.ep == ep) {
        matched += 1;
        if r.len != 13 && r.len <= left {
            left -= r.len;
            continue;
        }
        while i < guest.len() && !fits(&guest[i], r.len) {
            i += 1;
        }
        assert!(
            i < guest.len(),
            "device trace line {n} on ep {ep:02x} ({r:?}) fits no guest URB left in \
             submission order — contract 2 broken"
        );
        left = match guest[i] {
            Key::Data { blocks, .. } => u64::from(blocks) * 512 - r.len,
            _ => 0,
        };
        i += 1;
    }
    matched
}
