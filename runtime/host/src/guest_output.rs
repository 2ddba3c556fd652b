//! Where everything a backend writes goes: its `log` calls and its stdout/stderr lines become
//! lines of Broadcaster's log, tagged with the publisher's name, bounded in length, within
//! the call's log budget and the publisher's log rate, and with its secrets redacted. Also
//! the bound on every other text a backend hands the host ([`bounded_text`]).

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

use super::bindings::Level;
use super::budget::CallBudget;
use super::capabilities::CallContext;
use super::secrets::Redactor;

/// The tracing target of everything backends log (`RUST_LOG=broadcaster::guest=debug`).
pub const GUEST_LOG_TARGET: &str = "broadcaster::guest";

/// Longest line kept from a backend; the rest is cut and marked.
pub const MAX_LINE: usize = 8 * 1024;

/// Longest message kept from a backend (a `publish-error`, an `init` error, a trap's cause):
/// in `last_error`, the log and health.
pub const MAX_MESSAGE: usize = 4 * 1024;

/// Writes one guest line to the log, if the publisher's log rate allows it.
pub fn emit(publisher: &str, rate: &LogRate, level: Level, message: &str) {
    let Some(dropped) = rate.admit(message.len()) else { return };
    if let Some((lines, bytes)) = dropped {
        tracing::warn!(
            target: GUEST_LOG_TARGET,
            publisher,
            dropped_lines = lines,
            dropped_bytes = bytes,
            "the backend wrote more than limits.log_rate lines or limits.log_rate_bytes per second; the rest was dropped"
        );
    }
    let message = truncate(message);
    match level {
        Level::Trace => tracing::trace!(target: GUEST_LOG_TARGET, publisher, "{message}"),
        Level::Debug => tracing::debug!(target: GUEST_LOG_TARGET, publisher, "{message}"),
        Level::Info => tracing::info!(target: GUEST_LOG_TARGET, publisher, "{message}"),
        Level::Warn => tracing::warn!(target: GUEST_LOG_TARGET, publisher, "{message}"),
        Level::Error => tracing::error!(target: GUEST_LOG_TARGET, publisher, "{message}"),
    }
}

/// `message` cut to [`MAX_LINE`] bytes, with what was cut said.
pub fn truncate(message: &str) -> Cow<'_, str> {
    cut(message, MAX_LINE)
}

/// `message` cut to [`MAX_MESSAGE`] bytes, with what was cut said.
pub fn bounded_text(message: &str) -> Cow<'_, str> {
    cut(message, MAX_MESSAGE)
}

/// `text` cut to `cap` bytes (on a character boundary), with what was cut said.
fn cut(text: &str, cap: usize) -> Cow<'_, str> {
    if text.len() <= cap {
        return text.into();
    }
    let mut end = cap;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [{} bytes cut]", &text[..end], text.len() - end).into()
}

/// A publisher's log rate: at most so many lines and bytes per second, over all its calls.
/// What goes over is dropped and counted; the count is logged before the next line let
/// through.
#[derive(Debug)]
pub struct LogRate {
    lines: u64,
    bytes: u64,
    window: Mutex<RateWindow>,
}

#[derive(Debug)]
struct RateWindow {
    started: Instant,
    lines: u64,
    bytes: u64,
    dropped_lines: u64,
    dropped_bytes: u64,
}

impl LogRate {
    /// At most `lines` lines and `bytes` bytes per second.
    pub fn new(lines: u64, bytes: u64) -> Self {
        let window = RateWindow { started: Instant::now(), lines: 0, bytes: 0, dropped_lines: 0, dropped_bytes: 0 };
        Self { lines, bytes, window: Mutex::new(window) }
    }

    /// Whether a line of `len` bytes may be written now: `None` when it is dropped;
    /// otherwise how many lines and bytes were dropped since the last line let through, if
    /// any.
    pub fn admit(&self, len: usize) -> Option<Option<(u64, u64)>> {
        let mut window = self.window.lock().expect("log rate lock");
        if window.started.elapsed() >= Duration::from_secs(1) {
            window.started = Instant::now();
            window.lines = 0;
            window.bytes = 0;
        }
        if window.lines >= self.lines || window.bytes.saturating_add(len as u64) > self.bytes {
            window.dropped_lines += 1;
            window.dropped_bytes += len as u64;
            return None;
        }
        window.lines += 1;
        window.bytes += len as u64;
        let dropped = (window.dropped_lines > 0).then_some((window.dropped_lines, window.dropped_bytes));
        window.dropped_lines = 0;
        window.dropped_bytes = 0;
        Some(dropped)
    }
}

/// A guest's stdout or stderr: each line becomes one log line (`info` for stdout, `warn`
/// for stderr), counted against the call's log budget.
#[derive(Debug, Clone)]
pub struct GuestOutput {
    publisher: Arc<str>,
    level: Level,
    budget: CallBudget,
    redactor: Arc<Redactor>,
    rate: Arc<LogRate>,
    /// Where stderr keeps its last lines (a panic message explains the trap that follows).
    last_line: Option<LastLines>,
}

/// How many of a guest's last stderr lines are kept to explain a trap (a Rust panic writes
/// two, an interpreter's glue a few more).
const LAST_LINES: usize = 4;

/// The last lines a guest wrote to stderr in the current call (cleared by the caller).
#[derive(Debug, Clone, Default)]
pub struct LastLines(Arc<std::sync::Mutex<std::collections::VecDeque<String>>>);

impl LastLines {
    fn push(&self, line: String) {
        let mut lines = self.0.lock().expect("last lines lock");
        if lines.len() == LAST_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// Empties the record.
    pub fn clear(&self) {
        self.0.lock().expect("last lines lock").clear();
    }

    /// The lines, joined with ` / `, and empties the record; `None` when there were none.
    pub fn take(&self) -> Option<String> {
        let mut lines = self.0.lock().expect("last lines lock");
        let joined = lines.drain(..).collect::<Vec<_>>().join(" / ");
        (!joined.is_empty()).then_some(joined)
    }
}

impl GuestOutput {
    /// The guest's stdout, for the calls of `call`'s publisher.
    pub fn stdout(call: &CallContext) -> Self {
        Self {
            publisher: call.publisher.clone(),
            level: Level::Info,
            budget: call.budget.clone(),
            redactor: call.redactor.clone(),
            rate: call.log_rate.clone(),
            last_line: None,
        }
    }

    /// The guest's stderr; its last lines are kept in the call's `last_stderr`.
    pub fn stderr(call: &CallContext) -> Self {
        Self {
            publisher: call.publisher.clone(),
            level: Level::Warn,
            budget: call.budget.clone(),
            redactor: call.redactor.clone(),
            rate: call.log_rate.clone(),
            last_line: Some(call.last_stderr.clone()),
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        // Only the WASIp2 stream below is used by components of this world.
        Box::new(tokio::io::sink())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LineWriter { output: self.clone(), pending: Vec::new() })
    }
}

/// Buffers bytes until a newline, then logs the line.
struct LineWriter {
    output: GuestOutput,
    pending: Vec<u8>,
}

impl LineWriter {
    fn emit_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let line = String::from_utf8_lossy(&self.pending).into_owned();
        let line = self.output.redactor.redact(line.trim_end_matches('\r'));
        emit(&self.output.publisher, &self.output.rate, self.output.level, &line);
        if let Some(last) = &self.output.last_line
            && !line.starts_with("note: run with `RUST_BACKTRACE")
        {
            last.push(truncate(&line).into_owned());
        }
        self.pending.clear();
    }

    fn line(&mut self) -> StreamResult<()> {
        self.output.budget.charge_log_line().map_err(|e| StreamError::Trap(wasmtime::Error::new(e)))?;
        self.emit_pending();
        Ok(())
    }
}

impl OutputStream for LineWriter {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.output.budget.charge_log_bytes(bytes.len()).map_err(|e| StreamError::Trap(wasmtime::Error::new(e)))?;
        for chunk in bytes.split_inclusive(|b| *b == b'\n') {
            match chunk.strip_suffix(b"\n") {
                Some(line) => {
                    self.pending.extend_from_slice(line);
                    self.line()?;
                }
                None => {
                    self.pending.extend_from_slice(chunk);
                    if self.pending.len() >= MAX_LINE {
                        self.line()?;
                    }
                }
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        self.emit_pending();
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LineWriter {
    async fn ready(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_texts_are_cut_on_a_character_boundary_saying_how_much() {
        let text = "é".repeat(MAX_MESSAGE);
        let cut = bounded_text(&text);
        assert!(cut.len() < MAX_MESSAGE + 40, "{}", cut.len());
        assert!(cut.ends_with(&format!("[{} bytes cut]", text.len() - MAX_MESSAGE)), "{}", &cut[cut.len() - 30..]);
        assert_eq!(bounded_text("short"), "short");
    }

    #[test]
    fn the_log_rate_drops_lines_over_it_and_reports_them_with_the_next_line() {
        let rate = LogRate::new(2, 1000);
        assert_eq!(rate.admit(10), Some(None));
        assert_eq!(rate.admit(10), Some(None));
        assert_eq!(rate.admit(10), None);
        assert_eq!(rate.admit(5), None);
        rate.window.lock().unwrap().started -= Duration::from_secs(1);
        assert_eq!(rate.admit(1), Some(Some((2, 15))));
        assert_eq!(rate.admit(2000), None, "a line over the byte rate is dropped");
    }
}
