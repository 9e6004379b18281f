//! Bringing a simulated platform up and down: xenstored, the hypervisor broker, guest
//! domains (introduced and named as xl does), pvusb-backend in dom0 and pvusb-frontend in
//! each guest, as separate processes with pids and logs under the directory.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use pvusb_xen::sim::SimPlatform;
use pvusb_xen::DomId as XenDomId;
use serde::{Deserialize, Serialize};
use xenstore_cfg::{DomId, Xs, XsOps};

use super::procs::{self, Proc};

/// How long each process gets to become ready.
const READY: Duration = Duration::from_secs(10);
/// How long each process gets to exit after SIGTERM.
const GRACE: Duration = Duration::from_secs(3);

/// A guest of the simulated platform.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guest {
    /// Domain id.
    pub domid: DomId,
    /// `/local/domain/<id>/name`.
    pub name: String,
    /// Where its frontend serves USB/IP (`--usbip-listen`), if a frontend runs.
    pub usbip: Option<SocketAddr>,
}

/// `<dir>/sim.json`: what `sim up` started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Guests.
    pub guests: Vec<Guest>,
    /// Whether the backend and frontends were started.
    pub daemons: bool,
}

/// `<dir>/sim.json`.
pub fn state_file(dir: &Path) -> PathBuf {
    dir.join("sim.json")
}

impl State {
    /// Reads `<dir>/sim.json`.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let path = state_file(dir);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "no simulated platform in {} (run `xl-usb sim up --dir {}`)",
                dir.display(),
                dir.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let path = state_file(dir);
        std::fs::write(&path, serde_json::to_string_pretty(self)?)
            .with_context(|| format!("writing {}", path.display()))
    }
}

/// What to start.
#[derive(Clone, Debug)]
pub struct Config {
    /// The platform directory.
    pub dir: PathBuf,
    /// Guests to create, with ids from 1.
    pub guests: Vec<String>,
    /// Also start pvusb-backend and one pvusb-frontend per guest.
    pub daemons: bool,
    /// Pass `-v` to the daemons.
    pub verbose: bool,
}

/// A running platform. Dropping it leaves the processes running (`sim up`);
/// [`Stack::down`] stops them (the demo).
#[derive(Debug)]
pub struct Stack {
    /// The directory.
    pub dir: PathBuf,
    /// What runs there.
    pub state: State,
    procs: Vec<Proc>,
}

/// A free TCP port on 127.0.0.1 below the kernel's ephemeral range, so no outgoing
/// connection can take it between this check and the frontend's bind.
fn free_port(salt: u32) -> anyhow::Result<SocketAddr> {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|p| p.parse::<u32>().ok())
        })
        .unwrap_or(32768)
        .clamp(12000, 65535);
    let span = low - 10000;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let start = (std::process::id() ^ nanos ^ salt.wrapping_mul(7919)) % span;
    for i in 0..span {
        let port = u16::try_from(10000 + (start + i) % span).unwrap_or(0);
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            return Ok(l.local_addr()?);
        }
    }
    // Everything below the range is taken: let the kernel choose.
    let l = TcpListener::bind("127.0.0.1:0").context("choosing a USB/IP port")?;
    Ok(l.local_addr()?)
}

/// Whether something listens on TCP `addr` (from /proc/net/tcp, so without connecting
/// to it and confusing the server with an empty connection).
pub fn is_listening(addr: SocketAddr) -> bool {
    let want = format!(":{:04X}", addr.port());
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1).is_some_and(|a| a.ends_with(&want)) && f.get(3) == Some(&"0A")
        })
}

/// Creates guest `domid` as xl does: the hypervisor first, then XS_INTRODUCE, then its name.
fn create_domain(dir: &Path, xs: &mut Xs, domid: DomId, name: &str) -> anyhow::Result<()> {
    let hyp =
        SimPlatform::connect(dir, XenDomId::DOM0).context("connecting to the broker as dom0")?;
    hyp.create_domain(XenDomId(domid))
        .with_context(|| format!("creating dom{domid} in the broker"))?;
    xs.introduce(domid, 0, 0)
        .with_context(|| format!("introducing dom{domid} to xenstored"))?;
    xs.write(&format!("/local/domain/{domid}/name"), name.as_bytes())
        .with_context(|| format!("naming dom{domid}"))?;
    Ok(())
}

impl Stack {
    /// Starts everything in order; on failure stops what was started.
    pub fn up(cfg: &Config) -> anyhow::Result<Stack> {
        std::fs::create_dir_all(&cfg.dir)
            .with_context(|| format!("creating {}", cfg.dir.display()))?;
        if procs::recorded_pid(&cfg.dir, "xenstored").is_some() {
            anyhow::bail!(
                "a simulated platform already runs in {} (stop it with `xl-usb sim down --dir {}`)",
                cfg.dir.display(),
                cfg.dir.display()
            );
        }
        let mut stack = Stack {
            dir: cfg.dir.clone(),
            state: State {
                guests: Vec::new(),
                daemons: cfg.daemons,
            },
            procs: Vec::new(),
        };
        match stack.start(cfg) {
            Ok(()) => Ok(stack),
            Err(e) => {
                stack.down();
                Err(e)
            }
        }
    }

    fn start(&mut self, cfg: &Config) -> anyhow::Result<()> {
        let dir = cfg.dir.clone();
        let d = dir.display().to_string();
        // Check every binary first, so a missing one fails before anything starts.
        let mut bins = vec!["pvusb-xenstored", "pvusb-simhyp"];
        if cfg.daemons {
            bins.extend(["pvusb-backend", "pvusb-frontend"]);
        }
        for b in bins {
            procs::find_binary(b)?;
        }
        let v: Vec<String> = if cfg.verbose {
            vec!["-v".into()]
        } else {
            Vec::new()
        };

        let socket = xenstore_cfg::daemon::control_socket(&dir);
        let mut p = procs::spawn(
            &dir,
            "xenstored",
            "pvusb-xenstored",
            &["--dir".into(), d.clone()],
        )?;
        p.wait_ready(READY, || Xs::connect(&socket).is_ok())?;
        self.procs.push(p);

        let hyp0 = pvusb_xen::sim::socket_path(&dir, XenDomId::DOM0);
        let mut p = procs::spawn(&dir, "simhyp", "pvusb-simhyp", &["--dir".into(), d.clone()])?;
        p.wait_ready(READY, || hyp0.exists())?;
        self.procs.push(p);

        let mut xs = Xs::connect(&socket).context("connecting to xenstored")?;
        for (i, name) in cfg.guests.iter().enumerate() {
            let domid = DomId::try_from(i + 1).context("too many guests")?;
            create_domain(&dir, &mut xs, domid, name)?;
            self.state.guests.push(Guest {
                domid,
                name: name.clone(),
                usbip: None,
            });
        }
        self.state.save(&dir)?;
        if !cfg.daemons {
            return Ok(());
        }

        let mut args = vec![
            "--platform".into(),
            "sim".into(),
            "--sim-dir".into(),
            d.clone(),
        ];
        args.extend(["--domid".into(), "0".into()]);
        args.extend(v.iter().cloned());
        let mut p = procs::spawn(&dir, "backend", "pvusb-backend", &args)?;
        // The backend announces nothing until a controller appears: give it a moment to
        // fail on a bad command line or an unreachable xenstored.
        let settle = std::time::Instant::now() + Duration::from_millis(300);
        p.wait_ready(READY, || std::time::Instant::now() >= settle)?;
        self.procs.push(p);

        for g in &mut self.state.guests {
            let name = format!("frontend-{}", g.domid);
            // A port found free can still be taken before the frontend binds it: retry.
            let mut attempt = 0;
            let (p, addr) = loop {
                attempt += 1;
                let addr = free_port(u32::from(g.domid) + attempt)?;
                let mut args = vec![
                    "--platform".into(),
                    "sim".into(),
                    "--sim-dir".into(),
                    d.clone(),
                ];
                args.extend(["--domid".into(), g.domid.to_string()]);
                args.extend(["--usbip-listen".into(), addr.to_string()]);
                args.extend(v.iter().cloned());
                let mut p = procs::spawn(&dir, &name, "pvusb-frontend", &args)?;
                match p.wait_ready(READY, || is_listening(addr)) {
                    Ok(()) => break (p, addr),
                    Err(e) if attempt < 3 => {
                        tracing::warn!(name, %addr, error = %e, "frontend did not start; retrying");
                        p.stop(GRACE);
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            self.procs.push(p);
            g.usbip = Some(addr);
        }
        self.state.save(&dir)
    }

    /// The processes started, in start order.
    pub fn procs(&self) -> impl Iterator<Item = &Proc> {
        self.procs.iter()
    }

    /// Stops every process, last started first, and removes the state file.
    pub fn down(&mut self) {
        while let Some(mut p) = self.procs.pop() {
            p.stop(GRACE);
            let _ = std::fs::remove_file(procs::pid_file(&self.dir, &p.name));
        }
        let _ = std::fs::remove_file(state_file(&self.dir));
    }
}

/// Names of the processes a platform in `dir` may have, in stop order.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("run"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".pid").map(str::to_owned))
        .filter(|n| n.starts_with("frontend-"))
        .collect();
    names.sort();
    names.extend(["backend", "simhyp", "xenstored"].map(String::from));
    names
}

/// Stops a platform another invocation started. Returns the processes stopped.
pub fn down_dir(dir: &Path) -> Vec<String> {
    let stopped = names(dir)
        .into_iter()
        .filter(|n| procs::stop_recorded(dir, n, GRACE))
        .collect();
    let _ = std::fs::remove_file(state_file(dir));
    stopped
}

/// Each process of a platform in `dir` and whether it runs.
pub fn status(dir: &Path) -> Vec<(String, Option<i32>)> {
    let mut all = names(dir);
    all.reverse();
    all.into_iter()
        .filter(|n| procs::pid_file(dir, n).exists())
        .map(|n| {
            let pid = procs::recorded_pid(dir, &n).map(|p| p.as_raw_nonzero().get());
            (n, pid)
        })
        .collect()
}
