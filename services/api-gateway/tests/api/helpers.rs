//! Spawning the gateway and observing it: databases, exchanges, tokens and events.

use std::{net::SocketAddr, time::Duration};

use api_gateway::{Application, GatewayConfig, RingTimeouts};
use futures_util::StreamExt;
use lapin::{
    Connection, ConnectionProperties, ExchangeKind,
    options::{BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, EntityTrait, PaginatorTrait};
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::{Request, transport::Channel};
use uuid::Uuid;
use videocall_platform::{
    auth::{JwtKeys, Role},
    config::{Common, Secret},
    ice::IceConfig,
    telemetry::{LogFormat, init_for_tests},
};
use videocall_proto::v1::call_service_client::CallServiceClient;

pub const JWT_SECRET: &str = "integration-test-secret-0123456789";
pub const TURN_SECRET: &str = "turn-test-secret";

pub fn admin_database_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/postgres".into())
}

pub fn amqp_url() -> String {
    std::env::var("TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Creates an empty PostgreSQL database and returns its URL.
pub async fn fresh_database() -> String {
    let admin = admin_database_url();
    let name = format!("vc_test_{}", Uuid::now_v7().simple());
    let conn = Database::connect(admin.as_str()).await.expect("PostgreSQL reachable (TEST_DATABASE_URL)");
    conn.execute_unprepared(&format!("CREATE DATABASE \"{name}\"")).await.expect("create test database");
    conn.close().await.ok();
    let (base, _) = admin.rsplit_once('/').expect("database URL has a path");
    format!("{base}/{name}")
}

pub fn config(database_url: String, exchange: &str) -> GatewayConfig {
    GatewayConfig {
        common: Common { service_name: "api-gateway".into(), cell_id: "test".into(), log_format: LogFormat::Text },
        database_url,
        amqp_url: amqp_url(),
        redis_url: None,
        grpc_listen_addr: "127.0.0.1:0".parse().expect("addr"),
        jwt_secret: Secret::new(JWT_SECRET),
        ice: IceConfig {
            stun_urls: vec!["stun:127.0.0.1:3478".into()],
            turn_urls: vec!["turn:127.0.0.1:3478?transport=udp".into()],
            turn_secret: Some(Secret::new(TURN_SECRET)),
            turn_ttl: Duration::from_secs(3600),
        },
        ring_timeouts: RingTimeouts { support: 45, sales: 30, consult: 60 },
        events_exchange: exchange.to_owned(),
        outbox_batch_size: 100,
        outbox_poll_interval: Duration::from_millis(100),
        shutdown_grace: Duration::from_secs(5),
    }
}

/// A running gateway plus a queue that sees every event it publishes.
pub struct TestApp {
    pub addr: SocketAddr,
    pub db: DatabaseConnection,
    pub database_url: String,
    pub exchange: String,
    pub events: EventTap,
    keys: JwtKeys,
    shutdown: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

pub async fn spawn_app() -> TestApp {
    init_for_tests();
    let exchange = format!("videocall.events.test.{}", Uuid::now_v7().simple());
    let events = EventTap::bind(&exchange).await;
    spawn_app_on(fresh_database().await, exchange, events).await
}

/// Starts a gateway on an existing database and exchange.
pub async fn spawn_app_on(database_url: String, exchange: String, events: EventTap) -> TestApp {
    let shutdown = CancellationToken::new();
    let app = Application::build(config(database_url.clone(), &exchange), &shutdown).await.expect("gateway builds");
    let addr = app.local_addr();
    let db = app.db().clone();
    let handle = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    TestApp { addr, db, database_url, exchange, events, keys: JwtKeys::new(Secret::new(JWT_SECRET)), shutdown, handle }
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

/// One delivered event: routing key, AMQP properties and the CloudEvents body.
#[derive(Debug, Clone)]
pub struct Event {
    pub routing_key: String,
    pub message_id: Option<String>,
    pub content_type: Option<String>,
    pub persistent: bool,
    pub body: serde_json::Value,
}

impl Event {
    pub fn event_type(&self) -> &str {
        self.body["type"].as_str().unwrap_or_default()
    }

    pub fn subject(&self) -> &str {
        self.body["subject"].as_str().unwrap_or_default()
    }
}

/// An exclusive queue bound with `#` to an exchange, read in the background.
pub struct EventTap {
    connection: Connection,
    rx: mpsc::UnboundedReceiver<Event>,
}

impl EventTap {
    pub async fn bind(exchange: &str) -> Self {
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default()).await.expect("RabbitMQ reachable");
        let channel = connection.create_channel().await.expect("channel");
        channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions { durable: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .expect("declare exchange");
        let queue = channel
            .queue_declare("".into(), QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() }, FieldTable::default())
            .await
            .expect("declare queue");
        channel
            .queue_bind(queue.name().clone(), exchange.into(), "#".into(), QueueBindOptions::default(), FieldTable::default())
            .await
            .expect("bind queue");
        let mut consumer = channel
            .basic_consume(queue.name().clone(), "".into(), BasicConsumeOptions { no_ack: true, ..Default::default() }, FieldTable::default())
            .await
            .expect("consume");
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let body = serde_json::from_slice(&delivery.data).unwrap_or(serde_json::Value::Null);
                let props = &delivery.properties;
                let event = Event {
                    routing_key: delivery.routing_key.to_string(),
                    message_id: props.message_id().as_ref().map(|s| s.to_string()),
                    content_type: props.content_type().as_ref().map(|s| s.to_string()),
                    persistent: *props.delivery_mode() == Some(2),
                    body,
                };
                if tx.send(event).is_err() {
                    break;
                }
            }
        });
        Self { connection, rx }
    }

    /// The next event, or None after `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<Event> {
        tokio::time::timeout(wait, self.rx.recv()).await.ok().flatten()
    }

    /// Exactly `n` events (panics if fewer arrive in 10 s), then checks that no more come for a
    /// short quiet period.
    pub async fn take(&mut self, n: usize) -> Vec<Event> {
        let mut events = Vec::with_capacity(n);
        while events.len() < n {
            match self.next(Duration::from_secs(10)).await {
                Some(e) => events.push(e),
                None => panic!("expected {n} events, got {}: {events:#?}", events.len()),
            }
        }
        if let Some(extra) = self.next(Duration::from_millis(400)).await {
            panic!("expected exactly {n} events, got one more: {extra:#?}");
        }
        events
    }

    /// Fails if any event arrives within `wait`.
    pub async fn expect_none(&mut self, wait: Duration) {
        if let Some(e) = self.next(wait).await {
            panic!("expected no event, got {e:#?}");
        }
    }

    async fn delete_exchange(&self, exchange: &str) {
        if let Ok(channel) = self.connection.create_channel().await {
            let _ = channel.exchange_delete(exchange.into(), ExchangeDeleteOptions::default()).await;
        }
    }
}
