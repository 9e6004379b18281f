//! Hotplug events (device added/removed, by bus id): inotify on the simulated tree, kernel
//! uevents over netlink on a real host. Both give a pollable fd (POLLIN) and the same events.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::inotify;

use super::busid::{check_busid, UsbRoots};

/// A device appeared or went away.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HotplugEvent {
    /// The device is there and configured: it may be claimed.
    Add(String),
    /// The device is gone.
    Remove(String),
}

/// Why a hotplug monitor could not be set up or read.
#[derive(Debug, thiserror::Error)]
pub enum HotplugError {
    #[error("watching {path}: {source}")]
    Watch {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("netlink uevent socket: {0}")]
    Netlink(std::io::Error),
    #[error("reading events: {0}")]
    Read(std::io::Error),
}

/// Source of hotplug events: poll its fd for readability, then call `read_events`.
pub trait HotplugMonitor: Send + std::fmt::Debug {
    /// Becomes readable when events are pending.
    fn fd(&self) -> BorrowedFd<'_>;
    /// Every pending event, without blocking (empty when none).
    fn read_events(&mut self) -> Result<Vec<HotplugEvent>, HotplugError>;
}

/// Watches `<sysfs>/bus/usb/devices` of a (simulated) tree with inotify. The sim bus adds a
/// device by renaming its finished directory in and removes it by renaming it out, so one
/// MOVED_TO / MOVED_FROM per plug / unplug; CREATE / DELETE are mapped the same way.
#[derive(Debug)]
pub struct InotifyMonitor {
    fd: OwnedFd,
}

impl InotifyMonitor {
    /// Starts watching; creates the directory if needed. Devices already present produce no
    /// event: list them with [`super::list_busids`] after creating the monitor.
    pub fn new(roots: &UsbRoots) -> Result<Self, HotplugError> {
        let path = roots.devices_dir();
        let err = |source: std::io::Error| HotplugError::Watch {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&path).map_err(err)?;
        let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)
            .map_err(|e| err(e.into()))?;
        let mask = inotify::WatchFlags::CREATE
            | inotify::WatchFlags::DELETE
            | inotify::WatchFlags::MOVED_TO
            | inotify::WatchFlags::MOVED_FROM
            | inotify::WatchFlags::ONLYDIR;
        inotify::add_watch(&fd, &path, mask).map_err(|e| err(e.into()))?;
        Ok(InotifyMonitor { fd })
    }
}

impl HotplugMonitor for InotifyMonitor {
    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn read_events(&mut self) -> Result<Vec<HotplugEvent>, HotplugError> {
        let mut out = Vec::new();
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
        let mut reader = inotify::Reader::new(&self.fd, &mut buf);
        loop {
            let ev = match reader.next() {
                Ok(ev) => ev,
                Err(rustix::io::Errno::AGAIN) => break,
                Err(e) => return Err(HotplugError::Read(e.into())),
            };
            let Some(name) = ev.file_name().and_then(|n| n.to_str().ok()) else {
                continue;
            };
            if check_busid(name).is_err() {
                continue;
            }
            let flags = ev.events();
            if flags.intersects(inotify::ReadFlags::CREATE | inotify::ReadFlags::MOVED_TO) {
                out.push(HotplugEvent::Add(name.to_string()));
            } else if flags.intersects(inotify::ReadFlags::DELETE | inotify::ReadFlags::MOVED_FROM)
            {
                out.push(HotplugEvent::Remove(name.to_string()));
            }
        }
        Ok(out)
    }
}

/// Kernel uevents (NETLINK_KOBJECT_UEVENT, multicast group 1) filtered to USB devices.
#[derive(Debug)]
pub struct UeventMonitor {
    fd: OwnedFd,
}

impl UeventMonitor {
    /// Opens and binds the uevent socket.
    pub fn new() -> Result<Self, HotplugError> {
        use rustix::net::{netlink, socket_with, AddressFamily, SocketFlags, SocketType};
        let fd = socket_with(
            AddressFamily::NETLINK,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            Some(netlink::KOBJECT_UEVENT),
        )
        .map_err(|e| HotplugError::Netlink(e.into()))?;
        rustix::net::bind(&fd, &netlink::SocketAddrNetlink::new(0, 1))
            .map_err(|e| HotplugError::Netlink(e.into()))?;
        Ok(UeventMonitor { fd })
    }
}

impl HotplugMonitor for UeventMonitor {
    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn read_events(&mut self) -> Result<Vec<HotplugEvent>, HotplugError> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 8192];
        loop {
            match rustix::net::recv(&self.fd, &mut buf[..], rustix::net::RecvFlags::DONTWAIT) {
                Ok((n, _)) => {
                    if let Some(ev) = buf.get(..n).and_then(parse_uevent) {
                        out.push(ev);
                    }
                }
                Err(rustix::io::Errno::AGAIN) => break,
                Err(rustix::io::Errno::NOBUFS) => continue, // overrun: events lost, keep going
                Err(e) => return Err(HotplugError::Read(e.into())),
            }
        }
        Ok(out)
    }
}

/// Parses one kernel uevent ("bind@/devices/...\0ACTION=bind\0DEVPATH=...\0SUBSYSTEM=usb\0
/// DEVTYPE=usb_device\0..."). `None` for anything but a USB device becoming ready or going.
///
/// A device is ready when the kernel has bound its `usb` driver (`bind`, Linux 4.14 and
/// later), not at `add`: `add` is sent from `device_add` before the device is configured, so a
/// device opened then has no interfaces to claim yet, and the host's interface drivers
/// (usb-storage, ...) bind a moment later and drive it next to the guest. By `bind` the
/// configuration is set and those drivers are bound, so claiming disconnects them as it
/// does for a device attached long after it was plugged.
pub fn parse_uevent(msg: &[u8]) -> Option<HotplugEvent> {
    let (mut action, mut devpath, mut subsystem, mut devtype) = (None, None, None, None);
    for field in msg.split(|&b| b == 0) {
        let Some(eq) = field.iter().position(|&b| b == b'=') else {
            continue;
        };
        let (k, v) = (&field[..eq], &field[eq + 1..]);
        match k {
            b"ACTION" => action = Some(v),
            b"DEVPATH" => devpath = Some(v),
            b"SUBSYSTEM" => subsystem = Some(v),
            b"DEVTYPE" => devtype = Some(v),
            _ => {}
        }
    }
    if subsystem? != b"usb" || devtype? != b"usb_device" {
        return None;
    }
    let devpath = devpath?;
    let last = devpath.rsplit(|&b| b == b'/').next()?;
    let busid = OsStr::from_bytes(last).to_str()?;
    check_busid(busid).ok()?;
    match action? {
        b"bind" => Some(HotplugEvent::Add(busid.to_string())),
        b"remove" => Some(HotplugEvent::Remove(busid.to_string())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_usb_device_uevents_only() {
        let bind = b"bind@/devices/pci0000:00/0000:00:1d.0/usb3/3-1/3-1.5\0ACTION=bind\0\
DEVPATH=/devices/pci0000:00/0000:00:1d.0/usb3/3-1/3-1.5\0SUBSYSTEM=usb\0DEVTYPE=usb_device\0\
DRIVER=usb\0SEQNUM=2\0";
        assert_eq!(parse_uevent(bind), Some(HotplugEvent::Add("3-1.5".into())));
        // Not yet configured at `add`: the device is taken at its `bind`.
        let add = b"add@/devices/usb1/1-2\0ACTION=add\0DEVPATH=/devices/usb1/1-2\0\
SUBSYSTEM=usb\0DEVTYPE=usb_device\0SEQNUM=1\0";
        assert_eq!(parse_uevent(add), None);
        let rm = b"remove@/x\0ACTION=remove\0DEVPATH=/devices/usb1/1-2\0SUBSYSTEM=usb\0DEVTYPE=usb_device\0";
        assert_eq!(parse_uevent(rm), Some(HotplugEvent::Remove("1-2".into())));
        let intf = b"ACTION=bind\0DEVPATH=/devices/usb1/1-2/1-2:1.0\0SUBSYSTEM=usb\0DEVTYPE=usb_interface\0";
        assert_eq!(parse_uevent(intf), None);
        let roothub =
            b"ACTION=bind\0DEVPATH=/devices/pci/usb1\0SUBSYSTEM=usb\0DEVTYPE=usb_device\0";
        assert_eq!(parse_uevent(roothub), None);
        let unbind =
            b"ACTION=unbind\0DEVPATH=/devices/usb1/1-2\0SUBSYSTEM=usb\0DEVTYPE=usb_device\0";
        assert_eq!(parse_uevent(unbind), None);
        assert_eq!(parse_uevent(b"garbage"), None);
    }

    proptest::proptest! {
        /// Whatever arrives on the socket: no panic, and only a valid bus id comes out.
        #[test]
        fn any_message_parses_to_nothing_or_a_valid_busid(
            fields in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::collection::vec(proptest::num::u8::ANY, 0..24),
                    proptest::sample::select(vec![
                        b"ACTION=bind".to_vec(), b"ACTION=remove".to_vec(),
                        b"SUBSYSTEM=usb".to_vec(), b"DEVTYPE=usb_device".to_vec(),
                        b"DEVPATH=/devices/usb1/1-2".to_vec(), b"DEVPATH=".to_vec(),
                        b"DEVPATH=/a/\xff\xfe".to_vec(), b"=".to_vec(),
                    ]),
                ],
                0..8,
            )
        ) {
            let msg = fields.join(&0u8);
            if let Some(HotplugEvent::Add(b) | HotplugEvent::Remove(b)) = parse_uevent(&msg) {
                proptest::prop_assert!(check_busid(&b).is_ok(), "{b:?}");
            }
        }
    }

    #[test]
    fn inotify_sees_rename_in_and_out() {
        let tmp = tempfile::tempdir().unwrap();
        let roots = UsbRoots::sim(tmp.path());
        let mut mon = InotifyMonitor::new(&roots).unwrap();
        assert!(mon.read_events().unwrap().is_empty());
        let staging = tmp.path().join("staging");
        std::fs::create_dir(&staging).unwrap();
        std::fs::rename(&staging, roots.devices_dir().join("1-1")).unwrap();
        std::fs::create_dir(roots.devices_dir().join("1-1:1.0")).unwrap();
        std::fs::rename(roots.devices_dir().join("1-1"), &staging).unwrap();
        assert_eq!(
            mon.read_events().unwrap(),
            vec![
                HotplugEvent::Add("1-1".into()),
                HotplugEvent::Remove("1-1".into())
            ]
        );
    }
}
