//! `loadgen` binary: parse the command, run the scenarios, print and record the results.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};
use loadgen::{SCENARIOS, Scale, report};

#[derive(Debug, Parser)]
#[command(name = "loadgen", about = "Benchmarks the Videocall fleet in-process on loopback beside raw baselines")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    /// Small counts, a few seconds per scenario.
    #[arg(long, global = true)]
    quick: bool,
    /// Do not write docs/benchmarks.md.
    #[arg(long, global = true)]
    no_doc: bool,
    /// The results document to update.
    #[arg(long, global = true, default_value = "docs/benchmarks.md")]
    doc: PathBuf,
    /// Concurrent call pairs (signal, peerjs) or gRPC clients (lifecycle).
    #[arg(long, global = true)]
    pairs: Option<usize>,
    /// Messages per pair.
    #[arg(long, global = true)]
    messages: Option<usize>,
    /// Messages in flight per pair, end to end.
    #[arg(long, global = true)]
    window: Option<usize>,
    /// Interleaved rounds of scenario 1 (relayed path and both raw baselines).
    #[arg(long, global = true)]
    rounds: Option<usize>,
    /// Lifecycles per client.
    #[arg(long, global = true)]
    lifecycles: Option<usize>,
    /// Outbox rows.
    #[arg(long, global = true)]
    rows: Option<usize>,
    /// Idle sockets.
    #[arg(long, global = true)]
    idle: Option<usize>,
    /// WebRTC calls.
    #[arg(long, global = true)]
    calls: Option<usize>,
    /// Longest a measured run may take, in seconds.
    #[arg(long, global = true)]
    deadline_secs: Option<u64>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// 1. Signals through two relays vs raw Redis Pub/Sub.
    Signal,
    /// 2. Call lifecycles through gRPC vs raw SQL.
    Lifecycle,
    /// 3. Outbox relay vs raw confirmed publishing.
    Outbox,
    /// 4. Idle sockets on one relay (child process) and its memory per socket.
    Idle,
    /// 5. Call setup time with webrtc-rs peers.
    Setup,
    /// 6. Signal load against PeerJS server beside our relay.
    Peerjs,
    /// 7. Signals through two relays on a 3-master Redis Cluster beside one Redis.
    Cluster,
    /// 8. Support desk: customers waiting, agents answering; beside raw SQL routing.
    Desk,
    /// Every scenario, in order.
    All,
    /// Checks a deployed fleet from outside (not a benchmark): every /readyz ready, a call over
    /// gRPC with its signals crossing two relays, the events on RabbitMQ, a relay restart survived.
    Smoke {
        /// The gateway, `http://host:port`.
        #[arg(long)]
        grpc: String,
        /// A relay's base URL, `ws://host:port`; give two (caller on the first, callee on the second).
        #[arg(long = "relay", required = true)]
        relays: Vec<String>,
        /// An ops address (`host:port`) whose /readyz must answer 200; repeat for each service.
        #[arg(long)]
        ready: Vec<SocketAddr>,
        /// The broker the gateway publishes to.
        #[arg(long)]
        amqp: String,
        #[arg(long, default_value = "videocall.events")]
        exchange: String,
        #[arg(long, env = "SMOKE_CALLER_TOKEN")]
        caller_token: String,
        #[arg(long, env = "SMOKE_CALLEE_TOKEN")]
        callee_token: String,
        /// The user id in the callee's token (an agent).
        #[arg(long)]
        callee_id: String,
        /// Shell command that restarts the first relay, run between two rounds.
        #[arg(long)]
        restart_relay: Option<String>,
        /// Seconds the fleet may take to become ready.
        #[arg(long, default_value_t = 180)]
        ready_within_secs: u64,
        /// The gateway's ops address (`host:port`), for its outbox metrics when an event is missing.
        #[arg(long)]
        gateway_ops: Option<SocketAddr>,
    },
    /// (internal) one relay in this process, for scenario 4.
    #[command(hide = true)]
    ServeRelay {
        #[arg(long)]
        cell: String,
        #[arg(long)]
        gateway: SocketAddr,
    },
}

impl Cli {
    fn scale(&self) -> Scale {
        let mut s = if self.quick { Scale::quick() } else { Scale::full() };
        s.pairs = self.pairs.unwrap_or(s.pairs).max(1);
        s.messages = self.messages.unwrap_or(s.messages).max(1);
        s.window = self.window.unwrap_or(s.window).max(1);
        s.rounds = self.rounds.unwrap_or(s.rounds).max(1);
        s.lifecycles = self.lifecycles.unwrap_or(s.lifecycles);
        s.rows = self.rows.unwrap_or(s.rows);
        s.idle = self.idle.unwrap_or(s.idle);
        s.calls = self.calls.unwrap_or(s.calls);
        s.deadline = self.deadline_secs.map(Duration::from_secs).unwrap_or(s.deadline);
        s
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let names: Vec<&str> = match &cli.command {
        Cmd::ServeRelay { cell, gateway } => return loadgen::fleet::serve_relay(cell.clone(), *gateway).await,
        Cmd::Smoke {
            grpc,
            relays,
            ready,
            amqp,
            exchange,
            caller_token,
            callee_token,
            callee_id,
            restart_relay,
            ready_within_secs,
            gateway_ops,
        } => {
            return loadgen::smoke::run(&loadgen::smoke::Smoke {
                grpc: grpc.clone(),
                relays: relays.clone(),
                ready: ready.clone(),
                amqp: amqp.clone(),
                exchange: exchange.clone(),
                caller_token: caller_token.clone(),
                callee_token: callee_token.clone(),
                callee_id: callee_id.clone(),
                restart_relay: restart_relay.clone(),
                ready_within: Duration::from_secs(*ready_within_secs),
                gateway_ops: *gateway_ops,
            })
            .await;
        }
        Cmd::Signal => vec!["signal"],
        Cmd::Lifecycle => vec!["lifecycle"],
        Cmd::Outbox => vec!["outbox"],
        Cmd::Idle => vec!["idle"],
        Cmd::Setup => vec!["setup"],
        Cmd::Peerjs => vec!["peerjs"],
        Cmd::Cluster => vec!["cluster"],
        Cmd::Desk => vec!["desk"],
        Cmd::All => SCENARIOS.to_vec(),
    };
    let scale = cli.scale();
    // Other work on the machine skews numbers: record the load average when the run started.
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let exe = std::env::current_exe()?;
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    let args = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    let command = format!("$CARGO_TARGET_DIR/{profile}/loadgen {args}");
    let mut reports = Vec::new();
    let mut failed = false;
    for name in names {
        match loadgen::run_scenario(name, &scale, &exe).await {
            Ok(r) => {
                r.print();
                failed |= !r.problems.is_empty();
                reports.push(r);
            }
            Err(e) => {
                eprintln!("[{name}] failed: {e:#}");
                failed = true;
            }
        }
    }
    if !cli.no_doc && !reports.is_empty() {
        let when = format!(
            "{}; {} build; {cores} cores; 1-min load average {load} when the run started (other engineers' builds and tests share this machine)",
            chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
            if cfg!(debug_assertions) { "debug" } else { "release" }
        );
        report::write(&cli.doc, &reports, &command, &when)?;
        eprintln!("updated {}", cli.doc.display());
    }
    if failed {
        std::process::exit(1);
    }
    Ok(())
}
