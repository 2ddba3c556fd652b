//! The WebAssembly host: runs backend components, one sandboxed instance per publisher.
//!
//! - [`engine`]: the wasmtime engine, the linker, and the epoch ticker behind call deadlines.
//! - [`component`]: loading a `.wasm` and checking it against the `publisher` world (of
//!   contract 0.1.0 or 0.2.0) and the capability table.
//! - [`publisher`]: a running component publisher (set-up from its configuration, calls,
//!   health, stop); [`batch`]: a batch in one `publish-batch` call (contract 0.2.0);
//!   [`instance`]: its instance's lifecycle and supervision (the breaker);
//!   [`live_instances`]: the bound on live instances across publishers (made when needed,
//!   least recently used dropped first, idle timeout).
//! - [`lanes`]: where guest code runs and how the CPU is shared between tenants.
//! - [`wit_event`]: an event as a backend sees it.
//! - [`state`]: what each publisher's store holds.
//! - [`capabilities`]: the host imports, one module per capability, in one table.
//! - [`guest_counters`]: traps by cause, starts, breaker openings and memory, for `/metrics`.
//! - [`guest_output`]: where a backend's log lines and stdout/stderr go.
//! - [`budget`]: what one call may spend on host calls and logs; [`secrets`]: option secrets
//!   and their redaction (from `broadcaster-core`, re-exported).
//!
//! # Extending it
//! A new host capability is a module under [`capabilities`] (its grant's shape, the WIT
//! interface it implements, `configure`, per-instance state, `add_to_linker`) and one line in
//! the capability table there; the linker, the import check, the grant check and
//! `broadcaster check` follow from the table. Its WIT goes in a new contract version under
//! `wit/`. The host knows publishers by their configuration (`broadcaster-config`) and reaches
//! Redis through `broadcaster-redis`; it knows nothing of the outbox, the relay or the server.
//!
//! # Example
//! Check a component the way `broadcaster check` does:
//! ```no_run
//! use broadcaster_host::{HostEngine, LoadedComponent};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let engine = HostEngine::new()?;
//! let component = LoadedComponent::load(&engine, "components/router.wasm".as_ref())?;
//! println!("a backend for broadcaster:backend@{}", component.version);
//! for needed in component.required_grants() {
//!     println!("needs grant `{}` for {}", needed.key(), needed.import);
//! }
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

pub mod batch;
pub mod bindings;
pub mod budget;
pub mod capabilities;
pub mod component;
pub mod engine;
pub mod guest_counters;
pub mod guest_output;
pub mod instance;
pub mod lanes;
pub mod live_instances;
pub mod publisher;
pub use broadcaster_core::secrets;
pub mod state;
pub mod wit_event;

pub use budget::{CallBudget, CallLimits, LimitExceeded};
pub use component::{ComponentError, ContractVersion, LoadedComponent, SUPPORTED_VERSIONS};
pub use engine::{EngineError, EngineSettings, HostEngine};
pub use guest_counters::{GuestCounters, TrapCause};
pub use live_instances::LiveInstances;
pub use publisher::{ComponentPublisher, ComponentSettings, ComponentSetupError, FAST_BATCH, StartError};
