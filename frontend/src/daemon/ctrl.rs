//! Controller lifecycle: the xenbus handshake per `device/vusb/<devid>`, connecting,
//! tearing down when the backend goes away, and reconnecting when it comes back.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Token};
use pvusb_xen::{AllocError, DomId, PlatformKind};
use rustix::io::Errno;
use xenstore_cfg::xenbus::{read_state, XenbusState};
use xenstore_cfg::{XsErrno, XsOps};

use super::port::PortEntry;
use super::{Daemon, Src};
use crate::engine::{Engine, SetupError};
use crate::logging::{peer_warn, RateLimit};
use crate::pool::GRANTS_PER_CONTROLLER;
use crate::xenbus::{self, Paths};

/// One `device/vusb/<devid>` of this domain.
#[derive(Debug)]
pub(super) struct Controller {
    pub(super) paths: Paths,
    pub(super) span: tracing::Span,
    pub(super) conn: Option<Connected>,
    /// Warnings the backend (or the device behind it) causes; it decides how often.
    pub(super) warn: RateLimit,
    /// When setting up the rings last failed (no grants left, most likely): the tick
    /// tries again every [`SETUP_RETRY`], so the controller connects once another one is
    /// detached or the admin raises the gntalloc limit.
    pub(super) setup_failed: Option<Instant>,
}

/// How often a controller whose setup failed is tried again.
pub(super) const SETUP_RETRY: Duration = Duration::from_secs(2);

/// A controller whose rings are granted and published.
#[derive(Debug)]
pub(super) struct Connected {
    pub(super) engine: Engine,
    pub(super) token: Token,
    pub(super) ports: BTreeMap<u8, PortEntry>,
    /// The backend reached Connected: it has mapped the rings.
    pub(super) be_connected: bool,
    pub(super) next_gen: u16,
    pub(super) next_internal: u32,
}

fn watch_token(devid: u32) -> String {
    format!("be-{devid}")
}

impl Daemon {
    /// `device/vusb` changed: start new controllers, forget removed ones.
    pub(super) fn scan_controllers(&mut self) {
        let dir = self.vusb_dir.clone();
        let present: Vec<u32> = match self.xs.directory(&dir) {
            Ok(v) => v.iter().filter_map(|d| d.parse().ok()).collect(),
            Err(e) if xenstore_cfg::xenbus::is_gone(&e) => Vec::new(),
            Err(e) => {
                tracing::warn!(error = %e, "listing {dir}");
                return;
            }
        };
        let gone: Vec<u32> = self
            .ctrls
            .keys()
            .filter(|d| !present.contains(d))
            .copied()
            .collect();
        for devid in gone {
            self.teardown(devid, "device removed");
            if let Some(c) = self.ctrls.remove(&devid) {
                let path = format!("{}/state", c.paths.be_dir);
                if let Err(e) = self.xs.unwatch(&path, &watch_token(devid)) {
                    tracing::debug!(error = %e, "unwatching {path}");
                }
                tracing::info!(parent: &c.span, "controller removed");
            }
        }
        for devid in present {
            if self.ctrls.contains_key(&devid) {
                continue;
            }
            let fe_dir = format!("{dir}/{devid}");
            let paths = match xenbus::read_paths(&mut self.xs, &fe_dir) {
                Ok(p) => p,
                Err(e) => {
                    // The toolstack writes the directory in one transaction, so this is
                    // a malformed entry, not a half-written one.
                    tracing::warn!(devid, error = %e, "ignoring malformed vusb device");
                    continue;
                }
            };
            let span = tracing::info_span!("vusb", domid = self.domid, devid, be = paths.be_domid);
            let path = format!("{}/state", paths.be_dir);
            if let Err(e) = self.xs.watch(&path, &watch_token(devid)) {
                tracing::warn!(parent: &span, error = %e, "watching {path}");
                continue;
            }
            tracing::info!(parent: &span, be_dir = %paths.be_dir, "controller found");
            self.ctrls.insert(
                devid,
                Controller {
                    paths,
                    span,
                    conn: None,
                    warn: RateLimit::default(),
                    setup_failed: None,
                },
            );
        }
    }

    /// The backend's state changed (or we should re-check it).
    pub(super) fn backend_changed(&mut self, devid: u32) {
        let Some(c) = self.ctrls.get(&devid) else {
            return;
        };
        let (be_dir, fe_dir, span) = (
            c.paths.be_dir.clone(),
            c.paths.fe_dir.clone(),
            c.span.clone(),
        );
        let connected = c.conn.is_some();
        // Whether the backend was seen Connected on the rings we published: only then does a
        // later InitWait mean it restarted. Right after we publish, the backend still reads
        // InitWait until it has mapped the rings (slow under real Xen), which is no restart.
        let be_was_connected = c.conn.as_ref().is_some_and(|c| c.be_connected);
        let be = match read_state(&mut self.xs, &be_dir) {
            Ok(s) => s,
            // The backend's directory went with its domain (we may no longer read there).
            Err(e) if matches!(e.errno(), Some(XsErrno::EACCES | XsErrno::ENOENT)) => {
                XenbusState::Unknown
            }
            Err(e) => {
                tracing::warn!(parent: &span, error = %e, "reading backend state");
                return;
            }
        };
        tracing::debug!(parent: &span, ?be, connected, "backend state");
        use XenbusState as S;
        match (be, connected) {
            (S::InitWait | S::Initialised, true) if be_was_connected => {
                // The backend restarted and lost our rings: start over with fresh ones.
                self.teardown(devid, "backend restarted");
                self.connect(devid);
            }
            (S::InitWait | S::Initialised, true) => {
                // Our rings are published; the backend has not mapped them yet.
            }
            (S::Connected, true) => {
                if let Some(conn) = self.ctrls.get_mut(&devid).and_then(|c| c.conn.as_mut()) {
                    if !conn.be_connected {
                        tracing::info!(parent: &span, "backend connected");
                    }
                    conn.be_connected = true;
                }
                // Events the backend queued while binding.
                self.service_ctrl(devid);
            }
            (S::InitWait | S::Initialised, false) => self.connect(devid),
            (S::Connected, false) => {
                // Connected to rings that are not ours (we restarted, or we dropped a
                // broken connection): have it close and come back through InitWait.
                tracing::info!(parent: &span, "backend connected to stale rings; asking it to close");
                self.set_fe_state(&fe_dir, S::Closing, &span);
            }
            (S::Closing, _) => {
                self.teardown(devid, "backend closing");
                self.set_fe_state(&fe_dir, S::Closed, &span);
            }
            (S::Closed | S::Unknown | S::Initialising, _) => {
                self.teardown(devid, "backend closed");
                // Ask for a reconnect, as the Linux backends expect ("fe Initialising
                // while be Closed → be InitWait").
                self.set_fe_state(&fe_dir, S::Initialising, &span);
            }
            (S::Reconfiguring | S::Reconfigured, _) => {}
        }
    }

    pub(super) fn set_fe_state(&mut self, fe_dir: &str, state: XenbusState, span: &tracing::Span) {
        if let Err(e) = xenbus::set_state(&mut self.xs, fe_dir, state) {
            tracing::debug!(parent: span, error = %e, ?state, "setting frontend state");
        }
    }

    fn connect(&mut self, devid: u32) {
        let Some(c) = self.ctrls.get_mut(&devid) else {
            return;
        };
        let (paths, span) = (c.paths.clone(), c.span.clone());
        let offer = match xenbus::read_offer(&mut self.xs, &paths.be_dir) {
            Ok(o) => o,
            Err(e) => {
                peer_warn!(c.warn, parent: &span, error = %e, "backend offers nothing usable");
                return;
            }
        };
        let be = DomId(paths.be_domid);
        let (engine, info) = match Engine::new(&self.platform, be, &offer) {
            Ok((mut e, i)) => {
                e.set_quiet(!self.busy_poll.is_zero());
                (e, i)
            }
            Err(e) => {
                let again = c.setup_failed.replace(Instant::now()).is_some();
                if again {
                    tracing::debug!(parent: &span, error = %e, "setting up the rings, again");
                    return;
                }
                tracing::error!(
                    parent: &span,
                    error = %e,
                    grants_per_controller = GRANTS_PER_CONTROLLER,
                    "setting up the rings; the controller stays unconnected and is retried"
                );
                // As xen-hcd's xenbus_dev_error, for the toolstack and the admin to see.
                let errno = match e {
                    SetupError::Alloc(AllocError::Limit { .. }) => Errno::NOSPC,
                    _ => Errno::IO,
                }
                .raw_os_error();
                let msg = format!("setting up the rings: {e}");
                if let Err(e) =
                    xenstore_cfg::xenbus::dev_error(&mut self.xs, &paths.fe_dir, errno, &msg)
                {
                    tracing::warn!(parent: &span, error = %e, "reporting the error in xenstore");
                }
                return;
            }
        };
        let token = self.token(Src::Evtchn(devid));
        let fd = engine.evtchn().as_fd_raw();
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut SourceFd(&fd), token, Interest::READABLE)
        {
            tracing::error!(parent: &span, error = %e, "polling the event channel");
            self.retired.absorb(engine.disconnect(&mut Vec::new()));
            return;
        }
        if let Err(e) = xenbus::publish(&mut self.xs, &paths.fe_dir, &info, true) {
            tracing::warn!(parent: &span, error = %e, "publishing the rings");
            let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
            self.tokens.remove(&token);
            self.retired.absorb(engine.disconnect(&mut Vec::new()));
            return;
        }
        if let Some(c) = self.ctrls.get_mut(&devid) {
            if c.setup_failed.take().is_some() {
                tracing::info!(parent: &span, "rings set up after all");
            }
        }
        if let Err(e) = xenstore_cfg::xenbus::clear_dev_error(&mut self.xs, &paths.fe_dir) {
            tracing::debug!(parent: &span, error = %e, "removing an earlier error report");
        }
        tracing::info!(
            parent: &span,
            num_ports = offer.num_ports,
            usb_ver = offer.usb_ver,
            aca = offer.aca,
            split_chain = offer.split_chain,
            urb_ring_ref = info.urb_ring_ref,
            conn_ring_ref = info.conn_ring_ref,
            evtchn = info.event_channel,
            "rings published, frontend connected"
        );
        if let Some(c) = self.ctrls.get_mut(&devid) {
            c.conn = Some(Connected {
                engine,
                token,
                ports: BTreeMap::new(),
                be_connected: false,
                next_gen: 1,
                next_internal: 0,
            });
        }
    }

    /// Ends the controller connection: every pending transfer completes with an error,
    /// every port's client sees the device gone, grants end once the backend unmapped.
    pub(super) fn teardown(&mut self, devid: u32, why: &str) {
        let Some(c) = self.ctrls.get_mut(&devid) else {
            return;
        };
        let Some(conn) = c.conn.take() else {
            return;
        };
        let span = c.span.clone();
        tracing::info!(parent: &span, why, pending = conn.engine.pending(), "disconnecting");
        let fd = conn.engine.evtchn().as_fd_raw();
        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        self.tokens.remove(&conn.token);
        let Connected { engine, ports, .. } = conn;
        let mut out = Vec::new();
        let retired = engine.disconnect(&mut out);
        // Answer what the clients are owed, then close their connections.
        self.deliver_orphans(devid, &ports, out);
        for (_, entry) in ports {
            self.close_port(entry, -108);
        }
        self.retired.absorb(retired);
        self.retired.retry();
    }

    /// The backend domain may have died.
    pub(super) fn check_backends_alive(&mut self) {
        let devids: Vec<(u32, u16)> = self
            .ctrls
            .iter()
            .filter(|(_, c)| c.conn.is_some())
            .map(|(&d, c)| (d, c.paths.be_domid))
            .collect();
        for (devid, be) in devids {
            match self.xs.is_domain_introduced(be) {
                Ok(true) => {}
                Ok(false) => {
                    self.teardown(devid, "backend domain died");
                    if let Some(c) = self.ctrls.get(&devid) {
                        let (fe_dir, span) = (c.paths.fe_dir.clone(), c.span.clone());
                        self.set_fe_state(&fe_dir, XenbusState::Initialising, &span);
                    }
                }
                Err(e) => tracing::debug!(error = %e, "is_domain_introduced"),
            }
        }
    }

    /// Tries again to set up a controller whose setup failed [`SETUP_RETRY`] ago.
    pub(super) fn retry_setup(&mut self, devid: u32) {
        let due = self.ctrls.get(&devid).is_some_and(|c| {
            c.conn.is_none() && c.setup_failed.is_some_and(|t| t.elapsed() >= SETUP_RETRY)
        });
        if due {
            self.backend_changed(devid);
        }
    }

    /// Detects a backend that died without its domain or its state saying so (sim only;
    /// see [`crate::engine::Engine::backend_alive`]).
    pub(super) fn probe_backend(&mut self, devid: u32) {
        if self.kind != PlatformKind::Sim {
            return;
        }
        let Some(conn) = self.ctrls.get_mut(&devid).and_then(|c| c.conn.as_mut()) else {
            return;
        };
        if !conn.be_connected {
            return;
        }
        match conn.engine.backend_alive() {
            Ok(true) => {}
            Ok(false) => {
                self.teardown(devid, "backend no longer maps the rings");
                self.realign(devid);
            }
            Err(e) => {
                tracing::warn!(error = %e, "probing the backend");
                self.teardown(devid, "ring probe failed");
            }
        }
    }

    /// After losing a backend that did not say goodbye: if its state still reads
    /// Connected (a killed process, or a backend serving stale rings), ask it to close —
    /// Closing → Closed → our Initialising → its InitWait → a fresh connection; otherwise
    /// ask for a reconnect at once.
    fn realign(&mut self, devid: u32) {
        let Some(c) = self.ctrls.get(&devid) else {
            return;
        };
        let (fe_dir, be_dir, span) = (
            c.paths.fe_dir.clone(),
            c.paths.be_dir.clone(),
            c.span.clone(),
        );
        let be = read_state(&mut self.xs, &be_dir).unwrap_or(XenbusState::Unknown);
        let next = if be == XenbusState::Connected {
            XenbusState::Closing
        } else {
            XenbusState::Initialising
        };
        self.set_fe_state(&fe_dir, next, &span);
    }

    /// Handles the controller's event channel.
    pub(super) fn service_ctrl(&mut self, devid: u32) {
        self.service_ctrl_with(devid, false);
    }

    /// `polled`: the daemon saw responses on the ring, no event fired.
    pub(super) fn service_ctrl_with(&mut self, devid: u32, polled: bool) {
        let mut out = self.take_outputs();
        let r = match self.ctrls.get_mut(&devid).and_then(|c| c.conn.as_mut()) {
            Some(conn) if polled => conn.engine.service_polled(&mut out),
            Some(conn) => conn.engine.service(&mut out),
            None => return,
        };
        self.process_outputs(devid, out);
        if let Err(e) = r {
            if let Some(c) = self.ctrls.get_mut(&devid) {
                peer_warn!(c.warn, parent: &c.span, error = %e, "backend broke the protocol");
            }
            self.teardown(devid, "protocol error");
            if let Some(c) = self.ctrls.get(&devid) {
                let (fe_dir, span) = (c.paths.fe_dir.clone(), c.span.clone());
                self.set_fe_state(&fe_dir, XenbusState::Closing, &span);
            }
        }
        self.flush_links();
    }
}

/// The raw fd of an event channel, for registering with mio.
trait RawFdOf {
    fn as_fd_raw(&self) -> std::os::fd::RawFd;
}

impl RawFdOf for dyn pvusb_xen::EventChannel + '_ {
    fn as_fd_raw(&self) -> std::os::fd::RawFd {
        self.as_fd().as_raw_fd()
    }
}
