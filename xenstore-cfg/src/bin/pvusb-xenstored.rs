//! `pvusb-xenstored`: the embedded xenstored of the simulated platform.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use xenstore_cfg::daemon::{Config, Daemon, Quotas};

/// Xenstore daemon for the pvusb simulated platform.
///
/// Serves the control domain (dom0) on <DIR>/socket and each introduced domain on
/// <DIR>/domains/<domid>/xenstore, speaking the xenstore wire protocol with xenstored's
/// permissions, watches, transactions and quotas. Stops on SIGTERM/SIGINT and removes its
/// sockets. Point libxenstore tools at it with XENSTORED_PATH=<DIR>/socket.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Simulated platform directory.
    #[arg(long)]
    dir: PathBuf,
    /// Nodes an unprivileged domain may own.
    #[arg(long, default_value_t = 1000)]
    quota_nodes: i64,
    /// Largest node record of an unprivileged domain, in bytes.
    #[arg(long, default_value_t = 2048)]
    quota_entry_size: usize,
    /// Watches per unprivileged domain.
    #[arg(long, default_value_t = 128)]
    quota_watches: usize,
    /// Open transactions per unprivileged connection.
    #[arg(long, default_value_t = 10)]
    quota_transactions: usize,
    /// Log filter (tracing EnvFilter syntax), overridden by RUST_LOG.
    #[arg(long, default_value = "info")]
    log: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&args.log))
        .context("invalid --log filter")?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let quotas = Quotas {
        nodes_per_domain: args.quota_nodes,
        entry_size: args.quota_entry_size,
        watches_per_domain: args.quota_watches,
        transactions_per_conn: args.quota_transactions,
        ..Quotas::default()
    };
    let config = Config {
        dir: args.dir.clone(),
        quotas,
        handle_signals: true,
    };
    let daemon = Daemon::bind(config)
        .with_context(|| format!("starting xenstored in {}", args.dir.display()))?;
    daemon.run().context("serving xenstore")
}
