//! Spawning the gateway and observing it: databases, exchanges, tokens and events.

use std::{net::SocketAddr, time::Duration};
use videocall_runtime::service::Service;

use api_gateway::{Application, GatewayConfig, RingTimeouts};
use sea_orm::{DatabaseConnection, EntityTrait, PaginatorTrait};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::{Request, transport::Channel};
use videocall_proto::v1::call_service_client::CallServiceClient;
use videocall_runtime::{
    auth::{JwtKeys, Role},
    config::{Common, Secret},
    ice::IceConfig,
    telemetry::{LogFormat, init_for_tests},
};
pub use videocall_testkit::{EventTap, amqp_url, fresh_database};

pub const JWT_SECRET: &str = "integration-test-secret-0123456789";
pub const TURN_SECRET: &str = "turn-test-secret";

pub fn config(database_url: String, exchange: &str) -> GatewayConfig {
    GatewayConfig {
        call_policy: api_gateway::CallPolicy::open(),
        grpc_reflection: false,
        unrouted: videocall_testkit::classic_unrouted(),
        common: Common { service_name: "api-gateway".into(), cell_id: "test".into(), log_format: LogFormat::Text },
        database_url,
        amqp_url: amqp_url(),
        signal_bus: videocall_signaling::signal_bus::SignalBusConfig {
            redis_url: std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
            cell_id: videocall_testkit::unique_name("test"),
            log_capacity: 256,
            log_ttl: Duration::from_secs(600),
        },
        grpc_listen_addr: "127.0.0.1:0".parse().expect("addr"),
        tokens: videocall_runtime::auth::JwtKeys::new(Secret::new(JWT_SECRET)),
        ice: IceConfig {
            stun_urls: vec!["stun:127.0.0.1:3478".into()],
            turn_urls: vec!["turn:127.0.0.1:3478?transport=udp".into()],
            turn_secret: Some(Secret::new(TURN_SECRET)),
            turn_ttl: Duration::from_secs(3600),
        },
        ring_timeouts: RingTimeouts { support: 45, sales: 30, consult: 60 },
        desk: Default::default(),
        events_exchange: exchange.to_owned(),
        outbox_batch_size: 100,
        outbox_poll_interval: Duration::from_millis(100),
        shutdown_grace: Duration::from_secs(5),
        ops_listen_addr: None,
    }
}

/// A running gateway plus a queue that sees every event it publishes.
pub struct TestApp {
    pub addr: SocketAddr,
    /// The operations endpoint, where the configuration serves one.
    pub ops: Option<SocketAddr>,
    pub db: DatabaseConnection,
    pub database_url: String,
    pub exchange: String,
    pub events: EventTap,
    /// The cell the gateway's Redis keys and channels carry.
    pub cell: String,
    keys: JwtKeys,
    shutdown: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

pub async fn spawn_app() -> TestApp {
    init_for_tests();
    let exchange = videocall_testkit::unique_name("videocall.events.test");
    let events = EventTap::bind(&exchange).await;
    spawn_app_on(fresh_database().await, exchange, events).await
}

/// A gateway whose configuration `change` adjusts first.
pub async fn spawn_app_with(change: impl FnOnce(&mut GatewayConfig)) -> TestApp {
    init_for_tests();
    let exchange = videocall_testkit::unique_name("videocall.events.test");
    let events = EventTap::bind(&exchange).await;
    let database_url = fresh_database().await;
    let mut config = config(database_url.clone(), &exchange);
    change(&mut config);
    start(config, database_url, exchange, events).await
}

/// Starts a gateway on an existing database and exchange.
pub async fn spawn_app_on(database_url: String, exchange: String, events: EventTap) -> TestApp {
    start(config(database_url.clone(), &exchange), database_url, exchange, events).await
}

/// As [`spawn_app_on`], with the configuration adjusted by `change` first.
pub async fn spawn_app_on_with(
    database_url: String,
    exchange: String,
    events: EventTap,
    change: impl FnOnce(&mut GatewayConfig),
) -> TestApp {
    let mut config = config(database_url.clone(), &exchange);
    change(&mut config);
    start(config, database_url, exchange, events).await
}

async fn start(config: GatewayConfig, database_url: String, exchange: String, events: EventTap) -> TestApp {
    let cell = config.signal_bus.cell_id.clone();
    let shutdown = CancellationToken::new();
    let app = Application::build(config, &shutdown).await.expect("gateway builds");
    let addr = app.local_addr();
    let ops = app.ops_addr();
    let db = app.db().clone();
    let handle = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    TestApp {
        addr,
        ops,
        db,
        database_url,
        exchange,
        events,
        cell,
        keys: JwtKeys::new(Secret::new(JWT_SECRET)),
        shutdown,
        handle,
    }
}

impl TestApp {
    pub async fn client(&self) -> CallServiceClient<Channel> {
        CallServiceClient::connect(format!("http://{}", self.addr)).await.expect("connect to gateway")
    }

    pub fn token(&self, user: &str, role: Role) -> String {
        self.keys.mint(user, role, chrono::Utc::now().timestamp() + 600)
    }

    /// `message` with a user token for `user`.
    pub fn as_user<T>(&self, user: &str, message: T) -> Request<T> {
        with_token(&self.token(user, Role::User), message)
    }

    pub fn as_agent<T>(&self, agent: &str, message: T) -> Request<T> {
        with_token(&self.token(agent, Role::Agent), message)
    }

    pub fn as_service<T>(&self, message: T) -> Request<T> {
        with_token(&self.token("sweeper-test", Role::Service), message)
    }

    pub async fn count<E: EntityTrait>(&self, _entity: E) -> u64
    where
        E::Model: Sync,
    {
        E::find().count(&self.db).await.expect("count rows")
    }

    /// Stops the gateway (as SIGTERM would) and removes the test's exchange.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let result = self.handle.await.expect("gateway task joins");
        self.events.delete_exchange(&self.exchange).await;
        result
    }
}

pub fn with_token<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ascii header"));
    request
}
