//! A throwaway Redis Cluster: three masters (and a replica each, when asked), made with
//! `redis-cli --cluster create` on free ports, `cluster-node-timeout 1000`.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::redis_server::RedisServer;

/// Three masters, and optionally one replica per master. Killed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts the nodes, joins them (`redis-cli --cluster create … --cluster-replicas
    /// <0|1>`) and waits until every node says `cluster_state:ok`.
    pub fn start(with_replicas: bool) -> Self {
        let count = if with_replicas { 6 } else { 3 };
        let nodes: Vec<RedisServer> = (0..count)
            .map(|_| {
                RedisServer::start_with_args(
                    [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "1000",
                    ]
                    .map(String::from)
                    .to_vec(),
                )
            })
            .collect();
        let addresses: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())).collect();
        let output = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", if with_replicas { "1" } else { "0" }, "--cluster-yes"])
            .output()
            .unwrap_or_else(|err| panic!("cannot run redis-cli ({err}); install redis-tools"));
        assert!(output.status.success(), "redis-cli --cluster create: {}", String::from_utf8_lossy(&output.stdout));
        let cluster = Self { nodes };
        cluster.wait_until_ok();
        cluster
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
