//! What publishing an event, or asking a publisher about its health, comes to. A leaf module:
//! the native backend (`broadcaster_redis::native`) and the wasm host (`broadcaster_host`) both answer
//! in these terms without knowing each other.

/// Why an event was not published. The relay retries a transient error with backoff and
/// fails the event at once on a permanent one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The destination is unreachable, busy, or timed out; try again later.
    #[error("transient: {0}")]
    Transient(String),
    /// The event can never be published by this publisher.
    #[error("permanent: {0}")]
    Permanent(String),
    /// The backend trapped (a panic, a limit hit, a missed deadline) while publishing this
    /// event; its instance was replaced. Counts as a failed attempt, like a transient error,
    /// but the event is not held back when the publisher then reports itself degraded.
    #[error("trapped: {0} (instance recycled)")]
    Trapped(String),
}

impl PublishError {
    /// Whether a retry can succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient(_) | Self::Trapped(_))
    }

    /// The message without its kind.
    pub fn message(&self) -> &str {
        match self {
            Self::Transient(m) | Self::Permanent(m) | Self::Trapped(m) => m,
        }
    }
}

/// What happened to one event of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// It was tried: published, or refused.
    Done(Result<(), PublishError>),
    /// It was not tried (an earlier event of the batch failed transiently, or the publisher
    /// was stopped or is down).
    NotAttempted,
}

/// A publisher's answer to a health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Whether it can publish now.
    pub healthy: bool,
    /// Why not, or what it is connected to. Never contains a secret.
    pub detail: String,
    /// A component publisher with no instance now (none needed yet, or dropped after its
    /// idle timeout or for room): healthy as far as anyone knows, not checked.
    pub idle: bool,
}

impl Health {
    /// Healthy, with a note.
    pub fn up(detail: impl Into<String>) -> Self {
        Self { healthy: true, detail: detail.into(), idle: false }
    }

    /// Idle: no instance to check (see [`Health::idle`](Self#structfield.idle)); healthy.
    pub fn idle(detail: impl Into<String>) -> Self {
        Self { healthy: true, detail: detail.into(), idle: true }
    }

    /// Unhealthy, with the reason.
    pub fn down(detail: impl Into<String>) -> Self {
        Self { healthy: false, detail: detail.into(), idle: false }
    }
}
