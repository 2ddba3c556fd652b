//! The Redis Stream entry and the CloudEvent JSON exactly as django-broadcaster 0.1.1 writes
//! them, shared by Broadcaster's native backend (the host) and by backends compiled to
//! WebAssembly (through `broadcaster-guest`), so both produce the same bytes.
//!
//! # Layout
//! - [`pyjson`]: JSON text rendered the way Python's `json.dumps` renders it.
//! - [`cloud_event`]: the seed's `OutboxEvent.to_cloud_event()` as JSON text.
//! - [`glob`]: the `*`/`?` patterns of grants and routes.
//! - [`stream_entry`]: the fields of the seed's `XADD` (`event_id`, `event_type`, `source`,
//!   `timestamp`, `cloud_event`, then the `publisher_config` extras).
//!
//! # Example
//! ```
//! use broadcaster_entry::{CloudEvent, EventData, stream_entry};
//!
//! let event = CloudEvent {
//!     id: "6f1c2b52-3f3c-4d5e-9a1b-2c3d4e5f6a7b",
//!     source: "shop",
//!     specversion: "1.0",
//!     event_type: "order.created",
//!     time: Some("2026-11-29T10:00:00+00:00"),
//!     subject: None,
//!     datacontenttype: Some("application/json"),
//!     dataschema: None,
//!     data: Some(EventData::JsonText(r#"{"total": 12.5}"#)),
//!     extensions: &[],
//! };
//! let json = event.to_json();
//! assert_eq!(
//!     json,
//!     r#"{"specversion": "1.0", "type": "order.created", "source": "shop", "id": "6f1c2b52-3f3c-4d5e-9a1b-2c3d4e5f6a7b", "time": "2026-11-29T10:00:00+00:00", "datacontenttype": "application/json", "data": {"total": 12.5}}"#
//! );
//! let fields = stream_entry::fields(&event, vec![("tenant".into(), "a".into())]).unwrap();
//! assert_eq!(fields[0], ("event_id".to_string(), event.id.to_string()));
//! assert_eq!(fields[5], ("tenant".to_string(), "a".to_string()));
//! ```
#![deny(missing_docs)]

pub mod cloud_event;
pub mod glob;
pub mod pyjson;
pub mod stream_entry;

pub use cloud_event::{CloudEvent, EventData};
pub use stream_entry::FieldCollision;
