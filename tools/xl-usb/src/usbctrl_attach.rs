//! `usbctrl-attach <dom> [type=pv] [version=1|2] [ports=1..31] [backend=<dom>]`: writes a
//! controller in libxl's layout and waits for the backend to reach InitWait.

use std::time::Duration;

use anyhow::Context;
use xenstore_cfg::vusb::{self, ControllerConfig, CtrlType, UsbVer, VusbError, VusbId};
use xenstore_cfg::xenbus::{wait_state, WaitStateError, XenbusState};
use xenstore_cfg::{DomId, Xs};

use crate::kv::{ArgError, KeyValues};
use crate::{ctrl, domain, Ctx};

/// libxl's default number of ports.
pub const DEFAULT_PORTS: u8 = 8;

/// What to create.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewController {
    /// Guest.
    pub fe: DomId,
    /// Backend domain (0 unless a driver domain serves it).
    pub be: DomId,
    /// `usb-ver`.
    pub usb_ver: UsbVer,
    /// `num-ports`.
    pub num_ports: u8,
}

/// Why a controller could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// Writing the tree failed.
    #[error("writing the controller: {0}")]
    Vusb(#[from] VusbError),
    /// xenstore failed while choosing a devid.
    #[error("choosing a device id: {0}")]
    Xs(#[from] xenstore_cfg::XsError),
    /// The backend never answered; the controller stays in xenstore (as with libxl) so
    /// a backend started later picks it up.
    #[error("controller {devid} of dom{fe} written, but no backend in dom{be} reached InitWait within {secs} s (backend state {state}); is pvusb-backend running there? (remove it with `xl-usb usbctrl-detach {fe} {devid}`)")]
    NoBackend {
        /// Guest.
        fe: DomId,
        /// Backend domain.
        be: DomId,
        /// Controller.
        devid: u32,
        /// Timeout used.
        secs: u64,
        /// Last backend state seen.
        state: u32,
    },
}

/// Creates a controller with the next free devid and waits up to `timeout` for its
/// backend to reach InitWait (libxl waits the same way). Returns the devid.
pub fn create(xs: &mut Xs, req: &NewController, timeout: Duration) -> Result<u32, CreateError> {
    let devid = ctrl::next_devid(xs, req.fe)?;
    create_with_devid(xs, req, devid, timeout)
}

/// As [`create`], with a given devid (which must not be in use).
pub fn create_with_devid(
    xs: &mut Xs,
    req: &NewController,
    devid: u32,
    timeout: Duration,
) -> Result<u32, CreateError> {
    let id = VusbId {
        fe: req.fe,
        be: req.be,
        devid,
    };
    vusb::add_controller(
        xs,
        &ControllerConfig {
            id,
            usb_ver: req.usb_ver,
            num_ports: req.num_ports,
            ctrl_type: CtrlType::Pv,
        },
    )?;
    tracing::info!(fe = req.fe, be = req.be, devid, "controller written");
    let ready = |s: XenbusState| !matches!(s, XenbusState::Unknown | XenbusState::Initialising);
    match wait_state(xs, &id.backend_dir(), timeout, ready) {
        Ok(_) => Ok(devid),
        Err(WaitStateError::Timeout(s)) => Err(CreateError::NoBackend {
            fe: req.fe,
            be: req.be,
            devid,
            secs: timeout.as_secs(),
            state: s.as_u32(),
        }),
        Err(WaitStateError::Xs(e)) => Err(CreateError::Xs(e)),
    }
}

/// Parses the command's key=value options (the domain already resolved).
pub fn parse(xs: &mut Xs, fe: DomId, opts: &[String]) -> anyhow::Result<NewController> {
    let kv = KeyValues::parse(opts, "type,version,ports,backend")?;
    if let Some(t) = kv.get("type") {
        if t != CtrlType::Pv.as_str() {
            return Err(ArgError::BadValue {
                key: "type".into(),
                value: t.into(),
                why: "only type=pv is served by pvusb-backend (qusb and devicemodel are QEMU's: use xl)".into(),
            }
            .into());
        }
    }
    let usb_ver = match kv.number("version", 1, 2)? {
        Some(1) => UsbVer::Usb11,
        _ => UsbVer::Usb20,
    };
    let num_ports = kv
        .number("ports", 1, u64::from(vusb::MAX_PORTS))?
        .and_then(|n| u8::try_from(n).ok())
        .unwrap_or(DEFAULT_PORTS);
    let be = match kv.get("backend") {
        Some(b) => domain::resolve(xs, b).context("backend=")?.domid,
        None => 0,
    };
    if be == fe {
        anyhow::bail!("backend=dom{be} is the guest itself");
    }
    Ok(NewController {
        fe,
        be,
        usb_ver,
        num_ports,
    })
}

/// Runs the command.
pub fn run(ctx: &Ctx, dom: &str, opts: &[String]) -> anyhow::Result<()> {
    let mut xs = ctx.xs()?;
    let d = domain::resolve(&mut xs, dom)?;
    let req = parse(&mut xs, d.domid, opts)?;
    let devid = create(&mut xs, &req, ctx.timeout)?;
    if ctx.json {
        println!(
            "{}",
            serde_json::json!({ "domid": d.domid, "devid": devid, "backend": req.be })
        );
    }
    Ok(())
}
