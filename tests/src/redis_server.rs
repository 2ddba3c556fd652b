//! A throwaway `redis-server`, in the manner of redis-rs's `redis-test`.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` on 127.0.0.1 and a free port, keeping nothing on disk. Killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// More `redis-server` arguments (TLS, for [`crate::TlsRedisServer`]).
    extra_args: Vec<String>,
}

impl RedisServer {
    /// Starts a server and waits until it answers `PING`.
    ///
    /// Panics with a clear message when `redis-server` is not installed.
    pub fn start() -> Self {
        Self::start_with_args(Vec::new())
    }

    /// Starts a server with more `redis-server` arguments; the plain port stays open for
    /// the readiness check and for the test's own assertions.
    pub fn start_with_args(extra_args: Vec<String>) -> Self {
        let port = free_port();
        let dir = tempfile::tempdir().expect("temp dir for redis-server");
        let mut server = Self { port, dir, child: None, extra_args };
        server.spawn();
        server
    }

    /// Adds an ACL user with `password` that may run every command on keys matching
    /// `key_pattern` only (`ACL SETUSER <name> on ><password> ~<key_pattern> +@all`).
    pub fn add_acl_user(&self, name: &str, password: &str, key_pattern: &str) {
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg(name)
            .arg("on")
            .arg(format!(">{password}"))
            .arg("resetkeys")
            .arg(format!("~{key_pattern}"))
            .arg("+@all")
            .exec(&mut self.client())
            .expect("ACL SETUSER");
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The `[publishers.<name>]` table of a `broadcaster.toml` for a native Redis Stream
    /// publisher writing to this server (stream `events`, one-second timeouts).
    pub fn native_publisher_toml(&self, name: &str) -> String {
        format!(
            "[publishers.{name}]\nbackend = \"redis-stream\"\n[publishers.{name}.options]\n\
             host = \"127.0.0.1\"\nport = {}\nconnect_timeout = 1\nsocket_timeout = 1\n",
            self.port
        )
    }

    /// A synchronous client connection (for assertions in tests).
    pub fn client(&self) -> redis::Connection {
        redis::Client::open(self.url()).and_then(|c| c.get_connection()).expect("connecting to the test redis-server")
    }

    /// Whether it runs (not stopped).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server (the port stays reserved for [`RedisServer::restart`]).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (empty: nothing is kept on disk).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| {
                panic!("cannot start redis-server ({err}); install it (Debian: apt-get install redis-server)")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ready = redis::Client::open(self.url())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if ready.is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server on port {} did not come up", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP port nobody listens on now.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port on 127.0.0.1")
}
