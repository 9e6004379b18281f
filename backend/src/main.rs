//! `pvusb-backend`: the Xen PV USB backend daemon (one per driver domain).

use clap::Parser;
use pvusb_backend::config::{Args, Config};

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    pvusb_backend::logging::init(args.verbose)?;
    let cfg = Config::try_from(&args)?;
    if let Err(e) = pvusb_backend::daemon::run(cfg) {
        tracing::error!("{e:#}");
        return Err(e);
    }
    Ok(())
}
