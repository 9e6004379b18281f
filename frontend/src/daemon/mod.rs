//! The `pvusb-frontend` daemon: one mio loop over xenstore, each controller's event channel,
//! vhci sockets and USB/IP TCP connections. Protocol decisions live in the sans-I/O parts
//! ([`crate::engine`], [`crate::bridge`], [`crate::usbip`]); this module moves events
//! between them.

mod ctrl;
mod link;
mod links;
mod port;
mod shutdown;

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use mio::net::TcpListener;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use pvusb_xen::{DomId, Platform, PlatformKind};
use xenstore_cfg::{Xs, XsOps};

use crate::logging::RateLimit;
use crate::pool::Retired;
use crate::vhci::Vhci;
use ctrl::Controller;
use link::Link;

/// Where vhci_hcd is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VhciChoice {
    /// Find `/sys/devices/*/vhci_hcd.0`; required unless `--usbip-listen` is given.
    Auto,
    /// This directory.
    Dir(PathBuf),
    /// Do not use vhci.
    Off,
}

/// What the daemon was asked to do.
#[derive(Clone, Debug)]
pub struct Config {
    /// Real Xen or the simulated platform.
    pub platform: PlatformKind,
    /// The simulation directory (sim only).
    pub sim_dir: Option<PathBuf>,
    /// Our domain id (sim: required; xen: read from xenstore `domid` if absent).
    pub domid: Option<u16>,
    /// vhci_hcd to attach devices to.
    pub vhci: VhciChoice,
    /// Serve devices as a USB/IP server on this address.
    pub usbip_listen: Option<SocketAddr>,
    /// How long to keep polling after an event before sleeping (zero: never).
    pub busy_poll: Duration,
}

const XS: Token = Token(0);
const LISTENER: Token = Token(1);
const SIGNAL: Token = Token(2);
const TICK: Duration = Duration::from_millis(250);

/// What a dynamic token stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Src {
    Evtchn(u32),
    Link(usize),
}

/// The running daemon.
pub struct Daemon {
    poll: Poll,
    xs: Xs,
    platform: Platform,
    kind: PlatformKind,
    domid: u16,
    ctrls: BTreeMap<u32, Controller>,
    links: links::Links<Link>,
    listener: Option<TcpListener>,
    vhci: Option<Vhci>,
    retired: Retired,
    tokens: HashMap<Token, Src>,
    next_token: usize,
    vusb_dir: String,
    /// Read buffer shared by all connections.
    scratch: Vec<u8>,
    /// IN data buffers the connections have written out, reused for new IN transfers
    /// (no allocation and zeroing per URB; stale bytes past `actual_length` never leave).
    in_bufs: Vec<Vec<u8>>,
    /// Scratch list of connection ids for [`Daemon::flush_links`].
    link_ids: Vec<usize>,
    /// An emptied engine output batch, reused.
    spare_outputs: Vec<crate::engine::Output>,
    /// Warnings USB/IP clients cause (any local process can connect).
    client_warn: RateLimit,
    busy_poll: Duration,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("domid", &self.domid)
            .field("controllers", &self.ctrls.len())
            .field("links", &self.links.len())
            .finish()
    }
}

fn open_xenstore(cfg: &Config) -> anyhow::Result<Xs> {
    match (cfg.platform, &cfg.sim_dir, cfg.domid) {
        (PlatformKind::Sim, Some(dir), Some(domid)) => {
            let sock = xenstore_cfg::daemon::domain_socket(dir, domid);
            Xs::connect(&sock).with_context(|| format!("connecting to {}", sock.display()))
        }
        (PlatformKind::Sim, _, _) => anyhow::bail!("--platform sim needs --sim-dir and --domid"),
        (PlatformKind::Xen, _, _) => Xs::open().context("opening xenstore"),
    }
}

fn find_vhci(cfg: &Config) -> anyhow::Result<Option<Vhci>> {
    Ok(match (&cfg.vhci, cfg.usbip_listen) {
        (VhciChoice::Off, _) | (VhciChoice::Auto, Some(_)) => None,
        (VhciChoice::Dir(d), _) => {
            Some(Vhci::at(d).with_context(|| format!("using vhci at {}", d.display()))?)
        }
        (VhciChoice::Auto, None) => Some(
            Vhci::find().context("looking for vhci_hcd (load vhci-hcd or use --usbip-listen)")?,
        ),
    })
}

impl Daemon {
    /// Connects to xenstore and the platform, opens the listener, finds vhci.
    pub fn new(cfg: &Config) -> anyhow::Result<Daemon> {
        let mut xs = open_xenstore(cfg)?;
        let domid = match cfg.domid {
            Some(d) => d,
            None => {
                let v = xs.read_string("domid").context("reading our domid")?;
                v.trim()
                    .parse()
                    .with_context(|| format!("xenstore domid {v:?}"))?
            }
        };
        let platform = Platform::open(cfg.platform, cfg.sim_dir.as_deref(), DomId(domid))
            .context("opening the hypervisor interface")?;
        let vhci = find_vhci(cfg)?;
        let poll = Poll::new().context("creating the poller")?;
        let listener = match cfg.usbip_listen {
            Some(addr) => {
                let mut l = TcpListener::bind(addr)
                    .with_context(|| format!("listening for USB/IP on {addr}"))?;
                poll.registry()
                    .register(&mut l, LISTENER, Interest::READABLE)?;
                tracing::info!(%addr, "USB/IP server listening");
                Some(l)
            }
            None => None,
        };
        poll.registry()
            .register(&mut SourceFd(&xs.as_raw_fd()), XS, Interest::READABLE)?;
        let vusb_dir = format!("/local/domain/{domid}/device/vusb");
        xs.watch(&vusb_dir, "vusb")
            .context("watching our vusb devices")?;
        xs.watch("@releaseDomain", "release")
            .context("watching @releaseDomain")?;
        Ok(Daemon {
            poll,
            xs,
            platform,
            kind: cfg.platform,
            domid,
            ctrls: BTreeMap::new(),
            links: links::Links::new(),
            listener,
            vhci,
            retired: Retired::default(),
            tokens: HashMap::new(),
            next_token: 3,
            vusb_dir,
            scratch: Vec::new(),
            in_bufs: Vec::new(),
            link_ids: Vec::new(),
            spare_outputs: Vec::new(),
            client_warn: RateLimit::default(),
            busy_poll: cfg.busy_poll,
        })
    }

    fn token(&mut self, src: Src) -> Token {
        let t = Token(self.next_token);
        self.next_token += 1;
        self.tokens.insert(t, src);
        t
    }

    /// Serves until SIGTERM/SIGINT (then shuts down cleanly and returns `Ok`), or until
    /// xenstore goes away.
    pub fn run(mut self) -> anyhow::Result<()> {
        let sig_rx = self.signal_pipe()?;
        let mut events = Events::with_capacity(256);
        let mut next_tick = Instant::now() + TICK;
        let mut last_event = Instant::now();
        loop {
            self.handle_watches()?;
            let timeout = next_tick.saturating_duration_since(Instant::now());
            // Busy polling (--poll-us): look without sleeping for a while after an event.
            let until = last_event + self.busy_poll;
            // Each pass reads the response rings first (no system call): a response is
            // served when its index is published, with no event (the engines leave the
            // response event index unarmed while we poll; see `arm_rings` below).
            let mut ready = false;
            // The poll after serving rings still runs, so sockets are never starved.
            let mut served = false;
            while !ready && Instant::now() < until {
                served = self.serve_waiting_rings();
                match self.poll.poll(&mut events, Some(Duration::ZERO)) {
                    Ok(()) => ready = served || !events.is_empty(),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e).context("polling"),
                }
                if !ready {
                    std::thread::yield_now();
                }
            }
            if !ready {
                // Busy polling left the response events unarmed: arm them before sleeping,
                // and do not sleep if a response came in between.
                let timeout = if !self.busy_poll.is_zero() && self.arm_rings() {
                    served = true;
                    Duration::ZERO
                } else {
                    timeout
                };
                match self.poll.poll(&mut events, Some(timeout)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e).context("polling"),
                }
            }
            if served || !events.is_empty() {
                last_event = Instant::now();
            }
            for ev in events.iter() {
                match ev.token() {
                    XS => {
                        self.xs.pump().context("reading xenstore")?;
                    }
                    LISTENER => self.accept(),
                    SIGNAL => {
                        let mut buf = [0u8; 16];
                        let _ = (&sig_rx).read(&mut buf);
                        return self.shutdown();
                    }
                    t => match self.tokens.get(&t).copied() {
                        Some(Src::Evtchn(devid)) => self.service_ctrl(devid),
                        Some(Src::Link(id)) => self.link_ready(id),
                        None => {}
                    },
                }
            }
            if Instant::now() >= next_tick {
                next_tick = Instant::now() + TICK;
                self.tick();
            }
        }
    }

    /// Serves every controller whose rings hold responses (busy polling only). True if
    /// there was one.
    fn serve_waiting_rings(&mut self) -> bool {
        let waiting: Vec<u32> = self
            .ctrls
            .iter()
            .filter(|(_, c)| c.conn.as_ref().is_some_and(|k| k.engine.has_responses()))
            .map(|(devid, _)| *devid)
            .collect();
        for devid in &waiting {
            self.service_ctrl_with(*devid, true);
        }
        !waiting.is_empty()
    }

    /// Re-arms every controller's response event; serves those with responses waiting.
    fn arm_rings(&mut self) -> bool {
        let waiting: Vec<u32> = self
            .ctrls
            .iter_mut()
            .filter(|(_, c)| c.conn.is_some())
            .filter_map(|(devid, c)| {
                c.conn
                    .as_mut()
                    .is_some_and(|k| k.engine.arm())
                    .then_some(*devid)
            })
            .collect();
        for devid in &waiting {
            self.service_ctrl(*devid);
        }
        !waiting.is_empty()
    }

    /// Routes SIGTERM and SIGINT to a socket the loop polls (signal-hook writes a byte).
    fn signal_pipe(&mut self) -> anyhow::Result<UnixStream> {
        let (rx, tx) = UnixStream::pair().context("signal pipe")?;
        rx.set_nonblocking(true).context("signal pipe")?;
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            let tx = tx.try_clone().context("signal pipe")?;
            signal_hook::low_level::pipe::register(sig, tx)
                .context("installing signal handlers")?;
        }
        self.poll
            .registry()
            .register(&mut SourceFd(&rx.as_raw_fd()), SIGNAL, Interest::READABLE)
            .context("polling the signal pipe")?;
        Ok(rx)
    }

    fn handle_watches(&mut self) -> anyhow::Result<()> {
        while let Some(ev) = self.xs.poll_event() {
            match ev.token.as_str() {
                "vusb" => self.scan_controllers(),
                "release" => self.check_backends_alive(),
                t => {
                    if let Some(devid) = t.strip_prefix("be-").and_then(|d| d.parse().ok()) {
                        self.backend_changed(devid);
                    }
                }
            }
        }
        Ok(())
    }

    /// Periodic work: grants waiting for the backend to unmap, stuck handshakes, controllers
    /// whose setup failed.
    fn tick(&mut self) {
        self.retired.retry();
        // Connections of gone devices whose client stopped reading end at their deadline.
        self.flush_links();
        let devids: Vec<u32> = self.ctrls.keys().copied().collect();
        for devid in devids {
            self.probe_backend(devid);
            self.retry_setup(devid);
        }
    }
}
