//! `usbctrl-detach <dom> <devid>`: as libxl — empty its ports, backend `online=0` and
//! `state=5` (Closing), wait for `state=6` (Closed), then remove every path; on timeout
//! remove them anyway with a warning.

use std::time::Duration;

use anyhow::Context;
use xenstore_cfg::vusb::{self, keys, VusbError};
use xenstore_cfg::xenbus::{wait_state, WaitStateError, XenbusState};
use xenstore_cfg::{DomId, Xs, XsError, XsOps};

use crate::{ctrl, domain, usbdev_detach, Ctx};

/// How a detach ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detached {
    /// The backend closed the controller.
    Clean,
    /// The backend did not reach Closed in time; the paths were removed anyway.
    Forced {
        /// Last backend state seen.
        state: u32,
    },
}

/// Why a controller could not be removed.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    /// No such controller.
    #[error("dom{0} has no vusb controller {1}")]
    NoController(DomId, u32),
    /// xenstore failed.
    #[error(transparent)]
    Xs(#[from] XsError),
    /// Removing the paths failed.
    #[error(transparent)]
    Vusb(#[from] VusbError),
}

/// Detaches every device on the controller, then closes and removes it.
pub fn remove(
    xs: &mut Xs,
    platform: &crate::platform::Platform,
    fe: DomId,
    devid: u32,
    timeout: Duration,
) -> Result<Detached, RemoveError> {
    let c = ctrl::read(xs, fe, devid)?.ok_or(RemoveError::NoController(fe, devid))?;
    for port in 1..=c.num_ports {
        if c.port(port).is_some() {
            usbdev_detach::clear(xs, platform, &c, port).map_err(|e| match e {
                usbdev_detach::ClearError::Xs(x) => RemoveError::Xs(x),
                usbdev_detach::ClearError::Vusb(v) => RemoveError::Vusb(v),
            })?;
        }
    }
    let id = c.id();
    let be_dir = id.backend_dir();
    // Both in one transaction so the backend sees the request to close atomically.
    let written = xs.transaction(|tx| {
        if tx.try_read(&format!("{be_dir}/{}", keys::STATE))?.is_none() {
            return Ok(false);
        }
        tx.write(&format!("{be_dir}/{}", keys::ONLINE), b"0")?;
        tx.write(
            &format!("{be_dir}/{}", keys::STATE),
            XenbusState::Closing.to_string().as_bytes(),
        )?;
        Ok(true)
    })?;
    let outcome = if !written {
        Detached::Forced { state: 0 }
    } else {
        match wait_state(xs, &be_dir, timeout, |s| {
            matches!(s, XenbusState::Closed | XenbusState::Unknown)
        }) {
            Ok(_) => Detached::Clean,
            Err(WaitStateError::Timeout(s)) => Detached::Forced { state: s.as_u32() },
            Err(WaitStateError::Xs(e)) => return Err(e.into()),
        }
    };
    vusb::remove_controller(xs, &id)?;
    tracing::info!(fe, devid, ?outcome, "controller removed");
    Ok(outcome)
}

/// Runs the command.
pub fn run(ctx: &Ctx, dom: &str, devid: &str) -> anyhow::Result<()> {
    let mut xs = ctx.xs()?;
    let d = domain::resolve(&mut xs, dom)?;
    let devid: u32 = crate::kv::parse_c_number(devid)
        .and_then(|n| u32::try_from(n).ok())
        .with_context(|| format!("bad controller devid {devid:?}"))?;
    match remove(&mut xs, &ctx.platform, d.domid, devid, ctx.timeout)? {
        Detached::Clean => {}
        Detached::Forced { state } => eprintln!(
            "warning: backend did not close controller {devid} of {} within {} s (state {state}); removed it anyway",
            d.label(),
            ctx.timeout.as_secs()
        ),
    }
    Ok(())
}
