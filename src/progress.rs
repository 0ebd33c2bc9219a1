//! Progress of long one-off work (`mpr migrate-from-node`): a bar on a terminal (done out of
//! found, rate, ETA), plain log lines at an interval otherwise (a pipe, a file, a Kubernetes
//! Job's log).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    what: &'static str,
    total: u64,
    done: u64,
    started: Instant,
    shown: Instant,
    every: Duration,
    bar: Option<ProgressBar>,
}

impl Progress {
    /// `total` items of `what` to work through; lines every `every` when not on a terminal.
    pub fn new(what: &'static str, total: u64, every: Duration) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg:>10} {bar:40} {pos}/{len} ({per_sec}, ETA {eta})",
                )
                .expect("a valid template"),
            );
            bar.set_message(what);
            bar
        });
        let now = Instant::now();
        Self {
            what,
            total,
            done: 0,
            started: now,
            shown: now,
            every,
            bar,
        }
    }

    pub fn advance(&mut self, by: u64) {
        self.done += by;
        match &self.bar {
            Some(bar) => bar.inc(by),
            None if self.shown.elapsed() >= self.every => {
                self.shown = Instant::now();
                self.line();
            }
            None => {}
        }
    }

    pub fn finish(self) {
        match &self.bar {
            Some(bar) => bar.finish(),
            None => self.line(),
        }
    }

    fn line(&self) {
        let elapsed = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = self.done as f64 / elapsed;
        let left = self.total.saturating_sub(self.done);
        let eta = if rate > 0.0 {
            format!("{:.0}s", left as f64 / rate)
        } else {
            "unknown".to_owned()
        };
        tracing::info!(
            "progress: {} {}/{} ({rate:.0}/s, ETA {eta})",
            self.what,
            self.done,
            self.total
        );
    }
}
