//! A throwaway Redis Cluster: three masters (and a replica each, when asked), made with
//! `redis-cli --cluster create` on free ports, `cluster-node-timeout 1000`.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::redis_server::{RedisServer, free_port};

/// Three masters, and optionally one replica per master. Killed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    tls_ports: Vec<u16>,
    certificates: Option<tempfile::TempDir>,
}

impl RedisCluster {
    /// Starts the nodes, joins them (`redis-cli --cluster create … --cluster-replicas
    /// <0|1>`) and waits until every node says `cluster_state:ok`.
    pub fn start(with_replicas: bool) -> Self {
        Self::start_with(with_replicas, None)
    }

    /// Three masters that also speak TLS (`tls-cluster yes`: TLS clients are given the
    /// nodes' TLS ports), with a CA and certificates made for it; see
    /// [`Self::tls_addresses`] and [`Self::certificates`].
    pub fn start_tls() -> Self {
        let certificates = tempfile::tempdir().expect("temp dir for certificates");
        crate::tls_redis_server::make_certificates(certificates.path());
        Self::start_with(false, Some(certificates))
    }

    fn start_with(with_replicas: bool, certificates: Option<tempfile::TempDir>) -> Self {
        let count = if with_replicas { 6 } else { 3 };
        let mut tls_ports = Vec::new();
        let nodes: Vec<RedisServer> = (0..count)
            .map(|_| {
                let mut tls_args = Vec::new();
                if let Some(dir) = &certificates {
                    let port = free_port();
                    tls_ports.push(port);
                    let file = |name: &str| dir.path().join(name).display().to_string();
                    tls_args = vec![
                        "--tls-port".to_string(),
                        port.to_string(),
                        "--tls-cluster".into(),
                        "yes".into(),
                        "--tls-replication".into(),
                        "yes".into(),
                        "--tls-cert-file".into(),
                        file("server.pem"),
                        "--tls-key-file".into(),
                        file("server.key"),
                        "--tls-ca-cert-file".into(),
                        file("ca.pem"),
                        "--tls-auth-clients".into(),
                        "no".into(),
                    ];
                }
                // The bus port is given: the default (port + 10000) is out of range above 55535.
                let bus = free_port().to_string();
                RedisServer::start_with_args(
                    [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "1000",
                        "--cluster-port",
                        &bus,
                    ]
                    .map(String::from)
                    .into_iter()
                    .chain(tls_args)
                    .collect(),
                )
            })
            .collect();
        let addresses: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())).collect();
        let mut create = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", if with_replicas { "1" } else { "0" }, "--cluster-yes"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot run redis-cli ({err}); install redis-tools"));
        // It waits for the nodes to join for as long as it takes: bounded here.
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = create.try_wait().expect("redis-cli --cluster create") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = create.kill();
                panic!("redis-cli --cluster create did not finish in 60 s (the nodes did not join)");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(status.success(), "redis-cli --cluster create failed: {status}");
        let cluster = Self { nodes, tls_ports, certificates };
        cluster.wait_until_ok();
        cluster
    }

    /// The nodes' TLS addresses (a cluster from [`Self::start_tls`]).
    pub fn tls_addresses(&self) -> Vec<String> {
        self.tls_ports.iter().map(|port| format!("127.0.0.1:{port}")).collect()
    }

    /// The folder with `ca.pem` (a cluster from [`Self::start_tls`]).
    pub fn certificates(&self) -> Option<&std::path::Path> {
        self.certificates.as_ref().map(|dir| dir.path())
    }

    /// The nodes' addresses, `127.0.0.1:<port>`.
    pub fn addresses(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())).collect()
    }

    /// The nodes, in start order.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// A cluster client (for assertions).
    pub fn client(&self) -> redis::cluster::ClusterConnection {
        let urls: Vec<String> = self.addresses().iter().map(|a| format!("redis://{a}/")).collect();
        redis::cluster::ClusterClient::new(urls).unwrap().get_connection().expect("connecting to the test cluster")
    }

    /// The node serving `key`'s slot as master, by index in [`Self::nodes`].
    pub fn master_of(&self, key: &str) -> usize {
        let slot: u16 = redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).query(&mut self.nodes[0].client()).unwrap();
        let slots: Vec<redis::Value> =
            redis::cmd("CLUSTER").arg("SLOTS").query(&mut self.live_node().client()).unwrap();
        for range in slots {
            let redis::Value::Array(parts) = range else { continue };
            let (start, end): (u16, u16) = (
                redis::from_redis_value(parts[0].clone()).unwrap(),
                redis::from_redis_value(parts[1].clone()).unwrap(),
            );
            if (start..=end).contains(&slot) {
                let redis::Value::Array(master) = &parts[2] else { continue };
                let port: u16 = redis::from_redis_value(master[1].clone()).unwrap();
                return self.nodes.iter().position(|n| n.port() == port).expect("a node of this cluster");
            }
        }
        panic!("slot {slot} is not served")
    }

    /// Starts moving `key`'s slot from its master to node `to` (`CLUSTER SETSLOT …
    /// IMPORTING`/`MIGRATING`): until [`SlotMove::migrate_keys`] the old master serves it,
    /// then it answers `ASK`, and after [`SlotMove::finish`] `MOVED`.
    pub fn begin_slot_move(&self, key: &str, to: usize) -> SlotMove<'_> {
        let from = self.master_of(key);
        assert_ne!(from, to, "{key} is already on node {to}");
        let slot: u16 = redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).query(&mut self.nodes[0].client()).unwrap();
        let id = |i: usize| redis::cmd("CLUSTER").arg("MYID").query::<String>(&mut self.nodes[i].client()).unwrap();
        let (from_id, to_id) = (id(from), id(to));
        let setslot = |node: usize, state: &str, owner: &str| {
            redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg(state)
                .arg(owner)
                .exec(&mut self.nodes[node].client())
                .unwrap()
        };
        setslot(to, "IMPORTING", &from_id);
        setslot(from, "MIGRATING", &to_id);
        SlotMove { cluster: self, slot, from, to, to_id }
    }

    /// Kills node `index` (a master: its replica takes over about two seconds later).
    pub fn kill(&mut self, index: usize) {
        self.nodes[index].stop();
    }

    /// Starts node `index` again on its port, with its `nodes.conf` (a killed master
    /// rejoins as a replica of its successor).
    pub fn restart(&mut self, index: usize) {
        self.nodes[index].restart();
    }

    /// Waits (up to 30 s) until every live node says `cluster_state:ok`.
    pub fn wait_until_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let live: Vec<&RedisServer> = self.nodes.iter().filter(|n| n.is_running()).collect();
            let ok = live.iter().all(|n| {
                redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query::<String>(&mut n.client())
                    .is_ok_and(|info| info.contains("cluster_state:ok"))
            });
            // And every node has the same view of which master serves which slots.
            let views: Vec<String> = live.iter().map(|n| slot_view(n)).collect();
            if ok && views.windows(2).all(|w| w[0] == w[1]) {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn live_node(&self) -> &RedisServer {
        self.nodes.iter().find(|n| n.is_running()).expect("a live node")
    }
}

/// A node's `CLUSTER SLOTS`, as ranges and their masters' ports, sorted.
fn slot_view(node: &RedisServer) -> String {
    let slots: Vec<redis::Value> = redis::cmd("CLUSTER").arg("SLOTS").query(&mut node.client()).unwrap_or_default();
    let mut ranges: Vec<String> = slots
        .into_iter()
        .filter_map(|range| {
            let redis::Value::Array(parts) = range else { return None };
            let redis::Value::Array(master) = parts.get(2)? else { return None };
            Some(format!("{:?}-{:?}@{:?}", parts[0], parts[1], master.get(1)))
        })
        .collect();
    ranges.sort();
    ranges.join(",")
}

/// A slot being moved between masters ([`RedisCluster::begin_slot_move`]).
#[derive(Debug)]
pub struct SlotMove<'a> {
    cluster: &'a RedisCluster,
    slot: u16,
    from: usize,
    to: usize,
    to_id: String,
}

impl SlotMove<'_> {
    /// Moves every key of the slot to the new master (`MIGRATE`); the old one then answers
    /// `ASK` for them.
    pub fn migrate_keys(&self) {
        let mut from = self.cluster.nodes[self.from].client();
        loop {
            let keys: Vec<String> =
                redis::cmd("CLUSTER").arg("GETKEYSINSLOT").arg(self.slot).arg(100).query(&mut from).unwrap();
            if keys.is_empty() {
                return;
            }
            let port = self.cluster.nodes[self.to].port();
            redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(port)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(&keys)
                .exec(&mut from)
                .unwrap();
        }
    }

    /// Gives the slot to the new master on every master (`CLUSTER SETSLOT … NODE`).
    pub fn finish(self) {
        for node in [self.to, self.from] {
            redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(self.slot)
                .arg("NODE")
                .arg(&self.to_id)
                .exec(&mut self.cluster.nodes[node].client())
                .unwrap();
        }
        self.cluster.wait_until_ok();
    }
}
