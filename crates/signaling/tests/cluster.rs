//! The signal bus on a real Redis Cluster (3 masters + 3 replicas of Debian's redis-server, made
//! by the testkit): a signal is work on the shard that owns its call and nowhere else (classic
//! PUBLISH on the same cluster reaches every node), and signalling goes on — in order, numbers
//! never reused — when a master is SIGKILLed (its replica takes over) and when slots move
//! between masters under live calls (the pushed `sunsubscribe` is handled). The gaps measured are
//! printed (`cargo test -p videocall-signaling --test cluster -- --nocapture`).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;
use videocall_signaling::{
    redis_keys,
    signal_bus::{
        Outgoing, SignalBus, SignalBusConfig,
        hub::{Hub, Outbound},
    },
    signals::{FrameHead, SignalType},
};
use videocall_testkit::{redis_cluster::RedisCluster, unique_name};

async fn bus(url: &str, cell: &str) -> SignalBus {
    SignalBus::connect(SignalBusConfig {
        redis_url: url.to_owned(),
        cell_id: cell.to_owned(),
        log_capacity: 4096,
        log_ttl: Duration::from_secs(600),
    })
    .await
    .expect("cluster bus")
}

fn candidate(i: u64) -> String {
    format!(r#"{{"candidate":"candidate:{i} 1 udp 2130706431 127.0.0.1 5000 typ host","sdpMLineIndex":0}}"#)
}

/// `cluster_stats_messages_<kind>_received` of every node, by port.
fn bus_messages(cluster: &RedisCluster, kind: &str) -> HashMap<u16, u64> {
    let field = format!("cluster_stats_messages_{kind}_received");
    cluster
        .ports()
        .into_iter()
        .map(|port| {
            let info = videocall_testkit::redis_cluster::redis_cli(port, &["CLUSTER", "INFO"]).unwrap_or_default();
            let value = info
                .lines()
                .find_map(|l| l.trim().strip_prefix(&format!("{field}:")).and_then(|v| v.parse().ok()))
                .unwrap_or(0);
            (port, value)
        })
        .collect()
}

fn commands(cluster: &RedisCluster) -> HashMap<u16, u64> {
    cluster
        .ports()
        .into_iter()
        .map(|port| {
            let processed = cluster.info(port, "stats").get("total_commands_processed").and_then(|v| v.parse().ok());
            (port, processed.unwrap_or(0))
        })
        .collect()
}

#[tokio::test]
async fn a_signal_is_work_on_its_calls_shard_only_while_classic_publish_reaches_every_node() {
    let cluster = RedisCluster::start();
    let cell = unique_name("cl").replace('.', "-");
    let bus = bus(&cluster.url(), &cell).await;
    let call = "c-one-shard";
    let slot = cluster.slot_of(&redis_keys::cluster::call_seq(&cell, call));
    let owner = cluster.master_of_slot(slot).expect("an owner");

    let (commands_before, shard_before) = (commands(&cluster), bus_messages(&cluster, "publishshard"));
    const SIGNALS: u64 = 200;
    for i in 0..SIGNALS {
        let payload = candidate(i);
        let signal = Outgoing {
            call_id: call,
            from: "alice",
            to: "bob",
            signal_type: SignalType::IceCandidate,
            payload: &payload,
        };
        bus.publish_signal(signal).await.expect("published");
    }
    // The cluster bus forwards the sharded messages a moment later: read once they all arrived.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (commands_after, shard_after) = loop {
        let after = bus_messages(&cluster, "publishshard");
        let arrived = after.iter().any(|(port, n)| n - shard_before[port] >= SIGNALS);
        if arrived || Instant::now() > deadline {
            break (commands(&cluster), after);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let grew = |before: &HashMap<u16, u64>, after: &HashMap<u16, u64>, port: u16| after[&port] - before[&port];
    // The owner ran every script; the other masters ran only the INFO commands of this test.
    assert!(grew(&commands_before, &commands_after, owner.port) >= SIGNALS, "the owner ran the scripts");
    for node in cluster.nodes().into_iter().filter(|n| n.master && n.port != owner.port) {
        let other = grew(&commands_before, &commands_after, node.port);
        assert!(other < 10, "master {} ran {other} commands for signals it does not own", node.port);
    }
    // The sharded publish travelled to the owner's replica only (over the cluster bus).
    let travelled: Vec<(u16, u64)> = cluster
        .ports()
        .into_iter()
        .map(|p| (p, grew(&shard_before, &shard_after, p)))
        .filter(|(_, n)| *n > 0)
        .collect();
    assert_eq!(travelled.len(), 1, "one node (the owner's replica) heard the shard's messages: {travelled:?}");
    assert!(travelled[0].1 >= SIGNALS, "{travelled:?}");
    let replica_of_owner = travelled[0].0;
    println!(
        "{SIGNALS} signals on a 3-master cluster: owner {} ran {} commands, its replica {replica_of_owner} heard {} shard messages, every other node 0",
        owner.port,
        grew(&commands_before, &commands_after, owner.port),
        travelled[0].1
    );

    // Classic PUBLISH on the same cluster: every other node hears every message.
    let before = bus_messages(&cluster, "publish");
    let mut redis = redis::cluster::ClusterClient::new(vec![format!("redis://127.0.0.1:{}", owner.port)])
        .expect("client")
        .get_async_connection()
        .await
        .expect("cluster connection");
    for i in 0..SIGNALS {
        let () = redis::cmd("PUBLISH")
            .arg(format!("{cell}:classic"))
            .arg(candidate(i))
            .query_async(&mut redis)
            .await
            .map(|_: i64| ())
            .expect("publish");
    }
    // The cluster bus forwards them a moment later: counted until all arrived (or 5 s passed).
    let deadline = Instant::now() + Duration::from_secs(5);
    let (heard, reached) = loop {
        let after = bus_messages(&cluster, "publish");
        let heard: Vec<u64> = cluster.ports().into_iter().map(|p| after[&p] - before[&p]).collect();
        let reached = heard.iter().filter(|n| **n >= SIGNALS).count();
        if reached >= 5 || Instant::now() > deadline {
            break (heard, reached);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("classic PUBLISH messages heard per node: {heard:?}");
    assert!(reached >= 5, "classic PUBLISH reaches every other node: {reached} of 6 heard all {SIGNALS}");
    println!("{SIGNALS} classic PUBLISHes on the same cluster: {reached} nodes heard every one");
}

/// Per call: the numbers bob got, with when.
type Deliveries = Arc<Mutex<HashMap<String, Vec<(u64, Instant)>>>>;

/// One call's traffic: `alice-i` (hub A) sends candidates to `bob-i` (hub B) every few ms.
struct Traffic {
    /// Per call: the numbers bob got, in the order he got them, with when.
    delivered: Deliveries,
    /// Per call: the numbers alice's signals were acknowledged with.
    acked: Arc<Mutex<HashMap<String, Vec<u64>>>>,
    /// Signals the bus said it had lost (the counter had gone back).
    lost: Arc<Mutex<u64>>,
    stop: CancellationToken,
    /// Stops the publishers only.
    quiet: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

async fn traffic(url: &str, cell: &str, calls: usize) -> Traffic {
    videocall_runtime::telemetry::init_for_tests();
    let stop = CancellationToken::new();
    let quiet = stop.child_token();
    let (bus_a, bus_b) = (bus(url, cell).await, bus(url, cell).await);
    let (hub_b, _hub_task) = Hub::start(bus_b.clone(), None, stop.clone());
    let delivered: Deliveries = Arc::new(Mutex::new(HashMap::new()));
    let acked: Arc<Mutex<HashMap<String, Vec<u64>>>> = Arc::new(Mutex::new(HashMap::new()));
    let lost = Arc::new(Mutex::new(0));
    let mut tasks = Vec::new();
    for i in 0..calls {
        let call = format!("call-{i}");
        let bob = format!("bob-{i}");
        let mut registration = hub_b.register(&bob, 4).await.expect("registered");
        registration.watcher().watch_call(&call).await.expect("watching");
        // Bob's side: live frames, and a replay from the log after every resync.
        let (bus, delivered_b, stop_b, call_b) = (bus_b.clone(), delivered.clone(), stop.clone(), call.clone());
        tasks.push(tokio::spawn(async move {
            let mut last = 0;
            loop {
                let outbound = tokio::select! {
                    _ = stop_b.cancelled() => return,
                    o = registration.rx.recv() => o,
                };
                let frames: Vec<(u64, String)> = match outbound {
                    None => return,
                    Some(Outbound::Frame(frame)) => match serde_json::from_str::<FrameHead>(&frame) {
                        Ok(head) => vec![(head.seq, frame.to_string())],
                        Err(_) => continue,
                    },
                    Some(Outbound::Resync { .. }) => match bus.replay(&call_b, &registration.user_id, last).await {
                        Ok(frames) => frames,
                        Err(e) => {
                            // Counted as missing by `check` unless a later resync replays them.
                            eprintln!("replay for {call_b} failed: {e}");
                            Vec::new()
                        }
                    },
                };
                for (seq, _) in frames {
                    if seq > last {
                        last = seq;
                        delivered_b
                            .lock()
                            .expect("lock")
                            .entry(call_b.clone())
                            .or_default()
                            .push((seq, Instant::now()));
                    }
                }
            }
        }));
        // Alice's side: a candidate every 20 ms; failures (no master yet) are retried.
        let (bus, acked_a, lost_a, stop_a) = (bus_a.clone(), acked.clone(), lost.clone(), quiet.clone());
        tasks.push(tokio::spawn(async move {
            let mut floor = 0;
            let mut n = 0;
            while !stop_a.is_cancelled() {
                let payload = candidate(n);
                let signal = Outgoing {
                    call_id: &call,
                    from: "alice",
                    to: &bob,
                    signal_type: SignalType::IceCandidate,
                    payload: &payload,
                };
                // Failures (no master yet) are retried.
                if let Ok((seq, raised)) = bus.publish_signal_above(signal, floor).await {
                    assert!(seq > floor, "a number is never handed out twice: {seq} after {floor}");
                    floor = seq;
                    n += 1;
                    acked_a.lock().expect("lock").entry(call.clone()).or_default().push(seq);
                    if raised {
                        *lost_a.lock().expect("lock") += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    Traffic { delivered, acked, lost, stop, quiet, tasks }
}

impl Traffic {
    /// Waits until every call got `more` signals delivered after `since`.
    async fn until_every_call_got(&self, since: Instant, more: usize, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let (done, total, delivered_since) = {
                let delivered = self.delivered.lock().expect("lock");
                let done =
                    delivered.values().filter(|d| d.iter().filter(|(_, at)| *at > since).count() >= more).count();
                let since: usize = delivered.values().map(|d| d.iter().filter(|(_, at)| *at > since).count()).sum();
                (done, self.acked.lock().expect("lock").len(), since)
            };
            if done == total && total > 0 {
                return;
            }
            let acked: usize = self.acked.lock().expect("lock").values().map(Vec::len).sum();
            assert!(
                Instant::now() < deadline,
                "only {done} of {total} calls signalled again ({delivered_since} signals delivered in that time; {acked} acknowledged in all)"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops publishing and gives what is in flight up to 3 s to arrive.
    async fn settle(&self) {
        self.quiet.cancel();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && self.check().1 > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Per call: numbers strictly increasing; returns the longest pause in delivery (over all
    /// calls) and how many acknowledged signals were never delivered.
    fn check(&self) -> (Duration, usize) {
        let delivered = self.delivered.lock().expect("lock");
        let acked = self.acked.lock().expect("lock");
        let mut longest = Duration::ZERO;
        let mut missing = 0;
        for (call, got) in delivered.iter() {
            assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "{call}: numbers increase");
            for w in got.windows(2) {
                longest = longest.max(w[1].1 - w[0].1);
            }
            let got: std::collections::HashSet<u64> = got.iter().map(|(s, _)| *s).collect();
            missing += acked.get(call).map_or(0, |a| a.iter().filter(|s| !got.contains(s)).count());
        }
        (longest, missing)
    }

    async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signalling_goes_on_across_a_master_failover() {
    let mut cluster = RedisCluster::start();
    let cell = unique_name("fo").replace('.', "-");
    let calls: usize = std::env::var("CLUSTER_FAULT_CALLS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let traffic = traffic(&cluster.url(), &cell, calls).await;
    traffic.until_every_call_got(Instant::now(), 3, Duration::from_secs(20)).await;

    // SIGKILL the master owning call-0's slot: its replica is promoted.
    let slot = cluster.slot_of(&redis_keys::cluster::call_seq(&cell, "call-0"));
    let master = cluster.master_of_slot(slot).expect("owner");
    let killed_at = Instant::now();
    tokio::task::block_in_place(|| cluster.kill(master.port));
    traffic.until_every_call_got(killed_at, 10, Duration::from_secs(60)).await;
    let recovered = killed_at.elapsed();
    tokio::task::block_in_place(|| cluster.wait_healthy(Duration::from_secs(10)));
    assert_ne!(cluster.master_of_slot(slot).map(|m| m.port), Some(master.port), "the replica took over");
    traffic.settle().await;
    let lost = *traffic.lost.lock().expect("lock");
    let (longest, missing) = traffic.check();
    println!(
        "failover with {calls} calls: every call signalling again {recovered:?} after the SIGKILL; longest delivery gap {longest:?}; {missing} acknowledged signals never delivered; {lost} signals told the counter had gone back"
    );
    assert!(longest < Duration::from_secs(30), "delivery resumed: {longest:?}");
    traffic.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signalling_goes_on_while_slots_move_between_masters() {
    let cluster = RedisCluster::start();
    let cell = unique_name("rs").replace('.', "-");
    let calls = 60;
    let traffic = traffic(&cluster.url(), &cell, calls).await;
    traffic.until_every_call_got(Instant::now(), 3, Duration::from_secs(20)).await;

    // Move 2000 slots (among them many calls' slots) from one master to another, under traffic.
    let masters: Vec<u16> = cluster.nodes().into_iter().filter(|n| n.master).map(|n| n.port).collect();
    let moved_at = Instant::now();
    tokio::task::block_in_place(|| cluster.reshard(masters[0], masters[1], 2000));
    traffic.until_every_call_got(moved_at, 10, Duration::from_secs(60)).await;
    traffic.settle().await;
    let (longest, missing) = traffic.check();
    println!(
        "reshard of 2000 slots under {calls} calls took {:?}; longest delivery gap {longest:?}; {missing} acknowledged signals never delivered",
        moved_at.elapsed()
    );
    assert_eq!(missing, 0, "no signal is lost when slots move (the log moves with them)");
    traffic.stop().await;
}
