//! Logging shared by the pvusb daemons: the tracing subscriber they install, and the rate
//! limiter behind [`peer_warn!`] for warnings a peer (a guest's frontend, or a backend) can
//! cause. Guarantee: however often a peer misbehaves, one [`RateLimit`] lets through at most
//! its burst of lines per window, plus one line saying the rest were suppressed.

use std::time::{Duration, Instant};

#[doc(hidden)]
pub use tracing as __tracing;

/// Installs the global subscriber (tracing to stderr, colours only on a terminal):
/// `RUST_LOG` if set, else info / debug (`verbose` 1) / trace (2 and more).
pub fn init(verbose: u8) -> anyhow::Result<()> {
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .map_err(|e| anyhow::anyhow!("invalid RUST_LOG filter: {e}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init()
        .map_err(|e| anyhow::anyhow!("installing the log subscriber: {e}"))
}

/// Lets at most `burst` warnings through per `window`; the peer decides how often it
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
    /// 10 lines per 10 seconds.
    fn default() -> Self {
        RateLimit::new(10, Duration::from_secs(10))
    }
}

/// Logs a peer-caused warning through a [`RateLimit`]: `peer_warn!(limit, <tracing::warn!
/// arguments>)`. The first suppressed line of a window logs that the rest are suppressed.
#[macro_export]
macro_rules! peer_warn {
    ($limit:expr, $($arg:tt)+) => {{
        let now = ::std::time::Instant::now();
        if $limit.allow(now) {
            $crate::__tracing::warn!($($arg)+);
        } else if $limit.suppressing() {
            $crate::__tracing::warn!("peer misbehaviour: further warnings suppressed for a while");
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

    #[test]
    fn macro_counts_every_call_against_the_limit() {
        let mut r = RateLimit::new(3, Duration::from_secs(3600));
        for i in 0..5 {
            peer_warn!(r, i, "misbehaving");
        }
        // Three logged, the fourth reported the suppression, the fifth was silent.
        assert!(!r.allow(Instant::now()));
        assert!(!r.suppressing());
    }
}
