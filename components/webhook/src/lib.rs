//! Webhook delivery: POSTs each event to `url` over the publisher's `http` grant, following
//! the CloudEvents HTTP protocol binding.
//!
//! Options (`[publishers.<name>.options]`):
//! - `url` (required): `https://host[:port]/path?query` (or `http://`); the origin must be in
//!   the publisher's `grants.http.allow`.
//! - `mode`: `"structured"` (default: the body is the seed's CloudEvent JSON, content type
//!   `application/cloudevents+json`) or `"binary"` (the body is the event's data, attributes in
//!   `ce-*` headers).
//! - `headers`: extra request headers, e.g. `{ Authorization = { secret = "TENANT_TOKEN" } }`.
//! - `secret`: a key for an HMAC-SHA256 signature of the body, sent as
//!   `<signature_header>: sha256=<hex>`; use `{ secret = "ENV_VAR" }` so it stays out of the file.
//! - `signature_header`: default `X-Broadcaster-Signature`.
//!
//! A 2xx answer is success; 408, 429 and 5xx, and network failures, are transient (retried);
//! any other status is permanent. Redirects are not followed.

use broadcaster_guest::{Backend, EventData, OutboxEvent, PublishError, export_backend, log};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use wasi::http::outgoing_handler;
use wasi::http::types::{Fields, Method, OutgoingBody, OutgoingRequest, Scheme};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    url: String,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    headers: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default = "default_signature_header")]
    signature_header: String,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Mode {
    #[default]
    Structured,
    Binary,
}

fn default_signature_header() -> String {
    "X-Broadcaster-Signature".to_string()
}

/// A parsed `url`.
struct Target {
    scheme: Scheme,
    authority: String,
    path_and_query: String,
}

fn parse_url(url: &str) -> Result<Target, String> {
    let (scheme, rest) = url.split_once("://").ok_or("option `url`: expected http(s)://host/path")?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "https" => Scheme::Https,
        "http" => Scheme::Http,
        other => return Err(format!("option `url`: the scheme must be http or https, not {other:?}")),
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err("option `url`: needs a host, and no credentials (use `headers`)".into());
    }
    let path_and_query = if path.starts_with('?') { format!("/{path}") } else { path.to_string() };
    Ok(Target { scheme, authority: authority.to_string(), path_and_query })
}

struct Webhook {
    target: Target,
    mode: Mode,
    headers: Vec<(String, String)>,
    key: Option<Vec<u8>>,
    signature_header: String,
}

impl Backend for Webhook {
    type Options = Options;

    fn init(options: Options) -> Result<Self, String> {
        let target = parse_url(&options.url)?;
        let mut headers = Vec::new();
        for (name, value) in options.headers {
            let serde_json::Value::String(value) = value else {
                return Err(format!("option `headers.{name}`: expected a string value"));
            };
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b)) {
                return Err(format!("option `headers`: {name:?} is not a valid header name"));
            }
            headers.push((name, value));
        }
        if options.secret.as_deref() == Some("") {
            return Err("option `secret`: cannot be empty".into());
        }
        Ok(Self {
            target,
            mode: options.mode,
            headers,
            key: options.secret.map(String::into_bytes),
            signature_header: options.signature_header,
        })
    }

    fn publish(&mut self, event: &OutboxEvent) -> Result<(), PublishError> {
        let (mut headers, body) = match self.mode {
            Mode::Structured => (
                vec![("content-type".to_string(), "application/cloudevents+json".to_string())],
                broadcaster_guest::to_cloud_event(event).into_bytes(),
            ),
            Mode::Binary => binary(event),
        };
        headers.extend(self.headers.iter().cloned());
        if let Some(key) = &self.key {
            let mut mac = Hmac::<Sha256>::new_from_slice(key).map_err(|e| PublishError::Permanent(e.to_string()))?;
            mac.update(&body);
            let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
            headers.push((self.signature_header.clone(), format!("sha256={hex}")));
        }
        let status = self.post(&headers, &body)?;
        log::debug(&format!("event {} delivered: HTTP {status}", event.event.id));
        match status {
            200..=299 => Ok(()),
            408 | 429 | 500..=599 => Err(PublishError::Transient(format!("the endpoint answered HTTP {status}"))),
            _ => Err(PublishError::Permanent(format!("the endpoint answered HTTP {status}"))),
        }
    }
}

/// The CloudEvents HTTP binary mode: attributes as `ce-*` headers, the data as the body.
fn binary(event: &OutboxEvent) -> (Vec<(String, String)>, Vec<u8>) {
    let ce = &event.event;
    let mut headers = vec![
        ("ce-specversion".to_string(), ce.specversion.clone()),
        ("ce-id".to_string(), ce.id.clone()),
        ("ce-type".to_string(), ce.type_.clone()),
        ("ce-source".to_string(), ce.source.clone()),
    ];
    for (name, value) in [("ce-time", &ce.time), ("ce-subject", &ce.subject), ("ce-dataschema", &ce.dataschema)] {
        if let Some(value) = value {
            headers.push((name.to_string(), value.clone()));
        }
    }
    for (name, value) in &ce.extensions {
        headers.push((format!("ce-{name}"), value.clone()));
    }
    let headers = headers.into_iter().map(|(k, v)| (k, percent_encode(&v))).collect::<Vec<_>>();
    let mut headers = headers;
    if let Some(content_type) = &ce.datacontenttype {
        headers.push(("content-type".to_string(), content_type.clone()));
    }
    let body = match &ce.data {
        None => Vec::new(),
        Some(EventData::Json(text)) | Some(EventData::Text(text)) => text.clone().into_bytes(),
        Some(EventData::Binary(bytes)) => bytes.clone(),
    };
    (headers, body)
}

/// Percent-encodes what may not appear in a header value as it is (CloudEvents HTTP binding
/// §3.1.3.2: space, `"`, `%` and everything outside printable ASCII).
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if (0x21..=0x7e).contains(&byte) && byte != b'"' && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn transient(what: &str, err: impl std::fmt::Debug) -> PublishError {
    PublishError::Transient(format!("{what}: {err:?}"))
}

impl Webhook {
    /// POSTs `body` with `headers`; returns the status.
    fn post(&self, headers: &[(String, String)], body: &[u8]) -> Result<u16, PublishError> {
        let mut list = Vec::with_capacity(headers.len() + 1);
        for (name, value) in headers {
            list.push((name.to_ascii_lowercase(), value.as_bytes().to_vec()));
        }
        list.push(("content-length".to_string(), body.len().to_string().into_bytes()));
        let fields = Fields::from_list(&list).map_err(|e| PublishError::Permanent(format!("bad header: {e:?}")))?;
        let request = OutgoingRequest::new(fields);
        let invalid = |what: &str| PublishError::Permanent(format!("invalid request {what}"));
        request.set_method(&Method::Post).map_err(|()| invalid("method"))?;
        request.set_scheme(Some(&self.target.scheme)).map_err(|()| invalid("scheme"))?;
        request.set_authority(Some(&self.target.authority)).map_err(|()| invalid("authority"))?;
        request.set_path_with_query(Some(&self.target.path_and_query)).map_err(|()| invalid("path"))?;
        let outgoing = request.body().map_err(|()| invalid("body"))?;
        let pending = outgoing_handler::handle(request, None).map_err(|e| transient("sending the request", e))?;
        {
            let stream = outgoing.write().map_err(|()| invalid("body stream"))?;
            for chunk in body.chunks(4096) {
                stream.blocking_write_and_flush(chunk).map_err(|e| transient("writing the body", e))?;
            }
        }
        OutgoingBody::finish(outgoing, None).map_err(|e| transient("finishing the body", e))?;
        pending.subscribe().block();
        let response = pending
            .get()
            .ok_or_else(|| PublishError::Transient("no response".into()))?
            .map_err(|()| PublishError::Transient("the response was already taken".into()))?
            .map_err(|e| match e {
                // The host refused the destination: retrying cannot help until the grant changes.
                wasi::http::types::ErrorCode::HttpRequestDenied => PublishError::Permanent(
                    "the host denied the request: the url's origin is not in this publisher's grants.http.allow".into(),
                ),
                other => transient("the request failed", other),
            })?;
        Ok(response.status())
    }
}

export_backend!(Webhook);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_scheme_authority_and_path() {
        let t = parse_url("https://hooks.example.com:8443/in?x=1").unwrap();
        assert_eq!((t.authority.as_str(), t.path_and_query.as_str()), ("hooks.example.com:8443", "/in?x=1"));
        assert_eq!(parse_url("http://h").unwrap().path_and_query, "/");
        assert!(parse_url("ftp://h/x").is_err());
        assert!(parse_url("https://user:pw@h/x").is_err());
    }

    #[test]
    fn header_values_are_percent_encoded_outside_printable_ascii() {
        assert_eq!(percent_encode("order/1"), "order/1");
        assert_eq!(percent_encode("Zoë 1%"), "Zo%C3%AB%201%25");
    }
}
