//! The stream names a `redis` grant allows, as [`broadcaster_entry::glob`] patterns.

/// A set of stream name patterns; a name is allowed when any pattern matches it whole.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamPatterns(Vec<String>);

impl StreamPatterns {
    /// The patterns as written in the grant.
    pub fn new(patterns: impl IntoIterator<Item = String>) -> Self {
        Self(patterns.into_iter().collect())
    }

    /// Whether `stream` matches one of the patterns.
    pub fn allows(&self, stream: &str) -> bool {
        self.0.iter().any(|pattern| broadcaster_entry::glob::matches(pattern, stream))
    }

    /// The patterns, for messages.
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_allowed_when_any_pattern_matches() {
        let patterns = StreamPatterns::new(["tenant-a:*".to_string(), "audit".to_string()]);
        assert!(patterns.allows("tenant-a:orders"));
        assert!(patterns.allows("audit"));
        assert!(!patterns.allows("tenant-b:orders"));
    }

    #[test]
    fn no_patterns_allow_nothing() {
        assert!(!StreamPatterns::default().allows("anything"));
    }
}
