//! Building (connect, bind) and running (serve HTTP + WebSocket until shutdown) the relay.

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use axum::{
    Router,
    extract::{Query, State, WebSocketUpgrade},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
    serve::ListenerExt,
};
use prometheus_client::registry::Registry;
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;
use videocall_proto::v1::call_service_client::CallServiceClient;
use videocall_runtime::{
    auth::{JwtKeys, bearer},
    ops::{self, OpsServer},
    service::Service,
};
use videocall_signaling::signal_bus::{SignalBus, hub::Hub};

use crate::{
    config::{RelayArgs, RelayConfig},
    connection::{Connection, Limits},
    metrics::RelayMetrics,
};

/// The subprotocol the relay speaks; clients offer it (and may carry their token as
/// `bearer.<token>` beside it).
pub const SUBPROTOCOL: &str = "videocall.v1";

/// Initial read buffer of a socket. tungstenite zero-fills its whole read buffer on the first
/// read, so its 128 KiB default costs 128 KiB of RSS per idle socket (and 4 KiB still cost 3 KiB
/// more than this): an ICE candidate frame (~300 bytes) fits, the buffer grows for larger messages
/// (up to `MAX_MESSAGE_BYTES`), which then take more reads. docs/benchmarks.md, scenario 4.
const READ_BUFFER_BYTES: usize = 512;

#[derive(Clone)]
struct AppState {
    config: Arc<RelayConfig>,
    keys: JwtKeys,
    hub: Hub,
    bus: SignalBus,
    gateway: CallServiceClient<tonic::transport::Channel>,
    connections: Arc<Semaphore>,
    shutdown: CancellationToken,
    metrics: RelayMetrics,
}

pub struct Application {
    config: RelayConfig,
    listener: TcpListener,
    bus: SignalBus,
    /// `/healthz`, `/readyz`, `/metrics` away from the public port, when configured.
    ops: Option<OpsServer>,
}

impl Application {
    /// Binds with a bus made by the caller (the standalone binary passes its in-process bus).
    pub async fn build_with_bus(config: RelayConfig, bus: SignalBus) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(config.http_listen_addr)
            .await
            .with_context(|| format!("cannot listen on {}", config.http_listen_addr))?;
        let ops = match config.ops_listen_addr {
            Some(addr) => Some(OpsServer::bind(addr).await?),
            None => None,
        };
        Ok(Self { config, listener, bus, ops })
    }

    /// Where `/metrics` is served when OPS_LISTEN_ADDR is set (then not on the public port).
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops.as_ref().and_then(OpsServer::local_addr)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.http_listen_addr)
    }
}

impl Service for Application {
    videocall_runtime::service_configuration!("signaling-relay", RelayArgs => RelayConfig);

    /// Connects to the signal bus (waiting for it) and binds the public and ops ports.
    async fn build(config: RelayConfig, shutdown: &CancellationToken) -> anyhow::Result<Self> {
        let bus = SignalBus::connect_with_retry(config.signal_bus.clone(), shutdown).await?;
        Self::build_with_bus(config, bus).await
    }

    /// Serves until `shutdown`, then closes every socket (1001) and gives them the grace period.
    async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self { config, listener, bus, ops } = self;
        let gateway_channel = Endpoint::from_shared(config.gateway_url.clone())
            .context("GATEWAY_URL")?
            .connect_timeout(Duration::from_secs(5))
            .connect_lazy();
        let (hub, hub_task) = Hub::start(bus.clone(), Some(config.presence_interval), shutdown.clone());
        let grace = config.shutdown_grace;
        let max_connections = config.max_connections;
        let connections = Arc::new(Semaphore::new(max_connections));
        let mut registry = Registry::default();
        let metrics = RelayMetrics::new(&mut registry);
        hub.readiness().register(&mut registry);
        let registry = Arc::new(registry);
        let ops_task =
            ops.map(|ops| tokio::spawn(ops.serve_shared(registry.clone(), hub.readiness(), shutdown.clone())));
        let state = AppState {
            metrics,
            keys: config.tokens.clone(),
            config: Arc::new(config),
            hub: hub.clone(),
            bus,
            gateway: CallServiceClient::new(gateway_channel),
            connections: connections.clone(),
            shutdown: shutdown.clone(),
        };
        let mut app = Router::new()
            .route("/ws", get(upgrade))
            .route("/", get(|| web("index.html")))
            .route("/{file}", get(|axum::extract::Path(file): axum::extract::Path<String>| web(file)))
            .with_state(state)
            .merge(ops::health_router(hub.readiness(), shutdown.clone()));
        // Without an ops address (the standalone binary, on loopback) metrics stay here.
        if ops_task.is_none() {
            app = app.merge(ops::metrics_router(registry));
        }
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(%addr, "signaling relay listening");
        let stop = shutdown.clone();
        // TCP_NODELAY: signals are small frames that must not wait for Nagle's algorithm.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
            .context("http server")?;
        // Open sockets were told to close (1001); give them the grace period to finish.
        let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
        if tokio::time::timeout(grace, connections.acquire_many(all)).await.is_err() {
            tracing::warn!(open = hub.connection_count(), "grace period over with sockets still open");
        }
        hub_task.abort();
        if let Some(task) = ops_task {
            task.await.context("operations endpoint")??;
        }
        tracing::info!("signaling relay stopped");
        Ok(())
    }
}

/// The browser client (`web/`), built into the binary so a relay needs no files beside it.
async fn web(file: impl AsRef<str>) -> Response {
    let (body, content_type) = match file.as_ref() {
        "index.html" => (include_str!("../../../web/index.html"), "text/html; charset=utf-8"),
        "agent.html" => (include_str!("../../../web/agent.html"), "text/html; charset=utf-8"),
        "customer.html" => (include_str!("../../../web/customer.html"), "text/html; charset=utf-8"),
        "videocall.js" => (include_str!("../../../web/videocall.js"), "text/javascript; charset=utf-8"),
        "page.js" => (include_str!("../../../web/page.js"), "text/javascript; charset=utf-8"),
        "agent.js" => (include_str!("../../../web/agent.js"), "text/javascript; charset=utf-8"),
        "customer.js" => (include_str!("../../../web/customer.js"), "text/javascript; charset=utf-8"),
        "style.css" => (include_str!("../../../web/style.css"), "text/css; charset=utf-8"),
        _ => return (StatusCode::NOT_FOUND, "not found").into_response(),
    };
    let headers = [
        (header::CONTENT_TYPE, content_type),
        (header::CACHE_CONTROL, "no-cache"),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        // Page links carry a token until the page takes it out of the address bar.
        (header::REFERRER_POLICY, "no-referrer"),
    ];
    (headers, body).into_response()
}

/// The web client's policy: its own scripts, styles and WebSocket only, no inline script, never
/// framed (clickjacking a call's Accept button), no plugins, no forms posting elsewhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; media-src 'self' blob: mediastream:; connect-src 'self'; object-src 'none'; \
    base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn refuse(status: StatusCode, message: &str) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], serde_json::json!({"error": message}).to_string())
        .into_response()
}

/// Token from `?token=` or from a `bearer.<token>` subprotocol.
fn token_of(query: &HashMap<String, String>, headers: &HeaderMap) -> Option<String> {
    if let Some(token) = query.get("token").filter(|t| !t.is_empty()) {
        return Some(token.clone());
    }
    if let Some(auth) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(bearer) {
        return Some(auth.to_owned());
    }
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix("bearer.").map(str::to_owned))
}

/// Browsers send `Origin`; a page of the relay's own host, or one in ALLOWED_ORIGINS, may connect.
fn origin_allowed(config: &RelayConfig, headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else { return true };
    if config.allowed_origins.iter().any(|o| o == "*" || o == origin) {
        return true;
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
    origin.split_once("://").is_some_and(|(_, rest)| !host.is_empty() && rest == host)
}

async fn upgrade(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if state.shutdown.is_cancelled() {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    if !origin_allowed(&state.config, &headers) {
        return refuse(StatusCode::FORBIDDEN, "origin not allowed");
    }
    let Some(token) = token_of(&query, &headers) else {
        return refuse(StatusCode::UNAUTHORIZED, "missing token: use ?token= or the bearer.<token> subprotocol");
    };
    let principal = match state.keys.verify(&token, chrono::Utc::now().timestamp()) {
        Ok(p) => p,
        Err(e) => return refuse(StatusCode::UNAUTHORIZED, &e.to_string()),
    };
    if state.hub.connections_of(&principal.user_id) >= state.config.max_connections_per_user {
        return refuse(StatusCode::TOO_MANY_REQUESTS, "too many connections for this user");
    }
    let Ok(permit) = state.connections.clone().try_acquire_owned() else {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "relay is full");
    };
    let limits = Limits {
        rate_per_sec: state.config.rate_limit_per_sec,
        burst: state.config.rate_limit_burst,
        heartbeat: state.config.heartbeat,
    };
    let max = state.config.max_message_bytes;
    let per_user = state.config.max_connections_per_user;
    // The socket's task keeps what it uses and no more (not the keys, not the whole principal):
    // it lives as long as the socket (docs/benchmarks.md, scenario 4).
    let AppState { hub, gateway, bus, shutdown, metrics, .. } = state;
    let (user_id, token_expires_at) = (principal.user_id, principal.expires_at);
    let ws = ws.read_buffer_size(READ_BUFFER_BYTES);
    ws.max_message_size(max).max_frame_size(max).protocols([SUBPROTOCOL]).on_upgrade(move |mut socket| async move {
        let _permit = permit;
        match hub.register(&user_id, per_user).await {
            Ok(registration) => {
                let connection = Connection {
                    socket,
                    registration,
                    token,
                    token_expires_at,
                    gateway,
                    bus,
                    limits,
                    metrics: metrics.clone(),
                };
                metrics.connections.inc();
                connection.run(shutdown).await;
                metrics.connections.dec();
            }
            Err(error) => {
                use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
                tracing::warn!(%error, %user_id, "connection refused after upgrade");
                let reason = if matches!(error, videocall_signaling::signal_bus::hub::RegisterError::TooManyForUser(_))
                {
                    "too many connections for this user"
                } else {
                    "signal bus unavailable, retry"
                };
                let frame = CloseFrame { code: 1013, reason: Utf8Bytes::from_static(reason) };
                let _ = socket.send(Message::Close(Some(frame))).await;
            }
        }
    })
}
