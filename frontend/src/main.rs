//! `pvusb-frontend`: the Xen PV USB frontend agent of a guest.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use pvusb_frontend::daemon::{Config, Daemon, VhciChoice};
use pvusb_xen::PlatformKind;

/// Connects this domain's vusb controllers (xenstore `device/vusb/*`) to their backend and
/// presents every device plugged into them to the guest: attached to the kernel's
/// vhci_hcd (default), or served to USB/IP clients with --usbip-listen. Reconnects by
/// itself when the backend restarts.
///
/// Each controller grants 258 pages through /dev/xen/gntalloc, whose limit (1024 pages by
/// default, for every gntalloc user of the domain) fits three: raise
/// /sys/module/xen_gntalloc/parameters/limit for more. A controller that does not fit is
/// reported in the log and in xenstore (error/device/vusb/<devid>/error), and tried again
/// every 2 s.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Hypervisor interface: `xen` (/dev/xen, xenstore) or `sim` (simulated platform).
    #[arg(long, default_value = "xen")]
    platform: PlatformKind,
    /// Simulation directory (with --platform sim).
    #[arg(long)]
    sim_dir: Option<PathBuf>,
    /// This domain's id. Required with --platform sim; on Xen read from xenstore `domid`.
    #[arg(long)]
    domid: Option<u16>,
    /// vhci_hcd sysfs directory, or `none`. Default: found by globbing
    /// /sys/devices/*/vhci_hcd.0 — unless --usbip-listen is given, which disables vhci
    /// unless this option names a directory.
    #[arg(long)]
    vhci: Option<PathBuf>,
    /// Serve the devices as a USB/IP server (usbipd-compatible: OP_REQ_DEVLIST,
    /// OP_REQ_IMPORT; bus ids are `<devid+1>-<port>`) on this address, e.g. 127.0.0.1:3240.
    #[arg(long)]
    usbip_listen: Option<SocketAddr>,
    /// Keep polling this many microseconds after each event before sleeping: lower URB
    /// latency (no wake-up from idle between the requests of a transfer) for some CPU.
    /// 0 (the default) sleeps at once.
    #[arg(long, value_name = "US", default_value_t = 0)]
    poll_us: u64,
    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    pvusb_frontend::logging::init(args.verbose)?;
    let vhci = match args.vhci {
        None => VhciChoice::Auto,
        Some(p) if p.as_os_str() == "none" => VhciChoice::Off,
        Some(p) => VhciChoice::Dir(p),
    };
    let cfg = Config {
        platform: args.platform,
        sim_dir: args.sim_dir,
        domid: args.domid,
        vhci,
        usbip_listen: args.usbip_listen,
        busy_poll: std::time::Duration::from_micros(args.poll_us),
    };
    Daemon::new(&cfg)?.run()
}
