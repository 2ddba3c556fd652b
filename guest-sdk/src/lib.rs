//! Write Broadcaster publisher backends in Rust.
//!
//! A backend is a WebAssembly component that Broadcaster runs once per publisher name. You
//! implement [`Backend`] (options in, events out) and call [`export_backend!`]; build with
//! `cargo build --release --target wasm32-wasip2` and point a publisher at the `.wasm`.
//!
//! Backends built with this crate implement `broadcaster:backend@0.2.0`: the host hands them
//! a whole batch at once ([`Backend::publish_batch`], which by default calls
//! [`Backend::publish`] for each event), so a backend that can send a batch in one round trip
//! (like [`redis_stream::xadd_batch`]) does.
//!
//! What the host offers, and only when the operator granted it to the publisher:
//! - [`redis_stream`]: append entries to Redis Streams (the connection and the allowed
//!   stream names come from `[publishers.<name>.grants] redis`; you never see them), one
//!   entry at a time or a batch in one round trip;
//! - [`log`]: write to Broadcaster's log, tagged with the publisher's name.
//!
//! [`to_cloud_event`] and [`stream_fields`] render an event exactly as django-broadcaster's
//! Redis Stream backend does, so a component can write the same entries as the native one
//! (an event's extension attributes, `traceparent` among them, are one field each after the
//! seed's, as the native backend writes them).
//!
//! # Example: the seed's Redis Stream backend as a component
//!
//! ```no_run
//! use broadcaster_guest::{Backend, OutboxEvent, PublishError, export_backend, redis_stream};
//!
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Options {
//!     #[serde(default = "default_stream")]
//!     stream_name: String,
//!     #[serde(default = "default_max_len")]
//!     max_len: u64,
//! }
//! fn default_stream() -> String { "events".into() }
//! fn default_max_len() -> u64 { 10_000 }
//!
//! struct Streamer(Options);
//!
//! impl Backend for Streamer {
//!     type Options = Options;
//!
//!     fn init(options: Options) -> Result<Self, String> {
//!         if options.stream_name.is_empty() {
//!             return Err("option `stream_name`: cannot be empty".into());
//!         }
//!         Ok(Streamer(options))
//!     }
//!
//!     fn publish(&mut self, event: &OutboxEvent) -> Result<(), PublishError> {
//!         let fields = broadcaster_guest::stream_fields(event)?;
//!         redis_stream::xadd(&self.0.stream_name, &fields, Some(self.0.max_len))?;
//!         Ok(())
//!     }
//!
//!     fn health_check(&mut self) -> bool {
//!         redis_stream::ping().is_ok()
//!     }
//! }
//!
//! export_backend!(Streamer);
//! # fn main() {}
//! ```
#![deny(missing_docs)]

extern crate self as broadcaster_guest;

mod seed_format;
mod state;

pub use broadcaster_entry::glob::matches as glob_match;
pub use seed_format::{data_json, stream_fields, to_cloud_event};

#[doc(hidden)]
pub mod __private {
    pub use crate::bindings::export as export_publisher;
    pub use crate::bindings::exports::broadcaster::backend::backend::Guest;
    pub use crate::state::{health_check, init, publish, publish_batch};
    pub use wit_bindgen;
}

#[allow(missing_docs, clippy::all, unsafe_code)]
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit/backend@0.2.0",
        world: "publisher",
        pub_export_macro: true,
        default_bindings_module: "broadcaster_guest::bindings",
        runtime_path: "broadcaster_guest::__private::wit_bindgen::rt",
        generate_all,
    });
}

pub use bindings::broadcaster::backend::types::{CloudEvent, EventData, OutboxEvent, PublishError};

/// A backend: built once per publisher from its options, then asked to publish batches of
/// events.
///
/// Keep no state you cannot rebuild from the options: after a trap (a panic, a limit hit)
/// the host throws the instance away and calls [`Backend::init`] again on a fresh one.
pub trait Backend: Sized + 'static {
    /// The publisher's `[publishers.<name>.options]`, deserialized from JSON. Use
    /// `#[serde(deny_unknown_fields)]` so a misspelt option is reported.
    type Options: serde::de::DeserializeOwned;

    /// Validates the options and builds the backend. An `Err` is shown to the operator and
    /// the publisher does not start: name the option and what was expected.
    fn init(options: Self::Options) -> Result<Self, String>;

    /// Publishes one event. Return [`PublishError::Transient`] when a retry can help,
    /// [`PublishError::Permanent`] when it cannot.
    fn publish(&mut self, event: &OutboxEvent) -> Result<(), PublishError>;

    /// Publishes a batch of events (never empty), in order, returning one result per event
    /// in the same order. A shorter list means the events past its end were not attempted
    /// (they wait, with no retry spent, for a later batch). Stop at the first transient
    /// error: the host treats every event after it as not attempted anyway. More results than
    /// events is a bug that the host handles like a trap.
    ///
    /// The default calls [`Backend::publish`] for each event and stops after the first
    /// transient error. Override it when the destination takes a batch at once; see
    /// [`redis_stream::xadd_batch`] and [`until_transient`].
    fn publish_batch(&mut self, events: &[OutboxEvent]) -> Vec<Result<(), PublishError>> {
        let mut results = Vec::with_capacity(events.len());
        for event in events {
            let result = self.publish(event);
            let transient = matches!(result, Err(PublishError::Transient(_)));
            results.push(result);
            if transient {
                break;
            }
        }
        results
    }

    /// Whether the backend can publish now; called on an interval. Defaults to `true`.
    fn health_check(&mut self) -> bool {
        true
    }
}

/// Cuts `results` after the first transient error: what a batch should return when it has
/// attempted every event at once (the host would not trust the rest).
pub fn until_transient(mut results: Vec<Result<(), PublishError>>) -> Vec<Result<(), PublishError>> {
    if let Some(first) = results.iter().position(|r| matches!(r, Err(PublishError::Transient(_)))) {
        results.truncate(first + 1);
    }
    results
}

/// Exports a [`Backend`] implementation as the component's `broadcaster:backend/backend`.
///
/// Call it once in a `cdylib` crate, with the type implementing [`Backend`]:
/// `export_backend!(MyBackend);`
#[macro_export]
macro_rules! export_backend {
    ($backend:ty) => {
        const _: () = {
            struct __BroadcasterBackend;
            impl $crate::__private::Guest for __BroadcasterBackend {
                fn init(options: ::std::string::String) -> ::std::result::Result<(), ::std::string::String> {
                    $crate::__private::init::<$backend>(&options)
                }
                fn publish(event: $crate::OutboxEvent) -> ::std::result::Result<(), $crate::PublishError> {
                    $crate::__private::publish::<$backend>(&event)
                }
                fn publish_batch(
                    events: ::std::vec::Vec<$crate::OutboxEvent>,
                ) -> ::std::vec::Vec<::std::result::Result<(), $crate::PublishError>> {
                    $crate::__private::publish_batch::<$backend>(&events)
                }
                fn health_check() -> bool {
                    $crate::__private::health_check::<$backend>()
                }
            }
    $crate::__private::export_publisher!(__BroadcasterBackend with_types_in $crate::bindings);
        };
    };
}

/// Appending to Redis Streams through the publisher's `redis` grant.
pub mod redis_stream {
    use crate::PublishError;
    use crate::bindings::broadcaster::backend::redis_stream as raw;

    pub use raw::{Error, XaddEntry};

    /// The most entries [`xadd_batch`] passes in one host call: the host's default
    /// `limits.xadd_batch_entries`.
    pub const BATCH_ENTRIES: usize = 1000;

    /// The most bytes (stream names, field names and values) [`xadd_batch`] passes in one
    /// host call: the host's default `limits.xadd_batch_bytes`.
    pub const BATCH_BYTES: usize = 16 << 20;

    /// `XADD <stream> [MAXLEN ~ <max_len>] * <fields…>`; returns the new entry's id.
    ///
    /// Fails with [`Error::StreamDenied`] for a stream outside the grant's patterns, and
    /// [`Error::NotGranted`] when the publisher has no `redis` grant; neither traps.
    pub fn xadd(stream: &str, fields: &[(String, String)], max_len: Option<u64>) -> Result<String, Error> {
        raw::xadd(stream, fields, max_len)
    }

    /// Appends `entries` in as few round trips as the host allows: one `xadd-batch` (a
    /// pipeline of `XADD`s) per [`BATCH_ENTRIES`] entries or [`BATCH_BYTES`] bytes. Returns
    /// one result per entry, in order: its id, or why it was not written (each entry on its
    /// own: a stream outside the grant fails only its entry; Redis unavailable fails every
    /// entry of the round trip).
    ///
    /// When the operator set the host's batch limits lower than these and the host refuses
    /// a round trip as too large, its entries are appended one `xadd` at a time instead.
    pub fn xadd_batch(entries: &[XaddEntry]) -> Vec<Result<String, Error>> {
        let mut results = Vec::with_capacity(entries.len());
        let mut rest = entries;
        while !rest.is_empty() {
            let (mut count, mut bytes) = (0, 0);
            for entry in rest.iter().take(BATCH_ENTRIES) {
                let size = entry.stream.len() + entry.fields.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
                if count > 0 && bytes + size > BATCH_BYTES {
                    break;
                }
                (count, bytes) = (count + 1, bytes + size);
            }
            let (chunk, later) = rest.split_at(count);
            match raw::xadd_batch(chunk) {
                Ok(replies) => results.extend(replies),
                Err(Error::Rejected(_)) if chunk.len() > 1 => {
                    results.extend(chunk.iter().map(|e| raw::xadd(&e.stream, &e.fields, e.max_len)));
                }
                Err(err) => results.extend(chunk.iter().map(|_| Err(err.clone()))),
            }
            rest = later;
        }
        results
    }

    /// `PING`: whether the granted Redis answers.
    pub fn ping() -> Result<(), Error> {
        raw::ping()
    }

    /// A sentence for people: what went wrong.
    pub fn describe(err: &Error) -> String {
        match err {
            Error::NotGranted => "this publisher has no `redis` grant".to_string(),
            Error::StreamDenied(stream) => {
                format!("stream {stream:?} is outside the streams granted to this publisher")
            }
            Error::Unavailable(message) => format!("Redis is unavailable: {message}"),
            Error::Rejected(message) => format!("Redis rejected the entry: {message}"),
        }
    }

    /// An unavailable Redis is worth retrying; everything else is permanent.
    impl From<Error> for PublishError {
        fn from(err: Error) -> Self {
            match &err {
                Error::Unavailable(_) => PublishError::Transient(describe(&err)),
                _ => PublishError::Permanent(describe(&err)),
            }
        }
    }
}

/// Writing to Broadcaster's log; each line is tagged with the publisher's name.
pub mod log {
    use crate::bindings::broadcaster::backend::log::{Level, log};

    /// Logs at `trace`.
    pub fn trace(message: &str) {
        log(Level::Trace, message);
    }
    /// Logs at `debug`.
    pub fn debug(message: &str) {
        log(Level::Debug, message);
    }
    /// Logs at `info`.
    pub fn info(message: &str) {
        log(Level::Info, message);
    }
    /// Logs at `warn`.
    pub fn warn(message: &str) {
        log(Level::Warn, message);
    }
    /// Logs at `error`.
    pub fn error(message: &str) {
        log(Level::Error, message);
    }
}
