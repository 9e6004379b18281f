//! The `pvusb-xenstored` binary: documented `--help`, serves, and on SIGTERM exits cleanly
//! removing every socket it created.

use std::process::Command;
use std::time::{Duration, Instant};

use xenstore_cfg::{Xs, XsOps};

fn wait_for(path: &std::path::Path, present: bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while path.exists() != present {
        assert!(
            Instant::now() < deadline,
            "{} never {}",
            path.display(),
            if present { "appeared" } else { "went away" }
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn help_is_documented() {
    let out = Command::new(env!("CARGO_BIN_EXE_pvusb-xenstored"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("--dir <DIR>"), "{text}");
    assert!(text.contains("XENSTORED_PATH"), "{text}");
}

#[test]
fn serves_and_shuts_down_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pvusb-xenstored"))
        .arg("--dir")
        .arg(dir.path())
        .spawn()
        .unwrap();
    let sock = dir.path().join("socket");
    wait_for(&sock, true);
    let mut xs = Xs::connect(&sock).unwrap();
    xs.write("/x", b"1").unwrap();
    xs.introduce(2, 0, 0).unwrap();
    let dom2 = dir.path().join("domains/2/xenstore");
    wait_for(&dom2, true);
    assert_eq!(
        Xs::connect(&dom2).unwrap().read_string("domid").unwrap(),
        "2"
    );
    // A second daemon on the same directory refuses to start.
    let second = Command::new(env!("CARGO_BIN_EXE_pvusb-xenstored"))
        .arg("--dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("already listening"));

    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!sock.exists());
    assert!(!dom2.exists());
}

#[test]
fn library_daemon_removes_its_sockets_even_if_never_run() {
    use xenstore_cfg::daemon::{Config, Daemon};
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::bind(Config::new(dir.path())).unwrap();
    assert!(dir.path().join("socket").exists());
    drop(d);
    assert!(!dir.path().join("socket").exists());
    // A stale socket left by a crashed daemon does not prevent a restart.
    let stale = std::os::unix::net::UnixListener::bind(dir.path().join("socket")).unwrap();
    drop(stale);
    let h = xenstore_cfg::daemon::spawn(dir.path()).unwrap();
    Xs::connect(h.socket()).unwrap().write("/ok", b"1").unwrap();
    h.stop().unwrap();
    assert!(!dir.path().join("socket").exists());
}
