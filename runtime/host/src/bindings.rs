//! Rust bindings for the `broadcaster:backend/publisher` world, generated from `wit/`: one
//! module per contract version the host supports. The 0.2.0 bindings reuse the 0.1.0 types
//! (the `types` interface is the same in both), so an event is converted once whatever the
//! component's version.
#![allow(missing_docs, missing_debug_implementations)]

/// `broadcaster:backend@0.1.0`: `publish` once per event.
pub mod v0_1 {
    wasmtime::component::bindgen!({
        path: "../../wit/backend@0.1.0",
        world: "publisher",
        imports: { default: async | trappable },
        exports: { default: async },
    });
}

/// `broadcaster:backend@0.2.0`: adds `publish-batch` and `redis-stream.xadd-batch`.
pub mod v0_2 {
    wasmtime::component::bindgen!({
        path: "../../wit/backend@0.2.0",
        world: "publisher",
        imports: { default: async | trappable },
        exports: { default: async },
        with: { "broadcaster:backend/types@0.2.0": super::v0_1::broadcaster::backend::types },
    });
}

pub use self::v0_1::broadcaster::backend::log::Level;
pub use self::v0_1::broadcaster::backend::redis_stream::Error as RedisStreamError;
pub use self::v0_1::broadcaster::backend::types::{CloudEvent, EventData, OutboxEvent, PublishError};
