//! Scenario 7: the relayed signal path of scenario 1 on a Redis Cluster (3 masters + 3 replicas
//! of Debian's redis-server on loopback, started for the run) beside the same path on one Redis,
//! in interleaved rounds; then what each node of the cluster did for the cluster rounds' signals
//! (commands run, sharded messages heard over the cluster bus) beside the same number of classic
//! `PUBLISH`es on the same cluster (heard by every node).

use std::collections::HashMap;

use crate::{
    Scale,
    fleet::{Fleet, no_ice},
    report::Report,
    signal::{RunResult, median, relay_pairs, run_ws_pairs},
    stats::phase,
};
use videocall_testkit::redis_cluster::{RedisCluster, redis_cli};

/// Per node: total commands processed, sharded and classic Pub/Sub messages heard over the bus.
#[derive(Debug, Clone, Copy, Default)]
struct NodeCounts {
    commands: u64,
    shard_heard: u64,
    classic_heard: u64,
}

fn counts(cluster: &RedisCluster) -> HashMap<u16, NodeCounts> {
    let field = |text: &str, name: &str| {
        text.lines().find_map(|l| l.trim().strip_prefix(name).and_then(|v| v.strip_prefix(':'))?.parse().ok())
    };
    cluster
        .ports()
        .into_iter()
        .map(|port| {
            let stats = redis_cli(port, &["INFO", "stats"]).unwrap_or_default();
            let bus = redis_cli(port, &["CLUSTER", "INFO"]).unwrap_or_default();
            let c = NodeCounts {
                commands: field(&stats, "total_commands_processed").unwrap_or(0),
                shard_heard: field(&bus, "cluster_stats_messages_publishshard_received").unwrap_or(0),
                classic_heard: field(&bus, "cluster_stats_messages_publish_received").unwrap_or(0),
            };
            (port, c)
        })
        .collect()
}

pub async fn run(scale: &Scale) -> anyhow::Result<Report> {
    let mut report = Report::new(
        "cluster",
        "7. Signals on a 3-master Redis Cluster vs one Redis",
        &["path", "pairs", "in flight/pair", "delivered", "msg/s", "p50 ms", "p99 ms", "max ms"],
    );
    phase("cluster", "starting a Redis Cluster (3 masters + 3 replicas)");
    let cluster = tokio::task::block_in_place(RedisCluster::start);
    phase("cluster", "starting gateway + 2 relays on one Redis, and gateway + 2 relays on the cluster");
    let single = Fleet::spawn(2, no_ice()).await?;
    let clustered = Fleet::spawn_on(2, no_ice(), &cluster.url()).await?;
    let mut runs: Vec<[RunResult; 2]> = Vec::new();
    let before = counts(&cluster);
    for round in 1..=scale.rounds {
        let pairs = relay_pairs(&single, scale, &format!("one{round}")).await?;
        let one = run_ws_pairs(&format!("2 relays on one Redis · round {round}"), pairs, scale).await;
        let pairs = relay_pairs(&clustered, scale, &format!("cl{round}")).await?;
        let on_cluster = run_ws_pairs(&format!("2 relays on a 3-master cluster · round {round}"), pairs, scale).await;
        phase("cluster", format!("round {round}: one Redis {:.0}/s, cluster {:.0}/s", one.rate(), on_cluster.rate()));
        one.check(&mut report, true);
        on_cluster.check(&mut report, true);
        runs.push([one, on_cluster]);
    }
    let after_signals = counts(&cluster);
    // The same number of frames as classic PUBLISH on the same cluster, from one client.
    let signals: u64 = runs.iter().map(|r| r[1].delivered).sum();
    phase("cluster", format!("{signals} classic PUBLISHes on the same cluster"));
    let client = redis::cluster::ClusterClient::new(vec![cluster.url().split(',').next().unwrap_or_default()])?;
    let mut conn = client.get_async_connection().await?;
    let frame = crate::signal::signal_frame("classic", 1, 0);
    for i in 0..signals {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(format!("{}:classic:{}", clustered.cell, i % 50))
            .arg(&frame)
            .query_async(&mut conn)
            .await?;
    }
    // The cluster bus forwards a moment later: wait (bounded) until every node heard them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let after_classic = loop {
        let now = counts(&cluster);
        let heard_all = now.iter().filter(|(p, c)| c.classic_heard - after_signals[p].classic_heard >= signals).count();
        if heard_all >= 5 || std::time::Instant::now() > deadline {
            break now;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    single.stop().await;
    clustered.stop().await;

    for path in 0..2 {
        for round in &runs {
            report.row(round[path].row(scale.pairs, scale.window));
        }
    }
    let rate = |path: usize| median(runs.iter().map(|r| r[path].rate()).collect());
    let ratio = rate(1) / rate(0).max(1e-9);
    report.verdict(
        "relay throughput on a 3-master cluster ≥ 80% of one Redis (medians)",
        ratio >= 0.8,
        format!("{:.0}%: {:.0} vs {:.0} msg/s", ratio * 100.0, rate(1), rate(0)),
    );
    let nodes = cluster.nodes();
    let mut lines = Vec::new();
    for node in &nodes {
        let (b, s, c) = (before[&node.port], after_signals[&node.port], after_classic[&node.port]);
        lines.push(format!(
            "{} {} ({} slots): {} commands and {} sharded messages heard for the signals; {} classic messages heard",
            node.port,
            if node.master { "master" } else { "replica" },
            node.slots.iter().map(|(a, b)| u32::from(b - a) + 1).sum::<u32>(),
            s.commands - b.commands,
            s.shard_heard - b.shard_heard,
            c.classic_heard - s.classic_heard,
        ));
    }
    report.notes.push(format!(
        "Per node, for the {signals} relayed signals of the cluster rounds (calls spread over the masters by their ids; each signal's script runs on the master owning its call and its sharded message reaches that master's replica only) and then {signals} classic PUBLISHes on the same cluster (each heard by every other node): {}.",
        lines.join("; ")
    ));
    report.notes.push(format!(
        "{} rounds, each the path on one Redis then the path on the cluster, same pairs, frames and window as scenario 1; both fleets run in this process. The cluster's nodes share this machine's 2 cores with everything else, so the cluster cannot add capacity here: the figure is what sharding costs, not what it gains.",
        scale.rounds
    ));
    Ok(report)
}
