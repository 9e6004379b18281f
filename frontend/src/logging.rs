//! Logging setup for the daemon: tracing to stderr, `-v`/`-vv` or `RUST_LOG`.

use anyhow::Context;

/// Installs the global subscriber. `verbosity` 0 = info, 1 = debug, 2+ = trace; `RUST_LOG`
/// overrides it.
pub fn init(verbosity: u8) -> anyhow::Result<()> {
    let level = match verbosity {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .context("invalid RUST_LOG filter")?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init()
        .map_err(|e| anyhow::anyhow!("installing the logger: {e}"))
}
