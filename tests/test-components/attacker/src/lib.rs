//! A hostile backend for the sandbox tests. `attack` chooses what `publish` does:
//!
//! | attack | what |
//! |---|---|
//! | `loop` | spins forever |
//! | `grow` | allocates 1 MiB at a time, keeping it, until memory runs out |
//! | `recursion` | recurses without end |
//! | `panic` | panics |
//! | `unreachable` | executes `unreachable` |
//! | `huge-alloc` | asks for 1 GiB at once |
//! | `xadd-flood` | calls `xadd` a million times |
//! | `outside-grant` | writes to a stream outside its grant |
//! | `huge-field` | writes one 100 MB field |
//! | `log-flood` | logs and prints without end |
//! | `snoop` | reads environment variables, files and the network, and writes what it saw |
//! | `http-get` | GETs `url`, following redirects; fails permanently with what happened |
//! | `leak` | logs, prints and returns its `url` option (a secret, in the test) |
//! | `slow` | burns `burn_ms` (900) of CPU, then publishes normally: slow, not hostile |
//! | `health-hang` | publishes normally, but spins in `health-check` |
//! | `huge-error` | fails with a 64 MiB `publish-error` message |
//! | `long-stream` | writes to a stream whose name is 8 MiB |
//! | `many-fields` | writes one entry of a million one-byte fields |
//! | `sleep` | sleeps 10 s in `publish` |
//!
//! `init_attack` makes `init` misbehave instead: `error` (a 1 MiB error message), `trap`
//! (a panic) or `loop` (spins until the deadline).
//!
//! Anything else, or an event whose data says `{"behave": true}`, publishes normally to
//! `stream_name`.

use std::hint::black_box;

use broadcaster_guest::{Backend, OutboxEvent, PublishError, export_backend, log, redis_stream};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    #[serde(default)]
    attack: String,
    stream_name: String,
    #[serde(default)]
    url: String,
    #[serde(default = "default_burn_ms")]
    burn_ms: u64,
    #[serde(default)]
    init_attack: String,
}

fn default_burn_ms() -> u64 {
    900
}

/// Keeps the CPU busy for `ms` milliseconds.
fn burn(ms: u64) {
    let start = std::time::Instant::now();
    let mut x: u64 = 0;
    while start.elapsed() < std::time::Duration::from_millis(ms) {
        for _ in 0..10_000 {
            x = black_box(x.wrapping_mul(31).wrapping_add(7));
        }
    }
}

fn spin() -> ! {
    let mut x: u64 = 0;
    loop {
        x = black_box(x.wrapping_mul(31).wrapping_add(7));
    }
}

/// GETs `url`, following up to five redirects; returns the final status or the error.
fn http_get(url: &str) -> String {
    use wasi::http::types::{Fields, Method, OutgoingRequest, Scheme};
    let mut url = url.to_string();
    for _ in 0..5 {
        let Some((scheme, rest)) = url.split_once("://") else { return format!("bad url {url}") };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let request = OutgoingRequest::new(Fields::new());
        let _ = request.set_method(&Method::Get);
        let _ = request.set_scheme(Some(if scheme == "https" { &Scheme::Https } else { &Scheme::Http }));
        let _ = request.set_authority(Some(authority));
        let _ = request.set_path_with_query(Some(path));
        let pending = match wasi::http::outgoing_handler::handle(request, None) {
            Ok(pending) => pending,
            Err(e) => return format!("{url}: {e:?}"),
        };
        pending.subscribe().block();
        let response = match pending.get() {
            Some(Ok(Ok(response))) => response,
            Some(Ok(Err(e))) => return format!("{url}: {e:?}"),
            other => return format!("{url}: {other:?}"),
        };
        let status = response.status();
        if (300..400).contains(&status) {
            let location = response.headers().get("location");
            let Some(next) = location.first() else { return format!("{url}: redirect without location") };
            url = String::from_utf8_lossy(next).into_owned();
            continue;
        }
        return format!("{url}: HTTP {status}");
    }
    "too many redirects".to_string()
}

struct Attacker(Options);

#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let local = black_box([depth; 16]);
    recurse(local[3] + 1) + local[7]
}

impl Backend for Attacker {
    type Options = Options;

    fn init(options: Options) -> Result<Self, String> {
        match options.init_attack.as_str() {
            "error" => Err(format!("init refuses: {}", "e".repeat(1 << 20))),
            "trap" => panic!("attacker panics in init"),
            "loop" => spin(),
            _ => Ok(Attacker(options)),
        }
    }

    fn publish(&mut self, event: &OutboxEvent) -> Result<(), PublishError> {
        let behave = broadcaster_guest::data_json(event).is_some_and(|d| d["behave"] == true);
        let stream = self.0.stream_name.clone();
        if !behave {
            match self.0.attack.as_str() {
                "loop" => spin(),
                "slow" => burn(self.0.burn_ms),
                "huge-error" => return Err(PublishError::Permanent("x".repeat(64 << 20))),
                "long-stream" => {
                    let name = format!("attacker:{}", "s".repeat(8 << 20));
                    redis_stream::xadd(&name, &[("a".into(), "1".into())], None)?;
                }
                "many-fields" => {
                    let fields: Vec<(String, String)> = (0..1_000_000).map(|_| ("f".into(), "v".into())).collect();
                    redis_stream::xadd(&stream, &fields, None)?;
                }
                "sleep" => std::thread::sleep(std::time::Duration::from_secs(10)),
                "grow" => {
                    let mut hoard: Vec<Vec<u8>> = Vec::new();
                    loop {
                        hoard.push(black_box(vec![1u8; 1 << 20]));
                    }
                }
                "recursion" => {
                    black_box(recurse(0));
                }
                "panic" => panic!("attacker panics on purpose for event {}", event.event.id),
                "unreachable" => std::process::abort(),
                "huge-alloc" => {
                    let big = black_box(vec![7u8; 1 << 30]);
                    black_box(&big);
                }
                "xadd-flood" => {
                    for i in 0..1_000_000u32 {
                        let _ = redis_stream::xadd(&stream, &[("n".to_string(), i.to_string())], Some(10));
                    }
                }
                "outside-grant" => {
                    redis_stream::xadd("victim:stream", &[("stolen".into(), "1".into())], None)?;
                }
                "huge-field" => {
                    let field = "x".repeat(100 * 1024 * 1024);
                    redis_stream::xadd(&stream, &[("big".into(), field)], None)?;
                }
                "log-flood" => loop {
                    log::info("flooding the log");
                    println!("flooding stdout");
                },
                "leak" => {
                    log::warn(&format!("leaking {}", self.0.url));
                    eprintln!("leaking {}", self.0.url);
                    return Err(PublishError::Permanent(format!("leaking {}", self.0.url)));
                }
                "http-get" => {
                    return Err(PublishError::Permanent(format!("http-get outcome: {}", http_get(&self.0.url))));
                }
                "snoop" => {
                    let env: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
                    let file = std::fs::read_to_string("/etc/passwd")
                        .map(|t| t.len().to_string())
                        .unwrap_or_else(|e| format!("error: {e}"));
                    let dir =
                        std::fs::read_dir("/").map(|d| d.count().to_string()).unwrap_or_else(|e| format!("error: {e}"));
                    let net = std::net::TcpStream::connect("127.0.0.1:6379")
                        .map(|_| "connected".to_string())
                        .unwrap_or_else(|e| format!("error: {e}"));
                    let args: Vec<String> = std::env::args().collect();
                    let fields = vec![
                        ("env".to_string(), env.join(",")),
                        ("file".to_string(), file),
                        ("dir".to_string(), dir),
                        ("net".to_string(), net),
                        ("args".to_string(), args.join(",")),
                    ];
                    redis_stream::xadd(&stream, &fields, None)?;
                    return Ok(());
                }
                _ => {}
            }
        }
        let fields = broadcaster_guest::stream_fields(event)?;
        redis_stream::xadd(&stream, &fields, None)?;
        Ok(())
    }

    fn health_check(&mut self) -> bool {
        if self.0.attack == "health-hang" {
            spin();
        }
        redis_stream::ping().is_ok()
    }
}

export_backend!(Attacker);
