//! A throwaway Redis Sentinel group: one master, one replica, three Sentinels
//! (`redis-server --sentinel`, quorum 2, master down after one second), on free ports.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::redis_server::{RedisServer, free_port};

/// The name the Sentinels know the master by.
pub const SENTINEL_MASTER: &str = "mymaster";

/// One master, one replica and three Sentinels watching them. Killed on drop.
#[derive(Debug)]
pub struct SentinelGroup {
    master: RedisServer,
    replica: RedisServer,
    sentinels: Vec<(u16, Child)>,
    dir: tempfile::TempDir,
    /// The Sentinels' own password (`requirepass`), if any.
    sentinel_password: Option<String>,
}

impl SentinelGroup {
    /// Starts the group and waits until the replica is in sync and every Sentinel knows the
    /// replica and the other Sentinels (so that a failover can happen).
    pub fn start() -> Self {
        Self::start_with_sentinel_password(None)
    }

    /// [`Self::start`], with Sentinels that require `password` (`requirepass`, and
    /// `sentinel sentinel-pass` between themselves).
    pub fn start_with_sentinel_password(password: Option<&str>) -> Self {
        let master = RedisServer::start();
        let replica =
            RedisServer::start_with_args(vec!["--replicaof".into(), "127.0.0.1".into(), master.port().to_string()]);
        wait_for("the replica to sync", || info(&master, "replication").contains("state=online"));
        let dir = tempfile::tempdir().expect("temp dir for sentinels");
        let sentinel_password = password.map(str::to_string);
        let mut group = Self { master, replica, sentinels: Vec::new(), dir, sentinel_password };
        for _ in 0..3 {
            group.spawn_sentinel();
        }
        for (port, _) in &group.sentinels {
            wait_for("the sentinels to know each other and the replica", || {
                let sentinel = group.sentinel_client(*port);
                let master: Vec<std::collections::HashMap<String, String>> = redis::cmd("SENTINEL")
                    .arg("MASTERS")
                    .query(&mut sentinel.get_connection().unwrap())
                    .unwrap_or_default();
                master.first().is_some_and(|m| {
                    m.get("num-slaves").map(String::as_str) == Some("1")
                        && m.get("num-other-sentinels").map(String::as_str) == Some("2")
                })
            });
        }
        group
    }

    /// The Sentinels' addresses, `127.0.0.1:<port>`.
    pub fn sentinel_addresses(&self) -> Vec<String> {
        self.sentinels.iter().map(|(port, _)| format!("127.0.0.1:{port}")).collect()
    }

    /// The master at start.
    pub fn master(&self) -> &RedisServer {
        &self.master
    }

    /// The replica at start (the master after a failover).
    pub fn replica(&self) -> &RedisServer {
        &self.replica
    }

    /// Kills the master: the Sentinels promote the replica about a second or two later.
    pub fn kill_master(&mut self) {
        self.master.stop();
    }

    /// Waits (up to 30 s) until the Sentinels name the replica as master.
    pub fn wait_for_failover(&self) {
        wait_for("the failover", || self.failed_over());
    }

    /// Whether every Sentinel names the replica as master, and it agrees. (Restarting the
    /// old master, empty, while one Sentinel still names it could make the new master its
    /// replica and wipe what it had.)
    pub fn failed_over(&self) -> bool {
        let port = self.replica.port().to_string();
        let named = |sentinel: u16| {
            let address: Vec<String> = self
                .sentinel_client(sentinel)
                .get_connection()
                .and_then(|mut c| {
                    redis::cmd("SENTINEL").arg("GET-MASTER-ADDR-BY-NAME").arg(SENTINEL_MASTER).query(&mut c)
                })
                .unwrap_or_default();
            address.get(1) == Some(&port)
        };
        self.sentinels.iter().all(|(sentinel, _)| named(*sentinel))
            && info(&self.replica, "replication").contains("role:master")
    }

    /// Starts the killed master again (empty); the Sentinels make it a replica of the new
    /// master.
    pub fn restart_old_master(&mut self) {
        self.master.restart();
    }

    fn sentinel_client(&self, port: u16) -> redis::Client {
        let auth = self.sentinel_password.as_deref().map(|p| format!(":{p}@")).unwrap_or_default();
        redis::Client::open(format!("redis://{auth}127.0.0.1:{port}/")).unwrap()
    }

    fn spawn_sentinel(&mut self) {
        let port = free_port();
        let config = self.dir.path().join(format!("sentinel-{port}.conf"));
        let auth = match &self.sentinel_password {
            Some(password) => format!("requirepass {password}\nsentinel sentinel-pass {password}\n"),
            None => String::new(),
        };
        std::fs::write(
            &config,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\n{auth}\
                 sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {master} 2\n\
                 sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n\
                 sentinel failover-timeout {SENTINEL_MASTER} 10000\n\
                 sentinel parallel-syncs {SENTINEL_MASTER} 1\n",
                dir = self.dir.path().display(),
                master = self.master.port(),
            ),
        )
        .expect("sentinel config");
        let child = Command::new("redis-server")
            .arg(&config)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start redis-server --sentinel ({err})"));
        self.sentinels.push((port, child));
        wait_for("a sentinel to answer", || {
            self.sentinel_client(port)
                .get_connection_with_timeout(Duration::from_millis(200))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok()
        });
    }
}

impl Drop for SentinelGroup {
    fn drop(&mut self) {
        for (_, child) in &mut self.sentinels {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn info(server: &RedisServer, section: &str) -> String {
    redis::cmd("INFO").arg(section).query(&mut server.client()).unwrap_or_default()
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
