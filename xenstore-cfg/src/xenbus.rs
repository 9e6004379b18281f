//! XenbusState (xen/include/public/io/xenbus.h) and the handshake helpers both vusb ends use.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::client::{Xs, XsError, XsOps};
use crate::vusb::keys;
use crate::wire::XsErrno;

/// `enum xenbus_state`, with its numeric values as written to `state` nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum XenbusState {
    /// 0: no state node or an unparsable one.
    Unknown = 0,
    /// 1: the toolstack created the device.
    Initialising = 1,
    /// 2: the backend waits for the frontend's ring details.
    InitWait = 2,
    /// 3: the frontend published its rings (xen-hcd skips this state).
    Initialised = 3,
    /// 4: rings mapped, device usable.
    Connected = 4,
    /// 5: tearing down.
    Closing = 5,
    /// 6: torn down.
    Closed = 6,
    /// 7: reconfiguration requested.
    Reconfiguring = 7,
    /// 8: reconfiguration done.
    Reconfigured = 8,
}

impl XenbusState {
    /// The state for a number, `None` if out of range.
    pub fn from_u32(n: u32) -> Option<Self> {
        Some(match n {
            0 => Self::Unknown,
            1 => Self::Initialising,
            2 => Self::InitWait,
            3 => Self::Initialised,
            4 => Self::Connected,
            5 => Self::Closing,
            6 => Self::Closed,
            7 => Self::Reconfiguring,
            8 => Self::Reconfigured,
            _ => return None,
        })
    }

    /// Parses a `state` node's value (decimal, as Linux's `xenbus_read_driver_state`).
    pub fn parse(value: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(value).ok()?;
        Self::from_u32(text.trim_end_matches('\0').trim().parse().ok()?)
    }

    /// The number written to xenstore.
    pub fn as_u32(self) -> u32 {
        self as u32
    }
}

impl fmt::Display for XenbusState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_u32())
    }
}

/// Reads `<dir>/state`; a missing node reads as `Unknown`, as in Linux.
pub fn read_state(xs: &mut impl XsOps, dir: &str) -> Result<XenbusState, XsError> {
    let path = format!("{dir}/{}", keys::STATE);
    Ok(match xs.try_read(&path)? {
        Some(v) => XenbusState::parse(&v).unwrap_or(XenbusState::Unknown),
        None => XenbusState::Unknown,
    })
}

/// Sets `<dir>/state` in a transaction, as Linux's `xenbus_switch_state`: no write (and no
/// watch firing) if the state is already `state`; `ENOENT` if the device directory is gone,
/// so a removed device is never resurrected.
pub fn switch_state(xs: &mut Xs, dir: &str, state: XenbusState) -> Result<(), XsError> {
    let path = format!("{dir}/{}", keys::STATE);
    xs.transaction(|tx| {
        let cur = tx.read(&path)?;
        if XenbusState::parse(&cur) != Some(state) {
            tx.write(&path, state.to_string().as_bytes())?;
        }
        Ok(())
    })
}

/// Why waiting for a peer's state failed.
#[derive(Debug, thiserror::Error)]
pub enum WaitStateError {
    /// The deadline passed; carries the last state seen.
    #[error("timed out waiting for state (last seen {0:?})")]
    Timeout(XenbusState),
    /// xenstore failed.
    #[error(transparent)]
    Xs(#[from] XsError),
}

static NEXT_TOKEN: AtomicU64 = AtomicU64::new(0);

/// A token no other watch of this process uses.
pub fn unique_token(prefix: &str) -> String {
    let n = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// Waits until `pred` holds for `<dir>/state` (a watch, so no polling), or `timeout`.
/// Returns the state that satisfied it. Other watches' events stay queued on `xs`.
pub fn wait_state(
    xs: &mut Xs,
    dir: &str,
    timeout: Duration,
    mut pred: impl FnMut(XenbusState) -> bool,
) -> Result<XenbusState, WaitStateError> {
    let deadline = Instant::now() + timeout;
    let path = format!("{dir}/{}", keys::STATE);
    let token = unique_token("wait-state");
    xs.watch(&path, &token)?;
    let mut wait = || loop {
        let state = read_state(xs, dir)?;
        if pred(state) {
            return Ok(state);
        }
        if xs.wait_event_for(&token, Some(deadline))?.is_none() {
            return Err(WaitStateError::Timeout(state));
        }
    };
    let result = wait();
    // Always drop the watch, even after an error, so waits never leak watch quota.
    let unwatched = xs.unwatch(&path, &token);
    let state = result?;
    unwatched?;
    Ok(state)
}

/// The frontend's ring details: `urb-ring-ref`, `conn-ring-ref`, `event-channel`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RingInfo {
    /// Grant reference of the urb ring page.
    pub urb_ring_ref: u32,
    /// Grant reference of the conn ring page.
    pub conn_ring_ref: u32,
    /// Unbound event channel port offered to the backend.
    pub event_channel: u32,
}

/// Writes the ring details into the frontend directory in one transaction (retried on
/// `EAGAIN`), optionally switching the frontend state in the same transaction.
pub fn publish_rings(
    xs: &mut Xs,
    fe_dir: &str,
    rings: &RingInfo,
    then: Option<XenbusState>,
) -> Result<(), XsError> {
    xs.transaction(|tx| {
        // Fails with ENOENT if the toolstack removed the device meanwhile.
        tx.read(&format!("{fe_dir}/{}", keys::STATE))?;
        let w = |tx: &mut crate::client::Transaction<'_>, k: &str, v: u32| {
            tx.write(&format!("{fe_dir}/{k}"), v.to_string().as_bytes())
        };
        w(tx, keys::URB_RING_REF, rings.urb_ring_ref)?;
        w(tx, keys::CONN_RING_REF, rings.conn_ring_ref)?;
        w(tx, keys::EVENT_CHANNEL, rings.event_channel)?;
        if let Some(state) = then {
            w(tx, keys::STATE, state.as_u32())?;
        }
        Ok(())
    })
}

/// Reads the ring details the frontend published.
pub fn read_rings(xs: &mut impl XsOps, fe_dir: &str) -> Result<RingInfo, XsError> {
    let mut num = |k: &str| -> Result<u32, XsError> {
        let path = format!("{fe_dir}/{k}");
        let v = xs.read_string(&path)?;
        v.trim()
            .parse()
            .map_err(|_| XsError::BadValue { path, value: v })
    };
    Ok(RingInfo {
        urb_ring_ref: num(keys::URB_RING_REF)?,
        conn_ring_ref: num(keys::CONN_RING_REF)?,
        event_channel: num(keys::EVENT_CHANNEL)?,
    })
}

/// Where `xenbus_dev_error` reports a device's error: `dev_dir` is
/// `/local/domain/<N>/<rest>`, the report goes to `/local/domain/<N>/error/<rest>/error`,
/// a node of the reporting domain that libxl removes with the device. `None` for a
/// directory outside a domain's home.
pub fn error_path(dev_dir: &str) -> Option<String> {
    let rest = dev_dir.strip_prefix("/local/domain/")?;
    let (domid, rest) = rest.split_once('/')?;
    domid.parse::<u16>().ok()?;
    (!rest.is_empty()).then(|| format!("/local/domain/{domid}/error/{rest}/error"))
}

/// Reports a device's error as Linux's `xenbus_dev_error` does: `"<errno> <message>"`
/// (errno positive) at [`error_path`].
pub fn dev_error(xs: &mut Xs, dev_dir: &str, errno: i32, message: &str) -> Result<(), XsError> {
    let path = error_path(dev_dir).ok_or(XsError::Xs(XsErrno::EINVAL))?;
    xs.write(&path, format!("{errno} {message}").as_bytes())
}

/// The device's reported error, if any.
pub fn read_dev_error(xs: &mut impl XsOps, dev_dir: &str) -> Result<Option<String>, XsError> {
    let Some(path) = error_path(dev_dir) else {
        return Ok(None);
    };
    Ok(xs
        .try_read(&path)?
        .map(|v| String::from_utf8_lossy(&v).into_owned()))
}

/// Removes the device's reported error (it connected after all); a missing node is fine.
pub fn clear_dev_error(xs: &mut Xs, dev_dir: &str) -> Result<(), XsError> {
    let Some(path) = error_path(dev_dir) else {
        return Ok(());
    };
    match xs.rm(&path) {
        Err(XsError::Xs(XsErrno::ENOENT)) => Ok(()),
        other => other,
    }
}

/// Whether an error means the node (device) does not exist.
pub fn is_gone(e: &XsError) -> bool {
    e.errno() == Some(XsErrno::ENOENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_numbers_match_xenbus_h() {
        for n in 0..=8 {
            let s = XenbusState::from_u32(n).unwrap();
            assert_eq!(s.as_u32(), n);
            assert_eq!(XenbusState::parse(s.to_string().as_bytes()), Some(s));
        }
        assert_eq!(XenbusState::from_u32(9), None);
        assert_eq!(XenbusState::parse(b"4"), Some(XenbusState::Connected));
        assert_eq!(XenbusState::parse(b"x"), None);
        assert_eq!(XenbusState::parse(b""), None);
    }

    #[test]
    fn errors_go_under_the_reporting_domain_like_xenbus_dev_error() {
        assert_eq!(
            error_path("/local/domain/3/device/vusb/0").as_deref(),
            Some("/local/domain/3/error/device/vusb/0/error")
        );
        assert_eq!(error_path("/local/domain/3"), None);
        assert_eq!(error_path("/local/domain/x/device/vusb/0"), None);
        assert_eq!(error_path("/libxl/3/device/vusb/0"), None);
    }
}
