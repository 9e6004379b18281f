//! The I/O edge of a USB/IP connection for an edge-triggered (mio) loop: moves bytes
//! between a non-blocking socket and a sans-I/O connection, making no protocol decision.

use std::io::{self, ErrorKind, IoSlice, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};

use rustix::buffer::spare_capacity;

use super::client::{ClientConn, ClientError};
use super::server::{ConnError, ServerConn};
use super::session::{Session, SessionError};

/// How a [`Wire::feed_direct`] read went wrong: the read itself, or the bytes it brought.
#[derive(Debug)]
pub enum FeedError<R, P> {
    /// The read failed (e.g. it would block).
    Read(R),
    /// The peer broke the protocol.
    Protocol(P),
}

/// What [`Wire::feed_direct`] takes: appends at most the given number of bytes from the
/// stream to the buffer, returns how many (0 at end of stream).
pub type DirectRead<'a> = &'a mut dyn FnMut(&mut Vec<u8>, usize) -> io::Result<usize>;

/// A sans-I/O USB/IP endpoint: bytes in, bytes out.
pub trait Wire {
    /// What `feed` reports for a peer that broke the protocol.
    type Error: std::error::Error + 'static;
    /// Processes received bytes.
    fn feed(&mut self, bytes: &[u8]) -> Result<(), Self::Error>;
    /// When the stream's next bytes are a payload the endpoint keeps whole (OUT data of a
    /// CMD_SUBMIT, IN data of a RET_SUBMIT), reads them with `read` straight into that
    /// payload's buffer, then processes them: no copy through a scratch buffer. `None`:
    /// nothing is awaited that way now; read into scratch and [`feed`](Self::feed).
    fn feed_direct(
        &mut self,
        read: DirectRead<'_>,
    ) -> Option<Result<usize, FeedError<io::Error, Self::Error>>> {
        let _ = read;
        None
    }
    /// The first bytes waiting to be written (empty only when none are).
    fn pending_tx(&self) -> &[u8];
    /// Fills `out` with the bytes waiting to be written, in order; returns how many slices
    /// were filled (0 when none are waiting).
    fn pending_tx_slices<'a>(&'a self, out: &mut [IoSlice<'a>]) -> usize {
        let p = self.pending_tx();
        match out.first_mut() {
            Some(slot) if !p.is_empty() => {
                *slot = IoSlice::new(p);
                1
            }
            _ => 0,
        }
    }
    /// Marks the first `n` pending bytes as written.
    fn consume_tx(&mut self, n: usize);
}

impl Wire for Session {
    type Error = SessionError;
    fn feed(&mut self, bytes: &[u8]) -> Result<(), SessionError> {
        Session::feed(self, bytes)
    }
    fn feed_direct(
        &mut self,
        read: DirectRead<'_>,
    ) -> Option<Result<usize, FeedError<io::Error, SessionError>>> {
        Session::feed_direct(self, read)
    }
    fn pending_tx(&self) -> &[u8] {
        Session::pending_tx(self)
    }
    fn pending_tx_slices<'a>(&'a self, out: &mut [IoSlice<'a>]) -> usize {
        Session::pending_tx_slices(self, out)
    }
    fn consume_tx(&mut self, n: usize) {
        Session::consume_tx(self, n)
    }
}

impl Wire for ServerConn {
    type Error = ConnError;
    fn feed(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        ServerConn::feed(self, bytes)
    }
    fn feed_direct(
        &mut self,
        read: DirectRead<'_>,
    ) -> Option<Result<usize, FeedError<io::Error, ConnError>>> {
        ServerConn::feed_direct(self, read)
    }
    fn pending_tx(&self) -> &[u8] {
        ServerConn::pending_tx(self)
    }
    fn pending_tx_slices<'a>(&'a self, out: &mut [IoSlice<'a>]) -> usize {
        ServerConn::pending_tx_slices(self, out)
    }
    fn consume_tx(&mut self, n: usize) {
        ServerConn::consume_tx(self, n)
    }
}

impl Wire for ClientConn {
    type Error = ClientError;
    fn feed(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        ClientConn::feed(self, bytes)
    }
    fn feed_direct(
        &mut self,
        read: DirectRead<'_>,
    ) -> Option<Result<usize, FeedError<io::Error, ClientError>>> {
        ClientConn::feed_direct(self, read)
    }
    fn pending_tx(&self) -> &[u8] {
        ClientConn::pending_tx(self)
    }
    fn pending_tx_slices<'a>(&'a self, out: &mut [IoSlice<'a>]) -> usize {
        ClientConn::pending_tx_slices(self, out)
    }
    fn consume_tx(&mut self, n: usize) {
        ClientConn::consume_tx(self, n)
    }
}

/// Why [`read_some`] stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadStatus {
    /// The socket is drained (a read would block, or returned less than it asked for);
    /// wait for the next readable event.
    WouldBlock,
    /// `budget` bytes were read; more may be waiting, and with edge-triggered polling no
    /// new event will say so: come back after handling the events.
    Budget,
    /// The peer closed the connection.
    Eof,
}

/// A socket failure or a protocol violation; either way the connection is over.
#[derive(Debug, thiserror::Error)]
pub enum PumpError<E: std::error::Error + 'static> {
    /// The socket failed.
    #[error("USB/IP socket: {0}")]
    Io(#[from] io::Error),
    /// The peer broke the protocol.
    #[error("USB/IP peer: {0}")]
    Protocol(#[source] E),
}

/// Appends at most `want` bytes from `fd` to `buf`, without zeroing the space first.
/// Returns how many bytes came and how many were asked for.
fn read_append(fd: BorrowedFd<'_>, buf: &mut Vec<u8>, want: usize) -> io::Result<(usize, usize)> {
    buf.reserve_exact(want);
    let asked = buf.capacity().saturating_sub(buf.len());
    // Reads into the spare capacity only; a larger spare is fine, the caller keeps the
    // excess for the next PDU.
    let n = rustix::io::read(fd, spare_capacity(buf))?;
    Ok((n, asked))
}

/// Reads until the socket is drained, the peer closes, or `budget` bytes were read,
/// feeding everything to `conn`. A payload `conn` keeps whole is read straight into its
/// buffer ([`Wire::feed_direct`]); everything else goes through `buf`, scratch space (a
/// few KiB: what it takes beyond a header is copied once more).
///
/// A read that returns less than it asked for has drained a stream socket, and an
/// edge-triggered poller reports the next bytes to arrive, so no read is spent on
/// `EAGAIN` then.
pub fn read_some<S: Read + AsFd, W: Wire>(
    sock: &mut S,
    conn: &mut W,
    buf: &mut [u8],
    budget: usize,
) -> Result<ReadStatus, PumpError<W::Error>> {
    let mut total = 0usize;
    loop {
        if total >= budget {
            return Ok(ReadStatus::Budget);
        }
        let fd = sock.as_fd();
        let mut asked = 0;
        let direct = conn.feed_direct(&mut |v, want| {
            let (n, a) = read_append(fd, v, want)?;
            asked = a;
            Ok(n)
        });
        let got = match direct {
            Some(Ok(n)) => Ok(n),
            Some(Err(FeedError::Protocol(e))) => return Err(PumpError::Protocol(e)),
            Some(Err(FeedError::Read(e))) => Err(e),
            None => {
                asked = buf.len();
                match sock.read(buf) {
                    Ok(n) => {
                        conn.feed(buf.get(..n).unwrap_or_default())
                            .map_err(PumpError::Protocol)?;
                        Ok(n)
                    }
                    Err(e) => Err(e),
                }
            }
        };
        match got {
            Ok(0) => return Ok(ReadStatus::Eof),
            Ok(n) if n < asked => return Ok(ReadStatus::WouldBlock),
            Ok(n) => total = total.saturating_add(n),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(ReadStatus::WouldBlock),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(PumpError::Io(e)),
        }
    }
}

/// Most slices handed to one `writev`.
const MAX_IOV: usize = 32;

/// Writes pending bytes (gathered: one `writev` for many PDUs and their data buffers)
/// until done (`Ok(true)`) or the socket would block (`Ok(false)`: wait for writable).
pub fn write_some<S: Write, W: Wire>(sock: &mut S, conn: &mut W) -> io::Result<bool> {
    loop {
        let mut iov = [IoSlice::new(&[]); MAX_IOV];
        let n = conn.pending_tx_slices(&mut iov);
        if n == 0 {
            return Ok(true);
        }
        match sock.write_vectored(iov.get(..n).unwrap_or_default()) {
            Ok(0) => return Err(io::Error::from(ErrorKind::WriteZero)),
            Ok(n) => conn.consume_tx(n),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
