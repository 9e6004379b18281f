//! `xl-usb sim up|down|status|plug|unplug`: a persistent simulated platform in a directory.

pub mod plug;
pub mod procs;
pub mod stack;

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;

use crate::Ctx;

/// The default platform directory: `$XDG_RUNTIME_DIR/pvusb-sim`, else `/tmp/pvusb-sim`.
pub fn default_dir() -> PathBuf {
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join("pvusb-sim")
}

/// `sim` subcommands.
#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// Start xenstored, the hypervisor broker, guests, pvusb-backend and pvusb-frontend.
    Up {
        /// Platform directory (default: --sim, $PVUSB_SIM, or $XDG_RUNTIME_DIR/pvusb-sim).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Guest names, domids 1, 2, ... in order.
        #[arg(long, default_value = "guest1", value_delimiter = ',')]
        guests: Vec<String>,
        /// Only xenstored, the broker and the domains (no backend or frontends).
        #[arg(long)]
        core: bool,
    },
    /// Stop everything `sim up` started in the directory.
    Down {
        /// Platform directory.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Show the platform's processes, guests and devices.
    Status {
        /// Platform directory.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Plug a simulated device: storage[:SIZE] | hid | loopback | iso | iso-loopback, then options
    /// (serial=, busid=, speed=, latency_us=, fail_nth=N:ERRNO[:EP], stall=EP,
    /// short_read=BYTES[:EP], unplug_after=N).
    Plug {
        /// Platform directory.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Device model.
        model: String,
        /// Options and faults (key=value).
        opts: Vec<String>,
    },
    /// Unplug a simulated device by bus id.
    Unplug {
        /// Platform directory.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Bus id ("1-1").
        busid: String,
    },
}

fn pick_dir(own: Option<PathBuf>, global: Option<&Path>) -> PathBuf {
    own.or_else(|| global.map(Path::to_path_buf))
        .or_else(|| {
            std::env::var_os(crate::platform::SIM_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(default_dir)
}

/// Runs a `sim` subcommand.
pub fn run(ctx: &Ctx, global: Option<&Path>, cmd: SimCommand) -> anyhow::Result<()> {
    match cmd {
        SimCommand::Up { dir, guests, core } => {
            let dir = pick_dir(dir, global);
            let cfg = stack::Config {
                dir: dir.clone(),
                guests,
                daemons: !core,
                verbose: false,
            };
            let s = stack::Stack::up(&cfg)?;
            if ctx.json {
                println!("{}", serde_json::to_string_pretty(&s.state)?);
            } else {
                println!("simulated platform up in {}", dir.display());
                for p in s.procs() {
                    println!(
                        "  {:<12} pid {:<7} log {}",
                        p.name,
                        p.child.id(),
                        p.log.display()
                    );
                }
                for g in &s.state.guests {
                    let usbip = g.usbip.map_or("-".into(), |a| a.to_string());
                    println!("  dom{} {:<10} usbip {usbip}", g.domid, g.name);
                }
                println!("use it with: export PVUSB_SIM={}", dir.display());
            }
            Ok(())
        }
        SimCommand::Down { dir } => {
            let dir = pick_dir(dir, global);
            let stopped = stack::down_dir(&dir);
            if stopped.is_empty() {
                anyhow::bail!("nothing is running in {}", dir.display());
            }
            println!("stopped {}", stopped.join(", "));
            Ok(())
        }
        SimCommand::Status { dir } => status(ctx, &pick_dir(dir, global)),
        SimCommand::Plug { dir, model, opts } => {
            let dir = pick_dir(dir, global);
            let spec = plug::parse_spec(&model, &opts)?;
            require_platform(&dir)?;
            let busid = pvusb_backend::sim::plug(&dir, &spec)
                .with_context(|| format!("plugging {model} into {}", dir.display()))?;
            let dev = crate::hostdev::read(&pvusb_backend::host::UsbRoots::sim(&dir), &busid)?;
            if ctx.json {
                println!("{}", serde_json::to_string(&dev)?);
            } else {
                println!(
                    "{busid} hostbus={} hostaddr={} {:04x}:{:04x}",
                    dev.bus, dev.device, dev.vid, dev.pid
                );
            }
            Ok(())
        }
        SimCommand::Unplug { dir, busid } => {
            let dir = pick_dir(dir, global);
            pvusb_backend::sim::unplug(&dir, &busid)
                .with_context(|| format!("unplugging {busid} in {}", dir.display()))?;
            Ok(())
        }
    }
}

fn require_platform(dir: &Path) -> anyhow::Result<()> {
    if !dir.is_dir() {
        anyhow::bail!(
            "no simulated platform in {} (run `xl-usb sim up --dir {}`)",
            dir.display(),
            dir.display()
        );
    }
    Ok(())
}

fn status(ctx: &Ctx, dir: &Path) -> anyhow::Result<()> {
    let procs = stack::status(dir);
    let state = stack::State::load(dir).unwrap_or_default();
    let devices = crate::hostdev::list(&pvusb_backend::host::UsbRoots::sim(dir));
    if ctx.json {
        let procs: Vec<_> = procs
            .iter()
            .map(|(n, pid)| serde_json::json!({ "name": n, "pid": pid, "running": pid.is_some() }))
            .collect();
        let v = serde_json::json!({ "dir": dir, "processes": procs, "guests": state.guests, "devices": devices });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if procs.is_empty() {
        anyhow::bail!("no simulated platform in {}", dir.display());
    }
    println!("simulated platform in {}", dir.display());
    for (n, pid) in &procs {
        match pid {
            Some(p) => println!("  {n:<12} running (pid {p})"),
            None => println!(
                "  {n:<12} NOT RUNNING (see {})",
                procs::log_file(dir, n).display()
            ),
        }
    }
    for g in &state.guests {
        let usbip = g.usbip.map_or("-".into(), |a| a.to_string());
        println!("  dom{} {:<10} usbip {usbip}", g.domid, g.name);
    }
    for d in &devices {
        println!(
            "  device {} Bus {:03} Device {:03} {:04x}:{:04x} {}",
            d.busid,
            d.bus,
            d.device,
            d.vid,
            d.pid,
            d.product.as_deref().unwrap_or("")
        );
    }
    if procs.iter().any(|(_, p)| p.is_none()) {
        anyhow::bail!("some processes are not running");
    }
    Ok(())
}
