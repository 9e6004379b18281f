//! The command line (clap) and the dispatch to one module per subcommand.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::platform::Platform;
use crate::Ctx;

/// Xen PV USB toolstack for pvusb, with xl's syntax: usbctrl-attach, usbctrl-detach,
/// usbdev-attach, usbdev-detach, usb-list, plus usb-assignable-list, a rules daemon,
/// and a simulated platform with a demo.
#[derive(Debug, Parser)]
#[command(name = "xl-usb", version)]
pub struct Args {
    /// Act on the simulated platform in DIR (xenstore at DIR/socket, sysfs at DIR/usb/sys)
    /// instead of the real host. Also from $PVUSB_SIM.
    #[arg(long, global = true, value_name = "DIR")]
    pub sim: Option<PathBuf>,
    /// JSON output for listings.
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to wait for a backend to answer (libxl waits 10).
    #[arg(long, global = true, default_value_t = 10, value_name = "SECS")]
    pub timeout: u64,
    /// usb.ids file for vendor/product names (default: $PVUSB_USB_IDS, hwdata's or
    /// usbutils').
    #[arg(long, global = true, value_name = "FILE")]
    pub usb_ids: Option<PathBuf>,
    /// More log output (repeat for more); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a PV USB controller: <dom> [type=pv] [version=1|2] [ports=1..31] [backend=<dom>]
    #[command(name = "usbctrl-attach")]
    UsbctrlAttach {
        /// Guest domain (id or name).
        dom: String,
        /// key=value options.
        opts: Vec<String>,
    },
    /// Remove a controller and everything on it: <dom> <devid>
    #[command(name = "usbctrl-detach")]
    UsbctrlDetach {
        /// Guest domain (id or name).
        dom: String,
        /// Controller devid.
        devid: String,
    },
    /// Assign a host device: <dom> hostbus=<n> hostaddr=<n> | busid=<id> [controller=<devid> [port=<n>]]
    #[command(name = "usbdev-attach")]
    UsbdevAttach {
        /// Guest domain (id or name).
        dom: String,
        /// key=value options.
        opts: Vec<String>,
    },
    /// Remove a device: <dom> <controller> <port>, or <dom> controller=<c> port=<p>
    #[command(name = "usbdev-detach")]
    UsbdevDetach {
        /// Guest domain (id or name).
        dom: String,
        /// <controller> <port> or controller=<c> port=<p>.
        #[arg(num_args = 2, required = true)]
        args: Vec<String>,
    },
    /// List a domain's controllers and ports.
    #[command(name = "usb-list")]
    UsbList {
        /// Guest domain (id or name).
        dom: String,
    },
    /// List host USB devices and where each is assigned.
    #[command(name = "usb-assignable-list")]
    UsbAssignableList,
    /// Apply a rules file: attach devices to domains as both appear, detach as they go.
    Daemon {
        /// Rules file.
        #[arg(long, default_value = crate::rules::DEFAULT_RULES)]
        rules: PathBuf,
        /// Check the rules file and exit.
        #[arg(long)]
        check: bool,
    },
    /// Manage a simulated platform (xenstored, hypervisor broker, backend, guests).
    Sim {
        /// What to do.
        #[command(subcommand)]
        action: crate::sim::SimCommand,
    },
    /// Run the whole stack on a simulated platform and copy a disk through it.
    Demo(crate::demo::DemoArgs),
}

impl Args {
    /// The context commands run in.
    pub fn ctx(&self) -> Ctx {
        Ctx {
            platform: Platform::from_args(self.sim.as_deref()),
            json: self.json,
            timeout: Duration::from_secs(self.timeout),
            usb_ids: self
                .usb_ids
                .clone()
                .or_else(|| std::env::var_os("PVUSB_USB_IDS").map(PathBuf::from)),
        }
    }
}

/// Runs the parsed command line.
pub fn run(args: Args) -> anyhow::Result<()> {
    let ctx = args.ctx();
    match args.command {
        Command::UsbctrlAttach { dom, opts } => crate::usbctrl_attach::run(&ctx, &dom, &opts),
        Command::UsbctrlDetach { dom, devid } => crate::usbctrl_detach::run(&ctx, &dom, &devid),
        Command::UsbdevAttach { dom, opts } => crate::usbdev_attach::run(&ctx, &dom, &opts),
        Command::UsbdevDetach { dom, args } => crate::usbdev_detach::run(&ctx, &dom, &args),
        Command::UsbList { dom } => crate::usb_list::run(&ctx, &dom),
        Command::UsbAssignableList => crate::usb_assignable_list::run(&ctx),
        Command::Daemon { rules, check } => crate::daemon::run(&ctx, &rules, check),
        Command::Sim { action } => crate::sim::run(&ctx, args.sim.as_deref(), action),
        Command::Demo(d) => crate::demo::run(&ctx, &d),
    }
}
