//! The distributed fleet as separate processes for the web client's tests: api-gateway,
//! quality-aggregator, event-consumer, missed-call-sweeper, call-recorder and signaling-relay on a
//! fresh PostgreSQL database, a Redis of its own, RabbitMQ with exchange and queue names no other
//! run uses, and a coturn on loopback. Every port is chosen right before its process starts (and
//! chosen again if the process could not take it); every process is killed if the test panics.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use videocall_runtime::{
    auth::{JwtKeys, Role},
    config::Secret,
};
use videocall_testkit::{coturn::Coturn, process::loopback, redis::OwnRedis};

use crate::process::{Process, temp_dir, workspace_binary};

pub const GATEWAY: &str = "api-gateway";
pub const AGGREGATOR: &str = "quality-aggregator";
pub const CONSUMER: &str = "event-consumer";
pub const SWEEPER: &str = "missed-call-sweeper";
pub const RECORDER: &str = "call-recorder";
pub const RELAY: &str = "signaling-relay";

const SERVICES: [&str; 6] = [GATEWAY, AGGREGATOR, CONSUMER, SWEEPER, RECORDER, RELAY];

/// The running fleet. Dropping it kills every process (SIGKILL); [`Fleet::stop`] stops them with
/// SIGTERM and checks they exit cleanly.
pub struct Fleet {
    /// The relay's HTTP address (pages, `/ws`, `/readyz`).
    pub http: SocketAddr,
    /// The gateway's gRPC address.
    #[allow(dead_code, reason = "for tests that talk to the gateway directly")]
    pub grpc: SocketAddr,
    /// The topic exchange the gateway publishes the domain events on.
    pub events_exchange: String,
    /// The user id of [`Fleet::customer_token`] (unique per run).
    pub customer_id: String,
    /// Names this run's exchanges, queues and cell.
    #[allow(dead_code, reason = "for tests that bind queues of their own")]
    pub run: String,
    /// Where each service's `/metrics` is (the relay's on its HTTP address).
    pub metrics: Vec<(&'static str, SocketAddr)>,
    relay: Option<Process>,
    relay_settings: RelaySettings,
    workers: Vec<Process>,
    gateway: Option<Process>,
    redis: Option<OwnRedis>,
    keys: JwtKeys,
    dir: PathBuf,
    _turn: Coturn,
}

impl Fleet {
    /// Starts everything and waits until each process says ready. `extra` is `(service, name,
    /// value)`: more environment for one service, e.g. `(SWEEPER, "PARTY_GRACE_SECS", "3")`.
    pub async fn start(extra: &[(&str, &str, &str)]) -> Self {
        for (service, _, _) in extra {
            assert!(SERVICES.contains(service), "no service `{service}` in the fleet");
        }
        let extra: Vec<(String, String, String)> =
            extra.iter().map(|(s, n, v)| ((*s).to_owned(), (*n).to_owned(), (*v).to_owned())).collect();
        let turn = Coturn::start();
        let dir = temp_dir("vc-fleet");
        let database_url = videocall_testkit::fresh_database().await;
        let redis = OwnRedis::start(videocall_testkit::free_port());
        let redis_url = redis.url();
        let run = videocall_testkit::unique_name("browserfleet").replace('.', "-");
        // HS256 wants at least 32 bytes: 64 random hex digits.
        let secret = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
        let keys = JwtKeys::new(Secret::new(secret.clone()));
        let events_exchange = format!("{run}.events");
        let shared = |name: &str, ops: SocketAddr| {
            let mut command = workspace_binary(name);
            command
                .env("DATABASE_URL", &database_url)
                .env("AMQP_URL", videocall_testkit::amqp_url())
                .env("REDIS_URL", &redis_url)
                .env("CELL_ID", &run)
                .env("EVENTS_EXCHANGE", &events_exchange)
                .env("DLX_EXCHANGE", format!("{run}.dlx"))
                .env("OPS_LISTEN_ADDR", ops.to_string());
            for (_, key, value) in extra.iter().filter(|(service, _, _)| service == name) {
                command.env(key, value);
            }
            command
        };

        // The gateway first: it applies the migrations the others need.
        let mut metrics = Vec::new();
        let (gateway, [gateway_ops, grpc]) = start_ready(GATEWAY, &dir, |[ops, grpc]| {
            let mut command = shared(GATEWAY, ops);
            command
                .env("GRPC_LISTEN_ADDR", grpc.to_string())
                .env("JWT_SECRET", &secret)
                .env("TURN_SERVER", turn.url())
                .env("TURN_SECRET", &turn.secret);
            (command, ops)
        })
        .await;
        metrics.push((GATEWAY, gateway_ops));

        let mut workers = Vec::new();
        for name in [AGGREGATOR, CONSUMER, SWEEPER, RECORDER] {
            let (process, [ops, _]) = start_ready(name, &dir, |[ops, _]| {
                let mut command = shared(name, ops);
                match name {
                    AGGREGATOR => {
                        command.env("QUALITY_QUEUE", format!("{run}.quality"));
                    }
                    CONSUMER => {
                        command
                            .env("USER_OFFLINE_QUEUE", format!("{run}.user-offline"))
                            .env("TICKET_CREATED_QUEUE", format!("{run}.ticket-created"));
                    }
                    RECORDER => {
                        command
                            .env("RECORDINGS_DIR", dir.join("recordings"))
                            .env("RECORDER_CANDIDATE_NETWORKS", "127.0.0.1");
                    }
                    _ => {}
                }
                (command, ops)
            })
            .await;
            workers.push(process);
            metrics.push((name, ops));
        }

        let relay_settings = RelaySettings {
            gateway: grpc,
            redis_url: redis_url.clone(),
            cell: run.clone(),
            secret,
            env: extra.iter().filter(|(s, _, _)| s == RELAY).map(|(_, n, v)| (n.clone(), v.clone())).collect(),
        };
        let (relay, [http, _]) = start_ready(RELAY, &dir, |[http, _]| (relay_settings.command(http), http)).await;
        metrics.push((RELAY, http));
        Self {
            metrics,
            http,
            grpc,
            customer_id: format!("customer-{run}"),
            events_exchange,
            run,
            relay: Some(relay),
            relay_settings,
            workers,
            gateway: Some(gateway),
            redis: Some(redis),
            keys,
            dir,
            _turn: turn,
        }
    }

    /// The relay's base URL for the pages.
    pub fn base(&self) -> String {
        format!("http://{}", self.http)
    }

    /// A token the fleet accepts, valid for ten minutes.
    pub fn token(&self, user: &str, role: Role) -> String {
        self.keys.mint(user, role, chrono::Utc::now().timestamp() + 600)
    }

    /// agent-1's token.
    pub fn agent_token(&self) -> String {
        self.token("agent-1", Role::Agent)
    }

    /// The customer's ([`Fleet::customer_id`]) token.
    pub fn customer_token(&self) -> String {
        self.token(&self.customer_id, Role::User)
    }

    /// SIGKILL of the relay: gone at once, its sockets die without a close frame.
    pub async fn kill_relay(&mut self) {
        let mut relay = self.relay.take().expect("the relay is running");
        relay.signal("KILL");
        let status = relay.wait_exit(Duration::from_secs(10)).await;
        assert!(!status.success(), "the relay was killed, not stopped: {status}");
    }

    /// A new relay process on the same address and settings (after [`Fleet::kill_relay`]),
    /// logging to the same file; returns once it answers `/readyz`.
    pub async fn start_relay_again(&mut self) {
        assert!(self.relay.is_none(), "the relay is still running");
        let mut relay = Process::spawn(RELAY, self.relay_settings.command(self.http), &self.dir);
        relay.wait_ready(self.http, "/readyz").await;
        self.relay = Some(relay);
    }

    /// Kills the fleet's Redis (losing everything in it) and starts a fresh one on the same port.
    pub fn restart_redis(&mut self) {
        let redis = self.redis.take().expect("redis is running");
        self.redis = Some(redis.restart());
    }

    /// SIGTERM to every process (the relay first, the gateway last); each must exit 0 within 20 s.
    pub async fn stop(mut self) {
        let mut processes: Vec<Process> = self.relay.take().into_iter().collect();
        processes.append(&mut self.workers);
        processes.extend(self.gateway.take());
        for process in processes {
            let name = process.name.clone();
            let output_hint = process.output().lines().rev().take(5).collect::<Vec<_>>().join("\n");
            let status = process.terminate(Duration::from_secs(20)).await;
            assert!(status.success(), "{name} stopped with {status}: {output_hint}");
        }
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// What a relay process is started with (again, after a kill).
struct RelaySettings {
    gateway: SocketAddr,
    redis_url: String,
    cell: String,
    secret: String,
    env: Vec<(String, String)>,
}

impl RelaySettings {
    fn command(&self, http: SocketAddr) -> tokio::process::Command {
        let mut relay = workspace_binary(RELAY);
        relay
            .env("HTTP_LISTEN_ADDR", http.to_string())
            .env("GATEWAY_URL", format!("http://{}", self.gateway))
            .env("REDIS_URL", &self.redis_url)
            .env("CELL_ID", &self.cell)
            .env("JWT_SECRET", &self.secret)
            .envs(self.env.iter().map(|(n, v)| (n, v)));
        relay
    }
}

/// Starts `name` with `command(ports)` (two loopback addresses, free a moment ago; it returns the
/// command and the address it answers `/readyz` on) until it is ready; when it exits first (a port
/// taken meanwhile), tries twice more on other ports. Returns it and the addresses it was given.
async fn start_ready(
    name: &str,
    dir: &std::path::Path,
    mut command: impl FnMut([SocketAddr; 2]) -> (tokio::process::Command, SocketAddr),
) -> (Process, [SocketAddr; 2]) {
    let mut failures = Vec::new();
    for _ in 0..3 {
        let ports = [loopback(), loopback()];
        let (command, ready) = command(ports);
        let mut process = Process::spawn(name, command, dir);
        match process.try_wait_ready(ready, "/readyz").await {
            Ok(()) => return (process, ports),
            Err(why) => failures.push(why),
        }
    }
    let log = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
    panic!("{name} did not start: {}\n{log}", failures.join("; "));
}

impl Drop for Fleet {
    /// The processes kill themselves when dropped (`kill_on_drop`), Redis and coturn too; after a
    /// failure the logs stay, and this says where.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("the fleet's logs are in {}", self.dir.display());
        }
    }
}
