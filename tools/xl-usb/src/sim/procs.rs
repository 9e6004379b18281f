//! The platform's processes: finding their binaries, starting them detached with a log and
//! a pid file under the simulation directory, and stopping exactly those processes.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, test_kill_process, Pid, Signal};

/// Why a process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The binary is nowhere to be found.
    #[error("cannot find the `{name}` binary next to {exe} or in PATH; build it with `cargo build -p {package}` (or `cargo build --workspace`)")]
    Missing {
        /// Binary name.
        name: String,
        /// Package that builds it.
        package: &'static str,
        /// Where we looked first.
        exe: String,
    },
    /// Starting it failed.
    #[error("starting {name}: {source}")]
    Start {
        /// Binary name.
        name: String,
        /// Cause.
        source: std::io::Error,
    },
    /// It did not get ready in time.
    #[error("{name} did not become ready within {secs} s (see {log})")]
    NotReady {
        /// Process name.
        name: String,
        /// Timeout.
        secs: u64,
        /// Its log.
        log: String,
    },
    /// It exited while starting.
    #[error("{name} exited during start-up ({status}); last log lines:\n{tail}")]
    Exited {
        /// Process name.
        name: String,
        /// Exit status.
        status: String,
        /// End of its log.
        tail: String,
    },
}

/// The package building each binary, for the error message.
pub fn package_of(bin: &str) -> &'static str {
    match bin {
        "pvusb-xenstored" => "xenstore-cfg",
        "pvusb-simhyp" => "pvusb-xen",
        "pvusb-backend" => "pvusb-backend",
        "pvusb-frontend" => "pvusb-frontend",
        _ => "xl-usb",
    }
}

/// Finds `name` next to the running executable (cargo's `target/<profile>/`), in the
/// directory above it (when running as a test from `target/<profile>/deps/`), then in PATH.
pub fn find_binary(name: &str) -> Result<PathBuf, SpawnError> {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(d) = std::env::var_os("PVUSB_BIN_DIR") {
        dirs.push(PathBuf::from(d));
    }
    if let Some(d) = exe.parent() {
        dirs.push(d.to_path_buf());
        if let Some(up) = d.parent() {
            dirs.push(up.to_path_buf());
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| SpawnError::Missing {
            name: name.to_owned(),
            package: package_of(name),
            exe: exe.display().to_string(),
        })
}

/// `<dir>/run/<name>.pid`.
pub fn pid_file(dir: &Path, name: &str) -> PathBuf {
    dir.join("run").join(format!("{name}.pid"))
}

/// `<dir>/logs/<name>.log`.
pub fn log_file(dir: &Path, name: &str) -> PathBuf {
    dir.join("logs").join(format!("{name}.log"))
}

/// A started process.
#[derive(Debug)]
pub struct Proc {
    /// Short name (also its pid and log file names).
    pub name: String,
    /// The child (we are its parent while we run).
    pub child: Child,
    /// Its log.
    pub log: PathBuf,
}

/// Starts `bin args...` in its own process group (so a terminal's Ctrl-C reaches only
/// us, and we tear it down in order), output to `<dir>/logs/<name>.log`, pid recorded.
pub fn spawn(dir: &Path, name: &str, bin: &str, args: &[String]) -> Result<Proc, SpawnError> {
    let path = find_binary(bin)?;
    let start = |source| SpawnError::Start {
        name: name.to_owned(),
        source,
    };
    for sub in ["run", "logs"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(start)?;
    }
    let log = log_file(dir, name);
    let out = File::create(&log).map_err(start)?;
    let err = out.try_clone().map_err(start)?;
    let child = Command::new(&path)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(start)?;
    std::fs::write(pid_file(dir, name), format!("{}\n", child.id())).map_err(start)?;
    tracing::info!(name, pid = child.id(), bin = %path.display(), "started");
    Ok(Proc {
        name: name.to_owned(),
        child,
        log,
    })
}

/// Last lines of a log, for error messages.
pub fn tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Proc {
    /// Waits until `ready()` holds, failing if the process exits or `timeout` passes.
    pub fn wait_ready(
        &mut self,
        timeout: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), SpawnError> {
        let deadline = Instant::now() + timeout;
        loop {
            if ready() {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(SpawnError::Exited {
                    name: self.name.clone(),
                    status: status.to_string(),
                    tail: tail(&self.log, 10),
                });
            }
            if Instant::now() >= deadline {
                return Err(SpawnError::NotReady {
                    name: self.name.clone(),
                    secs: timeout.as_secs(),
                    log: self.log.display().to_string(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; reaps it.
    pub fn stop(&mut self, grace: Duration) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        if let Some(pid) = i32::try_from(self.child.id()).ok().and_then(Pid::from_raw) {
            let _ = kill_process(pid, Signal::TERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pid recorded for `name`, if that process still runs and is ours (its command line
/// mentions `dir`, so a recycled pid is never signalled).
pub fn recorded_pid(dir: &Path, name: &str) -> Option<Pid> {
    let text = std::fs::read_to_string(pid_file(dir, name)).ok()?;
    let pid = Pid::from_raw(text.trim().parse().ok()?)?;
    test_kill_process(pid).ok()?;
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", pid.as_raw_nonzero())).ok()?;
    let needle = dir.as_os_str().as_encoded_bytes();
    cmdline
        .windows(needle.len().max(1))
        .any(|w| w == needle)
        .then_some(pid)
}

/// Stops the recorded process `name` (SIGTERM, SIGKILL after `grace`) and removes its
/// pid file. Returns whether it was running.
pub fn stop_recorded(dir: &Path, name: &str, grace: Duration) -> bool {
    let running = match recorded_pid(dir, name) {
        Some(pid) => {
            let _ = kill_process(pid, Signal::TERM);
            let deadline = Instant::now() + grace;
            while test_kill_process(pid).is_ok() && Instant::now() < deadline {
                // Not our child (an earlier `sim up` started it): poll until it is gone.
                std::thread::sleep(Duration::from_millis(20));
            }
            if test_kill_process(pid).is_ok() {
                let _ = kill_process(pid, Signal::KILL);
            }
            true
        }
        None => false,
    };
    let _ = std::fs::remove_file(pid_file(dir, name));
    running
}
