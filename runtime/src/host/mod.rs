//! The WebAssembly host: runs backend components, one sandboxed instance per publisher.
//!
//! - [`engine`]: the wasmtime engine, the linker, and the epoch ticker behind call deadlines.
//! - [`component`]: loading a `.wasm` and checking it against the `publisher` world.
//! - [`publisher`]: a running component publisher (instance lifecycle, calls, recycling).
//! - [`state`]: what each publisher's store holds (empty WASI, capabilities, limits).
//! - [`redis_capability`], [`http_capability`], [`log_capability`]: the host imports,
//!   bound per publisher to its grants.
//! - [`budget`]: what one call may spend on host calls and logs; [`secrets`]: option secrets
//!   and their redaction.
//! - [`stream_patterns`]: the stream-name globs of a `redis` grant.

pub mod bindings;
pub mod budget;
pub mod component;
pub mod engine;
pub mod http_capability;
pub mod log_capability;
pub mod publisher;
pub mod redis_capability;
pub mod secrets;
pub mod state;
pub mod stream_patterns;

pub use budget::{CallBudget, CallLimits, LimitExceeded};
pub use component::{ComponentError, LoadedComponent, SUPPORTED_VERSIONS};
pub use engine::{EngineError, EngineSettings, HostEngine};
pub use publisher::{ComponentPublisher, ComponentSettings, StartError};
pub use redis_capability::RedisCapability;
pub use stream_patterns::StreamPatterns;
