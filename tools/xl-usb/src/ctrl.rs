//! Reading a domain's vusb controllers back from xenstore, the devices assigned anywhere,
//! and choosing a free controller:port (libxl's `usbdev_setdefault` / `get_free_port`).

use serde::Serialize;
use xenstore_cfg::vusb::{keys, VusbId, DEVICE_TYPE};
use xenstore_cfg::xenbus::XenbusState;
use xenstore_cfg::{DomId, Xs, XsError, XsOps};

use crate::domain;

/// One controller as xenstore describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Controller {
    /// Device id in the guest's `device/vusb`.
    pub devid: u32,
    /// Guest domain.
    pub frontend: DomId,
    /// Backend (driver) domain.
    pub backend: DomId,
    /// Backend `type` ("pv").
    #[serde(rename = "type")]
    pub ctrl_type: String,
    /// Frontend `state` (what `xl usb-list` prints).
    pub state: u32,
    /// Backend `state`.
    pub backend_state: u32,
    /// `usb-ver`.
    pub usb_ver: u32,
    /// `num-ports`.
    pub num_ports: u8,
    /// Bus id on each port 1..=num_ports, `None` when empty.
    pub ports: Vec<Option<String>>,
    /// The backend directory.
    pub backend_path: String,
    /// What the frontend reported with `xenbus_dev_error` ("<errno> <message>"), if
    /// anything: why it did not connect.
    pub frontend_error: Option<String>,
}

impl Controller {
    /// The id triple of the vusb schema.
    pub fn id(&self) -> VusbId {
        VusbId {
            fe: self.frontend,
            be: self.backend,
            devid: self.devid,
        }
    }

    /// The first empty port, 1-based.
    pub fn free_port(&self) -> Option<u8> {
        (1..=self.num_ports).find(|&p| self.port(p).is_none())
    }

    /// The bus id on `port` (1-based), if any.
    pub fn port(&self, port: u8) -> Option<&str> {
        let i = usize::from(port).checked_sub(1)?;
        self.ports.get(i).and_then(|b| b.as_deref())
    }
}

fn read_u32(xs: &mut Xs, path: &str) -> Result<Option<u32>, XsError> {
    Ok(xs
        .try_read(path)?
        .and_then(|v| String::from_utf8_lossy(&v).trim().parse().ok()))
}

fn read_text(xs: &mut Xs, path: &str) -> Result<Option<String>, XsError> {
    Ok(xs
        .try_read(path)?
        .map(|v| String::from_utf8_lossy(&v).trim().to_owned()))
}

fn children(xs: &mut Xs, path: &str) -> Result<Vec<String>, XsError> {
    match xs.directory(path) {
        Ok(c) => Ok(c),
        Err(XsError::Xs(xenstore_cfg::XsErrno::ENOENT)) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Reads the controller `devid` of domain `fe`; `None` if it does not exist (or its
/// frontend directory does not name a vusb backend directory).
pub fn read(xs: &mut Xs, fe: DomId, devid: u32) -> Result<Option<Controller>, XsError> {
    let fe_dir = format!("/local/domain/{fe}/device/{DEVICE_TYPE}/{devid}");
    let Some(be_path) = read_text(xs, &format!("{fe_dir}/{}", keys::BACKEND))? else {
        return Ok(None);
    };
    let Some(id) = VusbId::from_backend_path(&be_path) else {
        return Ok(None);
    };
    let state = read_u32(xs, &format!("{fe_dir}/{}", keys::STATE))?.unwrap_or(0);
    let be = |k: &str| format!("{be_path}/{k}");
    let ctrl_type = read_text(xs, &be(keys::TYPE))?.unwrap_or_default();
    let backend_state = read_u32(xs, &be(keys::STATE))?.unwrap_or(0);
    let usb_ver = read_u32(xs, &be(keys::USB_VER))?.unwrap_or(0);
    let num_ports = read_u32(xs, &be(keys::NUM_PORTS))?
        .and_then(|n| u8::try_from(n).ok())
        .unwrap_or(0)
        .min(xenstore_cfg::vusb::MAX_PORTS);
    let mut ports = Vec::with_capacity(usize::from(num_ports));
    for p in 1..=num_ports {
        let v = read_text(xs, &id.port_path(p))?.unwrap_or_default();
        ports.push((!v.is_empty()).then_some(v));
    }
    Ok(Some(Controller {
        devid,
        frontend: fe,
        backend: id.be,
        ctrl_type,
        state,
        backend_state,
        usb_ver,
        num_ports,
        ports,
        backend_path: be_path,
        frontend_error: xenstore_cfg::xenbus::read_dev_error(xs, &fe_dir)?,
    }))
}

/// Every vusb controller of domain `fe`, by devid.
pub fn list(xs: &mut Xs, fe: DomId) -> Result<Vec<Controller>, XsError> {
    let mut devids: Vec<u32> = children(xs, &format!("/local/domain/{fe}/device/{DEVICE_TYPE}"))?
        .iter()
        .filter_map(|c| c.parse().ok())
        .collect();
    devids.sort_unstable();
    let mut out = Vec::new();
    for devid in devids {
        if let Some(c) = read(xs, fe, devid)? {
            out.push(c);
        }
    }
    Ok(out)
}

/// The next free device id (libxl's `libxl__device_nextid`: highest in use + 1, or 0).
pub fn next_devid(xs: &mut Xs, fe: DomId) -> Result<u32, XsError> {
    let used: Vec<u32> = children(xs, &format!("/local/domain/{fe}/device/{DEVICE_TYPE}"))?
        .iter()
        .chain(children(xs, &format!("/libxl/{fe}/device/{DEVICE_TYPE}"))?.iter())
        .filter_map(|c| c.parse().ok())
        .collect();
    Ok(used.iter().max().map_or(0, |m| m.saturating_add(1)))
}

/// Where a host device is assigned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Assignment {
    /// Host bus id.
    pub busid: String,
    /// Guest domain.
    pub domid: DomId,
    /// Guest name, if any.
    pub name: Option<String>,
    /// Controller devid.
    pub controller: u32,
    /// Port, 1-based.
    pub port: u8,
}

impl Assignment {
    /// "guest1 (1) controller 0 port 1".
    pub fn label(&self) -> String {
        let dom = domain::Domain {
            domid: self.domid,
            name: self.name.clone(),
        };
        format!(
            "{} controller {} port {}",
            dom.label(),
            self.controller,
            self.port
        )
    }
}

/// Every host device assigned to any domain (libxl's `get_assigned_devices`).
pub fn assigned(xs: &mut Xs) -> Result<Vec<Assignment>, XsError> {
    let mut out = Vec::new();
    for d in domain::list(xs)? {
        for c in list(xs, d.domid)? {
            for (i, busid) in c.ports.iter().enumerate() {
                if let (Some(b), Ok(port)) = (busid, u8::try_from(i + 1)) {
                    out.push(Assignment {
                        busid: b.clone(),
                        domid: d.domid,
                        name: d.name.clone(),
                        controller: c.devid,
                        port,
                    });
                }
            }
        }
    }
    Ok(out)
}

/// A readable name for a XenbusState number.
pub fn state_name(n: u32) -> &'static str {
    match XenbusState::from_u32(n) {
        Some(XenbusState::Unknown) | None => "unknown",
        Some(XenbusState::Initialising) => "initialising",
        Some(XenbusState::InitWait) => "initwait",
        Some(XenbusState::Initialised) => "initialised",
        Some(XenbusState::Connected) => "connected",
        Some(XenbusState::Closing) => "closing",
        Some(XenbusState::Closed) => "closed",
        Some(XenbusState::Reconfiguring) => "reconfiguring",
        Some(XenbusState::Reconfigured) => "reconfigured",
    }
}
