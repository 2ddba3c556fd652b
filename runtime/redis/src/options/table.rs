//! Reading a [`RedisConnection`] out of a table it shares with its owner's keys (a grant's
//! `streams`, the native backend's `stream_name`), as if the two were one struct with
//! `deny_unknown_fields`.
//!
//! `#[serde(flatten)]` cannot do this: it does not work with `deny_unknown_fields`, and it
//! buffers the values, so an error below a key (`tls.ca_fil`) loses its path. Here each key is
//! read where it stands: the connection's into the [`RedisConnection`], the owner's handed to
//! the owner's derived `Deserialize` through a map that holds only them. A key of neither is
//! refused while it is read, so `serde_path_to_error` names it, and the message lists every
//! key of the table, as a derived struct's does.

use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, Visitor};

use super::RedisConnection;
use broadcaster_core::units::Seconds;

/// The keys of a [`RedisConnection`]: its address and credentials, then its two timeouts (a
/// table's own keys go between them in messages, where they have always been listed).
pub const CONNECTION_KEYS: [&str; 13] = [
    "host",
    "port",
    "db",
    "url",
    "username",
    "password",
    "tls",
    "max_memory_ratio",
    "wait_replicas",
    "sentinel",
    "cluster",
    "connect_timeout",
    "socket_timeout",
];

/// How many of [`CONNECTION_KEYS`] end the list of a table's keys.
const TIMEOUT_KEYS: usize = 2;

/// Every key of a table that holds a connection beside `own` keys, in the order the message
/// refusing an unknown key lists them: the connection's, `own`, then the timeouts. `N` is
/// `CONNECTION_KEYS.len() + own.len()`; another `N` fails to compile (the `static` holding
/// the list is evaluated at compile time).
pub const fn keys_beside_connection<const N: usize>(own: &[&'static str]) -> [&'static str; N] {
    assert!(N == CONNECTION_KEYS.len() + own.len(), "N counts the connection's keys and the table's own");
    let before_own = CONNECTION_KEYS.len() - TIMEOUT_KEYS;
    let mut keys = [""; N];
    let mut i = 0;
    while i < N {
        keys[i] = if i < before_own {
            CONNECTION_KEYS[i]
        } else if i < before_own + own.len() {
            own[i - before_own]
        } else {
            CONNECTION_KEYS[i - own.len()]
        };
        i += 1;
    }
    keys
}

/// Reads a table of a connection's keys beside the keys of `T`, which derives `Deserialize`
/// for its own keys alone (with `deny_unknown_fields`): `(connection, own)`. A key of neither
/// is refused naming it and listing `keys` (from [`keys_beside_connection`]); `name` is the
/// owner's type, for the message when the value is not a table.
pub fn deserialize_beside_connection<'de, D, T>(
    deserializer: D,
    name: &'static str,
    keys: &'static [&'static str],
) -> Result<(RedisConnection, T), D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    deserializer.deserialize_struct(name, keys, TableVisitor { name, keys, own: PhantomData })
}

impl<'de> Deserialize<'de> for RedisConnection {
    /// A table of the connection's keys alone.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// No keys of its own.
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct NoOwnKeys {}
        let (connection, NoOwnKeys {}) =
            deserialize_beside_connection(deserializer, "RedisConnection", &CONNECTION_KEYS)?;
        Ok(connection)
    }
}

impl RedisConnection {
    /// Reads the value of `key`, one of [`CONNECTION_KEYS`], into its field.
    fn read_value<'de, A: MapAccess<'de>>(&mut self, key: &'static str, table: &mut A) -> Result<(), A::Error> {
        match key {
            "host" => self.host = table.next_value()?,
            "port" => self.port = table.next_value()?,
            "db" => self.db = table.next_value()?,
            "url" => self.url = table.next_value()?,
            "username" => self.username = table.next_value()?,
            "password" => self.password = table.next_value()?,
            "tls" => self.tls = table.next_value()?,
            "max_memory_ratio" => self.max_memory_ratio = table.next_value()?,
            "wait_replicas" => self.wait_replicas = table.next_value()?,
            "sentinel" => self.sentinel = table.next_value()?,
            "cluster" => self.cluster = table.next_value()?,
            "connect_timeout" => self.connect_timeout = table.next_value::<Seconds>()?.0,
            "socket_timeout" => self.socket_timeout = table.next_value::<Seconds>()?.0,
            // Only a key of CONNECTION_KEYS comes here; a key added there without its arm
            // here is refused rather than dropped.
            _ => return Err(de::Error::unknown_field(key, &CONNECTION_KEYS)),
        }
        Ok(())
    }
}

/// Reads the table: the connection's keys into a [`RedisConnection`] as they come, the
/// owner's by `T`.
struct TableVisitor<T> {
    name: &'static str,
    keys: &'static [&'static str],
    own: PhantomData<T>,
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for TableVisitor<T> {
    type Value = (RedisConnection, T);

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "struct {}", self.name)
    }

    fn visit_map<A: MapAccess<'de>>(self, table: A) -> Result<Self::Value, A::Error> {
        let mut connection = RedisConnection::default();
        let own = T::deserialize(OwnKeys { table, connection: &mut connection, keys: self.keys, seen: Vec::new() })?;
        Ok((connection, own))
    }
}

/// The table as `T` sees it: a map of `T`'s keys alone. The connection's keys, met on the
/// way to the next of `T`'s, are read into `connection`.
struct OwnKeys<'c, A> {
    table: A,
    connection: &'c mut RedisConnection,
    keys: &'static [&'static str],
    /// The connection's keys read so far, to refuse one given twice as a derived struct does.
    seen: Vec<&'static str>,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for OwnKeys<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, A::Error> {
        let mut own_seed = Some(seed);
        loop {
            match self.table.next_key_seed(KeySeed { own_seed: &mut own_seed, keys: self.keys })? {
                None => return Ok(None),
                Some(Key::Own(key)) => return Ok(Some(key)),
                Some(Key::Connection(key)) => {
                    if self.seen.contains(&key) {
                        return Err(de::Error::duplicate_field(key));
                    }
                    self.seen.push(key);
                    self.connection.read_value(key, &mut self.table)?;
                }
            }
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.table.next_value_seed(seed)
    }
}

impl<'de, A: MapAccess<'de>> Deserializer<'de> for OwnKeys<'_, A> {
    type Error = A::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, A::Error> {
        visitor.visit_map(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option
        unit unit_struct newtype_struct seq tuple tuple_struct map struct enum identifier ignored_any
    }
}

/// One key of the table: the connection's, or one of the owner's as its derived key.
enum Key<V> {
    Connection(&'static str),
    Own(V),
}

/// Reads one key: a connection key as itself, one of the owner's through `own_seed` (the
/// owner's derived field identifier), and any other refused here, inside the key's own read,
/// where `serde_path_to_error` records it as the path.
struct KeySeed<'s, K> {
    own_seed: &'s mut Option<K>,
    keys: &'static [&'static str],
}

impl<'de, K: DeserializeSeed<'de>> DeserializeSeed<'de> for KeySeed<'_, K> {
    type Value = Key<K::Value>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_identifier(self)
    }
}

impl<'de, K: DeserializeSeed<'de>> Visitor<'de> for KeySeed<'_, K> {
    type Value = Key<K::Value>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("field identifier")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        if let Some(known) = CONNECTION_KEYS.iter().find(|known| **known == key) {
            return Ok(Key::Connection(known));
        }
        if !self.keys.contains(&key) {
            return Err(E::unknown_field(key, self.keys));
        }
        let seed = self.own_seed.take().expect("the owner asks for one key at a time");
        seed.deserialize(key.into_deserializer()).map(Key::Own)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::native::RedisStreamOptions;

    /// The native options in `toml` (a table of the connection's keys beside `stream_name`
    /// and `max_len`), or the path and message of its error.
    fn read(toml: &str) -> Result<RedisStreamOptions, (String, String)> {
        let table: toml::Table = toml::from_str(toml).unwrap();
        serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|err| (err.path().to_string(), err.into_inner().to_string()))
    }

    #[test]
    fn the_owners_keys_and_the_connections_are_read_from_one_table() {
        let options = read("stream_name = \"s\"\nhost = \"h\"\nsocket_timeout = 2\ntls = {}").unwrap();
        assert_eq!((options.stream_name.as_str(), options.max_len), ("s", 10_000));
        let connection = options.connection;
        assert_eq!((connection.host.as_deref(), connection.tls), (Some("h"), Some(Default::default())));
        assert_eq!(
            (connection.connect_timeout, connection.socket_timeout),
            (Duration::from_secs(5), Duration::from_secs(2))
        );
    }

    #[test]
    fn an_unknown_key_is_named_and_every_key_listed_in_the_old_order() {
        let (path, message) = read("prot = 1").unwrap_err();
        assert_eq!(path, "prot");
        let listed = "`host`, `port`, `db`, `url`, `username`, `password`, `tls`, `max_memory_ratio`, \
                      `wait_replicas`, `sentinel`, `cluster`, `stream_name`, `max_len`, `connect_timeout`, \
                      `socket_timeout`";
        assert_eq!(message.trim_end(), format!("unknown field `prot`, expected one of {listed}"));
    }

    #[test]
    fn errors_below_a_key_keep_their_path() {
        let (path, message) = read("tls = { ca_fil = \"x\" }").unwrap_err();
        assert!(path == "tls.ca_fil" && message.contains("unknown field `ca_fil`"), "{path}: {message}");
        let (path, message) = read("port = \"x\"").unwrap_err();
        assert!(path == "port" && message.contains("expected u16"), "{path}: {message}");
        let (path, message) = read("max_len = \"x\"").unwrap_err();
        assert!(path == "max_len" && message.contains("expected u64"), "{path}: {message}");
    }

    #[test]
    fn every_connection_key_is_read() {
        let all = "host = \"h\"\nport = 1\ndb = 2\nurl = \"redis://u\"\nusername = \"u\"\npassword = \"p\"\n\
                   tls = {}\nmax_memory_ratio = 0.5\nwait_replicas = 1\nsentinel = { master = \"m\", addresses = [] }\n\
                   cluster = { nodes = [] }\nconnect_timeout = 1\nsocket_timeout = 1\n";
        let table: toml::Table = toml::from_str(all).unwrap();
        assert_eq!(table.len(), CONNECTION_KEYS.len());
        let connection: RedisConnection = toml::Value::Table(table).try_into().unwrap();
        assert!(connection.cluster.is_some() && connection.sentinel.is_some() && connection.wait_replicas == Some(1));
    }
}
