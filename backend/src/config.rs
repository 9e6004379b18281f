//! The daemon's configuration: command line (`Args`) plus the optional TOML file.

use std::path::{Path, PathBuf};

use clap::Parser;
use pvusb_xen::PlatformKind;
use serde::Deserialize;

/// pvusb-backend: serves Xen PV USB (usbif) frontends from host USB devices.
///
/// One process per driver domain. It watches `/local/domain/<self>/backend/vusb` for
/// controllers the toolstack creates (`xl usbctrl-attach`, `xl-usb`), performs the
/// XenbusState handshake with each guest's frontend, and passes the host devices named in
/// `port/<n>` through to the guest. SIGTERM/SIGINT release every device (host drivers are
/// reattached) and close every controller.
#[derive(Debug, Parser)]
#[command(version, about, long_about, after_long_help = AFTER_HELP)]
pub struct Args {
    /// Hypervisor interface: `xen` (/dev/xen, usbfs) or `sim` (simulated platform).
    #[arg(long, default_value = "xen", value_parser = parse_platform)]
    pub platform: PlatformKind,
    /// Simulated platform directory (required with `--platform sim`).
    #[arg(long, value_name = "DIR")]
    pub sim_dir: Option<PathBuf>,
    /// This driver domain's id. With `--platform xen` it is read from xenstore (`domid`)
    /// when omitted; with `sim` it defaults to 0 (the control domain).
    #[arg(long)]
    pub domid: Option<u16>,
    /// TOML configuration file (allow-list, usbfs limits, negotiated features).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// More logging: -v debug (one line per URB), -vv trace. RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

const AFTER_HELP: &str = "\
Configuration file (--config, TOML; every key optional):
  allow = [\"3-1.5\", \"0627:0001\"]  devices that may be passed through (bus ids or
                                    vendor:product in hex); absent = every non-hub device
  max-bulk-urb = 16384              split larger bulk transfers into usbfs URBs
                                    (BULK_CONTINUATION, as libusb does)
  feature-aca = true                offer per-endpoint error containment to frontends
  feature-split-chain = true        let frontends send all pieces of a large bulk IN
                                    transfer at once (a short piece cancels the rest); on
                                    xHCI buses, which cannot stop at a short packet, each
                                    piece still waits for the one before it
  feature-persistent = true         offer persistent grants (map each page once)
  grant-copy = true                 stock frontends: have the hypervisor copy their data
                                    pages (GNTTABOP_copy) instead of mapping each request's
  poll-us = 0                       keep polling this long after each event before
                                    sleeping (lower latency, more CPU; e.g. 100)
  journal-dir = \"/run/pvusb-backend\" each controller's record of the requests in flight,
                                    so that a backend restarted after a crash fails
                                    exactly those (sim: <sim-dir>/backend-journal)

Examples:
  pvusb-backend                                        # dom0 on Xen
  pvusb-backend --platform sim --sim-dir /tmp/pvusb -v # simulated platform

Logs go to stderr (info: connect/attach/detach; -v: one line per URB).";

fn parse_platform(s: &str) -> Result<PlatformKind, String> {
    s.parse()
}

/// Settings from the `--config` file. Every key is optional.
///
/// ```toml
/// allow = ["1-1", "0627:0001"]   # bus ids or vendor:product (hex); absent = allow all
/// max-bulk-urb = 16384           # split bulk transfers into usbfs URBs of at most this
/// feature-aca = true             # offer error containment (feature-aca) to frontends
/// feature-split-chain = true     # offer split chains (feature-split-chain)
/// feature-persistent = true      # offer persistent grants (feature-persistent)
/// grant-copy = true              # stock peers: copy data pages (GNTTABOP_copy), not map them
/// poll-us = 0                     # busy-poll this long after each event (0 = off)
/// ```
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    /// Devices that may be passed through: bus ids ("3-1.5") or "vvvv:pppp" (hex ids).
    /// `None` allows every non-hub device.
    #[serde(default)]
    pub allow: Option<Vec<String>>,
    /// Largest bulk usbfs URB; larger guest transfers are split (libusb's
    /// BULK_CONTINUATION scheme). The device's own limit applies too.
    #[serde(default)]
    pub max_bulk_urb: Option<usize>,
    /// Offer per-endpoint error containment (`feature-aca`).
    #[serde(default = "yes")]
    pub feature_aca: bool,
    /// Offer split chains (`feature-split-chain`): a large IN transfer's pieces in flight
    /// together. On a bus without usbfs's BULK_CONTINUATION (xHCI) a short piece cannot
    /// stop the piece queued behind it, so there each piece waits for the one before it
    /// (`pvusb_ring::urb::chain`).
    #[serde(default = "yes")]
    pub feature_split_chain: bool,
    /// Offer persistent grants (`feature-persistent`).
    #[serde(default = "yes")]
    pub feature_persistent: bool,
    /// Move a stock peer's data by grant copy instead of mapping each request's pages.
    #[serde(default = "yes")]
    pub grant_copy: bool,
    /// Microseconds to keep polling after each event before sleeping (0: off).
    #[serde(default)]
    pub poll_us: u64,
    /// Where each controller's journal of requests in flight is kept, for a process that
    /// takes its rings over after a crash (`engine::journal`). Default: `/run/pvusb-backend`
    /// on Xen, `<sim-dir>/backend-journal` on the simulated platform.
    #[serde(default)]
    pub journal_dir: Option<PathBuf>,
}

/// The runtime directory on Xen (the systemd unit's `RuntimeDirectory`).
pub const DEFAULT_JOURNAL_DIR: &str = "/run/pvusb-backend";

fn yes() -> bool {
    true
}

impl Default for FileConfig {
    fn default() -> Self {
        FileConfig {
            allow: None,
            max_bulk_urb: None,
            feature_aca: true,
            feature_split_chain: true,
            feature_persistent: true,
            grant_copy: true,
            poll_us: 0,
            journal_dir: None,
        }
    }
}

impl FileConfig {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        use anyhow::Context;
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let cfg: FileConfig =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        if cfg.max_bulk_urb.is_some_and(|n| n < 512) {
            anyhow::bail!("{}: max-bulk-urb must be at least 512", path.display());
        }
        Ok(cfg)
    }

    /// Whether a device may be passed through.
    pub fn allows(&self, busid: &str, vendor: u16, product: u16) -> bool {
        let Some(list) = &self.allow else {
            return true;
        };
        let id = format!("{vendor:04x}:{product:04x}");
        list.iter()
            .any(|a| a == busid || a.eq_ignore_ascii_case(&id))
    }
}

/// Everything the daemon needs to start.
#[derive(Clone, Debug)]
pub struct Config {
    /// Which hypervisor interface.
    pub platform: PlatformKind,
    /// The simulated platform directory.
    pub sim_dir: Option<PathBuf>,
    /// This domain, if given.
    pub domid: Option<u16>,
    /// File settings.
    pub file: FileConfig,
}

impl TryFrom<&Args> for Config {
    type Error = anyhow::Error;
    fn try_from(args: &Args) -> anyhow::Result<Self> {
        if args.platform == PlatformKind::Sim && args.sim_dir.is_none() {
            anyhow::bail!("--platform sim needs --sim-dir <DIR>");
        }
        let mut file = match &args.config {
            Some(p) => FileConfig::load(p)?,
            None => FileConfig::default(),
        };
        if file.journal_dir.is_none() {
            file.journal_dir = Some(match &args.sim_dir {
                Some(dir) if args.platform == PlatformKind::Sim => dir.join("backend-journal"),
                _ => PathBuf::from(DEFAULT_JOURNAL_DIR),
            });
        }
        Ok(Config {
            platform: args.platform,
            sim_dir: args.sim_dir.clone(),
            domid: args.domid,
            file,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_config_parses_and_allows() {
        let cfg: FileConfig =
            toml::from_str("allow = [\"1-1\", \"0627:0001\"]\nmax-bulk-urb = 16384\n").unwrap();
        assert!(cfg.feature_aca);
        assert_eq!(cfg.max_bulk_urb, Some(16384));
        assert!(cfg.allows("1-1", 0, 0));
        assert!(cfg.allows("1-2", 0x0627, 0x0001));
        assert!(!cfg.allows("1-2", 0x0627, 0x0002));
        assert!(FileConfig::default().allows("9-9", 1, 2));
        assert!(toml::from_str::<FileConfig>("bogus = 1").is_err());
        assert_eq!(cfg.poll_us, 0, "busy polling is off unless asked for");
        let cfg: FileConfig = toml::from_str("poll-us = 100\n").unwrap();
        assert_eq!(cfg.poll_us, 100);
        assert!(toml::from_str::<FileConfig>("poll-us = -1").is_err());
        assert!(
            cfg.grant_copy,
            "stock peers' data is copied unless asked otherwise"
        );
        let cfg: FileConfig = toml::from_str("grant-copy = false\n").unwrap();
        assert!(!cfg.grant_copy);
    }

    #[test]
    fn the_shipped_example_is_the_default() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/examples/backend.toml");
        assert_eq!(FileConfig::load(&path).unwrap(), FileConfig::default());
    }

    #[test]
    fn sim_needs_a_dir() {
        let args = Args::parse_from(["pvusb-backend", "--platform", "sim"]);
        assert!(Config::try_from(&args).is_err());
        let args = Args::parse_from([
            "pvusb-backend",
            "--platform",
            "sim",
            "--sim-dir",
            "/x",
            "-vv",
        ]);
        assert_eq!(args.verbose, 2);
        assert!(Config::try_from(&args).is_ok());
    }
}
