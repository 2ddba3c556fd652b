//! Which publisher an event goes to: the one its `publisher_backend` column names, and the
//! publisher called `default` when the column is empty (django-broadcaster writes `''` when
//! no backend is named). This rule is written here and nowhere else.

/// The name of the publisher that events with an empty `publisher_backend` go to.
pub const DEFAULT_PUBLISHER: &str = "default";

/// The publisher an event's `publisher_backend` names (`default` for an empty one).
pub fn publisher_for(publisher_backend: &str) -> &str {
    if publisher_backend.is_empty() { DEFAULT_PUBLISHER } else { publisher_backend }
}

/// The `publisher_backend` values under which events of publisher `name` may be stored: the
/// default publisher's events may be stored with an empty name. Always two values (the name
/// twice when there is only one), so a claim can bind both.
pub fn stored_names(name: &str) -> [&str; 2] {
    if name == DEFAULT_PUBLISHER { ["", DEFAULT_PUBLISHER] } else { [name, name] }
}

/// A `publisher_backend` value as a person reads it in a table: `default (empty)` for `''`.
pub fn display_stored(publisher_backend: &str) -> String {
    if publisher_backend.is_empty() { format!("{DEFAULT_PUBLISHER} (empty)") } else { publisher_backend.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_name_routes_to_the_default_publisher_and_is_stored_both_ways() {
        assert_eq!(publisher_for(""), "default");
        assert_eq!(publisher_for("tenant-a"), "tenant-a");
        assert_eq!(stored_names("default"), ["", "default"]);
        assert_eq!(stored_names("tenant-a"), ["tenant-a", "tenant-a"]);
        assert_eq!(display_stored(""), "default (empty)");
        assert_eq!(display_stored("audit"), "audit");
    }
}
