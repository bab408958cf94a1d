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

/// Progress bars in bytes with the transfer rate (deploys); without a terminal on stderr (a
/// service, CI, a log file) a plain line every few seconds instead ([`ByteLines`]).
pub struct ByteBars;

impl Progress for ByteBars {
    fn start(&self, what: &str, total: Option<u64>) -> Box<dyn Task> {
        use std::io::IsTerminal;
        if !std::io::stderr().is_terminal() {
            return ByteLines::every(Duration::from_secs(5)).start(what, total);
        }
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

/// Byte progress as plain lines on stderr, one every `period` at most and one at the end:
/// `trunk.onnx: 636.0 KB of 2.2 MB (29%), 10.6 KB/s; chunk 512 B, 3.1 KB resent`.
pub struct ByteLines {
    period: Duration,
}

impl ByteLines {
    /// Lines at most every `period`.
    pub fn every(period: Duration) -> Self {
        ByteLines { period }
    }
}

impl Progress for ByteLines {
    fn start(&self, what: &str, total: Option<u64>) -> Box<dyn Task> {
        let now = std::time::Instant::now();
        Box::new(LineTask {
            what: what.to_string(),
            total,
            period: self.period,
            started: now,
            state: std::cell::RefCell::new(LineState {
                done: 0,
                last_print: now,
                details: String::new(),
            }),
        })
    }
}

struct LineState {
    done: u64,
    last_print: std::time::Instant,
    details: String,
}

struct LineTask {
    what: String,
    total: Option<u64>,
    period: Duration,
    started: std::time::Instant,
    state: std::cell::RefCell<LineState>,
}

impl LineTask {
    fn line(&self, st: &LineState) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let of = match self.total {
            Some(t) if t > 0 => format!(
                " of {} ({:.0}%)",
                human_bytes(t),
                100.0 * st.done as f64 / t as f64
            ),
            _ => String::new(),
        };
        let details = if st.details.is_empty() {
            String::new()
        } else {
            format!("; {}", st.details)
        };
        format!(
            "{}: {}{of}, {}/s{details}",
            self.what,
            human_bytes(st.done),
            human_bytes((st.done as f64 / secs) as u64)
        )
    }
}

impl Task for LineTask {
    fn advance(&self, n: u64) {
        let mut st = self.state.borrow_mut();
        st.done += n;
        if st.last_print.elapsed() >= self.period {
            st.last_print = std::time::Instant::now();
            eprintln!("{}", self.line(&st));
        }
    }

    fn message(&self, details: &str) {
        self.state.borrow_mut().details = details.to_string();
    }

    fn finish(&self) {
        eprintln!("{}", self.line(&self.state.borrow()));
    }
}

/// Bytes for people: `512 B`, `3.1 KB`, `2.2 MB` (powers of 1000).
pub fn human_bytes(n: u64) -> String {
    match n {
        n if n < 1000 => format!("{n} B"),
        n if n < 1_000_000 => format!("{:.1} KB", n as f64 / 1e3),
        n => format!("{:.1} MB", n as f64 / 1e6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_lines_say_what_how_much_and_how_fast() {
        let task = LineTask {
            what: "trunk.onnx".into(),
            total: Some(2_200_000),
            period: Duration::from_secs(3600),
            started: std::time::Instant::now() - Duration::from_secs(10),
            state: std::cell::RefCell::new(LineState {
                done: 0,
                last_print: std::time::Instant::now(),
                details: String::new(),
            }),
        };
        task.advance(636_000);
        task.message("chunk 512 B, 3.1 KB resent");
        let line = task.line(&task.state.borrow());
        assert!(
            line.starts_with("trunk.onnx: 636.0 KB of 2.2 MB (29%), 63."),
            "{line}"
        );
        assert!(line.ends_with("KB/s; chunk 512 B, 3.1 KB resent"), "{line}");
        assert_eq!(human_bytes(999), "999 B");
    }
}
