//! A fleet for tests: gateways (two by default: relay i talks to gateway i mod 2) and N relays
//! sharing a fresh database and a unique cell (the WebSocket client is the testkit's).

use std::{net::SocketAddr, time::Duration};
use videocall_runtime::service::Service;

use signaling_relay::RelayConfig;
use tokio_util::sync::CancellationToken;
use videocall_runtime::{
    auth::{JwtKeys, Role},
    config::{Common, Secret},
    ice::IceConfig,
    telemetry::LogFormat,
};
use videocall_signaling::signal_bus::SignalBusConfig;
pub use videocall_testkit::ws::Client;

pub const JWT_SECRET: &str = "relay-test-secret-0123456789-0123456789";

pub use videocall_testkit::redis_url;

pub struct Fleet {
    pub relays: Vec<SocketAddr>,
    /// Each relay's ops address, with [`FleetOptions::relay_ops`].
    pub relay_ops: Vec<Option<SocketAddr>>,
    /// The first in-process gateway's gRPC address, and the cell everyone shares (for relay
    /// processes).
    pub gateway: SocketAddr,
    pub cell: String,
    keys: JwtKeys,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub struct FleetOptions {
    pub relays: usize,
    pub ice: IceConfig,
    pub redis_url: String,
    pub max_message_bytes: usize,
    pub rate_limit_per_sec: u32,
    pub rate_limit_burst: u32,
    /// Relays serve `/metrics` (with health and readiness) on an ops address of their own.
    pub relay_ops: bool,
    /// Gateway replicas (same database, bus and exchange); relay i talks to gateway i mod n.
    pub gateways: usize,
}

impl Default for FleetOptions {
    fn default() -> Self {
        Self {
            relays: 2,
            ice: IceConfig {
                stun_urls: vec![],
                turn_urls: vec![],
                turn_secret: None,
                turn_ttl: Duration::from_secs(3600),
            },
            redis_url: redis_url(),
            max_message_bytes: 64 * 1024,
            rate_limit_per_sec: 50,
            rate_limit_burst: 200,
            relay_ops: false,
            gateways: 2,
        }
    }
}

pub async fn spawn_fleet(options: FleetOptions) -> Fleet {
    videocall_runtime::telemetry::init_for_tests();
    let cell = videocall_testkit::unique_name("relaytest").replace('.', "-");
    let shutdown = CancellationToken::new();
    let common = |name: &str| Common { service_name: name.into(), cell_id: cell.clone(), log_format: LogFormat::Text };
    let bus = SignalBusConfig {
        redis_url: options.redis_url.clone(),
        cell_id: cell.clone(),
        log_capacity: 256,
        log_ttl: Duration::from_secs(600),
    };
    let exchange = videocall_testkit::unique_name("videocall.events.relaytest");
    let database_url = videocall_testkit::fresh_database().await;
    let gateway_config = api_gateway::GatewayConfig {
        call_policy: api_gateway::CallPolicy::open(),
        grpc_reflection: false,
        unrouted: videocall_testkit::classic_unrouted(),
        common: common("api-gateway"),
        database_url: database_url.clone(),
        amqp_url: videocall_testkit::amqp_url(),
        signal_bus: bus.clone(),
        grpc_listen_addr: "127.0.0.1:0".parse().expect("addr"),
        tokens: videocall_runtime::auth::JwtKeys::new(Secret::new(JWT_SECRET)),
        ice: options.ice.clone(),
        ring_timeouts: api_gateway::RingTimeouts::uniform(45),
        desk: Default::default(),
        events_exchange: exchange,
        outbox_batch_size: 100,
        outbox_poll_interval: Duration::from_millis(200),
        shutdown_grace: Duration::from_secs(2),
        ops_listen_addr: None,
    };
    let mut tasks = Vec::new();
    let mut gateways = Vec::new();
    for i in 0..options.gateways.min(options.relays).max(1) {
        let mut config = gateway_config.clone();
        config.common = common(&format!("api-gateway-{i}"));
        let gateway_app = api_gateway::Application::build(config, &shutdown).await.expect("gateway builds");
        gateways.push(gateway_app.local_addr());
        tasks.push(tokio::spawn(gateway_app.run_until_stopped(shutdown.clone())));
    }
    let gateway = gateways[0];
    let mut relays = Vec::new();
    let mut relay_ops = Vec::new();
    for i in 0..options.relays {
        let config = RelayConfig {
            common: common(&format!("signaling-relay-{i}")),
            http_listen_addr: "127.0.0.1:0".parse().expect("addr"),
            gateway_url: format!("http://{}", gateways[i % gateways.len()]),
            tokens: videocall_runtime::auth::JwtKeys::new(Secret::new(JWT_SECRET)),
            allowed_origins: vec!["https://agents.example.com".into()],
            max_connections: 1000,
            max_connections_per_user: 3,
            max_message_bytes: options.max_message_bytes,
            rate_limit_per_sec: options.rate_limit_per_sec,
            rate_limit_burst: options.rate_limit_burst,
            heartbeat: Duration::from_secs(20),
            signal_bus: bus.clone(),
            shutdown_grace: Duration::from_secs(2),
            presence_interval: Duration::from_secs(5),
            ops_listen_addr: options.relay_ops.then(|| "127.0.0.1:0".parse().expect("addr")),
        };
        let app = signaling_relay::Application::build(config, &shutdown).await.expect("relay builds");
        relay_ops.push(app.ops_addr());
        relays.push(app.local_addr());
        tasks.push(tokio::spawn(app.run_until_stopped(shutdown.clone())));
    }
    Fleet { relays, relay_ops, gateway, cell, keys: JwtKeys::new(Secret::new(JWT_SECRET)), shutdown, tasks }
}

impl Fleet {
    pub fn token(&self, user: &str) -> String {
        self.token_for(user, 600)
    }

    /// A user's token valid for `secs` more seconds.
    pub fn token_for(&self, user: &str, secs: i64) -> String {
        self.keys.mint(user, Role::User, chrono::Utc::now().timestamp() + secs)
    }

    /// Connects agent `agent` (a token with role `agent`) to relay `i`.
    pub async fn connect_agent(&self, i: usize, agent: &str) -> Client {
        let token = self.keys.mint(agent, Role::Agent, chrono::Utc::now().timestamp() + 600);
        Client::connect(&format!("ws://{}/ws?token={token}", self.relays[i])).await.expect("websocket connects")
    }

    /// Connects `user` to relay `i` with `?token=`.
    pub async fn connect(&self, i: usize, user: &str) -> Client {
        Client::connect(&format!("ws://{}/ws?token={}", self.relays[i], self.token(user)))
            .await
            .expect("websocket connects")
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            task.await.expect("joins").expect("clean stop");
        }
    }
}
