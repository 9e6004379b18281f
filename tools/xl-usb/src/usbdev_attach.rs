//! `usbdev-attach <dom> hostbus=<n> hostaddr=<n> [controller=<devid> [port=<n>]]`: picks a
//! free controller:port (creating a controller if needed), refuses hubs and devices
//! assigned anywhere, records the host drivers, and writes `port/N` = bus id.

use std::time::Duration;

use serde::Serialize;
use xenstore_cfg::vusb::{self, UsbVer, VusbError};
use xenstore_cfg::{DomId, Xs, XsError};

use crate::ctrl::{self, Assignment};
use crate::hostdev::{self, HostError};
use crate::kv::KeyValues;
use crate::platform::Platform;
use crate::usbctrl_attach::{self, CreateError, NewController, DEFAULT_PORTS};
use crate::{domain, Ctx};

/// Where to put the device; `None` = choose.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slot {
    /// Controller devid.
    pub controller: Option<u32>,
    /// Port, 1-based (only with a controller).
    pub port: Option<u8>,
}

/// Where the device went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Attached {
    /// Host bus id.
    pub busid: String,
    /// Guest.
    pub domid: DomId,
    /// Controller devid.
    pub controller: u32,
    /// Port.
    pub port: u8,
    /// Whether a controller was created for it.
    pub created_controller: bool,
}

/// Why a device could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The device does not exist or cannot be read.
    #[error(transparent)]
    Host(#[from] HostError),
    /// Hubs cannot be passed through (libxl refuses them too).
    #[error("{0} is a USB hub (bDeviceClass 9); hubs cannot be passed through")]
    Hub(String),
    /// Already on some domain's port.
    #[error("{busid} is already assigned to {}", .to.label())]
    Assigned {
        /// Device.
        busid: String,
        /// Where.
        to: Assignment,
    },
    /// `controller=` names no controller.
    #[error("dom{0} has no vusb controller {1}")]
    NoController(DomId, u32),
    /// Every port of the given controller is in use.
    #[error("no free port on controller {1} of dom{0}")]
    NoFreePort(DomId, u32),
    /// `port=` is outside the controller.
    #[error("controller {1} of dom{0} has no port {2} (it has {3})")]
    NoSuchPort(DomId, u32, u8, u8),
    /// `port=` is in use.
    #[error("port {2} of controller {1} of dom{0} is in use by {3}")]
    PortBusy(DomId, u32, u8, String),
    /// A controller had to be created and that failed.
    #[error(transparent)]
    Create(#[from] CreateError),
    /// xenstore refused.
    #[error("xenstore: {0}")]
    Xs(#[from] XsError),
    /// Writing the port refused.
    #[error(transparent)]
    Vusb(#[from] VusbError),
}

/// Where the device will go: an existing controller's port, or a new controller.
enum Target {
    Existing(ctrl::Controller, u8),
    New,
}

fn pick(xs: &mut Xs, fe: DomId, slot: Slot) -> Result<Target, AttachError> {
    if let Some(devid) = slot.controller {
        let c = ctrl::read(xs, fe, devid)?.ok_or(AttachError::NoController(fe, devid))?;
        let port = match slot.port {
            Some(p) if p == 0 || p > c.num_ports => {
                return Err(AttachError::NoSuchPort(fe, devid, p, c.num_ports))
            }
            Some(p) => match c.port(p) {
                Some(b) => return Err(AttachError::PortBusy(fe, devid, p, b.to_owned())),
                None => p,
            },
            None => c.free_port().ok_or(AttachError::NoFreePort(fe, devid))?,
        };
        return Ok(Target::Existing(c, port));
    }
    Ok(ctrl::list(xs, fe)?
        .into_iter()
        .filter(|c| c.ctrl_type == "pv")
        .find_map(|c| c.free_port().map(|p| (c, p)))
        .map_or(Target::New, |(c, p)| Target::Existing(c, p)))
}

/// Attaches the host device `busid` to domain `fe`: the code path of `usbdev-attach`,
/// shared with the rules daemon and the demo. The device is checked in this domain's
/// sysfs (present, not a hub) and its host drivers recorded when this domain (dom0) is
/// the controller's backend; a driver domain's devices are not visible here, so for a
/// controller served by another domain only the assignment checks apply.
pub fn attach_busid(
    xs: &mut Xs,
    platform: &Platform,
    fe: DomId,
    busid: &str,
    slot: Slot,
    timeout: Duration,
) -> Result<Attached, AttachError> {
    if let Some(a) = ctrl::assigned(xs)?.into_iter().find(|a| a.busid == busid) {
        return Err(AttachError::Assigned {
            busid: busid.to_owned(),
            to: a,
        });
    }
    let target = pick(xs, fe, slot)?;
    let local = match &target {
        Target::Existing(c, _) => c.backend == 0,
        Target::New => true,
    };
    if local {
        let dev = hostdev::read(&platform.roots, busid)?;
        if dev.is_hub() {
            return Err(AttachError::Hub(busid.to_owned()));
        }
    } else if !xenstore_cfg::vusb::is_valid_busid(busid) {
        return Err(AttachError::Host(HostError::NoSuchBusid(busid.to_owned())));
    }
    let (c, port, created) = match target {
        Target::Existing(c, p) => (c, p, false),
        Target::New => {
            let req = NewController {
                fe,
                be: 0,
                usb_ver: UsbVer::Usb20,
                num_ports: DEFAULT_PORTS,
            };
            let devid = usbctrl_attach::create(xs, &req, timeout)?;
            let c = ctrl::read(xs, fe, devid)?.ok_or(AttachError::NoController(fe, devid))?;
            (c, 1, true)
        }
    };
    if local {
        hostdev::record_drivers(xs, &platform.roots, busid)?;
    }
    vusb::set_port(xs, &c.id(), port, Some(busid))?;
    tracing::info!(fe, controller = c.devid, port, busid, "device attached");
    Ok(Attached {
        busid: busid.to_owned(),
        domid: fe,
        controller: c.devid,
        port,
        created_controller: created,
    })
}

/// Runs the command: `hostbus=` and `hostaddr=` (as xl), or `busid=` (needed for a
/// controller served by a driver domain, whose devices dom0 cannot see).
pub fn run(ctx: &Ctx, dom: &str, opts: &[String]) -> anyhow::Result<()> {
    let kv = KeyValues::parse(opts, "hostbus,hostaddr,busid,controller,port")?;
    let controller = kv
        .number("controller", 0, u64::from(u32::MAX))?
        .and_then(|n| u32::try_from(n).ok());
    let port = kv
        .number("port", 1, u64::from(vusb::MAX_PORTS))?
        .and_then(|n| u8::try_from(n).ok());
    if port.is_some() && controller.is_none() {
        anyhow::bail!("port= needs controller= (as in xl)");
    }
    let mut xs = ctx.xs()?;
    let d = domain::resolve(&mut xs, dom)?;
    let (busid, what) = match kv.get("busid") {
        Some(b) => {
            if kv.get("hostbus").is_some() || kv.get("hostaddr").is_some() {
                anyhow::bail!("give busid= or hostbus= and hostaddr=, not both");
            }
            (b.to_owned(), b.to_owned())
        }
        None => {
            let bus = kv
                .number("hostbus", 1, 0xffff)?
                .ok_or(crate::kv::ArgError::Missing("hostbus"))?;
            let addr = kv
                .number("hostaddr", 1, 127)?
                .ok_or(crate::kv::ArgError::Missing("hostaddr"))?;
            let busid = hostdev::busid_of(&ctx.platform.roots, bus, addr)?;
            let what = format!("{busid} (Bus {bus:03} Device {addr:03})");
            (busid, what)
        }
    };
    let a = attach_busid(
        &mut xs,
        &ctx.platform,
        d.domid,
        &busid,
        Slot { controller, port },
        ctx.timeout,
    )?;
    if ctx.json {
        println!("{}", serde_json::to_string(&a)?);
    } else {
        println!(
            "{what} -> {} controller {} port {}",
            d.label(),
            a.controller,
            a.port
        );
    }
    Ok(())
}
