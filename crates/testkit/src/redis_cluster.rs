//! A Redis Cluster of the test's own: Debian's redis-server on loopback, 3 masters with a replica
//! each, made with `redis-cli --cluster create`, with the faults the cluster tests inject (a
//! master killed, slots moved between masters). Killed and its files removed when dropped.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// One node: a redis-server with cluster mode on.
struct Node {
    port: u16,
    child: Option<Child>,
}

/// A running cluster; dropping it kills every node.
pub struct RedisCluster {
    nodes: Vec<Node>,
    dir: PathBuf,
}

/// A node as `CLUSTER NODES` describes it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub id: String,
    pub port: u16,
    pub master: bool,
    /// Slot ranges it serves (masters only), inclusive.
    pub slots: Vec<(u16, u16)>,
    pub failed: bool,
}

impl RedisCluster {
    /// Starts 6 nodes (3 masters + 3 replicas) on free ports and waits until every slot is
    /// served and every node agrees.
    pub fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("vc-redis-cluster-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let mut cluster = Self { nodes: Vec::new(), dir };
        while cluster.nodes.len() < 6 {
            let port = cluster_port();
            if let Some(child) = cluster.spawn(port) {
                cluster.nodes.push(Node { port, child: Some(child) });
            }
        }
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for node in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let output = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli is installed");
        assert!(output.status.success(), "redis-cli --cluster create: {}", String::from_utf8_lossy(&output.stdout));
        cluster.wait_healthy(Duration::from_secs(30));
        cluster
    }

    /// Starts redis-server on `port`; `None` if it did not come up (the port was taken meanwhile).
    fn spawn(&self, port: u16) -> Option<Child> {
        let mut child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--cluster-enabled", "yes"])
            .args(["--cluster-node-timeout", "1000", "--port"])
            .arg(port.to_string())
            .arg("--cluster-config-file")
            .arg(format!("nodes-{port}.conf"))
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return None;
            }
            if redis_cli(port, &["PING"]).is_some_and(|r| r.trim() == "PONG") {
                return Some(child);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// `REDIS_URL` for the services: every node, comma-separated.
    pub fn url(&self) -> String {
        self.nodes.iter().map(|n| format!("redis://127.0.0.1:{}", n.port)).collect::<Vec<_>>().join(",")
    }

    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// `CLUSTER NODES` as seen by a live node.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        let text = self.live_ports().iter().find_map(|p| redis_cli(*p, &["CLUSTER", "NODES"])).unwrap_or_default();
        text.lines().filter_map(parse_node).collect()
    }

    fn live_ports(&self) -> Vec<u16> {
        self.nodes.iter().filter(|n| n.child.is_some()).map(|n| n.port).collect()
    }

    /// The master serving `slot`.
    pub fn master_of_slot(&self, slot: u16) -> Option<NodeInfo> {
        self.nodes()
            .into_iter()
            .find(|n| n.master && !n.failed && n.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
    }

    /// The slot of `key` (by a live node's `CLUSTER KEYSLOT`).
    pub fn slot_of(&self, key: &str) -> u16 {
        let port = self.live_ports()[0];
        redis_cli(port, &["CLUSTER", "KEYSLOT", key]).and_then(|s| s.trim().parse().ok()).expect("keyslot")
    }

    /// SIGKILLs the node on `port` (no shutdown, no save).
    pub fn kill(&mut self, port: u16) {
        let node = self.nodes.iter_mut().find(|n| n.port == port).expect("a node of this cluster");
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until every slot is served by a live master, the live nodes report `cluster_state:ok`
    /// and every live replica is in sync with its master.
    pub fn wait_healthy(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let ok = self
                .live_ports()
                .iter()
                .all(|p| redis_cli(*p, &["CLUSTER", "INFO"]).is_some_and(|info| info.contains("cluster_state:ok")));
            let served: u32 = self
                .nodes()
                .iter()
                .filter(|n| n.master && !n.failed)
                .flat_map(|n| n.slots.iter().map(|(a, b)| u32::from(b - a) + 1))
                .sum();
            // A replica that never finished its first sync cannot take over (its data is too old).
            let synced = self
                .nodes()
                .iter()
                .filter(|n| !n.master && !n.failed)
                .all(|n| self.info(n.port, "replication").get("master_link_status").is_some_and(|s| s == "up"));
            if ok && served == 16384 && synced {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster did not become healthy (slots served: {served})");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Moves `count` slots from the master on `from` to the master on `to` with
    /// `redis-cli --cluster reshard` (keys migrate with them).
    pub fn reshard(&self, from: u16, to: u16, count: u32) {
        let nodes = self.nodes();
        let id = |port: u16| nodes.iter().find(|n| n.port == port).map(|n| n.id.clone()).expect("node id");
        let output = Command::new("redis-cli")
            .args(["--cluster", "reshard", &format!("127.0.0.1:{from}")])
            .args(["--cluster-from", &id(from), "--cluster-to", &id(to)])
            .args(["--cluster-slots", &count.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli is installed");
        assert!(output.status.success(), "reshard: {}", String::from_utf8_lossy(&output.stdout));
    }

    /// `INFO` of the node on `port`, as `field → value`.
    pub fn info(&self, port: u16, section: &str) -> std::collections::HashMap<String, String> {
        redis_cli(port, &["INFO", section])
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().split_once(':'))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A free port whose cluster bus port (+10000) is free too.
fn cluster_port() -> u16 {
    loop {
        let port = crate::free_port();
        if port > 0 && port < 55535 && std::net::TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
}

/// What `redis-cli -p port args…` printed, if it ran.
pub fn redis_cli(port: u16, args: &[&str]) -> Option<String> {
    let output = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// One line of `CLUSTER NODES`: `<id> <ip:port@bus> <flags> <master> <ping> <pong> <epoch> <link> <slot>…`.
fn parse_node(line: &str) -> Option<NodeInfo> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let port = fields.get(1)?.split('@').next()?.rsplit(':').next()?.parse().ok()?;
    let flags = fields.get(2)?;
    let slots = fields
        .iter()
        .skip(8)
        .filter(|s| !s.starts_with('['))
        .filter_map(|s| match s.split_once('-') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => s.parse().ok().map(|a| (a, a)),
        })
        .collect();
    Some(NodeInfo {
        id: fields[0].to_owned(),
        port,
        master: flags.contains("master"),
        slots,
        failed: flags.contains("fail") && !flags.contains("fail?"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_lines_parse() {
        let line = "07c3 127.0.0.1:30004@40004 myself,master - 0 0 1 connected 0-5460 5462 [5461->-abc]";
        let node = parse_node(line).expect("parses");
        assert_eq!((node.port, node.master, node.failed), (30004, true, false));
        assert_eq!(node.slots, vec![(0, 5460), (5462, 5462)]);
        let replica = parse_node("9a1 127.0.0.1:30005@40005 slave,fail 07c3 0 0 1 disconnected").expect("parses");
        assert!(!replica.master && replica.failed && replica.slots.is_empty());
    }
}
