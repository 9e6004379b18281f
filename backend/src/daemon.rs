//! The daemon: one event loop over xenstore, every controller's event channel, every
//! device's completions, host hotplug and the signal pipe. It makes no protocol
//! decisions; it routes each readiness to the controller it belongs to.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use anyhow::Context;
use pvusb_xen::{DomId, PlatformKind};
use tracing::{debug, error, info, warn};
use xenstore_cfg::vusb::{VusbId, DEVICE_TYPE};
use xenstore_cfg::{Xs, XsOps};

use crate::config::Config;
use crate::host::{self, HotplugEvent, HotplugMonitor, Readiness};
use crate::poller::{Poller, Token};
use crate::xenbus::{Controller, Env};

const BE_TOKEN: &str = "vusb-backend";
const RELEASE_TOKEN: &str = "release-domain";

/// Runs the backend until SIGTERM/SIGINT.
pub fn run(cfg: Config) -> anyhow::Result<()> {
    let mut xs = open_xenstore(&cfg)?;
    let domid = match cfg.domid {
        Some(d) => d,
        None if cfg.platform == PlatformKind::Sim => 0,
        None => xs
            .read_string("domid")
            .context("reading our domid from xenstore")?
            .trim()
            .parse()
            .context("parsing our domid")?,
    };
    let span = tracing::info_span!("backend", domid);
    let _enter = span.enter();
    let hyp = Arc::new(
        pvusb_xen::Platform::open(cfg.platform, cfg.sim_dir.as_deref(), DomId(domid))
            .context("opening the hypervisor interface")?,
    );
    let host = match (cfg.platform, &cfg.sim_dir) {
        (PlatformKind::Sim, Some(dir)) => host::Platform::Sim {
            simdir: dir.clone(),
        },
        _ => host::Platform::Real,
    };
    // Without hotplug events everything works except re-attaching a device that comes
    // back after an unplug: worth an error line, not a refusal to serve.
    let mut hotplug = match host.hotplug() {
        Ok(h) => Some(h),
        Err(e) => {
            error!("no host hotplug events (re-plugged devices will not re-attach): {e}");
            None
        }
    };
    let poller = Poller::with_busy_poll(std::time::Duration::from_micros(cfg.file.poll_us))
        .context("creating the epoll set")?;
    let (sig_rx, sig_tx) = UnixStream::pair().context("signal pipe")?;
    sig_rx.set_nonblocking(true).context("signal pipe")?;
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        let tx = sig_tx.try_clone().context("signal pipe")?;
        signal_hook::low_level::pipe::register(sig, tx).context("installing signal handlers")?;
    }
    poller.add(xs.as_fd(), Readiness::Readable, Token::Xenstore)?;
    poller.add(sig_rx.as_fd(), Readiness::Readable, Token::Signal)?;
    if let Some(h) = &hotplug {
        poller.add(h.fd(), Readiness::Readable, Token::Hotplug)?;
    }

    let root = format!("/local/domain/{domid}/backend/{DEVICE_TYPE}");
    xs.watch(&root, BE_TOKEN)
        .context("watching the backend directory")?;
    xs.watch("@releaseDomain", RELEASE_TOKEN)
        .context("watching @releaseDomain")?;
    info!(platform = ?cfg.platform, root, "pvusb-backend ready");

    let mut d = Daemon {
        xs,
        hyp,
        host,
        poller,
        file: cfg.file,
        domid,
        root,
        ctrls: BTreeMap::new(),
        next_serial: 0,
        busy: BTreeSet::new(),
    };
    d.rescan();
    'main: loop {
        // Watch events can be read off the socket while we wait for a reply to some other
        // request: handle those queued in the client before sleeping on the socket.
        d.on_xenstore_events();
        let timeout = if d.busy.is_empty() {
            std::time::Duration::from_secs(1)
        } else {
            std::time::Duration::ZERO
        };
        let ctrls = &mut d.ctrls;
        let tokens = d
            .poller
            .wait_polling(Some(timeout), |arm, out| {
                out.extend(
                    ctrls
                        .values_mut()
                        .filter_map(|c| {
                            let w = if arm { c.arm() } else { c.has_requests() };
                            w.then(|| c.serial())
                        })
                        .map(|s| {
                            if arm {
                                Token::Evtchn(s)
                            } else {
                                Token::Ring(s)
                            }
                        }),
                );
            })
            .context("waiting for events")?;
        // Controllers that used up their budget last time go again, after everyone else.
        let busy: Vec<u32> = std::mem::take(&mut d.busy).into_iter().collect();
        for t in tokens {
            match t {
                Token::Signal => {
                    let mut buf = [0u8; 16];
                    let _ = (&sig_rx).read(&mut buf);
                    info!("signal received: shutting down");
                    break 'main;
                }
                Token::Xenstore => {
                    if let Err(e) = d.on_xenstore() {
                        // Still give every device back to the host before failing.
                        d.shutdown();
                        return Err(e);
                    }
                }
                Token::Hotplug => {
                    if let Some(h) = hotplug.as_mut() {
                        d.on_hotplug(h.as_mut());
                    }
                }
                Token::Evtchn(s) => d.evtchn(s),
                Token::Ring(s) => {
                    if d.with_serial(s, |c, env| c.on_ring(env)) == Some(true) {
                        d.busy.insert(s);
                    }
                }
                Token::Device(s, p) => {
                    d.with_serial(s, |c, env| c.on_device(env, p));
                }
            }
        }
        for s in busy {
            d.evtchn(s);
        }
    }
    d.shutdown();
    Ok(())
}

fn open_xenstore(cfg: &Config) -> anyhow::Result<Xs> {
    match (cfg.platform, &cfg.sim_dir) {
        (PlatformKind::Sim, Some(dir)) => {
            let path = match cfg.domid {
                None | Some(0) => xenstore_cfg::daemon::control_socket(dir),
                Some(d) => xenstore_cfg::daemon::domain_socket(dir, d),
            };
            Xs::connect(&path)
                .with_context(|| format!("connecting to xenstored at {}", path.display()))
        }
        _ => Xs::open().context("opening xenstore"),
    }
}

struct Daemon {
    xs: Xs,
    hyp: Arc<pvusb_xen::Platform>,
    host: host::Platform,
    poller: Poller,
    file: crate::config::FileConfig,
    domid: u16,
    root: String,
    ctrls: BTreeMap<(u16, u32), Controller>,
    next_serial: u32,
    /// Controllers with requests left after their budget.
    busy: BTreeSet<u32>,
}

impl Daemon {
    fn env(&mut self) -> (Env<'_>, &mut BTreeMap<(u16, u32), Controller>) {
        (
            Env {
                xs: &mut self.xs,
                hyp: &self.hyp,
                host: &self.host,
                poller: &self.poller,
                file: &self.file,
            },
            &mut self.ctrls,
        )
    }

    fn with_serial<R>(
        &mut self,
        serial: u32,
        f: impl FnOnce(&mut Controller, &mut Env<'_>) -> R,
    ) -> Option<R> {
        let (mut env, ctrls) = self.env();
        let c = ctrls.values_mut().find(|c| c.serial() == serial)?;
        Some(f(c, &mut env))
    }

    fn evtchn(&mut self, serial: u32) {
        if self.with_serial(serial, |c, env| c.on_evtchn(env)) == Some(true) {
            self.busy.insert(serial);
        }
    }

    fn on_xenstore(&mut self) -> anyhow::Result<()> {
        match self.xs.pump() {
            Ok(_) => {}
            Err(e) => return Err(e).context("xenstore connection lost"),
        }
        self.on_xenstore_events();
        Ok(())
    }

    fn on_xenstore_events(&mut self) {
        while let Some(ev) = self.xs.poll_event() {
            if ev.token == RELEASE_TOKEN {
                self.on_release();
            } else if ev.token == BE_TOKEN {
                match VusbId::from_backend_path(&ev.path) {
                    Some(id) if self.domid == id.be => self.sync(id),
                    _ => self.rescan(),
                }
            } else if let Some(id) = parse_fe_token(&ev.token, self.domid) {
                self.sync(id);
            }
        }
    }

    /// Lists every controller under our backend directory and syncs each.
    fn rescan(&mut self) {
        let mut ids = Vec::new();
        for fe in self.xs.directory(&self.root).unwrap_or_default() {
            let Ok(fe) = fe.parse::<u16>() else { continue };
            let dir = format!("{}/{fe}", self.root);
            for devid in self.xs.directory(&dir).unwrap_or_default() {
                if let Ok(devid) = devid.parse::<u32>() {
                    ids.push(VusbId {
                        fe,
                        be: self.domid,
                        devid,
                    });
                }
            }
        }
        let known: Vec<VusbId> = self.ctrls.values().map(|c| c.id).collect();
        for id in ids.into_iter().chain(known) {
            self.sync(id);
        }
    }

    fn alive(&mut self, fe: u16) -> bool {
        // A driver domain may not be allowed to ask: then assume the guest lives.
        fe == 0 || self.xs.is_domain_introduced(fe).unwrap_or(true)
    }

    fn sync(&mut self, id: VusbId) {
        let key = (id.fe, id.devid);
        if !self.ctrls.contains_key(&key) {
            // Only controllers the toolstack wants: a directory left behind after we closed
            // an offline controller must not be picked up again (our own `state` write
            // would bring us straight back here).
            let online = format!("{}/online", id.backend_dir());
            let wanted = self
                .xs
                .try_read(&online)
                .ok()
                .flatten()
                .is_some_and(|v| v.trim_ascii() == b"1");
            if !wanted || !self.alive(id.fe) {
                return;
            }
            self.next_serial = self.next_serial.wrapping_add(1);
            let serial = self.next_serial;
            let (mut env, ctrls) = self.env();
            match Controller::create(id, serial, &mut env) {
                Ok(c) => {
                    ctrls.insert(key, c);
                }
                Err(e) => {
                    error!(
                        domid = id.fe,
                        devid = id.devid,
                        "cannot set up the controller: {e:#}"
                    );
                    return;
                }
            }
        }
        let (mut env, ctrls) = self.env();
        let keep = ctrls.get_mut(&key).is_some_and(|c| c.sync(&mut env));
        if !keep {
            ctrls.remove(&key);
        }
    }

    /// A domain died: tear down the controllers of every frontend that is gone.
    fn on_release(&mut self) {
        let fes: Vec<u16> = self.ctrls.keys().map(|k| k.0).collect();
        for fe in fes {
            if self.alive(fe) {
                continue;
            }
            info!(
                domid = fe,
                "frontend domain gone: releasing its controllers"
            );
            let (mut env, ctrls) = self.env();
            let keys: Vec<(u16, u32)> = ctrls.keys().filter(|k| k.0 == fe).copied().collect();
            for k in keys {
                if let Some(mut c) = ctrls.remove(&k) {
                    c.shutdown(&mut env);
                }
            }
        }
    }

    fn on_hotplug(&mut self, mon: &mut dyn HotplugMonitor) {
        let events = match mon.read_events() {
            Ok(e) => e,
            Err(e) => {
                warn!(error = %e, "reading hotplug events");
                return;
            }
        };
        for ev in events {
            debug!(?ev, "hotplug");
            // Removals show up on the device's own fd (ENODEV / POLLHUP); additions may be
            // a device some port is waiting for.
            if let HotplugEvent::Add(busid) = ev {
                let (mut env, ctrls) = self.env();
                for c in ctrls.values_mut() {
                    c.on_hotplug_add(&mut env, &busid);
                }
            }
        }
    }

    fn shutdown(&mut self) {
        let (mut env, ctrls) = self.env();
        for (_, mut c) in std::mem::take(ctrls) {
            c.shutdown(&mut env);
        }
        info!("pvusb-backend stopped");
    }
}

fn parse_fe_token(token: &str, be: u16) -> Option<VusbId> {
    let mut it = token.strip_prefix("fe:")?.split(':');
    let fe = it.next()?.parse().ok()?;
    let devid = it.next()?.parse().ok()?;
    Some(VusbId { fe, be, devid })
}
