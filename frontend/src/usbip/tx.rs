//! Outgoing bytes of a connection: a queue of chunks, so that a transfer's data buffer is
//! written to the socket from where it is (one `writev` with the headers around it) instead
//! of being copied behind its header first.

use std::collections::VecDeque;
use std::io::IoSlice;

/// Data shorter than this is copied next to its header: an extra iovec costs more.
const INLINE_MAX: usize = 2048;

/// A run of pending bytes handed over whole.
#[derive(Debug)]
struct Chunk {
    bytes: Vec<u8>,
    /// A sealed run of headers and small data (its buffer is reused), rather than a
    /// transfer's own data buffer.
    small: bool,
}

/// Outgoing bytes: appended at the back (copied, or a whole buffer handed over), consumed
/// from the front as the socket takes them. The pending bytes are `chunks` in order, then
/// `tail`; `start` bytes of the first of them are already written.
#[derive(Debug, Default)]
pub(crate) struct TxBuf {
    chunks: VecDeque<Chunk>,
    /// Small bytes appended after the last chunk.
    tail: Vec<u8>,
    start: usize,
    /// An emptied small buffer kept for reuse, so steady traffic allocates nothing here.
    spare: Vec<u8>,
    /// Data buffers written out, for the owner to reuse ([`TxBuf::take_spent`]).
    spent: Vec<Vec<u8>>,
}

/// Most written data buffers kept for reuse, and the largest one kept.
const SPENT_MAX: usize = 8;
const SPENT_MAX_LEN: usize = 1 << 20;

impl TxBuf {
    fn runs(&self) -> impl Iterator<Item = &[u8]> {
        let skip = self.start;
        self.chunks
            .iter()
            .map(|c| c.bytes.as_slice())
            .chain(std::iter::once(self.tail.as_slice()))
            .enumerate()
            .map(move |(i, b)| {
                if i == 0 {
                    b.get(skip..).unwrap_or_default()
                } else {
                    b
                }
            })
            .filter(|b| !b.is_empty())
    }

    /// The first pending bytes (empty only when nothing is pending).
    pub(crate) fn pending(&self) -> &[u8] {
        self.runs().next().unwrap_or_default()
    }

    /// Whether nothing is pending.
    pub(crate) fn is_empty(&self) -> bool {
        self.pending().is_empty()
    }

    /// Fills `out` with the pending bytes in order, as many runs as fit; returns how many
    /// slices were filled (0 only when nothing is pending or `out` is empty).
    pub(crate) fn slices<'a>(&'a self, out: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, b) in out.iter_mut().zip(self.runs()) {
            *slot = IoSlice::new(b);
            n += 1;
        }
        n
    }

    /// Marks the first `n` pending bytes as written.
    pub(crate) fn consume(&mut self, mut n: usize) {
        while let Some(front) = self.chunks.front() {
            let left = front.bytes.len().saturating_sub(self.start);
            if n < left {
                self.start += n;
                return;
            }
            n -= left;
            self.start = 0;
            if let Some(c) = self.chunks.pop_front() {
                if c.small {
                    if c.bytes.capacity() > self.spare.capacity() {
                        self.spare = c.bytes;
                        self.spare.clear();
                    }
                } else if self.spent.len() < SPENT_MAX && c.bytes.capacity() <= SPENT_MAX_LEN {
                    self.spent.push(c.bytes);
                }
            }
        }
        self.start = self.start.saturating_add(n).min(self.tail.len());
        if self.start == self.tail.len() {
            self.tail.clear();
            self.start = 0;
        }
    }

    /// The end to append small bytes (headers, descriptors) to.
    pub(crate) fn out(&mut self) -> &mut Vec<u8> {
        &mut self.tail
    }

    /// A data buffer that has been written out, for reuse (its contents are stale; its
    /// length is what it held).
    pub(crate) fn take_spent(&mut self) -> Option<Vec<u8>> {
        self.spent.pop()
    }

    /// Appends `data` without copying it (small buffers are copied inline instead).
    pub(crate) fn push_owned(&mut self, data: Vec<u8>) {
        if data.len() < INLINE_MAX {
            self.tail.extend_from_slice(&data);
            return;
        }
        if !self.tail.is_empty() {
            let bytes = std::mem::replace(&mut self.tail, std::mem::take(&mut self.spare));
            self.chunks.push_back(Chunk { bytes, small: true });
        } else if self.chunks.is_empty() {
            // Nothing pending: the written prefix of the empty tail means nothing.
            self.start = 0;
        }
        self.chunks.push_back(Chunk {
            bytes: data,
            small: false,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gather(t: &TxBuf) -> Vec<u8> {
        let mut s = [IoSlice::new(&[]); 64];
        let n = t.slices(&mut s);
        s[..n].iter().flat_map(|s| s.iter().copied()).collect()
    }

    #[test]
    fn chunks_come_out_in_order_across_partial_writes() {
        let mut t = TxBuf::default();
        assert!(t.is_empty());
        t.out().extend_from_slice(b"head");
        t.push_owned(vec![7; 5000]);
        t.out().extend_from_slice(b"tail");
        t.push_owned(b"small".to_vec());
        let mut want = b"head".to_vec();
        want.extend(vec![7; 5000]);
        want.extend_from_slice(b"tailsmall");
        assert_eq!(gather(&t), want);
        for step in [1, 3, 4000, 1000, 2, 3] {
            t.consume(step);
            want.drain(..step);
            assert_eq!(gather(&t), want);
            assert_eq!(t.pending(), &want[..t.pending().len()]);
        }
        t.consume(want.len());
        assert!(t.is_empty() && t.chunks.is_empty() && t.tail.is_empty());
        assert_eq!(t.take_spent().map(|v| v.len()), Some(5000));
        assert_eq!(t.take_spent(), None);
        t.out().extend_from_slice(b"again");
        assert_eq!(gather(&t), b"again");
    }

    #[test]
    fn an_empty_small_chunk_is_skipped() {
        let mut t = TxBuf::default();
        let _ = t.out();
        t.push_owned(vec![1; 4096]);
        assert_eq!(t.pending().len(), 4096);
        assert_eq!(gather(&t).len(), 4096);
        t.consume(4096);
        assert!(t.is_empty());
    }
}
