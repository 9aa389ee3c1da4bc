//! Helpers for black-box tests against the real PostgreSQL and RabbitMQ: a fresh database per
//! test, and a tap that sees every event published on an exchange; a coturn, headless Chromium
//! and a WebSocket client for the signaling tests.

pub mod browser;
pub mod coturn;
pub mod fault_proxy;
pub mod process;
pub mod redis;
pub mod redis_cluster;
pub mod ws;

use std::time::Duration;

use futures_util::StreamExt;
use lapin::{
    Connection, ConnectionProperties,
    options::{BasicConsumeOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};
use sea_orm::{ConnectionTrait, Database};
use tokio::sync::mpsc;
use uuid::Uuid;

pub fn admin_database_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/postgres".into())
}

pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The queue type the tests' services declare (`QUEUE_TYPE`): classic, though the services
/// default to quorum. Every test makes queues of its own names and a run leaves a few hundred
/// behind; one RabbitMQ node carrying hundreds of idle quorum queues (a Raft group each) stopped
/// answering AMQP handshakes here (docs/operations.md, Queue types). The quorum paths have their
/// own tests (`crates/messaging/tests/queue_types.rs`, the consumers' `quorum` cases), which
/// delete what they declare, and the compose fleet runs on the default.
pub const QUEUE_TYPE: &str = "classic";

/// The gateway's unrouted-retention settings with [`QUEUE_TYPE`].
pub fn classic_unrouted() -> videocall_messaging::amqp::UnroutedRetention {
    videocall_messaging::amqp::UnroutedRetention {
        queue_type: videocall_messaging::amqp::QueueType::Classic,
        ..Default::default()
    }
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

/// A name no other test uses, for exchanges and queues.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}.{}", Uuid::now_v7().simple())
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
        Self::bind_at(&amqp_url(), exchange).await
    }

    /// As [`EventTap::bind`], on the broker at `url` (a deployed fleet's, say).
    pub async fn bind_at(url: &str, exchange: &str) -> Self {
        let connection = Connection::connect(url, ConnectionProperties::default()).await.expect("RabbitMQ reachable");
        // As every service declares it (with its alternate exchange), so neither refuses the other.
        videocall_messaging::amqp::declare_events_exchange(&connection, exchange, None)
            .await
            .expect("declare exchange");
        let channel = connection.create_channel().await.expect("channel");
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .expect("declare queue");
        channel
            .queue_bind(
                queue.name().clone(),
                exchange.into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind queue");
        let mut consumer = channel
            .basic_consume(
                queue.name().clone(),
                "".into(),
                BasicConsumeOptions { no_ack: true, ..Default::default() },
                FieldTable::default(),
            )
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

    /// Deletes a test's events exchange, with its alternate exchange and the queue behind it.
    pub async fn delete_exchange(&self, exchange: &str) {
        if let Ok(channel) = self.connection.create_channel().await {
            let unrouted = videocall_messaging::amqp::unrouted_name(exchange);
            let _ = channel.exchange_delete(exchange.into(), ExchangeDeleteOptions::default()).await;
            let _ = channel.exchange_delete(unrouted.as_str().into(), ExchangeDeleteOptions::default()).await;
            let options = lapin::options::QueueDeleteOptions::default();
            let _ = channel.queue_delete(unrouted.as_str().into(), options).await;
        }
    }
}

/// The URL of the database `db` is connected to, for opening more pools to it (replicas).
pub async fn database_url_of(db: &sea_orm::DatabaseConnection) -> String {
    use sea_orm::{DbBackend, Statement};
    let row = db
        .query_one_raw(Statement::from_string(DbBackend::Postgres, "SELECT current_database() AS name"))
        .await
        .expect("query current database")
        .expect("a row");
    let name: String = row.try_get("", "name").expect("name");
    let admin = admin_database_url();
    let (base, _) = admin.rsplit_once('/').expect("database URL has a path");
    format!("{base}/{name}")
}

/// A plain HTTP/1.1 GET on loopback: status code and body (for /healthz, /readyz, /metrics).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    http_get_with_headers(addr, path).await.map(|(status, _, body)| (status, body))
}

/// As [`http_get`], with the response's header block (lines `name: value`) too.
pub async fn http_get_with_headers(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((response.as_str(), ""));
    let head = head.to_ascii_lowercase();
    let body = if head.contains("transfer-encoding: chunked") { dechunk(body)? } else { body.to_owned() };
    Some((status, head, body))
}

/// The body of a `Transfer-Encoding: chunked` response (hex size line, data, CRLF; size 0 ends).
fn dechunk(mut rest: &str) -> Option<String> {
    let mut body = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(body);
        }
        body.push_str(after.get(..size)?);
        rest = after.get(size..)?.strip_prefix("\r\n")?;
    }
}

/// A TCP port that was free a moment ago, for child processes that must be told their port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// A plain HTTP/1.1 POST on loopback with extra `headers` (`Content-Type: application/json`
/// unless they name one): status code and body.
pub async fn http_post(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let mut request =
        format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("content-type")) {
        request.push_str("Content-Type: application/json\r\n");
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    stream.write_all(body).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Some((status, body))
}
