//! The one backend instance of this component, and the glue from the WIT exports to the
//! [`Backend`] trait.

use std::any::Any;
use std::cell::RefCell;

use crate::{Backend, OutboxEvent, PublishError};

thread_local! {
    // A component instance is single-threaded; the host calls one export at a time.
    static INSTANCE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

/// `init(options)`: deserializes the options and builds the backend.
pub fn init<B: Backend>(options: &str) -> Result<(), String> {
    let mut deserializer = serde_json::Deserializer::from_str(options);
    let parsed: B::Options = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        if path == "." {
            format!("options: {}", err.into_inner())
        } else {
            format!("option `{path}`: {}", err.into_inner())
        }
    })?;
    let backend = B::init(parsed)?;
    INSTANCE.with(|cell| *cell.borrow_mut() = Some(Box::new(backend)));
    Ok(())
}

fn with_backend<B: Backend, R>(f: impl FnOnce(&mut B) -> R) -> Option<R> {
    INSTANCE.with(|cell| {
        let mut slot = cell.borrow_mut();
        slot.as_mut().and_then(|b| b.downcast_mut::<B>()).map(f)
    })
}

/// `publish(event)`.
pub fn publish<B: Backend>(event: &OutboxEvent) -> Result<(), PublishError> {
    with_backend::<B, _>(|backend| backend.publish(event))
        .unwrap_or_else(|| Err(PublishError::Transient("publish called before init".into())))
}

/// `publish-batch(events)`.
pub fn publish_batch<B: Backend>(events: &[OutboxEvent]) -> Vec<Result<(), PublishError>> {
    with_backend::<B, _>(|backend| backend.publish_batch(events))
        .unwrap_or_else(|| vec![Err(PublishError::Transient("publish-batch called before init".into()))])
}

/// `health-check()`.
pub fn health_check<B: Backend>() -> bool {
    with_backend::<B, _>(|backend| backend.health_check()).unwrap_or(false)
}
