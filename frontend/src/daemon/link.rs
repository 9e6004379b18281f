//! USB/IP connections: vhci socket pairs and accepted TCP clients, their I/O, and the
//! OP_REQ_DEVLIST / OP_REQ_IMPORT answers.

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use mio::net::{TcpStream, UnixStream};
use mio::{Interest, Token};

use super::{Daemon, Src};
use crate::logging::peer_warn;
use crate::usbip::{
    self, ConnError, ConnEvent, Event, FeedError, Limits, OpStatus, ReadStatus, ServerConn, Session,
};

/// Most URBs one client may have outstanding.
/// How long a gone device's connection may take to drain the answers it owes.
pub(super) const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
pub(super) const MAX_IN_FLIGHT: usize = 256;
/// Largest transfer accepted from a client. With [`MAX_IN_FLIGHT`] this bounds what one
/// connection can make the daemon buffer (1 GiB; Linux drivers stay far below: usb-storage
/// sends at most a few hundred KiB per URB and keeps one or two in flight).
const MAX_TRANSFER: u32 = 4 << 20;

/// The decoding limits for client connections.
pub(super) fn limits() -> Limits {
    Limits {
        max_transfer_len: MAX_TRANSFER,
        ..Limits::default()
    }
}
/// Size of the read buffer for headers: payloads are read straight into their own buffer,
/// and the payload bytes a header read takes along are copied once more, so it stays small
/// (still many header-only PDUs, e.g. IN submits, per read).
const SCRATCH: usize = 4096;
/// Most written-out IN buffers kept for reuse by later IN transfers (at most 1 MiB each).
pub(super) const IN_BUFS_MAX: usize = 32;
/// Most bytes read from one connection per wake-up before others get a turn.
const READ_BUDGET: usize = 1 << 20;

/// The socket under a connection.
#[derive(Debug)]
pub(super) enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Unix(s) => s.as_fd(),
            Stream::Tcp(s) => s.as_fd(),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write_vectored(bufs),
            Stream::Tcp(s) => s.write_vectored(bufs),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The protocol state of a connection: vhci speaks URB PDUs from the start, a TCP
/// client does the management handshake first.
#[derive(Debug)]
pub(super) enum Wire {
    Vhci(Box<Session>),
    Tcp(ServerConn),
}

impl usbip::Wire for Wire {
    type Error = ConnError;
    fn feed(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        match self {
            Wire::Vhci(s) => Ok(s.feed(bytes)?),
            Wire::Tcp(c) => c.feed(bytes),
        }
    }
    fn feed_direct(
        &mut self,
        read: usbip::DirectRead<'_>,
    ) -> Option<Result<usize, FeedError<io::Error, ConnError>>> {
        match self {
            Wire::Vhci(s) => Some(s.feed_direct(read)?.map_err(|e| match e {
                FeedError::Read(e) => FeedError::Read(e),
                FeedError::Protocol(e) => FeedError::Protocol(ConnError::from(e)),
            })),
            Wire::Tcp(c) => c.feed_direct(read),
        }
    }
    fn pending_tx(&self) -> &[u8] {
        match self {
            Wire::Vhci(s) => s.pending_tx(),
            Wire::Tcp(c) => c.pending_tx(),
        }
    }
    fn pending_tx_slices<'a>(&'a self, out: &mut [IoSlice<'a>]) -> usize {
        match self {
            Wire::Vhci(s) => s.pending_tx_slices(out),
            Wire::Tcp(c) => c.pending_tx_slices(out),
        }
    }
    fn consume_tx(&mut self, n: usize) {
        match self {
            Wire::Vhci(s) => s.consume_tx(n),
            Wire::Tcp(c) => c.consume_tx(n),
        }
    }
}

impl Wire {
    fn take_spent_buffer(&mut self) -> Option<Vec<u8>> {
        match self {
            Wire::Vhci(s) => s.take_spent_buffer(),
            Wire::Tcp(c) => c.take_spent_buffer(),
        }
    }

    pub(super) fn session(&mut self) -> Option<&mut Session> {
        match self {
            Wire::Vhci(s) => Some(s),
            Wire::Tcp(c) => c.session(),
        }
    }

    fn poll_event(&mut self) -> Option<ConnEvent> {
        match self {
            Wire::Vhci(s) => s.poll_event().map(ConnEvent::Urb),
            Wire::Tcp(c) => c.poll_event(),
        }
    }
}

/// Which port a connection serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Bound {
    pub(super) devid: u32,
    pub(super) port: u8,
    pub(super) gen: u16,
}

/// One USB/IP connection.
#[derive(Debug)]
pub(super) struct Link {
    pub(super) stream: Stream,
    pub(super) wire: Wire,
    pub(super) token: Token,
    pub(super) bound: Option<Bound>,
    pub(super) span: tracing::Span,
    /// Set when the device went away: the connection only writes out the answers it still
    /// owes (every outstanding URB, failed) and is closed once they are out or this
    /// deadline passes, so a client that stops reading cannot keep it open.
    pub(super) draining: Option<Instant>,
}

impl Daemon {
    /// Registers a new connection.
    pub(super) fn add_link(
        &mut self,
        mut stream: Stream,
        wire: Wire,
        bound: Option<Bound>,
        span: tracing::Span,
    ) -> Option<usize> {
        let id = self.next_token;
        let token = self.token(Src::Link(id));
        let interest = Interest::READABLE | Interest::WRITABLE;
        let r = match &mut stream {
            Stream::Unix(s) => self.poll.registry().register(s, token, interest),
            Stream::Tcp(s) => self.poll.registry().register(s, token, interest),
        };
        if let Err(e) = r {
            tracing::warn!(parent: &span, error = %e, "polling a USB/IP connection");
            self.tokens.remove(&token);
            return None;
        }
        self.links.insert(
            id,
            Link {
                draining: None,
                stream,
                wire,
                token,
                bound,
                span,
            },
        );
        Some(id)
    }

    /// Closes a connection (the client sees EOF). Its transfers still in the engine are
    /// unlinked by the caller if the port lives on.
    pub(super) fn drop_link(&mut self, id: usize) -> Option<Link> {
        let mut link = self.links.remove(id)?;
        let _ = match &mut link.stream {
            Stream::Unix(s) => self.poll.registry().deregister(s),
            Stream::Tcp(s) => self.poll.registry().deregister(s),
        };
        self.tokens.remove(&link.token);
        Some(link)
    }

    /// Accepts USB/IP clients.
    pub(super) fn accept(&mut self) {
        loop {
            let accepted = match self.listener.as_ref() {
                Some(l) => l.accept(),
                None => return,
            };
            match accepted {
                Ok((sock, peer)) => {
                    let _ = sock.set_nodelay(true);
                    let span = tracing::info_span!("usbip", %peer);
                    tracing::debug!(parent: &span, "client connected");
                    let wire = Wire::Tcp(ServerConn::new(limits(), MAX_IN_FLIGHT));
                    self.add_link(Stream::Tcp(sock), wire, None, span);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a USB/IP client");
                    return;
                }
            }
        }
    }

    /// A connection is readable or writable.
    pub(super) fn link_ready(&mut self, id: usize) {
        let mut buf = std::mem::take(&mut self.scratch);
        buf.resize(SCRATCH, 0);
        self.link_read(id, &mut buf);
        self.scratch = buf;
    }

    fn link_read(&mut self, id: usize, buf: &mut [u8]) {
        loop {
            let Some(link) = self.links.get_mut(id) else {
                return;
            };
            if link.draining.is_some() {
                // The device is gone: nothing more is read, the answers owed are written.
                self.flush_links();
                return;
            }
            let status = usbip::read_some(&mut link.stream, &mut link.wire, buf, READ_BUDGET);
            let (fatal, again) = match status {
                Ok(ReadStatus::Eof) => (Some("client closed the connection".to_owned()), false),
                Err(e) => {
                    peer_warn!(self.client_warn, parent: &link.span, error = %e, "client broke the protocol");
                    (Some(e.to_string()), false)
                }
                Ok(s) => (None, s == ReadStatus::Budget),
            };
            self.link_events(id);
            if let Some(why) = fatal {
                self.close_link(id, &why);
                self.flush_links();
                return;
            }
            self.flush_links();
            if !again {
                return;
            }
        }
    }

    /// Drains a connection's events.
    fn link_events(&mut self, id: usize) {
        // A connection serves one port, so its URBs touch one controller; should that
        // change mid-batch (an import), the first one is flushed at the switch.
        let mut touched: Option<u32> = None;
        while let Some(link) = self.links.get_mut(id) {
            let Some(ev) = link.wire.poll_event() else {
                break;
            };
            let bound = link.bound;
            match ev {
                ConnEvent::DevlistRequested => {
                    let devs = self.exported_devices();
                    if let Some(Link {
                        wire: Wire::Tcp(c),
                        span,
                        ..
                    }) = self.links.get_mut(id)
                    {
                        tracing::debug!(parent: &*span, devices = devs.len(), "devlist");
                        let _ = c.reply_devlist(&devs);
                    }
                }
                ConnEvent::ImportRequested { busid } => self.import(id, &busid),
                ConnEvent::Urb(ev) => {
                    let Some(b) = bound else { continue };
                    match ev {
                        Event::Submit(cmd) => self.client_submit(b, cmd),
                        Event::Unlink { seqnum, victim } => self.client_unlink(b, seqnum, victim),
                    }
                    if let Some(prev) = touched.filter(|&d| d != b.devid) {
                        self.flush_ctrl(prev);
                    }
                    touched = Some(b.devid);
                }
            }
        }
        if let Some(devid) = touched {
            self.flush_ctrl(devid);
        }
    }

    fn import(&mut self, id: usize, busid: &str) {
        let found = self.find_busid(busid);
        let Some(Link {
            wire: Wire::Tcp(conn),
            span,
            ..
        }) = self.links.get_mut(id)
        else {
            return;
        };
        let Some((devid, port, dev)) = found else {
            tracing::info!(parent: &*span, busid, "import of an unknown or busy device refused");
            let _ = conn.refuse_import(OpStatus::NoDev);
            return;
        };
        match conn.accept_import(&dev) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                peer_warn!(self.client_warn, parent: &*span, error = %e, "client broke the protocol");
                self.close_link(id, "protocol error");
                return;
            }
            Err(e) => {
                peer_warn!(self.client_warn, parent: &*span, error = %e, "import");
                return;
            }
        }
        let span = span.clone();
        let gen = self.bind_port(devid, port, id);
        if let (Some(gen), Some(link)) = (gen, self.links.get_mut(id)) {
            link.bound = Some(Bound { devid, port, gen });
            tracing::info!(parent: &span, busid, "device imported");
        }
    }

    /// Closes a connection; a port it served keeps its device for the next import.
    pub(super) fn close_link(&mut self, id: usize, why: &str) {
        let Some(link) = self.drop_link(id) else {
            return;
        };
        tracing::info!(parent: &link.span, why, "USB/IP connection closed");
        if let Some(b) = link.bound {
            let mut wire = link.wire;
            let seqnums = wire
                .session()
                .map(|s| s.in_flight_seqnums())
                .unwrap_or_default();
            self.unbind_port(b, &seqnums);
        }
    }

    /// Writes what every connection touched since the last flush has pending; closes those
    /// that are done.
    pub(super) fn flush_links(&mut self) {
        let mut ids = std::mem::take(&mut self.link_ids);
        ids.clear();
        self.links.take_dirty(&mut ids);
        for &id in &ids {
            let Some(link) = self.links.peek_mut(id) else {
                continue;
            };
            if let Err(e) = usbip::write_some(&mut link.stream, &mut link.wire) {
                let why = format!("write: {e}");
                self.close_link(id, &why);
                continue;
            }
            while self.in_bufs.len() < IN_BUFS_MAX {
                let Some(b) = link.wire.take_spent_buffer() else {
                    break;
                };
                self.in_bufs.push(b);
            }
            if let Some(deadline) = link.draining {
                let drained = usbip::Wire::pending_tx(&link.wire).is_empty();
                if drained || Instant::now() >= deadline {
                    if let Some(link) = self.drop_link(id) {
                        tracing::info!(parent: &link.span, drained, "USB/IP connection closed: device gone");
                    }
                } else {
                    // Visited by every flush (the tick's too) until drained or late.
                    self.links.mark(id);
                }
                continue;
            }
            if let Wire::Tcp(c) = &link.wire {
                if c.should_close() {
                    self.close_link(id, "answered");
                }
            }
        }
        self.link_ids = ids;
    }
}
