//! A progress bar in plain ANSI on a terminal, and a line per quarter otherwise.

use std::io::{IsTerminal, Write};
use std::time::Instant;

/// Draws progress of a byte count towards a total.
#[derive(Debug)]
pub struct Progress {
    label: String,
    tty: bool,
    start: Instant,
    last_quarter: u64,
    last_draw: Option<Instant>,
}

impl Progress {
    /// A bar labelled `label`, drawn on stderr.
    pub fn new(label: &str) -> Self {
        Progress {
            label: label.to_owned(),
            tty: std::io::stderr().is_terminal(),
            start: Instant::now(),
            last_quarter: 0,
            last_draw: None,
        }
    }

    /// The bar's text for `done` of `total` bytes after `secs` seconds.
    pub fn line(label: &str, done: u64, total: u64, secs: f64) -> String {
        let total = total.max(1);
        let frac = (done.min(total) as f64) / (total as f64);
        let width = 30usize;
        let filled = ((frac * width as f64) as usize).min(width);
        let mb_s = done as f64 / 1e6 / secs.max(1e-6);
        format!(
            "{label} [{}{}] {:>3}% {:>7.1} MiB {:>6.1} MB/s",
            "#".repeat(filled),
            "-".repeat(width - filled),
            (frac * 100.0) as u32,
            done as f64 / (1 << 20) as f64,
            mb_s
        )
    }

    /// Reports progress (redraws at most every 100 ms on a terminal).
    pub fn update(&mut self, done: u64, total: u64) {
        let secs = self.start.elapsed().as_secs_f64();
        if self.tty {
            let now = Instant::now();
            if done < total
                && self
                    .last_draw
                    .is_some_and(|t| now.duration_since(t).as_millis() < 100)
            {
                return;
            }
            self.last_draw = Some(now);
            let mut e = std::io::stderr();
            let _ = write!(e, "\r\x1b[2K{}", Self::line(&self.label, done, total, secs));
            let _ = e.flush();
        } else {
            let quarter = done.saturating_mul(4) / total.max(1);
            if quarter > self.last_quarter {
                self.last_quarter = quarter;
                eprintln!("{}", Self::line(&self.label, done, total, secs));
            }
        }
    }

    /// Ends the bar's line.
    pub fn finish(&mut self) {
        if self.tty {
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_text() {
        let l = Progress::line("io", 1 << 20, 4 << 20, 1.0);
        assert!(
            l.starts_with("io [#######-----------------------]  25%"),
            "{l}"
        );
        assert!(Progress::line("io", 5, 0, 0.0).contains("100%"));
    }
}
