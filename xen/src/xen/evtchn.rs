//! `/dev/xen/evtchn`: one open file per channel, so each port has its own pollable fd.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::OFlags;
use rustix::io::Errno;

use super::abi::{self, ArgBuf, EvtchnBindInterdomain, EvtchnU32};
use super::{open_device, XenPlatform, EVTCHN};
use crate::{DomId, EventChannel, EventChannels, EvtchnError, EvtchnPort};

/// Finds `port` in the bytes a read of /dev/xen/evtchn returned (an array of u32 ports).
pub fn fired(bytes: &[u8], port: EvtchnPort) -> bool {
    bytes.chunks_exact(4).any(|c| c == port.0.to_ne_bytes())
}

/// Maps the errno of a bind ioctl: EINVAL/ENOENT/EBUSY is Xen refusing the port.
pub fn bind_error(errno: Errno, remote: DomId, port: EvtchnPort) -> EvtchnError {
    match errno {
        Errno::INVAL | Errno::NOENT | Errno::BUSY => EvtchnError::NotBindable { remote, port },
        Errno::SRCH => EvtchnError::NoSuchDomain(remote),
        errno => EvtchnError::Os {
            op: "IOCTL_EVTCHN_BIND_*",
            errno,
        },
    }
}

/// One port bound on its own /dev/xen/evtchn file.
#[derive(Debug)]
struct XenChannel {
    fd: OwnedFd,
    port: EvtchnPort,
}

fn open() -> Result<OwnedFd, EvtchnError> {
    Ok(open_device(EVTCHN, "evtchn", OFlags::NONBLOCK)?)
}

impl EventChannels for XenPlatform {
    fn alloc_unbound(&self, remote: DomId) -> Result<Box<dyn EventChannel>, EvtchnError> {
        let fd = open()?;
        let mut buf = ArgBuf::with(
            &EvtchnU32 {
                value: u32::from(remote.0),
            },
            &[],
            0,
        );
        let port = abi::call(fd.as_fd(), abi::IOCTL_EVTCHN_BIND_UNBOUND_PORT, &mut buf)
            .map_err(|e| bind_error(e, remote, EvtchnPort(0)))?;
        Ok(Box::new(XenChannel {
            fd,
            port: EvtchnPort(port),
        }))
    }

    fn bind_interdomain(
        &self,
        remote: DomId,
        remote_port: EvtchnPort,
    ) -> Result<Box<dyn EventChannel>, EvtchnError> {
        let fd = open()?;
        let arg = EvtchnBindInterdomain {
            remote_domain: u32::from(remote.0),
            remote_port: remote_port.0,
        };
        let mut buf = ArgBuf::with(&arg, &[], 0);
        let port = abi::call(fd.as_fd(), abi::IOCTL_EVTCHN_BIND_INTERDOMAIN, &mut buf)
            .map_err(|e| bind_error(e, remote, remote_port))?;
        Ok(Box::new(XenChannel {
            fd,
            port: EvtchnPort(port),
        }))
    }
}

impl AsFd for XenChannel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl EventChannel for XenChannel {
    fn port(&self) -> EvtchnPort {
        self.port
    }

    fn notify(&self) -> Result<(), EvtchnError> {
        let mut buf = ArgBuf::with(&EvtchnU32 { value: self.port.0 }, &[], 0);
        abi::call(self.fd.as_fd(), abi::IOCTL_EVTCHN_NOTIFY, &mut buf)
            .map(|_| ())
            .map_err(|errno| EvtchnError::Os {
                op: "IOCTL_EVTCHN_NOTIFY",
                errno,
            })
    }

    fn take_pending(&self) -> Result<bool, EvtchnError> {
        let mut buf = [0u8; 64];
        match rustix::io::read(&self.fd, &mut buf) {
            Ok(n) => Ok(fired(buf.get(..n).unwrap_or_default(), self.port)),
            Err(Errno::AGAIN) => Ok(false),
            Err(Errno::FBIG) => Err(EvtchnError::Overflow),
            Err(errno) => Err(EvtchnError::Os {
                op: "read /dev/xen/evtchn",
                errno,
            }),
        }
    }

    fn unmask(&self) -> Result<(), EvtchnError> {
        rustix::io::write(&self.fd, &self.port.0.to_ne_bytes())
            .map(|_| ())
            .map_err(|errno| EvtchnError::Os {
                op: "write /dev/xen/evtchn (unmask)",
                errno,
            })
    }
}

impl Drop for XenChannel {
    fn drop(&mut self) {
        // Closing the file unbinds too; the explicit unbind reports a failure.
        let mut buf = ArgBuf::with(&EvtchnU32 { value: self.port.0 }, &[], 0);
        if let Err(e) = abi::call(self.fd.as_fd(), abi::IOCTL_EVTCHN_UNBIND, &mut buf) {
            tracing::debug!(port = self.port.0, error = %e, "IOCTL_EVTCHN_UNBIND failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fired_finds_the_port_among_others() {
        let mut bytes = Vec::new();
        for p in [3u32, 7, 9] {
            bytes.extend_from_slice(&p.to_ne_bytes());
        }
        assert!(fired(&bytes, EvtchnPort(7)));
        assert!(!fired(&bytes, EvtchnPort(8)));
        assert!(
            !fired(&bytes[..3], EvtchnPort(3)),
            "a partial port is not a port"
        );
    }

    #[test]
    fn bind_errors_are_typed() {
        let r = DomId(3);
        let p = EvtchnPort(5);
        assert!(matches!(
            bind_error(Errno::INVAL, r, p),
            EvtchnError::NotBindable { .. }
        ));
        assert!(matches!(
            bind_error(Errno::SRCH, r, p),
            EvtchnError::NoSuchDomain(DomId(3))
        ));
        assert!(matches!(
            bind_error(Errno::NOMEM, r, p),
            EvtchnError::Os { .. }
        ));
    }

    #[test]
    fn binding_without_xen_is_a_device_error() {
        if std::path::Path::new(EVTCHN).exists() {
            return;
        }
        let e = XenPlatform::new().alloc_unbound(DomId(0)).unwrap_err();
        assert!(
            matches!(e, EvtchnError::Device(crate::DeviceError::Missing { .. })),
            "{e:?}"
        );
    }
}
