//! WASI 0.2, linked but empty: no files, no environment variables, no arguments, no sockets,
//! no name lookups. Wall and monotonic clocks and random numbers work; stdout and stderr go
//! to Broadcaster's log (see [`crate::guest_output`]), within the call's log budget.

use wasmtime::component::Linker;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::{CallContext, Capability, PublisherSetup};
use crate::guest_output::GuestOutput;
use crate::state::PublisherState;

/// The WASI environment every backend gets.
#[derive(Debug)]
pub struct EmptyWasi;

/// One instance's WASI context.
pub struct WasiState(WasiCtx);

impl std::fmt::Debug for WasiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasiState").finish_non_exhaustive()
    }
}

impl Capability for EmptyWasi {
    const GRANT: Option<&'static str> = None;
    const INTERFACES: &'static [&'static str] =
        &["wasi:cli/*", "wasi:clocks/*", "wasi:filesystem/*", "wasi:io/*", "wasi:random/*", "wasi:sockets/*"];
    type Grant = ();
    type Configured = ();
    type State = WasiState;

    fn configure(_grant: Option<()>, _publisher: &PublisherSetup<'_>) -> Result<(), String> {
        Ok(())
    }

    fn instance_state(_configured: &(), call: &CallContext) -> WasiState {
        WasiState(
            WasiCtx::builder()
                .stdout(GuestOutput::stdout(call))
                .stderr(GuestOutput::stderr(call))
                .allow_tcp(false)
                .allow_udp(false)
                .allow_ip_name_lookup(false)
                .build(),
        )
    }

    fn add_to_linker(linker: &mut Linker<PublisherState>) -> wasmtime::Result<()> {
        wasmtime_wasi::p2::add_to_linker_async(linker)
    }
}

impl WasiView for PublisherState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let (states, table) = self.capabilities_and_table();
        WasiCtxView { ctx: &mut states.get_mut::<WasiState>().0, table }
    }
}
