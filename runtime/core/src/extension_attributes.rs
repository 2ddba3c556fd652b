//! CloudEvents extension attributes an event may carry into the outbox (`traceparent`,
//! `tracestate`, a tenant's own): the rules every stored event's extensions pass, checked once
//! for HTTP ingest, `broadcaster publish` and the library's `enqueue`, and the W3C Trace
//! Context `traceparent` they may carry.
//!
//! The outbox keeps them in a side table (`broadcaster_event_extensions`, see
//! `broadcaster_outbox::extensions`); a stream entry gets one field per attribute after the seed's
//! fields ([`broadcaster_entry::stream_entry::fields`]).

use broadcaster_entry::stream_entry::RESERVED_FIELDS;

/// Most extension attributes one event may carry.
pub const MAX_EXTENSIONS: usize = 16;

/// Longest extension attribute name, in characters (the CloudEvents spec asks producers to
/// keep names to 20).
pub const MAX_NAME_CHARS: usize = 20;

/// Longest extension attribute value, in bytes of UTF-8.
pub const MAX_VALUE_BYTES: usize = 2048;

/// The name of the W3C Trace Context extension ([distributed tracing extension]).
///
/// [distributed tracing extension]: https://github.com/cloudevents/spec/blob/main/cloudevents/extensions/distributed-tracing.md
pub const TRACEPARENT: &str = "traceparent";

/// Why an event's extension attributes cannot be stored. The message names the attribute.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtensionError {
    /// More than [`MAX_EXTENSIONS`].
    #[error("{count} extension attributes; an event may carry at most {MAX_EXTENSIONS}")]
    TooMany {
        /// How many the event has.
        count: usize,
    },
    /// A name that is not lowercase ASCII letters and digits, 1 to 20 of them.
    #[error(
        "extension attribute {name:?}: a name is 1 to {MAX_NAME_CHARS} lowercase letters a-z or digits (CloudEvents)"
    )]
    BadName {
        /// The name, cut to 64 characters.
        name: String,
    },
    /// A value over [`MAX_VALUE_BYTES`].
    #[error("extension attribute `{name}` is {bytes} bytes; at most {MAX_VALUE_BYTES}")]
    TooLong {
        /// The attribute.
        name: String,
        /// Its value's length in bytes.
        bytes: usize,
    },
    /// A value holding a NUL character (PostgreSQL's `text` cannot hold it).
    #[error("extension attribute `{name}` holds a NUL character, which the outbox cannot store")]
    Nul {
        /// The attribute.
        name: String,
    },
    /// A name that would be written over another field of the stream entry.
    #[error(
        "extension attribute `{name}` collides with the stream field of the same name (reserved: event_id, \
         event_type, source, timestamp, cloud_event, and the event's publisher_config keys)"
    )]
    Collides {
        /// The attribute.
        name: String,
    },
    /// A `traceparent` that is not W3C Trace Context.
    #[error("extension attribute `traceparent`: {0}")]
    BadTraceparent(#[from] TraceparentError),
}

/// Checks an event's extension attributes: at most [`MAX_EXTENSIONS`], names per the
/// CloudEvents spec (a-z, 0-9, at most 20) and not those of the entry's other fields (the five
/// reserved ones, `publisher_config_keys`), values at most [`MAX_VALUE_BYTES`] without NUL,
/// `traceparent` in the W3C format.
pub fn check<'k>(
    extensions: &[(String, String)],
    publisher_config_keys: impl Iterator<Item = &'k String> + Clone,
) -> Result<(), ExtensionError> {
    if extensions.len() > MAX_EXTENSIONS {
        return Err(ExtensionError::TooMany { count: extensions.len() });
    }
    for (name, value) in extensions {
        let valid_name = !name.is_empty()
            && name.len() <= MAX_NAME_CHARS
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !valid_name {
            return Err(ExtensionError::BadName { name: name.chars().take(64).collect() });
        }
        if RESERVED_FIELDS.contains(&name.as_str()) || publisher_config_keys.clone().any(|key| key == name) {
            return Err(ExtensionError::Collides { name: name.clone() });
        }
        if value.len() > MAX_VALUE_BYTES {
            return Err(ExtensionError::TooLong { name: name.clone(), bytes: value.len() });
        }
        if value.contains('\0') {
            return Err(ExtensionError::Nul { name: name.clone() });
        }
        if name == TRACEPARENT {
            TraceParent::parse(value)?;
        }
    }
    Ok(())
}

/// Sorts extensions by name: the one order in which every event Broadcaster reads carries them
/// (the outbox reads them back sorted), so an entry does not depend on how the event arrived.
pub fn sort(extensions: &mut [(String, String)]) {
    extensions.sort_by(|a, b| a.0.cmp(&b.0));
}

/// A W3C Trace Context `traceparent`: `version-traceid-parentid-flags`, lowercase hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace id (16 bytes, not all zero).
    pub trace_id: [u8; 16],
    /// The caller's span id (8 bytes, not all zero): the parent of the relay's span.
    pub parent_id: [u8; 8],
    /// The trace flags (bit 0: sampled).
    pub flags: u8,
}

/// Why a `traceparent` is not W3C Trace Context.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a W3C traceparent (`00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, lowercase): {0}")]
pub struct TraceparentError(&'static str);

impl TraceParent {
    /// Parses a `traceparent` as the W3C Trace Context recommendation says: version `00`
    /// exactly 55 characters; a later version (not `ff`) may append `-…` after the flags.
    pub fn parse(text: &str) -> Result<Self, TraceparentError> {
        let bytes = text.as_bytes();
        if bytes.len() < 55 {
            return Err(TraceparentError("too short"));
        }
        let version = hex_bytes::<1>(&bytes[0..2]).ok_or(TraceparentError("the version is not 2 hex digits"))?[0];
        if version == 0xff {
            return Err(TraceparentError("version ff is invalid"));
        }
        if (version == 0 && bytes.len() != 55) || (bytes.len() > 55 && bytes[55] != b'-') {
            return Err(TraceparentError("wrong length for its version"));
        }
        if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return Err(TraceparentError("the parts are not separated by `-`"));
        }
        let trace_id = hex_bytes::<16>(&bytes[3..35]).ok_or(TraceparentError("the trace id is not 32 hex digits"))?;
        let parent_id = hex_bytes::<8>(&bytes[36..52]).ok_or(TraceparentError("the parent id is not 16 hex digits"))?;
        let flags = hex_bytes::<1>(&bytes[53..55]).ok_or(TraceparentError("the flags are not 2 hex digits"))?[0];
        if trace_id == [0; 16] {
            return Err(TraceparentError("the trace id is all zeros"));
        }
        if parent_id == [0; 8] {
            return Err(TraceparentError("the parent id is all zeros"));
        }
        Ok(Self { trace_id, parent_id, flags })
    }

    /// The `traceparent` of an event's extensions, when it has a valid one.
    pub fn of(extensions: &[(String, String)]) -> Option<Self> {
        extensions.iter().find(|(name, _)| name == TRACEPARENT).and_then(|(_, value)| Self::parse(value).ok())
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        to_hex(&self.trace_id)
    }

    /// The parent span id as 16 lowercase hex digits.
    pub fn parent_id_hex(&self) -> String {
        to_hex(&self.parent_id)
    }

    /// Whether the caller sampled the trace.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// `N` bytes from `2N` lowercase hex digits.
fn hex_bytes<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    fn value(digit: u8) -> Option<u8> {
        match digit {
            b'0'..=b'9' => Some(digit - b'0'),
            b'a'..=b'f' => Some(digit - b'a' + 10),
            _ => None,
        }
    }
    if digits.len() != 2 * N {
        return None;
    }
    let mut out = [0; N];
    for (byte, pair) in out.iter_mut().zip(digits.chunks(2)) {
        *byte = (value(pair[0])? << 4) | value(pair[1])?;
    }
    Some(out)
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    fn ext(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_w3c_traceparent_reads_as_its_ids_and_flags() {
        let tp = TraceParent::parse(TP).unwrap();
        assert_eq!(tp.trace_id_hex(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(tp.parent_id_hex(), "b7ad6b7169203331");
        assert!(tp.sampled());
        // A later version may carry more after the flags.
        assert!(TraceParent::parse(&format!("01{}-extra", &TP[2..])).is_ok());
    }

    #[test]
    fn a_traceparent_outside_the_format_is_refused_with_the_reason() {
        for (bad, reason) in [
            ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331", "too short"),
            ("00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01", "trace id"),
            ("00-00000000000000000000000000000000-b7ad6b7169203331-01", "all zeros"),
            ("00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01", "parent id is all zeros"),
            ("ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "version ff"),
            ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x", "length"),
            ("00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "separated"),
            ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0g", "flags"),
        ] {
            let err = TraceParent::parse(bad).unwrap_err().to_string();
            assert!(err.contains(reason), "{bad}: {err}");
        }
    }

    #[test]
    fn names_values_and_count_are_bounded() {
        let none: [String; 0] = [];
        assert!(check(&ext(&[("traceparent", TP), ("tenant", "a"), ("x1", "")]), none.iter()).is_ok());
        for (name, expected) in [("Tenant", "lowercase"), ("ten_ant", "lowercase"), ("", "lowercase")] {
            let err = check(&ext(&[(name, "v")]), none.iter()).unwrap_err().to_string();
            assert!(err.contains(expected), "{name}: {err}");
        }
        let long_name = "a".repeat(21);
        assert!(matches!(check(&ext(&[(&long_name, "v")]), none.iter()), Err(ExtensionError::BadName { .. })));
        let long_value = "v".repeat(MAX_VALUE_BYTES + 1);
        let err = check(&ext(&[("big", &long_value)]), none.iter()).unwrap_err();
        assert_eq!(err, ExtensionError::TooLong { name: "big".into(), bytes: MAX_VALUE_BYTES + 1 });
        let many: Vec<(String, String)> = (0..=MAX_EXTENSIONS).map(|i| (format!("x{i}"), "v".into())).collect();
        assert_eq!(check(&many, none.iter()), Err(ExtensionError::TooMany { count: MAX_EXTENSIONS + 1 }));
        assert!(matches!(check(&ext(&[("n", "a\0b")]), none.iter()), Err(ExtensionError::Nul { .. })));
        let err = check(&ext(&[("traceparent", "nope")]), none.iter()).unwrap_err().to_string();
        assert!(err.starts_with("extension attribute `traceparent`: not a W3C traceparent"), "{err}");
    }

    #[test]
    fn a_name_of_another_stream_field_is_refused() {
        let none: [String; 0] = [];
        assert!(matches!(check(&ext(&[("timestamp", "t")]), none.iter()), Err(ExtensionError::Collides { .. })));
        let keys = ["tenant".to_string()];
        let err = check(&ext(&[("tenant", "a")]), keys.iter()).unwrap_err();
        assert_eq!(err, ExtensionError::Collides { name: "tenant".into() });
    }
}
