//! What one call into a component may spend on the host side: host calls, bytes passed to
//! them, log lines and bytes. Reset at the start of every call; going over traps the call.
//! A `publish-batch` call of n events may spend n times what one call may (it does the work
//! of n `publish` calls).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use broadcaster_config::{ByteSize, Limits};

/// The per-call limits (from `[publishers.<name>.limits]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallLimits {
    /// Most host calls.
    pub host_calls: u64,
    /// Most bytes passed to host calls.
    pub host_call_bytes: u64,
    /// Most log lines.
    pub log_lines: u64,
    /// Most log bytes.
    pub log_bytes: u64,
    /// Longest time one host call may take.
    pub host_call_timeout: Duration,
    /// Longest stream name.
    pub stream_name_bytes: u64,
    /// Most fields in one stream entry.
    pub entry_fields: u64,
    /// Largest stream entry.
    pub entry_bytes: u64,
    /// Most entries in one `xadd-batch`.
    pub xadd_batch_entries: u64,
    /// Most bytes in one `xadd-batch`.
    pub xadd_batch_bytes: u64,
}

impl From<&Limits> for CallLimits {
    fn from(limits: &Limits) -> Self {
        Self {
            host_calls: limits.host_calls,
            host_call_bytes: limits.host_call_bytes.0,
            log_lines: limits.log_lines,
            log_bytes: limits.log_bytes.0,
            host_call_timeout: limits.host_call_timeout.0,
            stream_name_bytes: limits.stream_name_bytes.0,
            entry_fields: limits.entry_fields,
            entry_bytes: limits.entry_bytes.0,
            xadd_batch_entries: limits.xadd_batch_entries,
            xadd_batch_bytes: limits.xadd_batch_bytes.0,
        }
    }
}

impl Default for CallLimits {
    fn default() -> Self {
        Self::from(&Limits::default())
    }
}

/// A limit the call went over. Raised as a trap; its message names the limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitExceeded {
    /// Too many host calls.
    #[error("exceeded limits.host_calls: more than {0} host calls in one call")]
    HostCalls(u64),
    /// Too many bytes passed to host calls.
    #[error("exceeded limits.host_call_bytes: more than {0} passed to host calls in one call")]
    HostCallBytes(ByteSize),
    /// Too many log lines.
    #[error("exceeded limits.log_lines: more than {0} log lines in one call")]
    LogLines(u64),
    /// Too many log bytes.
    #[error("exceeded limits.log_bytes: more than {0} of log in one call")]
    LogBytes(ByteSize),
}

#[derive(Debug, Default)]
struct Spent {
    /// The call's limits are the per-call limits times this (the events of a batch call).
    scale: u64,
    host_calls: u64,
    host_call_bytes: u64,
    log_lines: u64,
    log_bytes: u64,
}

/// The running account of one call, shared by the capabilities and the guest's stdio.
#[derive(Debug, Clone)]
pub struct CallBudget {
    limits: CallLimits,
    spent: Arc<Mutex<Spent>>,
}

impl CallBudget {
    /// A fresh account under `limits`.
    pub fn new(limits: CallLimits) -> Self {
        Self { limits, spent: Arc::default() }
    }

    /// The limits.
    pub fn limits(&self) -> &CallLimits {
        &self.limits
    }

    /// Starts a new call: everything spent goes back to zero.
    pub fn reset(&self) {
        self.reset_for_events(1);
    }

    /// Starts a new call that handles `events` events (a `publish-batch` call): it may spend
    /// `events` times the per-call limits.
    pub fn reset_for_events(&self, events: usize) {
        let scale = (events as u64).max(1);
        *self.spent.lock().expect("budget lock") = Spent { scale, ..Spent::default() };
    }

    /// Charges one host call passing `bytes` bytes.
    pub fn charge_host_call(&self, bytes: usize) -> Result<(), LimitExceeded> {
        self.charge_host_calls(1, bytes)
    }

    /// Charges `calls` host calls passing `bytes` bytes in all (an `xadd-batch` counts one
    /// call per entry).
    pub fn charge_host_calls(&self, calls: u64, bytes: usize) -> Result<(), LimitExceeded> {
        let mut spent = self.spent.lock().expect("budget lock");
        spent.host_calls = spent.host_calls.saturating_add(calls);
        spent.host_call_bytes = spent.host_call_bytes.saturating_add(bytes as u64);
        let scale = spent.scale.max(1);
        if spent.host_calls > self.limits.host_calls.saturating_mul(scale) {
            return Err(LimitExceeded::HostCalls(self.limits.host_calls.saturating_mul(scale)));
        }
        let most_bytes = self.limits.host_call_bytes.saturating_mul(scale);
        if spent.host_call_bytes > most_bytes {
            return Err(LimitExceeded::HostCallBytes(ByteSize(most_bytes)));
        }
        Ok(())
    }

    /// Charges bytes of log output (before they form lines).
    pub fn charge_log_bytes(&self, bytes: usize) -> Result<(), LimitExceeded> {
        let mut spent = self.spent.lock().expect("budget lock");
        spent.log_bytes = spent.log_bytes.saturating_add(bytes as u64);
        let most = self.limits.log_bytes.saturating_mul(spent.scale.max(1));
        if spent.log_bytes > most {
            return Err(LimitExceeded::LogBytes(ByteSize(most)));
        }
        Ok(())
    }

    /// Charges one log line.
    pub fn charge_log_line(&self) -> Result<(), LimitExceeded> {
        let mut spent = self.spent.lock().expect("budget lock");
        spent.log_lines += 1;
        let most = self.limits.log_lines.saturating_mul(spent.scale.max(1));
        if spent.log_lines > most {
            return Err(LimitExceeded::LogLines(most));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_limit_trips_one_past_its_value_and_reset_starts_over() {
        let budget = CallBudget::new(CallLimits {
            host_calls: 2,
            host_call_bytes: 10,
            log_lines: 1,
            log_bytes: 5,
            host_call_timeout: Duration::from_secs(1),
            ..CallLimits::default()
        });
        budget.charge_host_call(4).unwrap();
        budget.charge_host_call(4).unwrap();
        assert_eq!(budget.charge_host_call(0), Err(LimitExceeded::HostCalls(2)));
        budget.reset();
        assert_eq!(budget.charge_host_call(11), Err(LimitExceeded::HostCallBytes(ByteSize(10))));
        budget.charge_log_line().unwrap();
        assert_eq!(budget.charge_log_line(), Err(LimitExceeded::LogLines(1)));
        assert!(budget.charge_log_bytes(5).is_ok());
        assert!(budget.charge_log_bytes(1).unwrap_err().to_string().contains("limits.log_bytes"));
    }

    #[test]
    fn a_batch_call_may_spend_the_per_call_limits_times_its_events() {
        let budget = CallBudget::new(CallLimits { host_calls: 2, host_call_bytes: 10, ..CallLimits::default() });
        budget.reset_for_events(3);
        budget.charge_host_calls(6, 30).unwrap();
        assert_eq!(budget.charge_host_call(0), Err(LimitExceeded::HostCalls(6)));
        budget.reset();
        assert_eq!(budget.charge_host_calls(3, 0), Err(LimitExceeded::HostCalls(2)));
    }
}
