//! What a publisher's store holds: its WASI context (empty), its capabilities, its limits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::bindings::broadcaster::backend::types;
use super::budget::CallBudget;
use super::http_capability::HttpPolicy;
use super::log_capability::{GuestOutput, LastLine};
use super::redis_capability::RedisCapability;
use super::secrets::Redactor;

/// The data of one publisher's `Store`. Nothing in it is shared with another publisher.
pub struct PublisherState {
    /// The publisher's name, for logs.
    pub publisher: Arc<str>,
    /// The `redis-stream` capability, when granted.
    pub redis: Option<RedisCapability>,
    /// When the call in progress must end; checked on every epoch tick.
    pub deadline: Option<Instant>,
    /// Memory and instance limits.
    pub limits: StoreLimits,
    /// What the call in progress may still spend on host calls and logs.
    pub budget: CallBudget,
    /// Hides the publisher's secrets in everything it writes.
    pub redactor: Arc<Redactor>,
    /// The last line the guest wrote to stderr (explains a panic).
    pub last_stderr: LastLine,
    /// The outbound HTTP policy (denies everything without an `http` grant).
    pub http: HttpPolicy,
    http_ctx: WasiHttpCtx,
    wasi: WasiCtx,
    table: ResourceTable,
}

impl std::fmt::Debug for PublisherState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublisherState")
            .field("publisher", &self.publisher)
            .field("redis", &self.redis)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl PublisherState {
    /// A fresh state: WASI with no files, no environment, no arguments, no network, stdio
    /// going to the log; memory capped at `memory_bytes`.
    pub fn new(
        publisher: Arc<str>,
        redis: Option<RedisCapability>,
        memory_bytes: usize,
        budget: CallBudget,
        redactor: Arc<Redactor>,
        http: HttpPolicy,
    ) -> Self {
        let last_stderr = LastLine::default();
        let wasi = WasiCtx::builder()
            .stdout(GuestOutput::stdout(publisher.clone(), budget.clone(), redactor.clone()))
            .stderr(GuestOutput::stderr(publisher.clone(), budget.clone(), redactor.clone(), last_stderr.clone()))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let limits = StoreLimitsBuilder::new()
            .memory_size(memory_bytes)
            .instances(64)
            .tables(64)
            .memories(16)
            .trap_on_grow_failure(true)
            .build();
        Self {
            publisher,
            redis,
            deadline: None,
            limits,
            budget,
            redactor,
            last_stderr,
            http,
            http_ctx: WasiHttpCtx::new(),
            wasi,
            table: ResourceTable::new(),
        }
    }

    /// How long a host call may take now: the host-call limit, or less when the call's own
    /// deadline is nearer.
    pub fn host_call_timeout(&self) -> Duration {
        let limit = self.budget.limits().host_call_timeout;
        match self.deadline {
            Some(deadline) => limit.min(deadline.saturating_duration_since(Instant::now())),
            None => limit,
        }
    }
}

impl WasiView for PublisherState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for PublisherState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http_ctx, table: &mut self.table, hooks: &mut self.http }
    }
}

impl types::Host for PublisherState {}
