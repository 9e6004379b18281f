//! Logging set-up (tracing to stderr) and the rate limiter for guest-caused warnings.

use std::time::{Duration, Instant};

/// Installs the global subscriber: `RUST_LOG` if set, else info / debug (-v) / trace (-vv).
pub fn init(verbose: u8) -> anyhow::Result<()> {
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init()
        .map_err(|e| anyhow::anyhow!("installing the log subscriber: {e}"))
}

/// Lets at most `burst` warnings through per `window`; the guest decides how often it
/// misbehaves, so it must not decide how much we log.
#[derive(Debug)]
pub struct RateLimit {
    window: Duration,
    burst: u32,
    start: Option<Instant>,
    seen: u32,
}

impl RateLimit {
    /// A limiter of `burst` lines per `window`.
    pub const fn new(burst: u32, window: Duration) -> Self {
        RateLimit {
            window,
            burst,
            start: None,
            seen: 0,
        }
    }

    /// Whether to log now; the first suppressed line of a window is reported by
    /// [`RateLimit::suppressing`] returning true once.
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.start {
            Some(s) if now.saturating_duration_since(s) < self.window => {}
            _ => {
                self.start = Some(now);
                self.seen = 0;
            }
        }
        self.seen = self.seen.saturating_add(1);
        self.seen <= self.burst
    }

    /// True exactly once per window, for the first line that was suppressed.
    pub fn suppressing(&self) -> bool {
        self.seen == self.burst.saturating_add(1)
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit::new(10, Duration::from_secs(10))
    }
}

/// Logs a guest-caused warning through a [`RateLimit`].
#[macro_export]
macro_rules! guest_warn {
    ($limit:expr, $($arg:tt)+) => {{
        let now = std::time::Instant::now();
        if $limit.allow(now) {
            tracing::warn!($($arg)+);
        } else if $limit.suppressing() {
            tracing::warn!("guest misbehaviour: further warnings suppressed for a while");
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_allows_a_burst_per_window() {
        let mut r = RateLimit::new(2, Duration::from_secs(1));
        let t = Instant::now();
        assert!(r.allow(t));
        assert!(r.allow(t));
        assert!(!r.allow(t));
        assert!(r.suppressing());
        assert!(!r.allow(t));
        assert!(!r.suppressing());
        assert!(r.allow(t + Duration::from_secs(2)));
    }
}
