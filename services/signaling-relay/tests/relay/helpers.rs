//! A fleet for tests: one gateway and N relays sharing a fresh database and a unique cell, plus a
//! small WebSocket client.

use std::{net::SocketAddr, time::Duration};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use signaling_relay::RelayConfig;
use tokio::net::TcpStream;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};
use tokio_util::sync::CancellationToken;
use videocall_platform::{
    auth::{JwtKeys, Role},
    config::{Common, Secret},
    ice::IceConfig,
    signal_bus::SignalBusConfig,
    telemetry::LogFormat,
};

pub const JWT_SECRET: &str = "relay-test-secret-0123456789";

pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub struct Fleet {
    pub relays: Vec<SocketAddr>,
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
        }
    }
}

pub async fn spawn_fleet(options: FleetOptions) -> Fleet {
    videocall_platform::telemetry::init_for_tests();
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
    let gateway_config = api_gateway::GatewayConfig {
        common: common("api-gateway"),
        database_url: videocall_testkit::fresh_database().await,
        amqp_url: videocall_testkit::amqp_url(),
        signal_bus: bus.clone(),
        grpc_listen_addr: "127.0.0.1:0".parse().expect("addr"),
        jwt_secret: Secret::new(JWT_SECRET),
        ice: options.ice.clone(),
        ring_timeouts: api_gateway::RingTimeouts::uniform(45),
        events_exchange: exchange,
        outbox_batch_size: 100,
        outbox_poll_interval: Duration::from_millis(200),
        shutdown_grace: Duration::from_secs(2),
        ops_listen_addr: None,
    };
    let gateway_app = api_gateway::Application::build(gateway_config, &shutdown).await.expect("gateway builds");
    let gateway = gateway_app.local_addr();
    let mut tasks = vec![tokio::spawn(gateway_app.run_until_stopped(shutdown.clone()))];
    let mut relays = Vec::new();
    for i in 0..options.relays {
        let config = RelayConfig {
            common: common(&format!("signaling-relay-{i}")),
            http_listen_addr: "127.0.0.1:0".parse().expect("addr"),
            gateway_url: format!("http://{gateway}"),
            jwt_secret: Secret::new(JWT_SECRET),
            allowed_origins: vec!["https://agents.example.com".into()],
            max_connections: 1000,
            max_connections_per_user: 3,
            max_message_bytes: options.max_message_bytes,
            rate_limit_per_sec: options.rate_limit_per_sec,
            rate_limit_burst: options.rate_limit_burst,
            heartbeat: Duration::from_secs(20),
            signal_bus: bus.clone(),
            shutdown_grace: Duration::from_secs(2),
        };
        let app = signaling_relay::Application::build(config, &shutdown).await.expect("relay builds");
        relays.push(app.local_addr());
        tasks.push(tokio::spawn(app.run_until_stopped(shutdown.clone())));
    }
    Fleet { relays, keys: JwtKeys::new(Secret::new(JWT_SECRET)), shutdown, tasks }
}

impl Fleet {
    pub fn token(&self, user: &str) -> String {
        self.keys.mint(user, Role::User, chrono::Utc::now().timestamp() + 600)
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

pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub user_id: String,
    next_id: u64,
    /// Frames read while waiting for a reply, handed out by `next` in order.
    pending: std::collections::VecDeque<Value>,
}

impl Client {
    pub async fn connect(url: &str) -> Result<Self, tokio_tungstenite::tungstenite::Error> {
        let (ws, _) = tokio_tungstenite::connect_async(url).await?;
        let mut client = Self { ws, user_id: String::new(), next_id: 0, pending: Default::default() };
        let hello = client.next_of("hello").await;
        client.user_id = hello["user_id"].as_str().unwrap_or_default().to_owned();
        Ok(client)
    }

    pub async fn send_raw(&mut self, text: String) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    /// Sends `frame` with a fresh `id` and returns the ack or error that carries it.
    pub async fn request(&mut self, mut frame: Value) -> Value {
        self.next_id += 1;
        let id = format!("m{}", self.next_id);
        frame["id"] = id.clone().into();
        self.send_raw(frame.to_string()).await;
        loop {
            let reply = self.read(Duration::from_secs(10)).await.expect("a reply");
            if reply["id"] == id.as_str() && (reply["type"] == "ack" || reply["type"] == "error") {
                return reply;
            }
            self.pending.push_back(reply);
        }
    }

    /// The next JSON frame, or None after 10 s or on close.
    pub async fn next(&mut self) -> Option<Value> {
        self.next_within(Duration::from_secs(10)).await
    }

    pub async fn next_within(&mut self, wait: Duration) -> Option<Value> {
        match self.pending.pop_front() {
            Some(frame) => Some(frame),
            None => self.read(wait).await,
        }
    }

    async fn read(&mut self, wait: Duration) -> Option<Value> {
        loop {
            let message = tokio::time::timeout(wait, self.ws.next()).await.ok()??.ok()?;
            match message {
                Message::Text(text) => return serde_json::from_str(text.as_str()).ok(),
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// Skips frames until one of `frame_type` arrives.
    pub async fn next_of(&mut self, frame_type: &str) -> Value {
        loop {
            let frame = self.next().await.unwrap_or_else(|| panic!("no `{frame_type}` frame arrived"));
            if frame["type"] == frame_type {
                return frame;
            }
        }
    }

    /// The close code the server sends, reading past other frames.
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), self.ws.next()).await.ok()?? {
                Ok(Message::Close(Some(frame))) => return Some(u16::from(frame.code)),
                Ok(Message::Close(None)) => return None,
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }
}

/// Waits until a STUN/TURN server on `addr` answers a Binding request (coturn binds its port a
/// little before it serves). Panics after 10 s.
pub fn wait_until_stun_answers(addr: std::net::SocketAddr) {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("socket");
    socket.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
    // Binding request: type 0x0001, length 0, magic cookie, 12-byte transaction id.
    let mut request = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
    request.extend_from_slice(&uuid::Uuid::now_v7().as_bytes()[..12]);
    let mut buf = [0u8; 512];
    for _ in 0..50 {
        let _ = socket.send_to(&request, addr);
        if socket.recv_from(&mut buf).is_ok() {
            return;
        }
    }
    panic!("no STUN answer from {addr}");
}
