//! Clean shutdown on SIGTERM/SIGINT: every client answered, every controller closed with
//! the backend, every grant ended once the backend unmapped it.

use std::io;
use std::time::{Duration, Instant};

use anyhow::Context;
use mio::Events;
use xenstore_cfg::xenbus::{read_state, XenbusState};

use super::{Daemon, XS};

/// How long the backends get to unmap the rings and data pages before we exit anyway.
/// systemd's default stop timeout is 90 s; a backend that needs more than this is gone.
const UNMAP_WAIT: Duration = Duration::from_secs(5);
/// How often we look again while waiting (xenstore and socket events wake us sooner).
const RECHECK: Duration = Duration::from_millis(50);

impl Daemon {
    /// Shuts down: vhci ports are detached and every pending USB/IP URB completes with
    /// -ESHUTDOWN (as on any disconnect), then each controller goes Closing, waits for its
    /// backend to release the rings, and goes Closed; grants are ended once unmapped.
    /// Bounded by [`UNMAP_WAIT`]: a backend that does not answer leaves its grants to be
    /// revoked by the platform when we exit.
    pub(super) fn shutdown(mut self) -> anyhow::Result<()> {
        tracing::info!("signal received: shutting down");
        self.listener = None;
        let devids: Vec<u32> = self.ctrls.keys().copied().collect();
        for &devid in &devids {
            self.teardown(devid, "shutting down");
        }
        // Connections of the ports just closed drain the error answers they owe (bounded
        // by their own deadline); the others (no device imported yet) close now.
        let ids: Vec<usize> = self
            .links
            .iter()
            .filter(|(_, l)| l.draining.is_none())
            .map(|(id, _)| id)
            .collect();
        for id in ids {
            self.close_link(id, "shutting down");
        }
        // Closing even for controllers we never connected: a backend may still be
        // Connected to the rings of a previous run of ours.
        let mut closing = Vec::new();
        for devid in devids {
            if let Some(c) = self.ctrls.get(&devid) {
                let (fe_dir, span) = (c.paths.fe_dir.clone(), c.span.clone());
                self.set_fe_state(&fe_dir, XenbusState::Closing, &span);
                closing.push(devid);
            }
        }
        let deadline = Instant::now() + UNMAP_WAIT;
        let mut events = Events::with_capacity(16);
        loop {
            closing.retain(|&devid| !self.close_if_released(devid));
            let grants_ended = self.retired.retry();
            self.flush_links();
            if closing.is_empty() && grants_ended && self.links.is_empty() {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                tracing::warn!(
                    controllers = closing.len(),
                    grants_left = !grants_ended,
                    connections = self.links.len(),
                    "backend did not release everything in time; exiting anyway"
                );
                for devid in closing {
                    self.close_now(devid);
                }
                break;
            }
            match self
                .poll
                .poll(&mut events, Some(RECHECK.min(deadline - now)))
            {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("polling"),
            }
            if events.iter().any(|ev| ev.token() == XS) {
                self.xs.pump().context("reading xenstore")?;
                // Watch events are of no interest any more: the state is read above.
                while self.xs.poll_event().is_some() {}
            }
        }
        tracing::info!("pvusb-frontend stopped");
        Ok(())
    }

    /// Goes Closed once the backend no longer serves our rings; true when done.
    fn close_if_released(&mut self, devid: u32) -> bool {
        let Some(c) = self.ctrls.get(&devid) else {
            return true;
        };
        let be_dir = c.paths.be_dir.clone();
        let released = match read_state(&mut self.xs, &be_dir) {
            Ok(s) => s != XenbusState::Connected,
            // No backend directory we can read: nobody maps our rings through it.
            Err(_) => true,
        };
        if released {
            self.close_now(devid);
        }
        released
    }

    fn close_now(&mut self, devid: u32) {
        if let Some(c) = self.ctrls.get(&devid) {
            let (fe_dir, span) = (c.paths.fe_dir.clone(), c.span.clone());
            self.set_fe_state(&fe_dir, XenbusState::Closed, &span);
            tracing::info!(parent: &span, "controller closed");
        }
    }
}
