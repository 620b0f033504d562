//! Pull progress on a terminal: one bar per image in flight, with log lines
//! printed above the bars instead of through them. Off a terminal there are
//! no bars, and logs are plain lines (the pull coordinator logs long pulls).

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::engine::pulls::{LogPulls, PullObserver};
use crate::runtime::{PullProgress, RuntimeError};

/// The bars of every pull in flight, sharing one terminal with the logs.
/// Cheap to clone.
#[derive(Clone)]
pub struct PullBars {
    multi: MultiProgress,
    bars: Arc<Mutex<HashMap<String, ProgressBar>>>,
}

impl PullBars {
    /// Bars on stderr when it is a terminal; `None` otherwise.
    pub fn for_stderr() -> Option<PullBars> {
        if !std::io::stderr().is_terminal() {
            return None;
        }
        Some(PullBars::with_target(ProgressDrawTarget::stderr()))
    }

    /// Bars drawn on `target` (an in-memory terminal in tests).
    pub fn with_target(target: ProgressDrawTarget) -> PullBars {
        PullBars {
            multi: MultiProgress::with_draw_target(target),
            bars: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The log's writer: each line goes above the bars.
    pub fn log_writer(&self) -> LogAboveBars {
        LogAboveBars {
            multi: self.multi.clone(),
        }
    }

    fn bar(&self, image: &str) -> Option<ProgressBar> {
        let mut bars = self.bars.lock().ok()?;
        let bar = bars.entry(image.to_string()).or_insert_with(|| {
            let style =
                ProgressStyle::with_template("{prefix} [{bar:30}] {percent:>3}% {msg} ({elapsed})")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> ");
            let bar = self.multi.add(ProgressBar::new(100).with_style(style));
            bar.set_prefix(format!("pulling {image}"));
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        });
        Some(bar.clone())
    }
}

impl PullObserver for PullBars {
    fn progress(&self, image: &str, p: &PullProgress) {
        let Some(bar) = self.bar(image) else { return };
        bar.set_position(u64::from(p.percent()));
        bar.set_message(format!(
            "{}/{} layers, {}/{} MB",
            p.layers_done,
            p.layers,
            p.bytes_done / 1_000_000,
            p.bytes_total / 1_000_000
        ));
    }

    fn done(&self, image: &str, result: &Result<(), RuntimeError>, elapsed: Duration) {
        let bar = self.bars.lock().ok().and_then(|mut b| b.remove(image));
        if let Some(bar) = bar {
            bar.finish_and_clear();
            self.multi.remove(&bar);
        }
        // The outcome stays on screen as a log line, above the other bars.
        LogPulls.done(image, result, elapsed);
    }
}

/// A `tracing` writer that prints each log line above the bars (or plain to
/// stderr when the bars are hidden).
#[derive(Clone)]
pub struct LogAboveBars {
    multi: MultiProgress,
}

/// One log event, printed when the formatter is done with it.
pub struct LogLine {
    multi: MultiProgress,
    buf: Vec<u8>,
}

impl Write for LogLine {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.buf);
        if self.multi.is_hidden() {
            let _ = std::io::stderr().write_all(&self.buf);
        } else {
            let _ = self.multi.println(text.trim_end_matches('\n'));
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogAboveBars {
    type Writer = LogLine;

    fn make_writer(&'a self) -> LogLine {
        LogLine {
            multi: self.multi.clone(),
            buf: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use indicatif::InMemoryTerm;
    use tracing_subscriber::fmt::MakeWriter;

    fn progress(done: u64, total: u64) -> PullProgress {
        PullProgress {
            layers_done: 0,
            layers: 2,
            bytes_done: done,
            bytes_total: total,
        }
    }

    #[test]
    fn two_pulls_get_a_bar_each_and_logs_go_above_them() {
        let term = InMemoryTerm::new(10, 100);
        let bars = PullBars::with_target(ProgressDrawTarget::term_like(Box::new(term.clone())));
        bars.progress("alpha:1", &progress(10_000_000, 40_000_000));
        bars.progress("beta:2", &progress(30_000_000, 40_000_000));
        {
            let writer = bars.log_writer();
            let mut line = writer.make_writer();
            line.write_all(b"INFO a log line\n").unwrap();
        }
        bars.multi.clear().ok();
        bars.progress("alpha:1", &progress(20_000_000, 40_000_000));
        bars.progress("beta:2", &progress(40_000_000, 40_000_000));
        let screen = term.contents();
        let lines: Vec<&str> = screen.lines().collect();
        let at = |needle: &str| {
            lines
                .iter()
                .position(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("{needle:?} not on screen:\n{screen}"))
        };
        let (log, alpha, beta) = (
            at("a log line"),
            at("pulling alpha:1"),
            at("pulling beta:2"),
        );
        assert!(
            log < alpha && log < beta,
            "the log is above the bars:\n{screen}"
        );
        assert_ne!(alpha, beta, "each pull has its own line:\n{screen}");
        assert!(lines[alpha].contains("50%"), "{screen}");
        assert!(lines[beta].contains("100%"), "{screen}");
    }

    #[test]
    fn a_finished_pull_leaves_no_bar() {
        let term = InMemoryTerm::new(10, 100);
        let bars = PullBars::with_target(ProgressDrawTarget::term_like(Box::new(term.clone())));
        bars.progress("alpha:1", &progress(1, 2));
        bars.progress("beta:2", &progress(1, 2));
        bars.done("alpha:1", &Ok(()), Duration::from_secs(1));
        bars.progress("beta:2", &progress(2, 2));
        let screen = term.contents();
        assert!(!screen.contains("pulling alpha:1"), "{screen}");
        assert!(screen.contains("pulling beta:2"), "{screen}");
    }
}
