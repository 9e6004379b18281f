//! The frontend's side of the vusb xenbus handshake: what it reads from the backend
//! directory, and what it publishes (ring refs, event channel, offered extensions, state)
//! in one transaction, as xen-hcd does.

use pvusb_ring::urb::aca::FEATURE_ACA;
use pvusb_ring::urb::chain::FEATURE_SPLIT_CHAIN;
use xenstore_cfg::vusb::{self, keys};
use xenstore_cfg::xenbus::{RingInfo, XenbusState};
use xenstore_cfg::{Xs, XsError, XsOps};

/// Persistent grants (blkif-style): we offer it unconditionally, a backend opts in.
pub const FEATURE_PERSISTENT: &str = "feature-persistent";

/// Where a controller's two halves live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paths {
    /// `/local/domain/<fe>/device/vusb/<devid>`.
    pub fe_dir: String,
    /// The `backend` key's value.
    pub be_dir: String,
    /// `backend-id`.
    pub be_domid: u16,
}

/// What the backend offers, read when it reaches InitWait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendOffer {
    /// `num-ports`, 1..=31.
    pub num_ports: u8,
    /// `usb-ver`, 1 or 2.
    pub usb_ver: u8,
    /// The backend offered error containment (`feature-aca` = 1).
    pub aca: bool,
    /// The backend offered split chains (`feature-split-chain` = 1).
    pub split_chain: bool,
}

fn bad(path: String, value: String) -> XsError {
    XsError::BadValue { path, value }
}

/// Reads `backend` and `backend-id` from the frontend directory.
pub fn read_paths(xs: &mut impl XsOps, fe_dir: &str) -> Result<Paths, XsError> {
    let be_path = format!("{fe_dir}/{}", keys::BACKEND);
    let be_dir = xs.read_string(&be_path)?.trim().to_owned();
    if !be_dir.starts_with('/') {
        return Err(bad(be_path, be_dir));
    }
    let id_path = format!("{fe_dir}/{}", keys::BACKEND_ID);
    let v = xs.read_string(&id_path)?;
    let be_domid = v.trim().parse().map_err(|_| bad(id_path, v.clone()))?;
    Ok(Paths {
        fe_dir: fe_dir.to_owned(),
        be_dir,
        be_domid,
    })
}

/// Reads `num-ports`, `usb-ver` and the extensions offered from the backend directory.
pub fn read_offer(xs: &mut impl XsOps, be_dir: &str) -> Result<BackendOffer, XsError> {
    let num_ports = vusb::read_num_ports(xs, be_dir)?;
    let ver_path = format!("{be_dir}/{}", keys::USB_VER);
    let ver = xs.read_string(&ver_path)?;
    let usb_ver = ver
        .trim()
        .parse::<u8>()
        .ok()
        .filter(|v| matches!(v, 1 | 2))
        .ok_or_else(|| bad(ver_path, ver.clone()))?;
    let mut offered = |key: &str| -> Result<bool, XsError> {
        Ok(xs
            .try_read(&format!("{be_dir}/{key}"))?
            .is_some_and(|v| v.trim_ascii() == b"1"))
    };
    Ok(BackendOffer {
        num_ports,
        usb_ver,
        aca: offered(FEATURE_ACA)?,
        split_chain: offered(FEATURE_SPLIT_CHAIN)?,
    })
}

/// Publishes the rings, the event channel and our extensions, and switches to
/// Connected, all in one transaction (retried on EAGAIN). Fails with ENOENT if the
/// toolstack removed the device meanwhile.
pub fn publish(xs: &mut Xs, fe_dir: &str, rings: &RingInfo, aca: bool) -> Result<(), XsError> {
    xs.transaction(|tx| {
        tx.read(&format!("{fe_dir}/{}", keys::STATE))?;
        let w = |tx: &mut xenstore_cfg::Transaction<'_>, k: &str, v: String| {
            tx.write(&format!("{fe_dir}/{k}"), v.as_bytes())
        };
        w(tx, keys::URB_RING_REF, rings.urb_ring_ref.to_string())?;
        w(tx, keys::CONN_RING_REF, rings.conn_ring_ref.to_string())?;
        w(tx, keys::EVENT_CHANNEL, rings.event_channel.to_string())?;
        if aca {
            w(tx, FEATURE_ACA, "1".into())?;
        }
        w(tx, FEATURE_SPLIT_CHAIN, "1".into())?;
        // Every data page comes from the pool granted once per connection and kept
        // granted until it ends, so the backend may map each page once.
        w(tx, FEATURE_PERSISTENT, "1".into())?;
        w(tx, keys::STATE, XenbusState::Connected.as_u32().to_string())
    })
}

/// Sets our state (no-op if already there; ENOENT if the device is gone).
pub fn set_state(xs: &mut Xs, fe_dir: &str, state: XenbusState) -> Result<(), XsError> {
    xenstore_cfg::xenbus::switch_state(xs, fe_dir, state)
}
