//! Durations and byte sizes as people write them in config files.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// A duration: a number of seconds (`5`, `0.25`) or a string with a unit (`"250ms"`,
/// `"2s"`, `"1m"`, `"1h"`, `"7d"`; a bare number in a string means seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seconds(pub Duration);

/// A byte count: a number of bytes or a string with a unit (`"64MiB"`, `"512KiB"`,
/// `"1GiB"`, `"10MB"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

/// Parses `"250ms"`, `"2s"`, `"1.5s"`, `"3m"`, `"1h"`, `"7d"` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| {
        format!("{text:?} is not a duration; write e.g. \"250ms\", \"5s\", \"1m\" or a number of seconds")
    })?;
    let seconds = match unit.trim() {
        "" | "s" | "sec" | "secs" => number,
        "ms" => number / 1000.0,
        "us" | "µs" => number / 1_000_000.0,
        "m" | "min" => number * 60.0,
        "h" => number * 3600.0,
        "d" => number * 86_400.0,
        other => return Err(format!("{text:?}: unknown unit {other:?} (use ms, s, m, h or d)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("{text:?} is out of range"))
}

/// Parses `"64MiB"`, `"10MB"`, `"512KiB"`, `"1GiB"` or a bare number of bytes.
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size; write e.g. \"64MiB\", \"512KiB\" or a number of bytes"))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "kib" | "k" => 1024,
        "mb" => 1000 * 1000,
        "mib" | "m" => 1024 * 1024,
        "gb" => 1000 * 1000 * 1000,
        "gib" | "g" => 1024 * 1024 * 1024,
        other => {
            return Err(format!("{text:?}: unknown unit {other:?} (use B, KiB, MiB, GiB, KB, MB or GB)"));
        }
    };
    let bytes = number * multiplier as f64;
    if !(0.0..=u64::MAX as f64).contains(&bytes) {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(bytes as u64)
}

/// A quantity written as a number or as text with a unit; one visitor reads them all.
trait Quantity: Sized {
    /// What a value should look like, for messages.
    const EXPECTING: &'static str;
    /// Why a negative number is refused.
    const NEGATIVE: &'static str;
    fn from_whole(value: u64) -> Self;
    fn from_fraction(value: f64) -> Result<Self, String>;
    fn from_text(text: &str) -> Result<Self, String>;
}

impl Quantity for Seconds {
    const EXPECTING: &'static str = "a duration such as \"250ms\", \"5s\" or a number of seconds";
    const NEGATIVE: &'static str = "a duration cannot be negative";
    fn from_whole(value: u64) -> Self {
        Seconds(Duration::from_secs(value))
    }
    fn from_fraction(value: f64) -> Result<Self, String> {
        Duration::try_from_secs_f64(value).map(Seconds).map_err(|_| Self::NEGATIVE.to_string())
    }
    fn from_text(text: &str) -> Result<Self, String> {
        parse_duration(text).map(Seconds)
    }
}

impl Quantity for ByteSize {
    const EXPECTING: &'static str = "a size such as \"64MiB\" or a number of bytes";
    const NEGATIVE: &'static str = "a size cannot be negative";
    fn from_whole(value: u64) -> Self {
        ByteSize(value)
    }
    fn from_fraction(value: f64) -> Result<Self, String> {
        Err(format!("{value} is not a whole number of bytes; write a size such as \"1.5MiB\""))
    }
    fn from_text(text: &str) -> Result<Self, String> {
        parse_byte_size(text).map(ByteSize)
    }
}

struct QuantityVisitor<Q>(std::marker::PhantomData<Q>);

impl<Q: Quantity> Visitor<'_> for QuantityVisitor<Q> {
    type Value = Q;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Q::EXPECTING)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Q, E> {
        u64::try_from(v).map(Q::from_whole).map_err(|_| E::custom(Q::NEGATIVE))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Q, E> {
        Ok(Q::from_whole(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Q, E> {
        Q::from_fraction(v).map_err(E::custom)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Q, E> {
        Q::from_text(v).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(QuantityVisitor(std::marker::PhantomData))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(QuantityVisitor(std::marker::PhantomData))
    }
}

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b >= 1 << 30 && b.is_multiple_of(1 << 30) {
            write!(f, "{}GiB", b >> 30)
        } else if b >= 1 << 20 && b.is_multiple_of(1 << 20) {
            write!(f, "{}MiB", b >> 20)
        } else if b >= 1 << 10 && b.is_multiple_of(1 << 10) {
            write!(f, "{}KiB", b >> 10)
        } else {
            write!(f, "{b}B")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_units_and_bare_seconds() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(7 * 86_400));
        assert_eq!(parse_duration("3m").unwrap(), Duration::from_secs(180));
        assert!(parse_duration("fast").unwrap_err().contains("not a duration"));
        assert!(parse_duration("5 weeks").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn sizes_accept_binary_and_decimal_units() {
        assert_eq!(parse_byte_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_byte_size("10MB").unwrap(), 10_000_000);
        assert_eq!(parse_byte_size("4096").unwrap(), 4096);
        assert_eq!(parse_byte_size("1.5KiB").unwrap(), 1536);
        assert!(parse_byte_size("lots").is_err());
        assert_eq!(ByteSize(64 << 20).to_string(), "64MiB");
    }
}
