//! The guest kernel's vhci_hcd, driven through sysfs (linux `drivers/usb/usbip/vhci_sysfs.c`):
//! find the controller, read its ports, attach a socket to a free port, detach.
//!
//! Every attribute lives in the first controller's directory (`vhci_hcd.0`): `nports`
//! counts the ports of all controllers, `status` lists controller 0 and `status.N`
//! controller N, and port numbers in `attach`/`detach` are global.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketFlags, SocketType};

use crate::usbip::Speed;

/// `VDEV_ST_NULL`: the port is free (linux `include/uapi/linux/usbip.h`).
pub const VDEV_ST_NULL: u32 = 4;
/// `VDEV_ST_NOTASSIGNED`: attached, the device has no address yet.
pub const VDEV_ST_NOTASSIGNED: u32 = 5;
/// `VDEV_ST_USED`: attached and in use.
pub const VDEV_ST_USED: u32 = 6;
/// `VDEV_ST_ERROR`: the connection failed; the port is being torn down.
pub const VDEV_ST_ERROR: u32 = 7;

/// Which root hub of a controller a port belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hub {
    /// The USB 2 hub ("hs"): low, full and high speed devices.
    Hs,
    /// The USB 3 hub ("ss"): SuperSpeed and faster.
    Ss,
}

impl Hub {
    /// The hub a device of `speed` must be attached to.
    pub fn for_speed(speed: Speed) -> Hub {
        if speed.is_superspeed() {
            Hub::Ss
        } else {
            Hub::Hs
        }
    }
}

/// One row of a `status` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortStatus {
    /// The port's hub.
    pub hub: Hub,
    /// Global port number, as `attach` and `detach` take it.
    pub port: u32,
    /// `VDEV_ST_*`.
    pub status: u32,
    /// `enum usb_device_speed` of the attached device (0 when free).
    pub speed: u32,
    /// Devid given at attach (0 when free).
    pub devid: u32,
    /// The socket's fd number in the attaching process (0 when free).
    pub sockfd: u32,
    /// Bus id of the device in this guest ("0-0" when free).
    pub local_busid: String,
}

impl PortStatus {
    /// Whether a device can be attached here.
    pub fn is_free(&self) -> bool {
        self.status == VDEV_ST_NULL
    }
}

/// Failure to find or read the controller.
#[derive(Debug, thiserror::Error)]
pub enum VhciError {
    /// No `vhci_hcd.0` below the searched root (module `vhci-hcd` not loaded?).
    #[error("no vhci_hcd.0 found under {0} (is the vhci-hcd module loaded?)")]
    NotFound(PathBuf),
    /// Reading a sysfs attribute failed.
    #[error("reading {path}: {source}")]
    Read {
        /// The attribute.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// An attribute's content is not in the kernel's format.
    #[error("{path} line {line}: cannot parse {text:?}")]
    Parse {
        /// The attribute.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The offending line.
        text: String,
    },
    /// Every port of the hub the device needs is taken.
    #[error("no free {0:?} port")]
    NoFreePort(Hub),
}

/// Why `attach` refused (errno of the write, per `vhci_sysfs.c:attach_store`).
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// EBUSY: the port is already in use.
    #[error("vhci port {0} is busy")]
    PortBusy(u32),
    /// EINVAL: bad port, speed or socket (the socket must be SOCK_STREAM).
    #[error("vhci rejected attach of port {0} (bad port, speed or socket)")]
    Invalid(u32),
    /// EAGAIN: the controller is not ready yet; retry.
    #[error("vhci not ready for port {0}; retry")]
    NotReady(u32),
    /// Any other failure of the write.
    #[error("writing {path}: {source}")]
    Io {
        /// The attribute.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

/// Why `detach` refused.
#[derive(Debug, thiserror::Error)]
pub enum DetachError {
    /// EINVAL: no such port, or nothing attached to it.
    #[error("vhci port {0} is not attached")]
    NotAttached(u32),
    /// Any other failure of the write.
    #[error("writing {path}: {source}")]
    Io {
        /// The attribute.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

/// Parses a `status` attribute: an optional header line (`hub port sta spd dev sockfd
/// local_busid`), then rows `hs  %04u %03u %03u %08x %06u %s`.
pub fn parse_status(text: &str) -> Result<Vec<PortStatus>, (usize, String)> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            [] => continue,
            ["hub", ..] => continue,
            [hub, port, status, speed, devid, sockfd, busid] => {
                let hub = match *hub {
                    "hs" => Hub::Hs,
                    "ss" => Hub::Ss,
                    _ => return Err((i + 1, line.to_owned())),
                };
                let row = (|| {
                    Some(PortStatus {
                        hub,
                        port: port.parse().ok()?,
                        status: status.parse().ok()?,
                        speed: speed.parse().ok()?,
                        devid: u32::from_str_radix(devid, 16).ok()?,
                        sockfd: sockfd.parse().ok()?,
                        local_busid: (*busid).to_owned(),
                    })
                })();
                rows.push(row.ok_or_else(|| (i + 1, line.to_owned()))?);
            }
            _ => return Err((i + 1, line.to_owned())),
        }
    }
    Ok(rows)
}

/// A connected pair of AF_UNIX stream sockets (close-on-exec): one end goes to vhci's
/// `attach`, the other is the frontend's end of the USB/IP connection.
pub fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(io::Error::from)
}

fn errno(e: &io::Error) -> Option<Errno> {
    e.raw_os_error().map(Errno::from_raw_os_error)
}

/// The vhci_hcd controller directory (`.../vhci_hcd.0`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vhci {
    dir: PathBuf,
}

impl Vhci {
    /// Finds `/sys/devices/*/vhci_hcd.0` (platform device today, faux device in newer
    /// kernels).
    pub fn find() -> Result<Self, VhciError> {
        Self::find_in(Path::new("/sys/devices"))
    }

    /// Finds `<root>/*/vhci_hcd.0`, taking the first in name order.
    pub fn find_in(root: &Path) -> Result<Self, VhciError> {
        let mut found: Vec<PathBuf> = fs::read_dir(root)
            .map_err(|source| VhciError::Read {
                path: root.to_owned(),
                source,
            })?
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("vhci_hcd.0"))
            .filter(|p| p.join("attach").exists())
            .collect();
        found.sort();
        found
            .into_iter()
            .next()
            .map(|dir| Vhci { dir })
            .ok_or_else(|| VhciError::NotFound(root.to_owned()))
    }

    /// Uses `dir` as the controller directory (`--vhci <dir>`).
    pub fn at(dir: impl Into<PathBuf>) -> Result<Self, VhciError> {
        let dir = dir.into();
        if !dir.join("attach").exists() {
            return Err(VhciError::NotFound(dir));
        }
        Ok(Vhci { dir })
    }

    /// The controller directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn read(&self, name: &str) -> Result<String, VhciError> {
        let path = self.dir.join(name);
        fs::read_to_string(&path).map_err(|source| VhciError::Read { path, source })
    }

    /// Total ports of all controllers.
    pub fn nports(&self) -> Result<u32, VhciError> {
        let text = self.read("nports")?;
        text.trim().parse().map_err(|_| VhciError::Parse {
            path: self.dir.join("nports"),
            line: 1,
            text: text.trim().to_owned(),
        })
    }

    /// Every port of every controller: `status`, then `status.1`, `status.2`, ... while
    /// they exist.
    pub fn status(&self) -> Result<Vec<PortStatus>, VhciError> {
        let mut rows = Vec::new();
        for n in 0u32.. {
            let name = if n == 0 {
                "status".to_owned()
            } else {
                format!("status.{n}")
            };
            let path = self.dir.join(&name);
            if n > 0 && !path.exists() {
                break;
            }
            let text = self.read(&name)?;
            let parsed = parse_status(&text).map_err(|(line, text)| VhciError::Parse {
                path,
                line,
                text,
            })?;
            rows.extend(parsed);
        }
        Ok(rows)
    }

    /// The status of one global port, if it exists.
    pub fn port_status(&self, port: u32) -> Result<Option<PortStatus>, VhciError> {
        Ok(self.status()?.into_iter().find(|r| r.port == port))
    }

    /// The lowest free port on the hub a device of `speed` needs (as
    /// `usbip_vhci_get_free_port` picks it).
    pub fn free_port(&self, speed: Speed) -> Result<u32, VhciError> {
        let hub = Hub::for_speed(speed);
        self.status()?
            .into_iter()
            .filter(|r| r.hub == hub && r.is_free())
            .map(|r| r.port)
            .min()
            .ok_or(VhciError::NoFreePort(hub))
    }

    /// One write of `text` to an attribute, as `echo > attr` does: sysfs stores act on
    /// each write call, so it must not be split.
    fn write(&self, name: &str, text: &str) -> Result<(), (PathBuf, io::Error)> {
        let path = self.dir.join(name);
        let r = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .and_then(|mut f| f.write(text.as_bytes()));
        match r {
            Ok(n) if n == text.len() => Ok(()),
            Ok(n) => Err((
                path,
                io::Error::new(io::ErrorKind::WriteZero, format!("short write: {n} bytes")),
            )),
            Err(e) => Err((path, e)),
        }
    }

    /// Hands `sock` (a SOCK_STREAM socket of this process) to vhci as the USB/IP connection
    /// of a device `devid` at `speed` on `port`. The kernel takes its own reference, so the
    /// caller may close `sock` afterwards; vhci then sends CMD_SUBMITs with `devid`.
    pub fn attach(
        &self,
        port: u32,
        sock: BorrowedFd<'_>,
        devid: u32,
        speed: Speed,
    ) -> Result<(), AttachError> {
        let text = format!(
            "{} {} {} {}",
            port,
            sock.as_raw_fd(),
            devid,
            speed.to_wire()
        );
        self.write("attach", &text)
            .map_err(|(path, e)| attach_error(port, path, e))
    }

    /// Unplugs whatever is attached to `port`; vhci shuts the socket down.
    pub fn detach(&self, port: u32) -> Result<(), DetachError> {
        self.write("detach", &port.to_string())
            .map_err(|(path, e)| detach_error(port, path, e))
    }
}

fn attach_error(port: u32, path: PathBuf, e: io::Error) -> AttachError {
    match errno(&e) {
        Some(Errno::BUSY) => AttachError::PortBusy(port),
        Some(Errno::INVAL) => AttachError::Invalid(port),
        Some(Errno::AGAIN) => AttachError::NotReady(port),
        _ => AttachError::Io { path, source: e },
    }
}

fn detach_error(port: u32, path: PathBuf, e: io::Error) -> DetachError {
    match errno(&e) {
        Some(Errno::INVAL) => DetachError::NotAttached(port),
        _ => DetachError::Io { path, source: e },
    }
}

#[cfg(test)]
mod tests;
