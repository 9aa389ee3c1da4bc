//! The fleet under load: one api-gateway and N signaling relays in this process on loopback
//! (port 0), sharing a fresh PostgreSQL database, a unique cell id and a unique exchange with a
//! queue bound to it (so the outbox relay publishes instead of retrying unroutable events).

use std::{net::SocketAddr, time::Duration};

use anyhow::Context;
use lapin::{
    Connection, ConnectionProperties,
    options::{ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};
use tokio_util::sync::CancellationToken;
use videocall_runtime::{
    auth::{JwtKeys, Role},
    config::{Common, Secret},
    ice::IceConfig,
    service::Service,
    telemetry::LogFormat,
};
use videocall_signaling::signal_bus::SignalBusConfig;

pub const JWT_SECRET: &str = "loadgen-secret-0123456789abcdef0123456789";

pub use videocall_testkit::redis_url;

/// Relay limits for load: the per-socket rate limit is lifted (a benchmark sender is one socket
/// sending far more than a browser would), everything else as shipped.
pub fn relay_config(
    index: usize,
    cell: &str,
    gateway: SocketAddr,
    max_connections: usize,
) -> signaling_relay::RelayConfig {
    relay_config_on(index, cell, gateway, max_connections, &redis_url())
}

/// [`relay_config`] with the signal bus on `redis_url` (one server, or a cluster's seed list).
pub fn relay_config_on(
    index: usize,
    cell: &str,
    gateway: SocketAddr,
    max_connections: usize,
    redis: &str,
) -> signaling_relay::RelayConfig {
    signaling_relay::RelayConfig {
        common: Common {
            service_name: format!("signaling-relay-{index}"),
            cell_id: cell.to_owned(),
            log_format: LogFormat::Text,
        },
        http_listen_addr: "127.0.0.1:0".parse().expect("addr"),
        gateway_url: format!("http://{gateway}"),
        tokens: videocall_runtime::auth::JwtKeys::new(Secret::new(JWT_SECRET)),
        allowed_origins: vec![],
        max_connections,
        max_connections_per_user: 5,
        max_message_bytes: 64 * 1024,
        rate_limit_per_sec: 1_000_000,
        rate_limit_burst: 1_000_000,
        heartbeat: Duration::from_secs(20),
        signal_bus: bus_config_on(cell, redis),
        shutdown_grace: Duration::from_secs(2),
        presence_interval: Duration::from_secs(5),
        ops_listen_addr: None,
    }
}

/// No STUN/TURN: everything is on loopback.
pub fn no_ice() -> IceConfig {
    IceConfig { stun_urls: vec![], turn_urls: vec![], turn_secret: None, turn_ttl: Duration::from_secs(3600) }
}

pub fn bus_config(cell: &str) -> SignalBusConfig {
    bus_config_on(cell, &redis_url())
}

pub fn bus_config_on(cell: &str, redis: &str) -> SignalBusConfig {
    SignalBusConfig {
        redis_url: redis.to_owned(),
        cell_id: cell.to_owned(),
        log_capacity: 256,
        log_ttl: Duration::from_secs(600),
    }
}

pub struct Fleet {
    pub gateway: SocketAddr,
    pub relays: Vec<SocketAddr>,
    pub cell: String,
    pub database_url: String,
    pub exchange: String,
    keys: JwtKeys,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    sink: EventSink,
}

impl Fleet {
    /// Starts the gateway (fresh database, migrations) and `relays` relays.
    pub async fn spawn(relays: usize, ice: IceConfig) -> anyhow::Result<Self> {
        Self::spawn_on(relays, ice, &redis_url()).await
    }

    /// [`Self::spawn`] with the signal bus on `redis` (one server, or a cluster's seed list).
    pub async fn spawn_on(relays: usize, ice: IceConfig, redis: &str) -> anyhow::Result<Self> {
        let cell = videocall_testkit::unique_name("loadgen").replace('.', "-");
        let exchange = videocall_testkit::unique_name("videocall.events.loadgen");
        let sink = EventSink::bind(&exchange).await?;
        let shutdown = CancellationToken::new();
        let database_url = videocall_testkit::fresh_database().await;
        let config = api_gateway::GatewayConfig {
            call_policy: api_gateway::CallPolicy::open(),
            grpc_reflection: false,
            unrouted: videocall_testkit::classic_unrouted(),
            common: Common { service_name: "api-gateway".into(), cell_id: cell.clone(), log_format: LogFormat::Text },
            database_url: database_url.clone(),
            amqp_url: videocall_testkit::amqp_url(),
            signal_bus: bus_config_on(&cell, redis),
            grpc_listen_addr: "127.0.0.1:0".parse().expect("addr"),
            tokens: videocall_runtime::auth::JwtKeys::new(Secret::new(JWT_SECRET)),
            ice,
            ring_timeouts: api_gateway::RingTimeouts::uniform(45),
            desk: Default::default(),
            events_exchange: exchange.clone(),
            outbox_batch_size: 100,
            outbox_poll_interval: Duration::from_millis(200),
            shutdown_grace: Duration::from_secs(2),
            ops_listen_addr: None,
        };
        let app = api_gateway::Application::build(config, &shutdown).await.context("gateway builds")?;
        let gateway = app.local_addr();
        let mut tasks = vec![tokio::spawn(app.run_until_stopped(shutdown.clone()))];
        let mut addrs = Vec::new();
        for i in 0..relays {
            let app = signaling_relay::Application::build(relay_config_on(i, &cell, gateway, 20_000, redis), &shutdown)
                .await
                .context("relay builds")?;
            addrs.push(app.local_addr());
            tasks.push(tokio::spawn(app.run_until_stopped(shutdown.clone())));
        }
        Ok(Self {
            gateway,
            relays: addrs,
            cell,
            database_url,
            exchange,
            keys: JwtKeys::new(Secret::new(JWT_SECRET)),
            shutdown,
            tasks,
            sink,
        })
    }

    pub fn token(&self, user: &str) -> String {
        token(&self.keys, user)
    }

    pub fn relay_url(&self, i: usize, user: &str) -> String {
        format!("ws://{}/ws?token={}", self.relays[i], self.token(user))
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        self.sink.delete(&self.exchange).await;
    }
}

pub fn token(keys: &JwtKeys, user: &str) -> String {
    keys.mint(user, Role::User, chrono::Utc::now().timestamp() + 3600)
}

/// A topic exchange with a queue bound to `#`, so published events are routable. The queue is
/// exclusive: it goes away with this connection.
pub struct EventSink {
    connection: Connection,
    pub queue: String,
}

impl EventSink {
    pub async fn bind(exchange: &str) -> anyhow::Result<Self> {
        let connection = Connection::connect(&videocall_testkit::amqp_url(), ConnectionProperties::default())
            .await
            .context("RabbitMQ reachable")?;
        videocall_messaging::amqp::declare_events_exchange(&connection, exchange, None).await?;
        let channel = connection.create_channel().await?;
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() },
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                queue.name().clone(),
                exchange.into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Self { connection, queue: queue.name().to_string() })
    }

    /// Messages waiting in the queue.
    pub async fn depth(&self) -> anyhow::Result<u32> {
        let channel = self.connection.create_channel().await?;
        let q = channel
            .queue_declare(
                self.queue.as_str().into(),
                QueueDeclareOptions { passive: true, ..Default::default() },
                FieldTable::default(),
            )
            .await?;
        let _ = channel.close(200, "".into()).await;
        Ok(q.message_count())
    }

    pub async fn delete(&self, exchange: &str) {
        if let Ok(channel) = self.connection.create_channel().await {
            let unrouted = videocall_messaging::amqp::unrouted_name(exchange);
            let _ = channel.exchange_delete(exchange.into(), ExchangeDeleteOptions::default()).await;
            let _ = channel.exchange_delete(unrouted.as_str().into(), ExchangeDeleteOptions::default()).await;
            let _ = channel.queue_delete(unrouted.as_str().into(), lapin::options::QueueDeleteOptions::default()).await;
        }
        let _ = self.connection.close(200, "done".into()).await;
    }
}

/// The hidden `serve-relay` subcommand: one relay in this (child) process, the same library code
/// the `signaling-relay` binary runs. Prints `listening <addr>` on stdout; stops when stdin closes.
pub async fn serve_relay(cell: String, gateway: SocketAddr) -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt;
    let shutdown = CancellationToken::new();
    let app = signaling_relay::Application::build(relay_config(0, &cell, gateway, 20_000), &shutdown).await?;
    println!("listening {}", app.local_addr());
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let mut sink = [0u8; 64];
        let mut stdin = tokio::io::stdin();
        while matches!(stdin.read(&mut sink).await, Ok(n) if n > 0) {}
        stop.cancel();
    });
    app.run_until_stopped(shutdown).await
}
