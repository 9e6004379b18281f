//! Ports: a bridge per connected usbif port, the handles that route completions back to
//! the right USB/IP connection, vhci attach/detach, and the import bookkeeping.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::time::Instant;

use pvusb_ring::urb::frontend::Handle;
use pvusb_ring::urb::split::Shape;
use pvusb_ring::urb::UrbResult;
use pvusb_ring::wire::{Port, Speed as RingSpeed, XferType};

use super::link::{Bound, Stream, Wire, DRAIN_TIMEOUT, MAX_IN_FLIGHT};
use super::Daemon;
use crate::bridge::{Bridge, Mapped};
use crate::engine::{Kind, Output, Payload};
use crate::logging::peer_warn;
use crate::usbip::{
    CmdSubmit, Completion, Direction, ExportedDevice, Session, SessionConfig, Speed,
};

const ENODEV: i32 = -19;
const ESHUTDOWN: i32 = -108;

/// One port with a device on it.
#[derive(Debug)]
pub(super) struct PortEntry {
    pub(super) bridge: Bridge,
    pub(super) span: tracing::Span,
    /// Generation of the connection serving it (0: none).
    pub(super) gen: u16,
    pub(super) link: Option<usize>,
    pub(super) vhci_port: Option<u32>,
    /// The socket end handed to vhci. The kernel keeps its own reference; ours is kept
    /// while the port is attached so a stand-in vhci (tests) can take it over too.
    pub(super) vhci_sock: Option<std::os::fd::OwnedFd>,
    pub(super) failed: bool,
}

/// Handles: port in bits 48..56, connection generation in 32..48 (0 for the bridge's own
/// transfers and unlinks), seqnum in 0..32.
fn handle(port: u8, gen: u16, seq: u32) -> Handle {
    (u64::from(port) << 48) | (u64::from(gen) << 32) | u64::from(seq)
}

fn split_handle(h: Handle) -> (u8, u16, u32) {
    (
        u8::try_from((h >> 48) & 0xff).unwrap_or(0),
        u16::try_from((h >> 32) & 0xffff).unwrap_or(0),
        u32::try_from(h & 0xffff_ffff).unwrap_or(0),
    )
}

fn usbip_speed(s: RingSpeed) -> Speed {
    match s {
        RingSpeed::None => Speed::Unknown,
        RingSpeed::Low => Speed::Low,
        RingSpeed::Full => Speed::Full,
        RingSpeed::High => Speed::High,
    }
}

/// Bus number of a controller in USB/IP terms (never 0).
fn busnum(devid: u32) -> u32 {
    devid.saturating_add(1)
}

fn busid(devid: u32, port: u8) -> String {
    format!("{}-{}", busnum(devid), port)
}

/// The USB/IP answer to a finished transfer.
fn completion(result: UrbResult, payload: Payload) -> Completion {
    let status = result.status.to_wire();
    let data = if payload.dir_in {
        payload.buf
    } else {
        Vec::new()
    };
    match payload.kind {
        Kind::Isoc { packets, .. } => Completion {
            status,
            start_frame: i32::from(result.start_frame),
            error_count: i32::try_from(result.error_count).unwrap_or(i32::MAX),
            data,
            iso: packets,
            ..Completion::default()
        },
        _ => Completion {
            status,
            actual_length: result.actual_length,
            data,
            ..Completion::default()
        },
    }
}

fn failed(status: i32, cmd: &CmdSubmit) -> Completion {
    Completion {
        status,
        iso: cmd
            .iso
            .iter()
            .map(|p| crate::usbip::IsoPacket {
                actual_length: 0,
                status,
                ..*p
            })
            .collect(),
        ..Completion::default()
    }
}

impl Daemon {
    fn port_mut(&mut self, devid: u32, port: u8) -> Option<&mut PortEntry> {
        self.ctrls
            .get_mut(&devid)?
            .conn
            .as_mut()?
            .ports
            .get_mut(&port)
    }

    /// Applies what the engine produced, until nothing more comes out. `out` is handed back
    /// empty through [`Daemon::spare_outputs`] so steady traffic allocates no batch.
    pub(super) fn process_outputs(&mut self, devid: u32, mut out: Vec<Output>) {
        let mut batch = std::mem::take(&mut self.spare_outputs);
        while !out.is_empty() {
            std::mem::swap(&mut batch, &mut out);
            for o in batch.drain(..) {
                match o {
                    Output::Attached { port, speed } => self.port_attached(devid, port, speed),
                    Output::Gone { port } => self.port_gone(devid, port),
                    Output::Complete {
                        handle,
                        result,
                        payload,
                    } => self.completed(devid, handle, result, payload),
                    Output::UnlinkReset { victim } => {
                        let (port, gen, seq) = split_handle(victim);
                        if let Some(s) = self.session_of(devid, port, gen) {
                            if let Err(e) = s.unlinked(seq) {
                                tracing::warn!(error = %e, "unlinked");
                            }
                        }
                    }
                }
            }
            if let Some(conn) = self.ctrls.get_mut(&devid).and_then(|c| c.conn.as_mut()) {
                if let Err(e) = conn.engine.flush(&mut out) {
                    tracing::error!(error = %e, "flushing the ring");
                }
            }
        }
        // Keep the larger of the two (both are empty now).
        if out.capacity() > batch.capacity() {
            batch = out;
        }
        self.spare_outputs = batch;
    }

    /// Pushes what client commands queued in the engine.
    pub(super) fn flush_ctrl(&mut self, devid: u32) {
        let mut out = self.take_outputs();
        if let Some(conn) = self.ctrls.get_mut(&devid).and_then(|c| c.conn.as_mut()) {
            if let Err(e) = conn.engine.flush(&mut out) {
                tracing::error!(error = %e, "flushing the ring");
            }
        }
        self.process_outputs(devid, out);
    }

    /// An empty output batch (reused).
    pub(super) fn take_outputs(&mut self) -> Vec<Output> {
        let mut v = std::mem::take(&mut self.spare_outputs);
        v.clear();
        v
    }

    fn session_of(&mut self, devid: u32, port: u8, gen: u16) -> Option<&mut Session> {
        let entry = self.port_mut(devid, port)?;
        if gen == 0 || entry.gen != gen {
            return None;
        }
        let link = entry.link?;
        self.links.get_mut(link)?.wire.session()
    }

    fn port_attached(&mut self, devid: u32, port: Port, speed: RingSpeed) {
        let p = port.get();
        if let Some(old) = self
            .ctrls
            .get_mut(&devid)
            .and_then(|c| c.conn.as_mut())
            .and_then(|c| c.ports.remove(&p))
        {
            self.close_port(old, ENODEV);
        }
        let Some(c) = self.ctrls.get_mut(&devid) else {
            return;
        };
        let span = tracing::info_span!(parent: &c.span, "port", port = p);
        tracing::info!(parent: &span, ?speed, "device connected; enumerating");
        let Some(conn) = c.conn.as_mut() else { return };
        conn.ports.insert(
            p,
            PortEntry {
                bridge: Bridge::new(port, usbip_speed(speed)),
                span,
                gen: 0,
                link: None,
                vhci_port: None,
                vhci_sock: None,
                failed: false,
            },
        );
        self.next_internal(devid, p);
    }

    fn port_gone(&mut self, devid: u32, port: Port) {
        let Some(entry) = self
            .ctrls
            .get_mut(&devid)
            .and_then(|c| c.conn.as_mut())
            .and_then(|c| c.ports.remove(&port.get()))
        else {
            return;
        };
        tracing::info!(parent: &entry.span, "device disconnected");
        self.close_port(entry, ENODEV);
    }

    /// Ends a port's export: vhci detach, or the TCP client gets `status` for everything
    /// outstanding and then EOF.
    pub(super) fn close_port(&mut self, entry: PortEntry, status: i32) {
        if let (Some(vport), Some(vhci)) = (entry.vhci_port, self.vhci.as_ref()) {
            if let Err(e) = vhci.detach(vport) {
                tracing::debug!(parent: &entry.span, error = %e, "vhci detach");
            }
        }
        let Some(id) = entry.link else { return };
        if let Some(link) = self.links.get_mut(id) {
            if let Some(s) = link.wire.session() {
                s.complete_all(status);
            }
            // Contract 5: every outstanding URB is answered with the error before EOF. The
            // answers may not fit the socket buffer now; the link drains them, then closes.
            link.bound = None;
            link.draining = Some(Instant::now() + DRAIN_TIMEOUT);
        }
        self.flush_links();
    }

    /// Answers, from a dead engine, the transfers of ports that are about to close.
    pub(super) fn deliver_orphans(
        &mut self,
        _devid: u32,
        ports: &BTreeMap<u8, PortEntry>,
        out: Vec<Output>,
    ) {
        for o in out {
            let (victim, done) = match o {
                Output::Complete {
                    handle,
                    result,
                    payload,
                } => (handle, Some(completion(result, payload))),
                Output::UnlinkReset { victim } => (victim, None),
                Output::Attached { .. } | Output::Gone { .. } => continue,
            };
            let (port, gen, seq) = split_handle(victim);
            let Some(entry) = ports.get(&port).filter(|e| gen != 0 && e.gen == gen) else {
                continue;
            };
            let Some(s) = entry
                .link
                .and_then(|l| self.links.get_mut(l))
                .and_then(|l| l.wire.session())
            else {
                continue;
            };
            let _ = match done {
                Some(c) => s.complete(seq, c).map_err(|e| e.to_string()),
                None => s.unlinked(seq).map_err(|e| e.to_string()),
            };
        }
    }

    fn completed(&mut self, devid: u32, h: Handle, result: UrbResult, payload: Payload) {
        let (port, gen, seq) = split_handle(h);
        if gen == 0 {
            self.internal_done(devid, port, result, &payload);
            return;
        }
        let status = result.status.to_wire();
        if let (Kind::Ctrl { setup }, Some(entry)) = (&payload.kind, self.port_mut(devid, port)) {
            if entry.gen == gen {
                entry.bridge.observe_control(setup, status);
            }
        }
        let failed = self
            .session_of(devid, port, gen)
            .and_then(|s| s.complete(seq, completion(result, payload)).err());
        if let Some(e) = failed {
            let span = self.port_mut(devid, port).map(|e| e.span.clone());
            tracing::warn!(parent: span.as_ref().and_then(|s| s.id()), error = %e, "completion");
        }
    }

    fn internal_done(&mut self, devid: u32, port: u8, result: UrbResult, payload: &Payload) {
        let Some(c) = self.ctrls.get_mut(&devid) else {
            return;
        };
        let Some(entry) = c.conn.as_mut().and_then(|conn| conn.ports.get_mut(&port)) else {
            return;
        };
        let n = usize::try_from(result.actual_length).unwrap_or(0);
        let data = payload.buf.get(..n).unwrap_or_default();
        if let Err(e) = entry.bridge.internal_done(result.status.to_wire(), data) {
            peer_warn!(c.warn, parent: &entry.span, error = %e, "enumeration failed; port not exported");
            entry.failed = true;
            return;
        }
        self.next_internal(devid, port);
    }

    /// Sends the bridge's next enumeration transfer, or exports the device once done.
    fn next_internal(&mut self, devid: u32, port: u8) {
        let Some(conn) = self.ctrls.get_mut(&devid).and_then(|c| c.conn.as_mut()) else {
            return;
        };
        let seq = conn.next_internal;
        conn.next_internal = conn.next_internal.wrapping_add(1);
        let Some(entry) = conn.ports.get_mut(&port) else {
            return;
        };
        let Some(xfer) = entry.bridge.next_internal() else {
            if entry.bridge.is_ready() {
                self.export(devid, port);
            }
            return;
        };
        let dir_in = xfer.setup[0] & 0x80 != 0;
        let len = xfer.len();
        let payload = Payload {
            dir_in,
            buf: vec![0; usize::from(len)],
            kind: Kind::Ctrl { setup: xfer.setup },
        };
        let shape = Shape {
            len: u32::from(len),
            page_offset: 0,
            max_packet: u16::from(entry.bridge.device().max_packet0.max(8)),
            extra_segs: 0,
        };
        let pipe = xfer.pipe(entry.bridge.port());
        if let Err(e) = conn
            .engine
            .submit(handle(port, 0, seq), pipe, shape, false, payload)
        {
            tracing::warn!(parent: &entry.span, error = %e.reason, "enumeration refused");
            entry.failed = true;
        }
    }

    fn export(&mut self, devid: u32, port: u8) {
        let Some(entry) = self.port_mut(devid, port) else {
            return;
        };
        let dev = entry.bridge.exported(busnum(devid), busid(devid, port));
        let span = entry.span.clone();
        tracing::info!(
            parent: &span,
            busid = %dev.busid,
            vid = format_args!("{:04x}", dev.id_vendor),
            pid = format_args!("{:04x}", dev.id_product),
            "device ready"
        );
        if self.vhci.is_some() {
            self.vhci_attach(devid, port, &dev, span);
        }
    }

    fn vhci_attach(&mut self, devid: u32, port: u8, dev: &ExportedDevice, span: tracing::Span) {
        let Some(vhci) = self.vhci.as_ref() else {
            return;
        };
        type Attached = (u32, std::os::fd::OwnedFd, std::os::fd::OwnedFd);
        let attached = (|| -> anyhow::Result<Attached> {
            let (ours, theirs) = crate::vhci::socketpair()?;
            let vport = vhci.free_port(dev.speed)?;
            vhci.attach(vport, theirs.as_fd(), dev.devid(), dev.speed)?;
            Ok((vport, ours, theirs))
        })();
        let (vport, ours, theirs) = match attached {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(parent: &span, error = %e, "vhci attach failed");
                return;
            }
        };
        let std_stream = std::os::unix::net::UnixStream::from(ours);
        if let Err(e) = std_stream.set_nonblocking(true) {
            tracing::error!(parent: &span, error = %e, "vhci socket");
            return;
        }
        let session = Session::new(SessionConfig {
            devid: dev.devid(),
            limits: super::link::limits(),
            max_in_flight: MAX_IN_FLIGHT,
        });
        let stream = Stream::Unix(mio::net::UnixStream::from_std(std_stream));
        let Some(id) = self.add_link(stream, Wire::Vhci(Box::new(session)), None, span.clone())
        else {
            return;
        };
        let gen = self.bind_port(devid, port, id);
        if let (Some(gen), Some(link)) = (gen, self.links.get_mut(id)) {
            link.bound = Some(Bound { devid, port, gen });
        }
        if let Some(entry) = self.port_mut(devid, port) {
            entry.vhci_port = Some(vport);
            entry.vhci_sock = Some(theirs);
        }
        tracing::info!(parent: &span, vport, devid = dev.devid(), "attached to vhci");
    }

    /// Gives the port to connection `link`; returns the new generation.
    pub(super) fn bind_port(&mut self, devid: u32, port: u8, link: usize) -> Option<u16> {
        let conn = self.ctrls.get_mut(&devid)?.conn.as_mut()?;
        let gen = conn.next_gen;
        conn.next_gen = conn.next_gen.checked_add(1).unwrap_or(1);
        let entry = conn.ports.get_mut(&port)?;
        entry.gen = gen;
        entry.link = Some(link);
        Some(gen)
    }

    /// The connection serving a port went away: cancel what it left in flight.
    pub(super) fn unbind_port(&mut self, b: Bound, seqnums: &[u32]) {
        let Some(conn) = self.ctrls.get_mut(&b.devid).and_then(|c| c.conn.as_mut()) else {
            return;
        };
        if let Some(entry) = conn.ports.get_mut(&b.port).filter(|e| e.gen == b.gen) {
            entry.gen = 0;
            entry.link = None;
        }
        for &seq in seqnums {
            let u = conn.next_internal;
            conn.next_internal = conn.next_internal.wrapping_add(1);
            let _ = conn
                .engine
                .unlink(handle(b.port, 0, u), handle(b.port, b.gen, seq));
        }
        self.flush_ctrl(b.devid);
    }

    /// Every ready device no connection is using, for OP_REP_DEVLIST.
    pub(super) fn exported_devices(&self) -> Vec<ExportedDevice> {
        let mut v = Vec::new();
        for (&devid, c) in &self.ctrls {
            let Some(conn) = &c.conn else { continue };
            for (&port, e) in &conn.ports {
                if e.bridge.is_ready() && e.link.is_none() && !e.failed {
                    v.push(e.bridge.exported(busnum(devid), busid(devid, port)));
                }
            }
        }
        v
    }

    /// The free, ready device named `busid`.
    pub(super) fn find_busid(&self, busid_wanted: &str) -> Option<(u32, u8, ExportedDevice)> {
        for (&devid, c) in &self.ctrls {
            let Some(conn) = &c.conn else { continue };
            for (&port, e) in &conn.ports {
                if busid(devid, port) == busid_wanted
                    && e.bridge.is_ready()
                    && e.link.is_none()
                    && !e.failed
                {
                    return Some((
                        devid,
                        port,
                        e.bridge.exported(busnum(devid), busid(devid, port)),
                    ));
                }
            }
        }
        None
    }

    /// A CMD_SUBMIT from the connection serving `b`.
    pub(super) fn client_submit(&mut self, b: Bound, mut cmd: CmdSubmit) {
        let seq = cmd.seqnum;
        let Some(conn) = self.ctrls.get_mut(&b.devid).and_then(|c| c.conn.as_mut()) else {
            return;
        };
        let Some(entry) = conn.ports.get_mut(&b.port).filter(|e| e.gen == b.gen) else {
            return;
        };
        tracing::debug!(parent: &entry.span, seq, ep = cmd.ep, dir = ?cmd.dir, len = cmd.length, "submit");
        let answer = match entry.bridge.map_submit(&cmd) {
            Mapped::Local(c) => Some(c),
            Mapped::Transfer(t) => {
                let kind = match t.pipe.xfer_type() {
                    XferType::Ctrl => Kind::Ctrl { setup: cmd.setup },
                    XferType::Int => Kind::Int {
                        interval: u16::try_from(cmd.interval.max(0)).unwrap_or(u16::MAX),
                    },
                    XferType::Bulk => Kind::Bulk,
                    XferType::Isoc => Kind::Isoc {
                        interval: u16::try_from(cmd.interval.max(0)).unwrap_or(u16::MAX),
                        start_frame: u16::try_from(cmd.start_frame & 0xffff).unwrap_or(0),
                        packets: cmd.iso.clone(),
                    },
                };
                let dir_in = cmd.dir == Direction::In;
                let buf = if dir_in {
                    // A reused buffer keeps its stale bytes: only what the backend wrote,
                    // up to `actual_length`, is ever sent.
                    let mut b = self.in_bufs.pop().unwrap_or_default();
                    b.resize(usize::try_from(cmd.length).unwrap_or(0), 0);
                    b
                } else {
                    std::mem::take(&mut cmd.data)
                };
                let payload = Payload {
                    dir_in: t.pipe.is_in(),
                    buf,
                    kind,
                };
                match conn.engine.submit(
                    handle(b.port, b.gen, seq),
                    t.pipe,
                    t.shape,
                    t.short_not_ok,
                    payload,
                ) {
                    Ok(()) => None,
                    Err(rej) => {
                        let status = match rej.reason {
                            pvusb_ring::urb::frontend::Refused::Disconnected => ESHUTDOWN,
                            pvusb_ring::urb::frontend::Refused::NoDevice(_) => ENODEV,
                        };
                        Some(failed(status, &cmd))
                    }
                }
            }
        };
        if let Some(c) = answer {
            if let Some(s) = self.session_of(b.devid, b.port, b.gen) {
                let _ = s.complete(seq, c);
            }
        }
    }

    /// A CMD_UNLINK from the connection serving `b`.
    pub(super) fn client_unlink(&mut self, b: Bound, seqnum: u32, victim: u32) {
        let Some(conn) = self.ctrls.get_mut(&b.devid).and_then(|c| c.conn.as_mut()) else {
            return;
        };
        if let Err(e) = conn
            .engine
            .unlink(handle(b.port, b.gen, seqnum), handle(b.port, b.gen, victim))
        {
            tracing::debug!(error = %e, "unlink refused");
        }
    }
}
