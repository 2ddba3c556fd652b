//! Outbound HTTP (`wasi:http/outgoing-handler`) for components granted it:
//! `grants.http = { allow = ["https://hooks.example.com", "http://127.0.0.1:8080"], … }`.
//!
//! Every request is checked before a connection is made: the scheme, host and port must match
//! an `allow` entry (`*.example.com` matches subdomains; the port defaults to the scheme's), and
//! every address the host name resolves to must be public unless the entry names a private or
//! loopback address (or `localhost`) itself. Plain-HTTP requests are sent to the very address
//! that was checked (no second DNS lookup to rebind). The response body is capped, the whole
//! exchange is bounded by the grant's timeout, and redirects are not followed by the host: a
//! backend that follows one makes a new request, checked like any other.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme, Uri};
use http_body_util::BodyExt;
use serde::Deserialize;
use wasmtime::component::Linker;
use wasmtime_wasi_http::{
    Error as HttpError, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

use super::{CallContext, Capability, GrantError, PublisherSetup};
use crate::budget::CallBudget;
use crate::state::PublisherState;
use broadcaster_config::{ByteSize, Seconds, default_timeout};

/// `grants.http`: outbound HTTP a component may make (`wasi:http`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpGrant {
    /// Origins it may call: `scheme://host[:port]`, `*.` for subdomains. A private or
    /// loopback address is reachable only through an entry that names it.
    pub allow: Vec<String>,
    /// Longest time for one request, connection to last byte. Default 5 s.
    #[serde(default = "default_timeout")]
    pub timeout: Seconds,
    /// Largest response body read. Default 1 MiB.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: ByteSize,
}

fn default_max_response_bytes() -> ByteSize {
    ByteSize(1024 * 1024)
}

/// The `http` capability.
#[derive(Debug)]
pub struct OutboundHttp;

/// A publisher's `http` grant, set up (nothing granted: every request is denied).
#[derive(Debug, Clone)]
pub struct HttpRules {
    allow: Arc<Vec<AllowedOrigin>>,
    timeout: Duration,
    max_response_bytes: usize,
}

impl HttpRules {
    /// The rules of `grant` (`None`: deny everything).
    pub fn new(grant: Option<&HttpGrant>) -> Result<Self, AllowEntryError> {
        Ok(match grant {
            None => Self { allow: Arc::default(), timeout: Duration::from_secs(5), max_response_bytes: 0 },
            Some(grant) => Self {
                allow: Arc::new(grant.allow.iter().map(|e| AllowedOrigin::parse(e)).collect::<Result<_, _>>()?),
                timeout: grant.timeout.0,
                max_response_bytes: usize::try_from(grant.max_response_bytes.0).unwrap_or(usize::MAX),
            },
        })
    }
}

/// One instance's HTTP state.
#[derive(Debug)]
pub struct HttpState {
    ctx: WasiHttpCtx,
    policy: HttpPolicy,
}

impl Capability for OutboundHttp {
    const GRANT: Option<&'static str> = Some("http");
    const GRANT_EXAMPLE: &'static str = "{ allow = [\"https://…\"] }";
    const INTERFACES: &'static [&'static str] = &["wasi:http/types", "wasi:http/outgoing-handler"];
    const GRANTED_INTERFACES: &'static [&'static str] = &["wasi:http/outgoing-handler"];
    const UNPROVIDED_NOTE: &'static str = "(a backend cannot serve HTTP)";
    type Grant = HttpGrant;
    type Configured = HttpRules;
    type State = HttpState;

    fn check_grant(grant: &HttpGrant) -> Result<(), GrantError> {
        HttpRules::new(Some(grant))
            .map(drop)
            .map_err(|err| GrantError { key: "allow".into(), message: err.to_string() })
    }

    fn configure(grant: Option<HttpGrant>, _publisher: &PublisherSetup<'_>) -> Result<HttpRules, String> {
        HttpRules::new(grant.as_ref()).map_err(|err| err.to_string())
    }

    fn instance_state(rules: &HttpRules, call: &CallContext) -> HttpState {
        HttpState {
            ctx: WasiHttpCtx::new(),
            policy: HttpPolicy { publisher: call.publisher.clone(), rules: rules.clone(), budget: call.budget.clone() },
        }
    }

    fn add_to_linker(linker: &mut Linker<PublisherState>) -> wasmtime::Result<()> {
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)
    }
}

impl WasiHttpView for PublisherState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        let (states, table) = self.capabilities_and_table();
        let state = states.get_mut::<HttpState>();
        WasiHttpCtxView { ctx: &mut state.ctx, table, hooks: &mut state.policy }
    }
}

/// One `allow` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedOrigin {
    scheme: Scheme,
    /// Lower-case host, or a `*.` suffix pattern.
    host: String,
    port: u16,
}

/// Why an `allow` entry is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("grants.http.allow entry {entry:?}: {message}")]
pub struct AllowEntryError {
    /// The entry as written.
    pub entry: String,
    /// What is wrong.
    pub message: String,
}

impl AllowedOrigin {
    /// Parses `scheme://host[:port]` (a path is not allowed: the grant is per origin).
    pub fn parse(entry: &str) -> Result<Self, AllowEntryError> {
        let error = |message: &str| AllowEntryError { entry: entry.to_string(), message: message.to_string() };
        let uri: Uri = entry.parse().map_err(|_| error("expected scheme://host[:port]"))?;
        let scheme = uri.scheme().cloned().ok_or_else(|| error("missing scheme (http:// or https://)"))?;
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err(error("the scheme must be http or https"));
        }
        let authority = uri.authority().ok_or_else(|| error("missing host"))?;
        if authority.as_str().contains('@') {
            return Err(error("credentials do not belong in an allow entry"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(error("an allow entry is an origin: scheme://host[:port], without a path"));
        }
        Ok(Self { port: port_of(&scheme, authority), host: authority.host().to_ascii_lowercase(), scheme })
    }

    fn matches(&self, scheme: &Scheme, host: &str, port: u16) -> bool {
        if *scheme != self.scheme || port != self.port {
            return false;
        }
        match self.host.strip_prefix("*.") {
            Some(suffix) => host.len() > suffix.len() + 1 && host.ends_with(&format!(".{suffix}")),
            None => host == self.host,
        }
    }

    /// Whether the entry itself names a private or loopback destination, which then may be
    /// reached through it.
    fn names_private(&self) -> bool {
        self.host == "localhost" || bare_ip(&self.host).is_some_and(|ip| !is_public(ip))
    }
}

fn port_of(scheme: &Scheme, authority: &Authority) -> u16 {
    authority.port_u16().unwrap_or(if *scheme == Scheme::HTTPS { 443 } else { 80 })
}

fn bare_ip(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[').trim_end_matches(']').parse().ok()
}

/// Whether an address is reachable on the public internet (not loopback, private, link-local,
/// shared, unspecified, multicast, documentation…).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_multicast()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (b == 18 || b == 19)))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

/// The HTTP policy of one instance: its publisher's rules, charging its requests to the
/// call's budget.
#[derive(Debug, Clone)]
pub struct HttpPolicy {
    publisher: Arc<str>,
    rules: HttpRules,
    budget: CallBudget,
}

impl HttpPolicy {
    fn deny(&self, uri: &Uri, why: &str) -> HttpError {
        let uri = crate::guest_output::truncate(&uri.to_string()).into_owned();
        tracing::warn!(publisher = %self.publisher, %uri, "refused an HTTP request: {why}");
        HttpError::HttpRequestDenied
    }

    /// Checks `uri` and resolves it; returns the address to connect to.
    async fn vet(&self, uri: &Uri) -> Result<SocketAddr, HttpError> {
        let scheme = uri.scheme().cloned().unwrap_or(Scheme::HTTPS);
        let authority = uri.authority().ok_or(HttpError::HttpRequestUriInvalid)?;
        let host = authority.host().to_ascii_lowercase();
        let port = port_of(&scheme, authority);
        let Some(entry) = self.rules.allow.iter().find(|e| e.matches(&scheme, &host, port)) else {
            return Err(self.deny(uri, "the origin is not in grants.http.allow"));
        };
        let addresses: Vec<SocketAddr> = match bare_ip(&host) {
            Some(ip) => vec![SocketAddr::new(ip, port)],
            None => tokio::time::timeout(self.rules.timeout, tokio::net::lookup_host((host.as_str(), port)))
                .await
                .map_err(|_| HttpError::DnsTimeout)?
                .map_err(|_| HttpError::DestinationNotFound)?
                .collect(),
        };
        if addresses.is_empty() {
            return Err(HttpError::DestinationNotFound);
        }
        if !entry.names_private() && addresses.iter().any(|a| !is_public(a.ip())) {
            return Err(self.deny(uri, "it resolves to a private or loopback address the grant does not name"));
        }
        Ok(addresses[0])
    }
}

type ResponseFuture = Box<
    dyn Future<
            Output = Result<
                (http::Response<WasiBody>, Box<dyn Future<Output = Result<(), HttpError>> + Send>),
                HttpError,
            >,
        > + Send,
>;

impl WasiHttpHooks for HttpPolicy {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> ResponseFuture {
        drop(fut);
        let policy = self.clone();
        Box::new(async move {
            let header_bytes: usize = request.headers().iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
            if let Err(limit) = policy.budget.charge_host_call(request.uri().to_string().len() + header_bytes) {
                tracing::warn!(publisher = %policy.publisher, %limit, "HTTP request refused");
                return Err(HttpError::HttpRequestDenied);
            }
            let target = policy.vet(request.uri()).await?;
            if request.uri().scheme() == Some(&Scheme::HTTP) {
                // Connect to the address that was checked, not to a second lookup's answer.
                let mut parts = request.uri().clone().into_parts();
                parts.authority = Some(target.to_string().parse().map_err(|_| HttpError::HttpRequestUriInvalid)?);
                *request.uri_mut() = Uri::from_parts(parts).map_err(|_| HttpError::HttpRequestUriInvalid)?;
            }
            let limit =
                |guest: Option<Duration>| Some(guest.map_or(policy.rules.timeout, |g| g.min(policy.rules.timeout)));
            let options = RequestOptions {
                connect_timeout: limit(options.and_then(|o| o.connect_timeout)),
                first_byte_timeout: limit(options.and_then(|o| o.first_byte_timeout)),
                between_bytes_timeout: limit(options.and_then(|o| o.between_bytes_timeout)),
            };
            let (response, io) = tokio::time::timeout(
                policy.rules.timeout,
                wasmtime_wasi_http::default_send_request(request, Some(options)),
            )
            .await
            .map_err(|_| HttpError::ConnectionTimeout)??;
            let cap = policy.rules.max_response_bytes;
            let response = response.map(|body| {
                http_body_util::Limited::new(body, cap)
                    .map_err(move |err| match err.downcast::<HttpError>() {
                        Ok(err) => *err,
                        Err(_) => HttpError::HttpResponseBodySize(Some(cap as u64)),
                    })
                    .boxed_unsync()
            });
            Ok((response, Box::new(io) as Box<dyn Future<Output = _> + Send>))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_entries_are_origins() {
        let entry = AllowedOrigin::parse("https://Hooks.Example.com").unwrap();
        assert!(entry.matches(&Scheme::HTTPS, "hooks.example.com", 443));
        assert!(!entry.matches(&Scheme::HTTP, "hooks.example.com", 80));
        assert!(!entry.matches(&Scheme::HTTPS, "hooks.example.com", 8443));
        assert!(!entry.matches(&Scheme::HTTPS, "evil.com", 443));
        let wildcard = AllowedOrigin::parse("https://*.example.com:8443").unwrap();
        assert!(wildcard.matches(&Scheme::HTTPS, "a.b.example.com", 8443));
        assert!(!wildcard.matches(&Scheme::HTTPS, "example.com", 8443));
        assert!(!wildcard.matches(&Scheme::HTTPS, "badexample.com", 8443));
        for bad in ["hooks.example.com", "ftp://x", "https://x/path", "https://user:pw@x"] {
            assert!(AllowedOrigin::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn private_addresses_are_told_apart_from_public_ones() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fc00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["1.1.1.1", "93.184.216.34", "2606:4700::1111"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
        assert!(AllowedOrigin::parse("http://127.0.0.1:8080").unwrap().names_private());
        assert!(AllowedOrigin::parse("http://localhost:8080").unwrap().names_private());
        assert!(!AllowedOrigin::parse("https://hooks.example.com").unwrap().names_private());
    }
}
