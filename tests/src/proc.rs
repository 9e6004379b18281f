//! Child processes that die with their guard: a failing test never leaves daemons behind.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};

/// A running daemon with its log file; killed (SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct Daemon {
    /// Short name ("backend", "frontend-1").
    pub name: String,
    child: Option<Child>,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `bin args…` with stderr appended to `<dir>/<name>.log`.
    pub fn spawn(dir: &Path, name: &str, bin: &Path, args: &[String]) -> Daemon {
        Self::spawn_env(dir, name, bin, args, &[])
    }

    /// [`Daemon::spawn`] with `env` added to the inherited environment.
    pub fn spawn_env(
        dir: &Path,
        name: &str,
        bin: &Path,
        args: &[String],
        env: &[(&str, &str)],
    ) -> Daemon {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("creating a daemon log");
        let child = Command::new(bin)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({}): {e}", bin.display()));
        Daemon {
            name: name.to_owned(),
            child: Some(child),
            log,
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// `kill -9` and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; returns whether it exited by itself.
    pub fn stop(&mut self, grace: Duration) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        if let Some(pid) = i32::try_from(c.id()).ok().and_then(Pid::from_raw) {
            let _ = kill_process(pid, Signal::TERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// SIGKILL to `pid` (from a thread that does not own the guard; the guard still reaps it).
pub fn kill9_pid(pid: u32) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = kill_process(pid, Signal::KILL);
    }
}
