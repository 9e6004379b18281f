//! One vusb controller's lifecycle: the XenbusState handshake with its frontend, mapping
//! and releasing the rings, and the ports' host devices (`port/<n>` = bus id).
//!
//! [`Controller::sync`] reconciles everything from xenstore, so any watch event (ours, the
//! toolstack's, the frontend's) can simply call it: it is idempotent. Transitions follow
//! Linux's xenbus backends (protocol.md §1.10): Initialising → InitWait when created;
//! frontend Initialised/Connected → map rings, bind the channel, Connected; frontend
//! Closing/Closed (or a fatal protocol error) → release the rings, Closing, then Closed;
//! frontend Initialising while Closed → InitWait again (reconnect). A frontend already
//! Connected when the controller is found is on rings a dead backend process served: they
//! are taken over in place, without InitWait (see `Engine::connect`).

use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Context;
use pvusb_ring::sring::{ConnBackRing, UrbBackRing};
use pvusb_ring::urb::aca::FEATURE_ACA;
use pvusb_ring::urb::chain::FEATURE_SPLIT_CHAIN;
use pvusb_ring::wire::{Port, UsbVer};
use pvusb_xen::{DomId, EventChannel, EventChannels, EvtchnPort, GrantCopier, GrantMapper};
use tracing::{debug, error, info, warn, Span};
use xenstore_cfg::vusb::{self, keys, VusbId};
use xenstore_cfg::xenbus::{read_rings, read_state, switch_state, XenbusState};
use xenstore_cfg::{Xs, XsOps};

use crate::config::FileConfig;
use crate::engine::copy::{Copied, ARENA_PAGES};
use crate::engine::journal::{Journal, RingId};
use crate::engine::memory::{Grants, GuestMemory};
use crate::engine::persistent::{Persistent, FEATURE_PERSISTENT, MAX_PERSISTENT};
use crate::engine::{DeviceState, Engine, EngineConfig, Features, Link};
use crate::host::{self, HostDevice, Readiness};
use crate::journal_file;
use crate::logging::RateLimit;
use crate::poller::{Poller, Token};

/// What a controller needs from the daemon while it reconciles.
#[derive(Debug)]
pub struct Env<'a> {
    /// The xenstore connection.
    pub xs: &'a mut Xs,
    /// Grant mapping and event channels.
    pub hyp: &'a Arc<pvusb_xen::Platform>,
    /// Where host devices come from.
    pub host: &'a host::Platform,
    /// The wait set.
    pub poller: &'a Poller,
    /// The configuration file's settings.
    pub file: &'a FileConfig,
}

/// One vusb controller of a frontend.
#[derive(Debug)]
pub struct Controller {
    /// Which controller.
    pub id: VusbId,
    serial: u32,
    fe_dir: String,
    state: XenbusState,
    engine: Engine,
    evtchn: Option<Arc<dyn EventChannel>>,
    /// `port/<n>` as last read (index n-1).
    wanted: Vec<Option<String>>,
    /// Bus ids that failed to open (retried on hotplug or when `port/<n>` changes).
    failed: Vec<Option<String>>,
    /// The frontend was Connected before this process came: its rings were served by a
    /// backend process that died, and are taken over as they are (see `connect`).
    adopt: bool,
    warn: RateLimit,
    span: Span,
}

/// The frontend watch token of a controller.
pub fn fe_token(id: &VusbId) -> String {
    format!("fe:{}:{}", id.fe, id.devid)
}

impl Controller {
    /// Reads the controller's settings, offers our features and goes to InitWait.
    pub fn create(id: VusbId, serial: u32, env: &mut Env<'_>) -> anyhow::Result<Self> {
        let span = tracing::info_span!("vusb", domid = id.fe, devid = id.devid);
        let be_dir = id.backend_dir();
        let view = vusb::read_backend(env.xs, &id).context("reading the controller settings")?;
        let usb_ver = match view.usb_ver {
            vusb::UsbVer::Usb11 => UsbVer::Usb11,
            vusb::UsbVer::Usb20 => UsbVer::Usb20,
        };
        let fe_dir = env
            .xs
            .read_string(&format!("{be_dir}/{}", keys::FRONTEND))
            .unwrap_or_else(|_| id.frontend_dir());
        if env.file.feature_aca {
            env.xs
                .write(&format!("{be_dir}/{FEATURE_ACA}"), b"1")
                .context("offering feature-aca")?;
        }
        if env.file.feature_split_chain {
            env.xs
                .write(&format!("{be_dir}/{FEATURE_SPLIT_CHAIN}"), b"1")
                .context("offering feature-split-chain")?;
        }
        if env.file.feature_persistent {
            env.xs
                .write(&format!("{be_dir}/{FEATURE_PERSISTENT}"), b"1")
                .context("offering feature-persistent")?;
        }
        env.xs
            .watch(&format!("{fe_dir}/{}", keys::STATE), &fe_token(&id))
            .context("watching the frontend state")?;
        let n = usize::from(view.num_ports);
        let mut engine = Engine::new(
            EngineConfig {
                num_ports: view.num_ports,
                usb_ver,
                max_bulk_urb: env.file.max_bulk_urb.unwrap_or(usize::MAX),
            },
            span.clone(),
        );
        engine.set_quiet(env.file.poll_us > 0);
        let adopt = read_state(env.xs, &fe_dir).ok() == Some(XenbusState::Connected);
        info!(parent: &span, num_ports = view.num_ports, ?usb_ver, adopt, "controller found");
        let mut c = Controller {
            id,
            serial,
            fe_dir,
            state: XenbusState::Initialising,
            engine,
            evtchn: None,
            wanted: vec![None; n],
            failed: vec![None; n],
            adopt,
            warn: RateLimit::default(),
            span,
        };
        if adopt {
            // The frontend is Connected to rings a dead backend process served, and the
            // state node still says Connected: take the rings over without passing through
            // InitWait, which a frontend that watches us (ours) would take for a backend
            // that lost its rings, tearing them down while we map them.
            c.state = XenbusState::InitWait;
        } else {
            c.switch(env.xs, XenbusState::InitWait);
        }
        Ok(c)
    }

    /// Our serial number (poller tokens).
    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// Whether the frontend has put requests on the ring that no event announced yet (see
    /// [`Engine::has_requests`]): a busy-polling daemon then serves them as if the event
    /// channel had fired.
    pub fn has_requests(&self) -> bool {
        self.evtchn.is_some() && self.engine.has_requests()
    }

    /// Re-arms the request event before sleeping; true if requests wait.
    pub fn arm(&mut self) -> bool {
        self.evtchn.is_some() && self.engine.arm()
    }

    fn switch(&mut self, xs: &mut Xs, state: XenbusState) {
        if let Err(e) = switch_state(xs, &self.id.backend_dir(), state) {
            debug!(parent: &self.span, ?state, error = %e, "cannot switch state");
        }
        if self.state != state {
            debug!(parent: &self.span, from = ?self.state, to = ?state, "xenbus state");
        }
        self.state = state;
    }

    /// Reconciles ports and the handshake with xenstore. Returns false once the controller
    /// is gone for good (Closed and offline, or its directory removed).
    pub fn sync(&mut self, env: &mut Env<'_>) -> bool {
        let be_dir = self.id.backend_dir();
        if env
            .xs
            .try_read(&format!("{be_dir}/{}", keys::STATE))
            .ok()
            .flatten()
            .is_none()
        {
            info!(parent: &self.span, "controller removed");
            self.teardown(env);
            return false;
        }
        self.sync_ports(env);
        self.sync_state(env)
    }

    fn sync_state(&mut self, env: &mut Env<'_>) -> bool {
        let fe = read_state(env.xs, &self.fe_dir).unwrap_or(XenbusState::Unknown);
        let online = env
            .xs
            .try_read(&format!("{}/{}", self.id.backend_dir(), keys::ONLINE))
            .ok()
            .flatten()
            .is_some_and(|v| v.trim_ascii() == b"1");
        use XenbusState::*;
        match (self.state, fe) {
            (InitWait, Initialised | Connected) => match self.connect(env) {
                Ok(()) => {
                    self.switch(env.xs, Connected);
                    info!(parent: &self.span, "frontend connected");
                    // Anything already on the ring; the rest comes with events.
                    let _ = self.on_evtchn(env);
                }
                Err(e) => {
                    // Everything connect reads comes from the guest (ring refs, port): rate
                    // limited, so a hostile frontend cannot flood the log. A frontend caught
                    // re-granting its rings (e.g. as this backend restarts) gets here once
                    // and connects on its next try.
                    crate::guest_warn!(
                        self.warn,
                        parent: &self.span,
                        "cannot connect the frontend (it may retry): {e:#}"
                    );
                    self.switch(env.xs, Closing);
                }
            },
            (Connected, Closing | Closed | Unknown) => {
                self.disconnect(env);
                self.switch(env.xs, Closing);
                if fe != Closing {
                    self.switch(env.xs, Closed);
                }
            }
            (Closing, Closed | Unknown) => self.switch(env.xs, Closed),
            (Closed, Initialising) if online => self.switch(env.xs, InitWait),
            _ => {}
        }
        if !online {
            // The toolstack wants the controller gone (libxl writes online=0 and waits for
            // Closed): do not wait for a frontend that may never answer.
            match self.state {
                Connected => {
                    self.disconnect(env);
                    self.switch(env.xs, Closing);
                }
                Initialising | InitWait => self.switch(env.xs, Closed),
                _ => {}
            }
            if self.state == Closing && !matches!(fe, Connected | Closing) {
                self.switch(env.xs, Closed);
            }
        }
        if self.state == Closed && !online {
            info!(parent: &self.span, "controller offline");
            self.teardown(env);
            return false;
        }
        true
    }

    fn connect(&mut self, env: &mut Env<'_>) -> anyhow::Result<()> {
        // Only the first connection can find rings left by a dead process.
        let adopt = std::mem::take(&mut self.adopt);
        let rings = read_rings(env.xs, &self.fe_dir).context("reading the ring references")?;
        let fe_flag = |env: &mut Env<'_>, key: &str| {
            env.xs
                .try_read(&format!("{}/{key}", self.fe_dir))
                .ok()
                .flatten()
                .is_some_and(|v| v.trim_ascii() == b"1")
        };
        let fe_aca = fe_flag(env, FEATURE_ACA);
        let split_chain = env.file.feature_split_chain && fe_flag(env, FEATURE_SPLIT_CHAIN);
        let persistent = env.file.feature_persistent && fe_flag(env, FEATURE_PERSISTENT);
        let domid = DomId(self.id.fe);
        let mapper: Arc<dyn GrantMapper> = env.hyp.clone();
        let mem = Grants::new(mapper, domid);
        let map_ring = |gref: u32, what: &str| -> anyhow::Result<_> {
            let page = mem
                .map(&[gref], true)
                .with_context(|| format!("mapping {what} {gref} of dom{}", domid.0))?;
            page.into_shm()
                .with_context(|| format!("{what} {gref}: empty mapping"))
        };
        // BACK_RING_ATTACH at the published rsp_prod: 0 for fresh rings, and for rings a
        // frontend kept across a backend restart, the requests it has not had answered;
        // past those the dead process's journal says it took.
        let urb_shm = map_ring(rings.urb_ring_ref, "urb-ring-ref")?;
        let geometry = UrbBackRing::new(urb_shm.clone()).context("urb ring geometry")?;
        let idx = geometry.sring().rsp_prod().load(Ordering::Acquire);
        let ring_id = RingId {
            urb_gref: rings.urb_ring_ref,
            evtchn: rings.event_channel,
        };
        let journal_shm = env.file.journal_dir.as_deref().and_then(|dir| {
            journal_file::open(dir, &self.id)
                .map_err(|e| warn!(parent: &self.span, error = %e, dir = %dir.display(), "no journal: a restart after a crash fails requests by ring position"))
                .ok()
        });
        let recovered = journal_shm
            .clone()
            .filter(|_| adopt)
            .and_then(|shm| Journal::recover(shm, ring_id, idx, geometry.size()));
        let urb = match &recovered {
            Some((_, rec)) => UrbBackRing::attach_taken(urb_shm, idx, rec.req_cons),
            None => UrbBackRing::attach(urb_shm, idx),
        }
        .context("urb ring geometry")?;
        let urb_size = urb.size();
        let conn_shm = map_ring(rings.conn_ring_ref, "conn-ring-ref")?;
        let idx = ConnBackRing::new(conn_shm.clone())
            .context("conn ring geometry")?
            .sring()
            .rsp_prod()
            .load(Ordering::Acquire);
        let conn = ConnBackRing::attach(conn_shm, idx).context("conn ring geometry")?;
        let ch: Arc<dyn EventChannel> = Arc::from(
            env.hyp
                .bind_interdomain(domid, EvtchnPort(rings.event_channel))
                .with_context(|| format!("binding event channel {}", rings.event_channel))?,
        );
        env.poller
            .add(ch.as_fd(), Readiness::Readable, Token::Evtchn(self.serial))
            .context("polling the event channel")?;
        let aca = env.file.feature_aca && fe_aca;
        // Persistent grants: the pages stay mapped past their responses (the frontend
        // promised not to revoke them while connected). A stock peer's data is copied by
        // the hypervisor (grant copy), or mapped per request if copying is off or its
        // bounce pages cannot be had.
        let (mem, data_path): (Box<dyn GuestMemory>, _) = if persistent {
            (
                Box::new(Persistent::new(mem, MAX_PERSISTENT)),
                "persistent grants",
            )
        } else if env.file.grant_copy {
            let copier: Arc<dyn GrantCopier> = env.hyp.clone();
            match Copied::new(mem, copier, domid, ARENA_PAGES) {
                Ok(c) => (Box::new(c), "grant copy"),
                Err(e) => {
                    warn!(parent: &self.span, error = %e, "no bounce pages for grant copy: mapping instead");
                    (Box::new(Grants::new(env.hyp.clone(), domid)), "grant map")
                }
            }
        } else {
            (Box::new(mem), "grant map")
        };
        let mut link = Link::new(
            urb,
            conn,
            Box::new(ch.clone()),
            mem,
            self.engine.config().num_ports,
            Features { aca, split_chain },
        );
        match recovered {
            // What the dead process had taken is answered with an error, not run again.
            Some((journal, rec)) => {
                link.set_journal(journal);
                let failed = link.fail_taken(&rec);
                info!(parent: &self.span, failed, "rings taken over from a previous backend process (its journal)");
            }
            None => {
                let started = journal_shm.and_then(|shm| {
                    Journal::start(shm, ring_id, idx, urb_size)
                        .map_err(|e| warn!(parent: &self.span, error = %e, "journal"))
                        .ok()
                });
                if let Some(journal) = started {
                    link.set_journal(journal);
                }
                if adopt {
                    let left_over = link.fail_left_over();
                    info!(parent: &self.span, left_over, "rings taken over from a previous backend process (no journal)");
                }
            }
        }
        self.engine.connect(link);
        self.evtchn = Some(ch);
        info!(parent: &self.span, ?rings, aca, split_chain, data_path, "rings mapped");
        Ok(())
    }

    fn disconnect(&mut self, env: &mut Env<'_>) {
        self.engine.disconnect();
        if let Some(ch) = self.evtchn.take() {
            env.poller.delete(ch.as_fd());
        }
        info!(parent: &self.span, "frontend disconnected");
    }

    /// The frontend broke the protocol: close this controller only.
    fn fail(&mut self, env: &mut Env<'_>, why: &dyn std::fmt::Display) {
        crate::guest_warn!(self.warn, parent: &self.span, "closing the controller: {why}");
        self.disconnect(env);
        self.switch(env.xs, XenbusState::Closing);
    }

    /// The event channel fired.
    /// The event channel fired (or the last call had more work). Returns true if requests
    /// are still waiting: the daemon calls again after serving everyone else.
    pub fn on_evtchn(&mut self, env: &mut Env<'_>) -> bool {
        let Some(ch) = self.evtchn.clone() else {
            return false;
        };
        if let Err(e) = ch.take_pending() {
            debug!(parent: &self.span, error = %e, "evtchn take_pending");
        }
        let mut r = self.engine.on_ring_event();
        if let Err(e) = ch.unmask() {
            debug!(parent: &self.span, error = %e, "evtchn unmask");
        }
        if matches!(r, Ok(false)) {
            // An event that arrived while masked is delivered by unmask; the ring may also
            // have moved in between: look again.
            r = self.engine.on_ring_event();
        }
        match r {
            Ok(more) => more,
            Err(e) => {
                self.fail(env, &e);
                false
            }
        }
    }

    /// Busy polling saw requests on the ring: serve them, leaving the event channel alone.
    pub fn on_ring(&mut self, env: &mut Env<'_>) -> bool {
        match self.engine.on_ring_event() {
            Ok(more) => more,
            Err(e) => {
                self.fail(env, &e);
                false
            }
        }
    }

    /// The device on `port` is ready (completions or gone).
    pub fn on_device(&mut self, env: &mut Env<'_>, port: u8) {
        let Some(p) = Port::new(port) else { return };
        if self.engine.on_device_ready(p) == DeviceState::Gone {
            info!(parent: &self.span, port, "device went away");
            self.release(env, p);
        }
    }

    fn release(&mut self, env: &mut Env<'_>, port: Port) {
        if let Some((fd, _)) = self.engine.device_fd(port) {
            env.poller.delete(fd);
        }
        if let Some(mut dev) = self.engine.detach(port) {
            dev.release();
        }
    }

    fn sync_ports(&mut self, env: &mut Env<'_>) {
        for i in 0..self.wanted.len() {
            let Some(port) = u8::try_from(i + 1).ok().and_then(Port::new) else {
                continue;
            };
            let wanted = env
                .xs
                .try_read(&self.id.port_path(port.get()))
                .ok()
                .flatten()
                .map(|v| String::from_utf8_lossy(&v).trim().to_owned())
                .filter(|v| !v.is_empty());
            let have = self.engine.busid(port).map(str::to_owned);
            if wanted != have && have.is_some() {
                info!(parent: &self.span, port = port.get(), busid = have.as_deref(), "unassigned");
                self.release(env, port);
            }
            if self.wanted.get(i) != Some(&wanted) {
                if let Some(f) = self.failed.get_mut(i) {
                    *f = None;
                }
            }
            if let Some(w) = self.wanted.get_mut(i) {
                w.clone_from(&wanted);
            }
            if let Some(busid) = wanted {
                let failed = self
                    .failed
                    .get(i)
                    .is_some_and(|f| f.as_deref() == Some(&busid));
                if self.engine.busid(port).is_none() && !failed {
                    self.plug(env, port, &busid);
                }
            }
        }
    }

    /// A host device appeared: plug it wherever it is wanted and missing.
    pub fn on_hotplug_add(&mut self, env: &mut Env<'_>, busid: &str) {
        for i in 0..self.wanted.len() {
            if self.wanted.get(i).and_then(|w| w.as_deref()) != Some(busid) {
                continue;
            }
            let Some(port) = u8::try_from(i + 1).ok().and_then(Port::new) else {
                continue;
            };
            if self.engine.busid(port).is_none() {
                if let Some(f) = self.failed.get_mut(i) {
                    *f = None;
                }
                self.plug(env, port, busid);
            }
        }
    }

    fn plug(&mut self, env: &mut Env<'_>, port: Port, busid: &str) {
        let i = usize::from(port.get() - 1);
        let fail = |c: &mut Self| {
            if let Some(f) = c.failed.get_mut(i) {
                *f = Some(busid.to_owned());
            }
        };
        let resolved = match host::resolve(&env.host.roots(), busid) {
            Ok(r) => r,
            Err(host::ResolveError::NotFound { .. }) => {
                info!(parent: &self.span, port = port.get(), busid, "device not present yet");
                return;
            }
            Err(e) => {
                error!(parent: &self.span, port = port.get(), busid, "cannot assign: {e}");
                return fail(self);
            }
        };
        if !env
            .file
            .allows(busid, resolved.id_vendor, resolved.id_product)
        {
            error!(parent: &self.span, port = port.get(), busid, "device not in the allow-list");
            return fail(self);
        }
        let mut dev: Box<dyn HostDevice> = match env.host.open(busid) {
            Ok(d) => d,
            Err(e) => {
                error!(parent: &self.span, port = port.get(), busid, "cannot open the device: {e}");
                return fail(self);
            }
        };
        if self.adopt {
            // Taking over from a dead backend process, which may have left the device in
            // the middle of a transfer (its URBs were cancelled when it died, mid-command
            // for the device). The guest cannot reset it (a guest's port reset never
            // reaches a usbif backend), so reset it here: the host restores its address,
            // configuration and alternate settings, and the guest's view stays true.
            match dev.reset() {
                Ok(()) => {
                    info!(parent: &self.span, port = port.get(), busid, "device reset before taking it over")
                }
                Err(e) => {
                    warn!(parent: &self.span, port = port.get(), busid, "reset before taking the device over failed: {e}")
                }
            }
        }
        match self.engine.attach(port, busid, dev) {
            Ok(_) => {
                if let Some((fd, readiness)) = self.engine.device_fd(port) {
                    if let Err(e) =
                        env.poller
                            .add(fd, readiness, Token::Device(self.serial, port.get()))
                    {
                        error!(parent: &self.span, port = port.get(), busid, "cannot poll the device: {e}");
                        self.release(env, port);
                        fail(self);
                    }
                }
            }
            Err((e, mut dev)) => {
                error!(parent: &self.span, port = port.get(), busid, "refused: {e}");
                dev.release();
                fail(self);
            }
        }
    }

    /// Releases everything: rings, event channel, every device (host drivers reattached).
    pub fn teardown(&mut self, env: &mut Env<'_>) {
        if self.engine.is_connected() {
            self.disconnect(env);
        }
        for i in 0..self.wanted.len() {
            if let Some(port) = u8::try_from(i + 1).ok().and_then(Port::new) {
                if self.engine.busid(port).is_some() {
                    self.release(env, port);
                }
            }
        }
        if let Err(e) = env.xs.unwatch(
            &format!("{}/{}", self.fe_dir, keys::STATE),
            &fe_token(&self.id),
        ) {
            debug!(parent: &self.span, error = %e, "unwatch");
        }
        if let Some(dir) = &env.file.journal_dir {
            journal_file::remove(dir, &self.id);
        }
    }

    /// Daemon shutdown: release everything and tell the frontend we are gone.
    pub fn shutdown(&mut self, env: &mut Env<'_>) {
        self.teardown(env);
        self.switch(env.xs, XenbusState::Closing);
        self.switch(env.xs, XenbusState::Closed);
    }
}
