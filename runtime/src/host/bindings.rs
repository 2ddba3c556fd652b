//! Rust bindings for the `broadcaster:backend/publisher` world, generated from `wit/`.
#![allow(missing_docs, missing_debug_implementations)]

wasmtime::component::bindgen!({
    path: "../wit/backend@0.1.0",
    world: "publisher",
    imports: { default: async | trappable },
    exports: { default: async },
});

pub use self::broadcaster::backend::log::Level;
pub use self::broadcaster::backend::redis_stream::Error as RedisStreamError;
pub use self::broadcaster::backend::types::{CloudEvent, EventData, OutboxEvent, PublishError};
