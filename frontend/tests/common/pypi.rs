//! The PyPI `usbip` 0.7.0 client (a USB/IP implementation we did not write), in a venv
//! created once under Cargo's target tmpdir (pip reaches PyPI once; later runs reuse it).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The venv's python, or `None` when `PVUSB_NO_PYPI=1` (then the caller skips). Panics if
/// the venv cannot be built.
pub fn python() -> Option<PathBuf> {
    if std::env::var("PVUSB_NO_PYPI").as_deref() == Ok("1") {
        println!("skipped: PVUSB_NO_PYPI=1");
        return None;
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pypi-usbip-0.7.0");
    let python = dir.join("bin/python");
    if dir.join("done").exists() {
        return Some(python);
    }
    let build = || -> Result<(), String> {
        let _ = std::fs::remove_dir_all(&dir);
        run(Command::new("python3").args(["-m", "venv"]).arg(&dir))?;
        run(Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "-q",
            "usbip==0.7.0",
        ]))?;
        std::fs::write(dir.join("done"), "usbip==0.7.0\n").map_err(|e| e.to_string())
    };
    if let Err(e) = build() {
        panic!("cannot set up the PyPI usbip 0.7.0 test peer (needs python3-venv and PyPI access; set PVUSB_NO_PYPI=1 to skip):\n{e}");
    }
    Some(python)
}

/// Runs `script` with `port` as its argument under the venv's `python`, and panics unless
/// it exits 0 within 30 s having printed `marker`; `logs` adds the daemons' logs to the
/// failure message.
pub fn run_client(python: &Path, script: &str, port: u16, marker: &str, logs: impl Fn() -> String) {
    let mut child = Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("PyPI usbip client did not finish in 30 s\n{}", logs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(marker),
        "client failed ({}):\n{stdout}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        logs()
    );
}
