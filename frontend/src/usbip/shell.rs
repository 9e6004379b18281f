//! The I/O edge of a USB/IP connection for an edge-triggered (mio) loop: moves bytes
//! between a non-blocking socket and a sans-I/O connection, making no protocol decision.

use std::io::{self, ErrorKind, Read, Write};

use super::client::{ClientConn, ClientError};
use super::server::{ConnError, ServerConn};
use super::session::{Session, SessionError};

/// A sans-I/O USB/IP endpoint: bytes in, bytes out.
pub trait Wire {
    /// What `feed` reports for a peer that broke the protocol.
    type Error;
    /// Processes received bytes.
    fn feed(&mut self, bytes: &[u8]) -> Result<(), Self::Error>;
    /// Bytes waiting to be written.
    fn pending_tx(&self) -> &[u8];
    /// Marks the first `n` pending bytes as written.
    fn consume_tx(&mut self, n: usize);
}

impl Wire for Session {
    type Error = SessionError;
    fn feed(&mut self, bytes: &[u8]) -> Result<(), SessionError> {
        Session::feed(self, bytes)
    }
    fn pending_tx(&self) -> &[u8] {
        Session::pending_tx(self)
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
    fn pending_tx(&self) -> &[u8] {
        ServerConn::pending_tx(self)
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
    fn pending_tx(&self) -> &[u8] {
        ClientConn::pending_tx(self)
    }
    fn consume_tx(&mut self, n: usize) {
        ClientConn::consume_tx(self, n)
    }
}

/// Why [`read_some`] stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadStatus {
    /// The socket is drained; wait for the next readable event.
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

/// Reads until the socket would block, the peer closes, or `budget` bytes were read,
/// feeding everything to `conn`. `buf` is scratch space (64 KiB is a good size).
pub fn read_some<S: Read, W: Wire>(
    sock: &mut S,
    conn: &mut W,
    buf: &mut [u8],
    budget: usize,
) -> Result<ReadStatus, PumpError<W::Error>>
where
    W::Error: std::error::Error + 'static,
{
    let mut total = 0usize;
    loop {
        if total >= budget {
            return Ok(ReadStatus::Budget);
        }
        match sock.read(buf) {
            Ok(0) => return Ok(ReadStatus::Eof),
            Ok(n) => {
                total = total.saturating_add(n);
                conn.feed(buf.get(..n).unwrap_or_default())
                    .map_err(PumpError::Protocol)?;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(ReadStatus::WouldBlock),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(PumpError::Io(e)),
        }
    }
}

/// Writes pending bytes until done (`Ok(true)`) or the socket would block (`Ok(false)`:
/// wait for writable).
pub fn write_some<S: Write, W: Wire>(sock: &mut S, conn: &mut W) -> io::Result<bool> {
    while !conn.pending_tx().is_empty() {
        match sock.write(conn.pending_tx()) {
            Ok(0) => return Err(io::Error::from(ErrorKind::WriteZero)),
            Ok(n) => conn.consume_tx(n),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}
