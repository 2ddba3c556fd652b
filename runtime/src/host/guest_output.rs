//! Where everything a backend writes goes: its `log` calls and its stdout/stderr lines become
//! lines of Broadcaster's log, tagged with the publisher's name, bounded in length, within
//! the call's log budget, and with the publisher's secrets redacted.

use std::sync::Arc;

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

/// Writes one guest line to the log.
pub fn emit(publisher: &str, level: Level, message: &str) {
    let message = truncate(message);
    match level {
        Level::Trace => tracing::trace!(target: GUEST_LOG_TARGET, publisher, "{message}"),
        Level::Debug => tracing::debug!(target: GUEST_LOG_TARGET, publisher, "{message}"),
        Level::Info => tracing::info!(target: GUEST_LOG_TARGET, publisher, "{message}"),
        Level::Warn => tracing::warn!(target: GUEST_LOG_TARGET, publisher, "{message}"),
        Level::Error => tracing::error!(target: GUEST_LOG_TARGET, publisher, "{message}"),
    }
}

/// `message` cut to [`MAX_LINE`] bytes (on a character boundary), with what was cut said.
pub fn truncate(message: &str) -> std::borrow::Cow<'_, str> {
    if message.len() <= MAX_LINE {
        return message.into();
    }
    let mut end = MAX_LINE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [{} bytes cut]", &message[..end], message.len() - end).into()
}

/// A guest's stdout or stderr: each line becomes one log line (`info` for stdout, `warn`
/// for stderr), counted against the call's log budget.
#[derive(Debug, Clone)]
pub struct GuestOutput {
    publisher: Arc<str>,
    level: Level,
    budget: CallBudget,
    redactor: Arc<Redactor>,
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
        emit(&self.output.publisher, self.output.level, &line);
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
