//! `xl-usb demo`: brings a simulated platform up in a temporary directory (separate
//! processes: xenstored, the hypervisor broker, pvusb-backend in dom0, pvusb-frontend in
//! guest1 serving USB/IP), attaches a simulated USB stick with the code path of
//! `usbdev-attach`, writes a pattern over the whole disk from the guest side and verifies
//! it, hot-unplugs it, and tears everything down — also on Ctrl-C.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use pvusb_backend::sim::{self as simbus, DeviceSpec, ModelSpec};

use crate::guest::{self, DiskReport, DiskTest};
use crate::platform::Platform;
use crate::progress::Progress;
use crate::sim::plug::parse_size;
use crate::sim::stack::{self, Stack};
use crate::usbdev_attach::{self, Slot};
use crate::{ctrl, hostdev, usb_list, usbctrl_detach, usbdev_detach, Ctx};

/// `demo` options.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Size of the simulated USB stick (e.g. 64M, 256M).
    #[arg(long, default_value = "64M")]
    pub size: String,
    /// Platform directory (default: a new temporary directory, removed afterwards).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Keep the directory (logs) afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Blocks per READ(10)/WRITE(10) command (512-byte blocks).
    #[arg(long, default_value_t = 64)]
    pub chunk_blocks: u32,
    /// SCSI commands in flight.
    #[arg(long, default_value_t = 4)]
    pub window: usize,
    /// Daemons log at debug level.
    #[arg(long)]
    pub debug_daemons: bool,
    /// Baseline instead: the same simulated stick exported directly over USB/IP by this
    /// process (no xenstore, rings, backend or frontend), driven by the same guest client.
    #[arg(long)]
    pub direct: bool,
}

/// Everything the demo measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DemoReport {
    /// The disk test.
    pub disk: DiskReport,
    /// How the guest saw the hot-unplug.
    pub unplug_seen: String,
    /// Time from unplug until the guest saw it, ms.
    pub unplug_ms: u64,
}

fn step(n: u32, text: &str) {
    println!("[{n}/7] {text}");
}

/// Stops the platform when dropped (normal end, error or panic).
struct Teardown {
    stack: Option<Stack>,
    dir: PathBuf,
    remove_dir: bool,
}

impl Drop for Teardown {
    fn drop(&mut self) {
        if let Some(mut s) = self.stack.take() {
            s.down();
        }
        if self.remove_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// On SIGINT/SIGTERM: stop the platform's processes (recorded in `dir`), remove the
/// temporary directory, exit 130. The daemons run in their own process group, so this
/// is the only path by which a Ctrl-C reaches them.
fn on_signal(dir: &Path, remove_dir: bool, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .context("installing signal handlers")?;
    let dir = dir.to_path_buf();
    std::thread::Builder::new()
        .name("demo-signals".into())
        .spawn(move || {
            if signals.forever().next().is_some() {
                stop.store(true, Ordering::SeqCst);
                eprintln!("\ninterrupted: tearing the simulated platform down");
                stack::down_dir(&dir);
                if remove_dir {
                    let _ = std::fs::remove_dir_all(&dir);
                }
                std::process::exit(130);
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}

/// How the guest noticed the device going away, in words.
fn describe_removal(e: &guest::StorageError) -> String {
    use guest::{ClientError, StorageError};
    match e {
        StorageError::Urb { status, .. } => format!(
            "TEST UNIT READY failed with URB status {status}, {}",
            guest::storage::errno_name(*status)
        ),
        StorageError::Client(ClientError::Closed(_)) => {
            "the frontend ended the device's USB/IP connection".into()
        }
        StorageError::Client(ClientError::Io { source, .. })
            if matches!(
                source.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            "the frontend ended the device's USB/IP connection".into()
        }
        other => other.to_string(),
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("      {l}\n")).collect()
}

fn summary(r: &DiskReport) -> String {
    format!(
        "{} MiB written and read back, verified; write {:.1} MB/s, read+verify {:.1} MB/s; {} URBs, latency p50 {} µs, p99 {} µs; errors {}",
        r.bytes >> 20, r.write_mb_s, r.read_mb_s, r.urbs, r.p50_us, r.p99_us, r.errors
    )
}

/// `--direct`: the baseline without the Xen stack.
fn run_direct(ctx: &Ctx, args: &DemoArgs, size: u64) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("pvusb-direct-").tempdir()?;
    let mut spec = DeviceSpec::new(ModelSpec::Storage { size_bytes: size });
    spec.serial = Some("PVUSBDIRECT".into());
    let busid = simbus::plug(dir.path(), &spec).context("plugging the simulated stick")?;
    let server = crate::usbip_direct::DirectServer::start(dir.path(), &busid)?;
    println!(
        "baseline: simulated {} MiB stick {busid} exported directly over USB/IP on {}",
        size >> 20,
        server.addr()
    );
    let test = DiskTest {
        chunk_blocks: args.chunk_blocks,
        window: args.window,
        ..DiskTest::default()
    };
    let mut bar = Progress::new("      write+verify");
    let result = guest::disk_test(server.addr(), &busid, &test, &mut |d, t| bar.update(d, t));
    bar.finish();
    let (_, report) = result.context("disk test")?;
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    println!("Summary (direct): {}", summary(&report));
    Ok(())
}

/// Runs the demo. Succeeds only if every byte verified and the unplug was seen.
pub fn run(ctx: &Ctx, args: &DemoArgs) -> anyhow::Result<()> {
    let size = parse_size(&args.size).with_context(|| format!("bad --size {:?}", args.size))?;
    if args.direct {
        return run_direct(ctx, args, size);
    }
    let (dir, remove_dir) = match &args.dir {
        Some(d) => (d.clone(), false),
        None => {
            let t = tempfile::Builder::new()
                .prefix("pvusb-demo-")
                .tempdir()
                .context("creating a temporary directory")?;
            (t.keep(), !args.keep)
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    on_signal(&dir, remove_dir, Arc::clone(&stop))?;
    let mut td = Teardown {
        stack: None,
        dir: dir.clone(),
        remove_dir,
    };
    println!("pvusb demo: Xen PV USB passthrough on a simulated platform (no Xen needed)");

    let cfg = stack::Config {
        dir: dir.clone(),
        guests: vec!["guest1".into()],
        daemons: true,
        verbose: args.debug_daemons,
    };
    let s = Stack::up(&cfg)?;
    let addr = s
        .state
        .guests
        .first()
        .and_then(|g| g.usbip)
        .context("guest1 has no USB/IP address")?;
    let names: Vec<String> = s
        .procs()
        .map(|p| format!("{} (pid {})", p.name, p.child.id()))
        .collect();
    td.stack = Some(s);
    step(
        1,
        &format!("platform up in {}: {}", dir.display(), names.join(", ")),
    );
    println!("      guest1 = dom1; its pvusb-frontend serves USB/IP on {addr}");

    let platform = Platform::sim(&dir);
    let mut spec = DeviceSpec::new(ModelSpec::Storage { size_bytes: size });
    spec.serial = Some("PVUSBDEMO".into());
    let busid = simbus::plug(&dir, &spec).context("plugging the simulated stick")?;
    let dev = hostdev::read(&platform.roots, &busid)?;
    step(
        2,
        &format!(
        "plugged a {} MiB simulated USB stick: {busid} (Bus {:03} Device {:03}, {:04x}:{:04x} {})",
        size >> 20, dev.bus, dev.device, dev.vid, dev.pid, dev.product.as_deref().unwrap_or("")
    ),
    );

    let mut xs = platform.xs()?;
    let a =
        usbdev_attach::attach_busid(&mut xs, &platform, 1, &busid, Slot::default(), ctx.timeout)
            .context("attaching the stick to guest1")?;
    step(
        3,
        &format!(
            "xl-usb usbdev-attach guest1 hostbus={} hostaddr={} -> controller {} port {}{}",
            dev.bus,
            dev.device,
            a.controller,
            a.port,
            if a.created_controller {
                " (controller created, backend reached InitWait)"
            } else {
                ""
            }
        ),
    );

    let exported = guest::find_storage(addr, Duration::from_secs(20)).with_context(|| {
        format!(
            "the guest never saw the stick (logs in {})",
            dir.join("logs").display()
        )
    })?;
    step(
        4,
        &format!(
            "guest1 sees USB/IP device {} ({:04x}:{:04x}); xl-usb usb-list guest1:",
            exported.busid, exported.id_vendor, exported.id_product
        ),
    );
    let list = usb_list::entries(&platform, ctrl::list(&mut xs, 1)?);
    print!("{}", indent(&usb_list::render(&list)));

    step(5, "guest1 writes a pattern over the whole disk, reads it back and verifies it (pipelined BOT/SCSI over USB/IP → usbif → pvusb-backend)");
    let test = DiskTest {
        chunk_blocks: args.chunk_blocks,
        window: args.window,
        ..DiskTest::default()
    };
    let mut bar = Progress::new("      write+verify");
    let result = guest::disk_test(addr, &exported.busid, &test, &mut |done, total| {
        bar.update(done, total)
    });
    bar.finish();
    if stop.load(Ordering::SeqCst) {
        anyhow::bail!("interrupted");
    }
    let (mut disk, report) = result.context("disk test")?;
    println!(
        "      {} bytes verified: \"{}\", write {:.1} MB/s, read+verify {:.1} MB/s",
        report.bytes, report.inquiry, report.write_mb_s, report.read_mb_s
    );

    simbus::unplug(&dir, &busid).context("hot-unplugging the stick")?;
    let t0 = Instant::now();
    let seen = loop {
        match disk.test_unit_ready() {
            Err(e) => break describe_removal(&e),
            Ok(()) if t0.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Ok(()) => anyhow::bail!("the guest still reaches the stick 10 s after the unplug"),
        }
    };
    let unplug_ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
    let gone = (0..100).any(|_| {
        let listed = guest::devlist(addr).map(|d| d.iter().any(|x| x.busid == exported.busid));
        if listed.is_ok_and(|l| l) {
            std::thread::sleep(Duration::from_millis(50));
            false
        } else {
            true
        }
    });
    step(
        6,
        &format!(
            "hot-unplugged {busid}: guest1 saw it after {unplug_ms} ms ({seen}){}",
            if gone {
                "; gone from its USB/IP device list"
            } else {
                ""
            }
        ),
    );

    let c = ctrl::read(&mut xs, 1, a.controller)?.context("controller vanished")?;
    usbdev_detach::clear(&mut xs, &platform, &c, a.port)?;
    let closed = usbctrl_detach::remove(&mut xs, &platform, 1, a.controller, ctx.timeout)?;
    drop(td);
    step(
        7,
        &format!(
            "usbdev-detach, usbctrl-detach ({}), platform stopped{}",
            match closed {
                usbctrl_detach::Detached::Clean => "backend closed it",
                usbctrl_detach::Detached::Forced { .. } => "forced",
            },
            if remove_dir {
                ", directory removed"
            } else {
                ""
            }
        ),
    );

    let out = DemoReport {
        disk: report,
        unplug_seen: seen,
        unplug_ms,
    };
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    println!("Summary: {}", summary(&out.disk));
    Ok(())
}
