//! The guest's production transport, reproduced: `pvusb-frontend --vhci DIR` attaches each
//! device by writing `port sockfd devid speed` to vhci_hcd's `attach`; here DIR is a
//! directory shaped like vhci_hcd's sysfs files, and the socket the kernel would take is
//! fetched from the frontend with `pidfd_getfd` (allowed: the frontend is our child). The
//! client then speaks USB/IP over that AF_UNIX socketpair exactly as vhci_hcd does.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::process::{pidfd_getfd, pidfd_open, Pid, PidfdFlags, PidfdGetfdFlags};

use crate::wait;

/// vhci_hcd's `status` with every port free: 8 high-speed then 8 SuperSpeed ports.
fn status() -> String {
    let mut s = String::from("hub port sta spd dev      sockfd local_busid\n");
    for port in 0..16 {
        let hub = if port < 8 { "hs" } else { "ss" };
        s.push_str(&format!("{hub}  {port:04} 004 000 00000000 000000 0-0\n"));
    }
    s
}

/// A fake `/sys/devices/platform/vhci_hcd.0` under `root`.
pub fn mimic(root: &Path) -> PathBuf {
    let dir = root.join("sys/devices/platform/vhci_hcd.0");
    std::fs::create_dir_all(&dir).expect("creating the vhci directory");
    for (file, text) in [
        ("nports", "16\n".to_string()),
        ("status", status()),
        ("attach", String::new()),
        ("detach", String::new()),
    ] {
        std::fs::write(dir.join(file), text).expect("writing a vhci file");
    }
    dir
}

/// What the frontend wrote to `attach`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attach {
    /// vhci port.
    pub port: u32,
    /// The socket's descriptor number in the frontend.
    pub sockfd: i32,
    /// `busnum << 16 | devnum`.
    pub devid: u32,
    /// USB speed code.
    pub speed: u32,
}

/// Waits for the frontend (process `pid`) to attach a device at `dir` and takes its socket.
pub fn take_attached(dir: &Path, pid: u32, logs: impl Fn() -> String) -> (Attach, UnixStream) {
    let attach = wait::until(
        Duration::from_secs(30),
        "the frontend to attach a device to vhci",
        logs,
        || {
            let text = std::fs::read_to_string(dir.join("attach")).ok()?;
            let f: Vec<u32> = text
                .split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect();
            match f[..] {
                [port, sockfd, devid, speed] => Some(Attach {
                    port,
                    sockfd: i32::try_from(sockfd).ok()?,
                    devid,
                    speed,
                }),
                _ => None,
            }
        },
    );
    let pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .expect("frontend pid");
    let pidfd = pidfd_open(pid, PidfdFlags::empty()).expect("pidfd_open of the frontend");
    let fd = pidfd_getfd(&pidfd, attach.sockfd, PidfdGetfdFlags::empty())
        .expect("pidfd_getfd of the attached socket");
    (attach, UnixStream::from(fd))
}
