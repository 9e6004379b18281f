//! The vusb xenstore layout exactly as libxl writes it (libxl_usb.c, libxl_device.c):
//! frontend `/local/domain/<fe>/device/vusb/<devid>`, backend
//! `/local/domain/<be>/backend/vusb/<fe>/<devid>`, libxl's copy `/libxl/<fe>/device/vusb/<devid>`.

use std::fmt;

use crate::client::{Transaction, Xs, XsError, XsOps};
use crate::wire::{DomId, PermKind, Perms, XsErrno};
use crate::xenbus::XenbusState;

/// The xenbus device type (`xen:vusb`): both the frontend and backend directory name.
pub const DEVICE_TYPE: &str = "vusb";
/// `USBIF_MAX_PORTNR`.
pub const MAX_PORTS: u8 = 31;

/// Key names under the frontend and backend directories.
pub mod keys {
    /// Backend: frontend directory path.
    pub const FRONTEND: &str = "frontend";
    /// Backend: frontend domid.
    pub const FRONTEND_ID: &str = "frontend-id";
    /// Frontend: backend directory path.
    pub const BACKEND: &str = "backend";
    /// Frontend: backend domid.
    pub const BACKEND_ID: &str = "backend-id";
    /// Backend: "1" while the toolstack wants the device.
    pub const ONLINE: &str = "online";
    /// Both: XenbusState, decimal.
    pub const STATE: &str = "state";
    /// Backend: controller type ("pv").
    pub const TYPE: &str = "type";
    /// Backend: 1 or 2.
    pub const USB_VER: &str = "usb-ver";
    /// Backend: number of root-hub ports, 1..=31.
    pub const NUM_PORTS: &str = "num-ports";
    /// Backend: directory of `port/<n>` = host bus id or "".
    pub const PORT: &str = "port";
    /// Frontend: grant ref of the urb ring.
    pub const URB_RING_REF: &str = "urb-ring-ref";
    /// Frontend: grant ref of the conn ring.
    pub const CONN_RING_REF: &str = "conn-ring-ref";
    /// Frontend: event channel port.
    pub const EVENT_CHANNEL: &str = "event-channel";
    /// Frontend (optional): ring ABI.
    pub const PROTOCOL: &str = "protocol";
}

/// One virtual USB controller: which guest, which backend domain, which device id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VusbId {
    /// Frontend (guest) domain.
    pub fe: DomId,
    /// Backend (driver) domain.
    pub be: DomId,
    /// Device id within the guest's `device/vusb`.
    pub devid: u32,
}

impl VusbId {
    /// `/local/domain/<fe>/device/vusb/<devid>`.
    pub fn frontend_dir(&self) -> String {
        format!(
            "/local/domain/{}/device/{DEVICE_TYPE}/{}",
            self.fe, self.devid
        )
    }

    /// `/local/domain/<be>/backend/vusb/<fe>/<devid>`.
    pub fn backend_dir(&self) -> String {
        format!(
            "/local/domain/{}/backend/{DEVICE_TYPE}/{}/{}",
            self.be, self.fe, self.devid
        )
    }

    /// `/libxl/<fe>/device/vusb/<devid>`.
    pub fn libxl_dir(&self) -> String {
        format!("/libxl/{}/device/{DEVICE_TYPE}/{}", self.fe, self.devid)
    }

    /// `<backend dir>/port/<port>`.
    pub fn port_path(&self, port: u8) -> String {
        format!("{}/{}/{port}", self.backend_dir(), keys::PORT)
    }

    /// Parses a backend directory path (or any path below it) into its id.
    pub fn from_backend_path(path: &str) -> Option<Self> {
        let rest = path.strip_prefix("/local/domain/")?;
        let mut it = rest.split('/');
        let be = it.next()?.parse().ok()?;
        if it.next()? != "backend" || it.next()? != DEVICE_TYPE {
            return None;
        }
        let fe = it.next()?.parse().ok()?;
        let devid = it.next()?.parse().ok()?;
        Some(Self { fe, be, devid })
    }

    /// Parses a frontend directory path (or below) into (fe, devid); the backend domain is
    /// not part of the path.
    pub fn from_frontend_path(path: &str) -> Option<(DomId, u32)> {
        let rest = path.strip_prefix("/local/domain/")?;
        let mut it = rest.split('/');
        let fe = it.next()?.parse().ok()?;
        if it.next()? != "device" || it.next()? != DEVICE_TYPE {
            return None;
        }
        Some((fe, it.next()?.parse().ok()?))
    }
}

impl fmt::Display for VusbId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vusb{}/{} (be {})", self.fe, self.devid, self.be)
    }
}

/// `usb-ver`: usbif accepts only USB 1.1 and 2.0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UsbVer {
    /// 1: USB 1.1.
    Usb11 = 1,
    /// 2: USB 2.0 (libxl's default).
    Usb20 = 2,
}

impl UsbVer {
    /// Parses the node value.
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim() {
            "1" => Some(Self::Usb11),
            "2" => Some(Self::Usb20),
            _ => None,
        }
    }
}

/// libxl's `libxl_usbctrl_type` as written to the backend's `type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CtrlType {
    /// "pv": a usbif backend serves it.
    Pv,
    /// "qusb": QEMU's usbif backend.
    Qusb,
    /// "devicemodel": an emulated controller (no usbif).
    DeviceModel,
}

impl CtrlType {
    /// The string libxl writes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pv => "pv",
            Self::Qusb => "qusb",
            Self::DeviceModel => "devicemodel",
        }
    }
}

/// Everything `xl usbctrl-attach` decides about a controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControllerConfig {
    /// Where it lives.
    pub id: VusbId,
    /// `usb-ver`.
    pub usb_ver: UsbVer,
    /// `num-ports`, 1..=31 (libxl default 8).
    pub num_ports: u8,
    /// `type`.
    pub ctrl_type: CtrlType,
}

/// Why a controller could not be written or removed.
#[derive(Debug, thiserror::Error)]
pub enum VusbError {
    /// `num-ports` outside 1..=31 or a port outside 1..=num-ports.
    #[error("port {0} out of range 1..={MAX_PORTS}")]
    BadPort(u8),
    /// A bus id with characters a sysfs USB device name never has.
    #[error("bad host bus id {0:?}")]
    BadBusId(String),
    /// xenstore failed.
    #[error(transparent)]
    Xs(#[from] XsError),
}

/// Whether `busid` looks like a sysfs USB device name ("3-1.5"): digits, '-' and '.'.
pub fn is_valid_busid(busid: &str) -> bool {
    !busid.is_empty()
        && busid.len() <= 32
        && busid
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'-' || b == b'.')
        && busid.contains('-')
}

/// Frontend directory permissions: owner fe, backend may read (`n<fe>,r<be>`).
pub fn frontend_perms(id: &VusbId) -> Perms {
    Perms::owner(id.fe, PermKind::None).with(PermKind::Read, id.be)
}

/// Backend directory permissions: owner be, frontend may read (`n<be>,r<fe>`).
pub fn backend_perms(id: &VusbId) -> Perms {
    Perms::owner(id.be, PermKind::None).with(PermKind::Read, id.fe)
}

fn write_str(tx: &mut Transaction<'_>, path: String, v: &str) -> Result<(), XsError> {
    tx.write(&path, v.as_bytes())
}

/// Removes `path` if it exists (xs_rm of a missing node whose parent is missing is ENOENT).
fn rm_quiet(tx: &mut Transaction<'_>, path: &str) -> Result<(), XsError> {
    match tx.rm(path) {
        Err(XsError::Xs(XsErrno::ENOENT)) => Ok(()),
        other => other,
    }
}

/// Writes a whole controller in one transaction, exactly as libxl's
/// `libxl__device_generic_add` does for `xl usbctrl-attach`: same keys, same order, same
/// permissions. Both `state` nodes start at Initialising.
pub fn add_controller(xs: &mut Xs, cfg: &ControllerConfig) -> Result<(), VusbError> {
    if cfg.num_ports == 0 || cfg.num_ports > MAX_PORTS {
        return Err(VusbError::BadPort(cfg.num_ports));
    }
    let id = cfg.id;
    let (fe_dir, be_dir, lx_dir) = (id.frontend_dir(), id.backend_dir(), id.libxl_dir());
    let init = XenbusState::Initialising.to_string();
    // libxl's `bents`, in its order.
    let mut bents: Vec<(String, String)> = vec![
        (keys::FRONTEND_ID.into(), id.fe.to_string()),
        (keys::ONLINE.into(), "1".into()),
        (keys::STATE.into(), init.clone()),
        (keys::TYPE.into(), cfg.ctrl_type.as_str().into()),
        (keys::USB_VER.into(), (cfg.usb_ver as u8).to_string()),
        (keys::NUM_PORTS.into(), cfg.num_ports.to_string()),
        (keys::PORT.into(), String::new()),
    ];
    bents.extend((1..=cfg.num_ports).map(|p| (format!("{}/{p}", keys::PORT), String::new())));
    xs.transaction(|tx| {
        rm_quiet(tx, &fe_dir)?;
        tx.mkdir(&fe_dir)?;
        tx.set_perms(&fe_dir, &frontend_perms(&id))?;
        write_str(tx, format!("{fe_dir}/{}", keys::BACKEND), &be_dir)?;
        write_str(
            tx,
            format!("{fe_dir}/{}", keys::BACKEND_ID),
            &id.be.to_string(),
        )?;
        write_str(tx, format!("{fe_dir}/{}", keys::STATE), &init)?;

        rm_quiet(tx, &be_dir)?;
        tx.mkdir(&be_dir)?;
        tx.set_perms(&be_dir, &backend_perms(&id))?;
        write_str(tx, format!("{be_dir}/{}", keys::FRONTEND), &fe_dir)?;
        for (k, v) in &bents {
            write_str(tx, format!("{be_dir}/{k}"), v)?;
        }

        rm_quiet(tx, &lx_dir)?;
        tx.mkdir(&lx_dir)?;
        write_str(tx, format!("{lx_dir}/{}", keys::FRONTEND), &fe_dir)?;
        write_str(tx, format!("{lx_dir}/{}", keys::BACKEND), &be_dir)?;
        for (k, v) in &bents {
            write_str(tx, format!("{lx_dir}/{k}"), v)?;
        }
        Ok(())
    })?;
    Ok(())
}

/// Removes `path`, then each listed ancestor while it has no children left (libxl's
/// `libxl__xs_path_cleanup`, bounded so `device/`, `backend/` and `/libxl/<fe>` stay).
fn rm_and_prune(tx: &mut Transaction<'_>, path: &str, prune: &[String]) -> Result<(), XsError> {
    rm_quiet(tx, path)?;
    for dir in prune {
        match tx.directory(dir) {
            Ok(children) if children.is_empty() => tx.rm(dir)?,
            Ok(_) => break,
            Err(XsError::Xs(XsErrno::ENOENT)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Removes a controller as `xl usbctrl-detach` does: frontend, backend and libxl
/// directories, plus the `vusb` directories left empty, and the frontend's error report,
/// in one transaction.
pub fn remove_controller(xs: &mut Xs, id: &VusbId) -> Result<(), VusbError> {
    let fe_vusb = format!("/local/domain/{}/device/{DEVICE_TYPE}", id.fe);
    let be_vusb = format!("/local/domain/{}/backend/{DEVICE_TYPE}", id.be);
    let be_fe = format!("{be_vusb}/{}", id.fe);
    let lx_vusb = format!("/libxl/{}/device/{DEVICE_TYPE}", id.fe);
    xs.transaction(|tx| {
        rm_and_prune(tx, &id.frontend_dir(), std::slice::from_ref(&fe_vusb))?;
        rm_and_prune(tx, &id.backend_dir(), &[be_fe.clone(), be_vusb.clone()])?;
        rm_and_prune(tx, &id.libxl_dir(), std::slice::from_ref(&lx_vusb))?;
        // What the frontend reported with xenbus_dev_error, as libxl removes it.
        let err = format!("/local/domain/{}/error/device", id.fe);
        let err_vusb = format!("{err}/{DEVICE_TYPE}");
        rm_and_prune(
            tx,
            &format!("{err_vusb}/{}", id.devid),
            &[err_vusb.clone(), err],
        )?;
        Ok(())
    })?;
    Ok(())
}

/// Plugs (`Some(busid)`) or unplugs (`None`, written as "") a host device on a backend
/// port, as `xl usbdev-attach`/`usbdev-detach` do. The backend watches `port`.
pub fn set_port(xs: &mut Xs, id: &VusbId, port: u8, busid: Option<&str>) -> Result<(), VusbError> {
    if port == 0 || port > MAX_PORTS {
        return Err(VusbError::BadPort(port));
    }
    if let Some(b) = busid.filter(|b| !is_valid_busid(b)) {
        return Err(VusbError::BadBusId(b.to_owned()));
    }
    let path = id.port_path(port);
    let num_ports_path = format!("{}/{}", id.backend_dir(), keys::NUM_PORTS);
    xs.transaction(|tx| {
        let n = tx.read_string(&num_ports_path)?;
        if n.trim().parse::<u8>().map_or(true, |n| port > n) {
            return Err(XsError::Xs(XsErrno::EINVAL));
        }
        tx.write(&path, busid.unwrap_or("").as_bytes())
    })
    .map_err(|e| match e {
        XsError::Xs(XsErrno::EINVAL) => VusbError::BadPort(port),
        e => VusbError::Xs(e),
    })
}

/// Finds the controller a frontend directory belongs to, from its `backend-id` (what a
/// frontend does on discovering `device/vusb/<devid>`).
pub fn read_frontend(xs: &mut impl XsOps, fe: DomId, devid: u32) -> Result<VusbId, XsError> {
    let dir = VusbId { fe, be: 0, devid }.frontend_dir();
    let path = format!("{dir}/{}", keys::BACKEND_ID);
    let v = xs.read_string(&path)?;
    let be = v.trim().parse().map_err(|_| XsError::BadValue {
        path,
        value: v.clone(),
    })?;
    Ok(VusbId { fe, be, devid })
}

/// Device ids under `/local/domain/<fe>/device/vusb` (empty if there is none).
pub fn list_frontends(xs: &mut impl XsOps, fe: DomId) -> Result<Vec<u32>, XsError> {
    let dir = format!("/local/domain/{fe}/device/{DEVICE_TYPE}");
    match xs.directory(&dir) {
        Ok(children) => Ok(children.iter().filter_map(|c| c.parse().ok()).collect()),
        Err(XsError::Xs(XsErrno::ENOENT)) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// The controller settings a backend reads from its directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendView {
    /// `usb-ver`.
    pub usb_ver: UsbVer,
    /// `num-ports`.
    pub num_ports: u8,
    /// `port/1..=num-ports`: the bus id plugged there, `None` when empty.
    pub ports: Vec<Option<String>>,
}

/// Reads `num-ports` from backend directory `dir`; a value outside 1..=[`MAX_PORTS`] is
/// [`XsError::BadValue`].
pub fn read_num_ports(xs: &mut impl XsOps, dir: &str) -> Result<u8, XsError> {
    let path = format!("{dir}/{}", keys::NUM_PORTS);
    let np = xs.read_string(&path)?;
    np.trim()
        .parse::<u8>()
        .ok()
        .filter(|n| (1..=MAX_PORTS).contains(n))
        .ok_or(XsError::BadValue { path, value: np })
}

/// Reads `usb-ver`, `num-ports` and every `port/<n>` from a backend directory.
pub fn read_backend(xs: &mut impl XsOps, id: &VusbId) -> Result<BackendView, XsError> {
    let dir = id.backend_dir();
    let ver_path = format!("{dir}/{}", keys::USB_VER);
    let ver = xs.read_string(&ver_path)?;
    let usb_ver = UsbVer::parse(&ver).ok_or_else(|| XsError::BadValue {
        path: ver_path,
        value: ver.clone(),
    })?;
    let num_ports = read_num_ports(xs, &dir)?;
    let mut ports = Vec::with_capacity(usize::from(num_ports));
    for p in 1..=num_ports {
        let v = xs.try_read(&id.port_path(p))?.unwrap_or_default();
        let busid = String::from_utf8_lossy(&v).trim().to_owned();
        ports.push((!busid.is_empty()).then_some(busid));
    }
    Ok(BackendView {
        usb_ver,
        num_ports,
        ports,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_libxl() {
        let id = VusbId {
            fe: 1,
            be: 0,
            devid: 0,
        };
        assert_eq!(id.frontend_dir(), "/local/domain/1/device/vusb/0");
        assert_eq!(id.backend_dir(), "/local/domain/0/backend/vusb/1/0");
        assert_eq!(id.libxl_dir(), "/libxl/1/device/vusb/0");
        assert_eq!(id.port_path(3), "/local/domain/0/backend/vusb/1/0/port/3");
        assert_eq!(VusbId::from_backend_path(&id.port_path(3)), Some(id));
        assert_eq!(VusbId::from_frontend_path(&id.frontend_dir()), Some((1, 0)));
        assert_eq!(
            VusbId::from_backend_path("/local/domain/0/backend/vbd/1/0"),
            None
        );
        assert_eq!(frontend_perms(&id).to_string(), "n1,r0");
        assert_eq!(backend_perms(&id).to_string(), "n0,r1");
    }

    #[test]
    fn busid_validation() {
        assert!(is_valid_busid("3-1.5"));
        assert!(is_valid_busid("1-1"));
        assert!(!is_valid_busid(""));
        assert!(!is_valid_busid("usb1"));
        assert!(!is_valid_busid("1-1/../x"));
    }
}
