//! loadgen: spawns what it measures in-process on loopback (the gateway, relays, a relay child
//! process, PeerJS) against the real PostgreSQL, Redis and RabbitMQ, runs bounded load through
//! it beside a raw baseline, and reports tables for docs/benchmarks.md.

#![forbid(unsafe_code)]

pub mod cluster;
pub mod desk;
pub mod fleet;
pub mod idle;
pub mod lifecycle;
pub mod outbox;
pub mod peerjs;
pub mod report;
pub mod setup;
pub mod signal;
pub mod smoke;
pub mod stats;
pub mod wsclient;

use std::time::Duration;

/// How much load a scenario generates; every loop is bounded by a count and by `deadline`.
#[derive(Debug, Clone)]
pub struct Scale {
    /// Concurrent call pairs (signal scenarios) or clients (lifecycle).
    pub pairs: usize,
    /// Messages per pair.
    pub messages: usize,
    /// Messages in flight per pair, end to end.
    pub window: usize,
    /// Scenario 1 runs the relayed path and both raw baselines this many times, interleaved,
    /// and judges the medians (this machine's speed drifts between runs).
    pub rounds: usize,
    /// Lifecycles per client.
    pub lifecycles: usize,
    /// Outbox rows.
    pub rows: usize,
    /// Idle sockets to open.
    pub idle: usize,
    /// WebRTC calls.
    pub calls: usize,
    /// Longest any one measured run may take.
    pub deadline: Duration,
}

impl Scale {
    pub fn full() -> Self {
        Self {
            pairs: 50,
            messages: 500,
            window: 1,
            rounds: 5,
            lifecycles: 100,
            rows: 10_000,
            idle: 10_000,
            calls: 20,
            deadline: Duration::from_secs(60),
        }
    }

    /// Small counts: every scenario in a few seconds, for the test and a smoke run.
    pub fn quick() -> Self {
        Self {
            pairs: 4,
            messages: 20,
            window: 1,
            rounds: 1,
            lifecycles: 5,
            rows: 200,
            idle: 100,
            calls: 2,
            deadline: Duration::from_secs(20),
        }
    }
}

/// The scenarios, in the order `all` runs them.
pub const SCENARIOS: [&str; 8] = ["signal", "lifecycle", "outbox", "idle", "setup", "peerjs", "cluster", "desk"];

/// Runs one scenario. `exe` is the loadgen binary (scenario 4 starts it as the relay child).
pub async fn run_scenario(name: &str, scale: &Scale, exe: &std::path::Path) -> anyhow::Result<report::Report> {
    match name {
        "signal" => signal::run(scale).await,
        "lifecycle" => lifecycle::run(scale).await,
        "outbox" => outbox::run(scale).await,
        "idle" => idle::run(scale, exe).await,
        "setup" => setup::run(scale).await,
        "peerjs" => peerjs::run(scale).await,
        "cluster" => cluster::run(scale).await,
        "desk" => desk::run(scale).await,
        other => anyhow::bail!("unknown scenario `{other}`"),
    }
}
