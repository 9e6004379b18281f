//! `usbdev-detach <dom> <controller> <port>` and the documented `controller=<c> port=<p>`
//! form (which xl itself misparses): empties `port/N` and rebinds the host drivers.

use std::time::Duration;

use anyhow::Context;
use xenstore_cfg::vusb::{self, VusbError};
use xenstore_cfg::{Xs, XsError};

use crate::ctrl::{self, Controller};
use crate::kv::{parse_c_number, KeyValues};
use crate::platform::Platform;
use crate::{domain, hostdev, Ctx};

/// How long to wait for the backend to release a device before rebinding host drivers.
const RELEASE_WAIT: Duration = Duration::from_secs(2);

/// Why a port could not be emptied.
#[derive(Debug, thiserror::Error)]
pub enum ClearError {
    /// xenstore failed.
    #[error("xenstore: {0}")]
    Xs(#[from] XsError),
    /// Writing the port refused.
    #[error(transparent)]
    Vusb(#[from] VusbError),
}

/// Empties `port` of controller `c` (the backend watches it and lets go of the device),
/// then rebinds the recorded host drivers. Returns the bus id that was there.
pub fn clear(
    xs: &mut Xs,
    platform: &Platform,
    c: &Controller,
    port: u8,
) -> Result<Option<String>, ClearError> {
    let busid = c.port(port).map(str::to_owned);
    vusb::set_port(xs, &c.id(), port, None)?;
    if let Some(b) = &busid {
        let rebound = hostdev::rebind_drivers(xs, &platform.roots, b, RELEASE_WAIT)?;
        tracing::info!(fe = c.frontend, devid = c.devid, port, busid = %b, ?rebound, "device detached");
    }
    Ok(busid)
}

fn number<T: TryFrom<u64>>(what: &str, s: &str) -> anyhow::Result<T> {
    parse_c_number(s)
        .and_then(|n| T::try_from(n).ok())
        .with_context(|| format!("bad {what} {s:?}"))
}

/// Runs the command; `args` is either `<controller> <port>` or `controller=<c> port=<p>`.
pub fn run(ctx: &Ctx, dom: &str, args: &[String]) -> anyhow::Result<()> {
    let (devid, port): (u32, u8) = match args {
        [c, p] if !c.contains('=') && !p.contains('=') => {
            (number("controller", c)?, number("port", p)?)
        }
        _ => {
            let kv = KeyValues::parse(args, "controller,port")?;
            let c = kv
                .get("controller")
                .ok_or(crate::kv::ArgError::Missing("controller"))?;
            let p = kv.get("port").ok_or(crate::kv::ArgError::Missing("port"))?;
            (number("controller", c)?, number("port", p)?)
        }
    };
    let mut xs = ctx.xs()?;
    let d = domain::resolve(&mut xs, dom)?;
    let c = ctrl::read(&mut xs, d.domid, devid)?
        .with_context(|| format!("{} has no vusb controller {devid}", d.label()))?;
    if port == 0 || port > c.num_ports {
        anyhow::bail!(
            "controller {devid} of {} has no port {port} (it has {})",
            d.label(),
            c.num_ports
        );
    }
    if c.port(port).is_none() {
        anyhow::bail!(
            "port {port} of controller {devid} of {} is empty",
            d.label()
        );
    }
    clear(&mut xs, &ctx.platform, &c, port)?;
    Ok(())
}
