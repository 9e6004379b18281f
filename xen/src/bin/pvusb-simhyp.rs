//! `pvusb-simhyp`: the simulated Xen hypervisor (grant tables and event channels) for the
//! domains of one simulation directory. Serves `<dir>/domains/<domid>/hyp` until SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use pvusb_xen::sim::Broker;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// The simulated hypervisor broker: grants as shared memfd pages, event channels as eventfds,
/// one socket per domain under `<dir>/domains/<domid>/hyp` (dom0 creates the others).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The simulation directory.
    #[arg(long)]
    dir: PathBuf,
    /// Log filter (tracing env-filter syntax).
    #[arg(long, default_value = "info")]
    log: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&args.log).context("invalid --log filter")?,
        )
        .with_writer(std::io::stderr)
        .init();
    let mut signals = Signals::new([SIGTERM, SIGINT]).context("installing signal handlers")?;
    let hook = pvusb_xen::sim::release::xenstore_hook(&args.dir);
    let broker = Broker::start_with_hook(&args.dir, Some(hook))
        .with_context(|| format!("starting the broker in {}", args.dir.display()))?;
    println!("ready");
    signals.forever().next();
    drop(broker);
    Ok(())
}
