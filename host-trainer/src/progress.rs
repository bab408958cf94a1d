//! Progress reporting for long work, as a small trait so library code never draws by itself.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// Something that can show the progress of a task.
pub trait Progress {
    /// Start a task of `total` units (bytes, images...), or of unknown length.
    fn start(&self, what: &str, total: Option<u64>) -> Box<dyn Task>;
}

/// One running task.
pub trait Task {
    /// `n` more units are done.
    fn advance(&self, n: u64);
    /// Show live details next to the task's name (loss, accuracy...).
    fn message(&self, _details: &str) {}
    /// The task is over.
    fn finish(&self);
}

/// Shows nothing (tests, `--quiet`, JSON output).
pub struct Silent;

struct NoTask;

impl Task for NoTask {
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}

impl Progress for Silent {
    fn start(&self, _: &str, _: Option<u64>) -> Box<dyn Task> {
        Box::new(NoTask)
    }
}

/// Terminal progress bars on stderr (hidden automatically when stderr is not a terminal).
pub struct Bars;

struct BarTask(ProgressBar, String);

impl Task for BarTask {
    fn advance(&self, n: u64) {
        self.0.inc(n);
    }
    fn message(&self, details: &str) {
        self.0.set_message(format!("{} {details}", self.1));
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

impl Progress for Bars {
    fn start(&self, what: &str, total: Option<u64>) -> Box<dyn Task> {
        let bar = match total {
            Some(t) => ProgressBar::new(t).with_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {human_pos}/{human_len} {per_sec} eta {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            ),
            None => {
                let b = ProgressBar::new_spinner();
                b.enable_steady_tick(Duration::from_millis(120));
                b
            }
        };
        bar.set_message(what.to_string());
        Box::new(BarTask(bar, what.to_string()))
    }
}

/// Progress bars in bytes with the transfer rate (deploys).
pub struct ByteBars;

impl Progress for ByteBars {
    fn start(&self, what: &str, total: Option<u64>) -> Box<dyn Task> {
        let bar = ProgressBar::new(total.unwrap_or(0)).with_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_message(what.to_string());
        Box::new(BarTask(bar, what.to_string()))
    }
}
