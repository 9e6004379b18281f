//! `xl-usb daemon`: applies the rules file — attaches a matching device when its domain
//! appears (`@introduceDomain`) or when it is plugged (netlink uevents on a real host,
//! the simulated bus's inotify events on the sim platform), and detaches cleanly when the
//! device or the domain goes away.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use pvusb_backend::host::hotplug::{HotplugMonitor, InotifyMonitor, UeventMonitor};
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use xenstore_cfg::vusb::{self, UsbVer, VusbId};
use xenstore_cfg::{DomId, Xs};

use crate::rules::{self, DomainRef, Rule};
use crate::usbctrl_attach::{create_with_devid, NewController, DEFAULT_PORTS};
use crate::usbdev_attach::{self, Slot};
use crate::{ctrl, domain, hostdev, usbdev_detach, Ctx};

/// A device the daemon put on a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placed {
    /// Guest.
    pub domid: DomId,
    /// Controller.
    pub controller: u32,
    /// Port.
    pub port: u8,
}

/// The daemon's memory: what it attached and which controllers it created.
#[derive(Debug)]
pub struct RulesDaemon {
    ctx: Ctx,
    rules: Vec<Rule>,
    /// busid → where the daemon attached it.
    pub placed: BTreeMap<String, Placed>,
    /// Controllers the daemon created, per guest.
    created: BTreeMap<DomId, BTreeSet<u32>>,
    /// Failures already reported, so a device that cannot go anywhere logs once.
    reported: HashSet<String>,
}

fn alive(xs: &mut Xs) -> anyhow::Result<Vec<domain::Domain>> {
    let mut out = Vec::new();
    for d in domain::list(xs)? {
        if d.domid == 0 || xs.is_domain_introduced(d.domid).unwrap_or(true) {
            out.push(d);
        }
    }
    Ok(out)
}

impl RulesDaemon {
    /// A daemon for `rules`.
    pub fn new(ctx: Ctx, rules: Vec<Rule>) -> Self {
        RulesDaemon {
            ctx,
            rules,
            placed: BTreeMap::new(),
            created: BTreeMap::new(),
            reported: HashSet::new(),
        }
    }

    fn report(&mut self, key: String, msg: &str) {
        if self.reported.insert(key) {
            tracing::warn!("{msg}");
        }
    }

    /// Brings xenstore in line with the rules once. Returns one line per change made.
    pub fn reconcile(&mut self, xs: &mut Xs) -> anyhow::Result<Vec<String>> {
        let mut changes = Vec::new();
        let doms = alive(xs)?;
        let devices = hostdev::list(&self.ctx.platform.roots);
        let present: HashSet<&str> = devices.iter().map(|d| d.busid.as_str()).collect();

        // Devices that went away: empty their ports.
        let gone: Vec<(String, Placed)> = self
            .placed
            .iter()
            .filter(|(b, _)| !present.contains(b.as_str()))
            .map(|(b, p)| (b.clone(), p.clone()))
            .collect();
        for (busid, p) in gone {
            self.placed.remove(&busid);
            if let Some(c) = ctrl::read(xs, p.domid, p.controller)? {
                if c.port(p.port) == Some(busid.as_str()) {
                    usbdev_detach::clear(xs, &self.ctx.platform, &c, p.port)?;
                    changes.push(format!(
                        "{busid} unplugged: detached from dom{} controller {} port {}",
                        p.domid, p.controller, p.port
                    ));
                }
            }
        }

        // Domains that went away: empty what we placed there, remove what we created.
        let live: HashSet<DomId> = doms.iter().map(|d| d.domid).collect();
        let dead: Vec<DomId> = self
            .created
            .keys()
            .chain(self.placed.values().map(|p| &p.domid))
            .copied()
            .filter(|d| !live.contains(d))
            .collect();
        for domid in dead {
            let mine: Vec<(String, Placed)> = self
                .placed
                .iter()
                .filter(|(_, p)| p.domid == domid)
                .map(|(b, p)| (b.clone(), p.clone()))
                .collect();
            for (busid, p) in mine {
                self.placed.remove(&busid);
                if let Some(c) = ctrl::read(xs, domid, p.controller)? {
                    usbdev_detach::clear(xs, &self.ctx.platform, &c, p.port)?;
                }
                changes.push(format!("dom{domid} gone: detached {busid}"));
            }
            for devid in self.created.remove(&domid).unwrap_or_default() {
                let be = ctrl::read(xs, domid, devid)?.map_or(0, |c| c.backend);
                vusb::remove_controller(
                    xs,
                    &VusbId {
                        fe: domid,
                        be,
                        devid,
                    },
                )?;
                changes.push(format!("dom{domid} gone: removed controller {devid}"));
            }
        }

        // Unassigned devices a rule wants somewhere that exists.
        let assigned: HashSet<String> = ctrl::assigned(xs)?.into_iter().map(|a| a.busid).collect();
        for dev in devices.iter().filter(|d| !assigned.contains(&d.busid)) {
            let Some(rule) = self.rules.iter().find(|r| r.matches(dev)).cloned() else {
                continue;
            };
            let target = doms.iter().find(|d| match &rule.domain {
                DomainRef::Id(id) => d.domid == *id,
                DomainRef::Name(n) => d.name.as_deref() == Some(n.as_str()),
            });
            let Some(target) = target.cloned() else {
                continue; // attached when the domain appears
            };
            if let Some(devid) = rule.controller {
                if ctrl::read(xs, target.domid, devid)?.is_none() {
                    let req = NewController {
                        fe: target.domid,
                        be: 0,
                        usb_ver: UsbVer::Usb20,
                        num_ports: DEFAULT_PORTS.max(rule.port.unwrap_or(1)),
                    };
                    match create_with_devid(xs, &req, devid, self.ctx.timeout) {
                        Ok(_) => {
                            self.created.entry(target.domid).or_default().insert(devid);
                            changes.push(format!(
                                "created controller {devid} of {} (rule at line {})",
                                target.label(),
                                rule.line
                            ));
                        }
                        Err(e) => {
                            let msg = format!(
                                "rule at line {}: controller {devid} of {}: {e}",
                                rule.line,
                                target.label()
                            );
                            self.report(format!("{}|ctrl|{e}", dev.busid), &msg);
                            continue;
                        }
                    }
                }
            }
            let slot = Slot {
                controller: rule.controller,
                port: rule.port,
            };
            match usbdev_attach::attach_busid(
                xs,
                &self.ctx.platform,
                target.domid,
                &dev.busid,
                slot,
                self.ctx.timeout,
            ) {
                Ok(a) => {
                    if a.created_controller {
                        self.created
                            .entry(a.domid)
                            .or_default()
                            .insert(a.controller);
                    }
                    self.placed.insert(
                        a.busid.clone(),
                        Placed {
                            domid: a.domid,
                            controller: a.controller,
                            port: a.port,
                        },
                    );
                    self.reported
                        .retain(|k| !k.starts_with(&format!("{}|", dev.busid)));
                    changes.push(format!(
                        "{} (rule at line {}) attached to {} controller {} port {}",
                        a.busid,
                        rule.line,
                        target.label(),
                        a.controller,
                        a.port
                    ));
                }
                Err(e) => {
                    let msg = format!(
                        "{} (rule at line {}) cannot go to {}: {e}",
                        dev.busid,
                        rule.line,
                        target.label()
                    );
                    self.report(format!("{}|{e}", dev.busid), &msg);
                }
            }
        }
        for c in &changes {
            tracing::info!("{c}");
        }
        Ok(changes)
    }
}

fn monitor(ctx: &Ctx) -> anyhow::Result<Box<dyn HotplugMonitor>> {
    Ok(match ctx.platform.simdir {
        Some(_) => Box::new(InotifyMonitor::new(&ctx.platform.roots)?),
        None => Box::new(UeventMonitor::new()?),
    })
}

/// Runs the daemon until SIGTERM/SIGINT (or only checks the rules with `check`).
pub fn run(ctx: &Ctx, path: &Path, check: bool) -> anyhow::Result<()> {
    let rules = rules::load(path)?;
    if check {
        println!("{}: {} rule(s) OK", path.display(), rules.len());
        return Ok(());
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("installing signal handlers")?;
    }
    let mut mon = monitor(ctx)?;
    let mut xs = ctx.xs()?;
    xs.watch("@introduceDomain", "xl-usb-rules-intro")?;
    xs.watch("@releaseDomain", "xl-usb-rules-release")?;
    let mut daemon = RulesDaemon::new(ctx.clone(), rules);
    tracing::info!(rules = %path.display(), "rules daemon running");
    println!(
        "xl-usb daemon: {} rule(s) from {}",
        daemon.rules.len(),
        path.display()
    );
    daemon.reconcile(&mut xs)?;
    let tick = Timespec {
        tv_sec: 0,
        tv_nsec: 500_000_000,
    };
    while !stop.load(Ordering::Relaxed) {
        let ready = {
            let mfd = mon.fd();
            let mut fds = [
                PollFd::new(&xs, PollFlags::IN),
                PollFd::new(&mfd, PollFlags::IN),
            ];
            match poll(&mut fds, Some(&tick)) {
                Ok(n) => n > 0,
                Err(rustix::io::Errno::INTR) => false,
                Err(e) => return Err(std::io::Error::from(e)).context("waiting for events"),
            }
        };
        if !ready {
            continue;
        }
        xs.pump()?;
        while xs.poll_event().is_some() {}
        let events = mon.read_events()?;
        tracing::debug!(?events, "hotplug");
        for line in daemon.reconcile(&mut xs)? {
            println!("{line}");
        }
    }
    Ok(())
}
