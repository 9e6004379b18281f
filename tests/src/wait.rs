//! Bounded waiting: every wait in the tests has a deadline and a message.

use std::time::{Duration, Instant};

/// Polls `f` every few milliseconds until it returns `Some`; panics after `timeout` with
/// `what` and whatever `context()` returns (typically the daemons' log tails).
pub fn until<T>(
    timeout: Duration,
    what: &str,
    context: impl Fn() -> String,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                context()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
