//! `broadcaster:backend/log`: a backend's log lines, written to Broadcaster's log with the
//! publisher's name (see [`crate::guest_output`]). Every backend has it.
//!
//! The message is read from the guest's memory only after its length has been charged to
//! the call's budget (`limits.log_bytes`, `limits.host_call_bytes`), so a message of any size
//! costs the host no more than the budget allows.

use wasmtime::component::{Linker, WasmStr};

use super::{CallContext, Capability, PublisherSetup};
use crate::bindings::Level;
use crate::component::SUPPORTED_VERSIONS;
use crate::guest_output::emit;
use crate::state::PublisherState;

/// The `log` capability.
#[derive(Debug)]
pub struct GuestLog;

impl Capability for GuestLog {
    const GRANT: Option<&'static str> = None;
    const INTERFACES: &'static [&'static str] = &["broadcaster:backend/log"];
    type Grant = ();
    type Configured = ();
    type State = ();

    fn configure(_grant: Option<()>, _publisher: &PublisherSetup<'_>) -> Result<(), String> {
        Ok(())
    }

    fn instance_state(_configured: &(), _call: &CallContext) {}

    fn add_to_linker(linker: &mut Linker<PublisherState>) -> wasmtime::Result<()> {
        // The same `log` in every contract version.
        for version in SUPPORTED_VERSIONS {
            let mut instance = linker.instance(&format!("broadcaster:backend/log@{version}"))?;
            instance.func_wrap("log", |store, (level, message): (Level, WasmStr)| {
                let message = message.to_str(&store)?;
                let call = &store.data().call;
                call.budget.charge_host_call(message.len())?;
                call.budget.charge_log_bytes(message.len())?;
                call.budget.charge_log_line()?;
                emit(&call.publisher, &call.log_rate, level, &call.redactor.redact(&message));
                Ok(())
            })?;
        }
        Ok(())
    }
}
