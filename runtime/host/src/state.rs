//! What a publisher's store holds: the call's context, memory limits, the resource table,
//! and each capability's state. Nothing in it is shared with another publisher.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use wasmtime::StoreLimitsBuilder;
use wasmtime::component::ResourceTable;

use super::capabilities::{CallContext, CapabilityStates, CapabilityView, ConfiguredCapabilities};
use super::guest_counters::{CountingLimits, GuestCounters};

/// The data of one publisher's `Store`.
#[derive(Debug)]
pub struct PublisherState {
    /// Who is calling, what the call may still spend, when it must end.
    pub call: CallContext,
    /// Memory and instance limits (counting the memory in the publisher's [`GuestCounters`]).
    pub limits: CountingLimits,
    table: ResourceTable,
    capabilities: CapabilityStates,
}

impl PublisherState {
    /// A fresh state for a new instance: every capability's state, memory capped at
    /// `memory_bytes`, counted in `counters` and in `all_live` (every live instance's).
    pub fn new(
        call: CallContext,
        capabilities: &ConfiguredCapabilities,
        memory_bytes: usize,
        (counters, all_live): (&GuestCounters, Arc<AtomicU64>),
    ) -> Self {
        let limits = StoreLimitsBuilder::new()
            .memory_size(memory_bytes)
            .instances(64)
            .tables(64)
            .memories(16)
            .trap_on_grow_failure(true)
            .build();
        let limits = counters.limiter(limits, all_live);
        let capabilities = capabilities.instance_states(&call);
        Self { call, limits, table: ResourceTable::new(), capabilities }
    }

    /// The state of the capability whose state type is `S`, with the call's context.
    pub fn view<S: 'static>(&mut self) -> CapabilityView<'_, S> {
        CapabilityView { state: self.capabilities.get_mut::<S>(), call: &self.call }
    }

    /// The capability states and the resource table at once (WASI and HTTP share the table).
    pub fn capabilities_and_table(&mut self) -> (&mut CapabilityStates, &mut ResourceTable) {
        (&mut self.capabilities, &mut self.table)
    }
}
