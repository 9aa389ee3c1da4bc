//! The standalone mode: every Videocall service in one process on embedded defaults — a SQLite
//! file instead of PostgreSQL, an in-process signal bus instead of Redis, in-process event
//! delivery instead of RabbitMQ, a development token secret, loopback addresses only. The services
//! are the fleet's own libraries (the monolithic mode of one codebase, as Grafana Mimir's `-target=all`
//! or `livekit-server --dev`): the gateway serves gRPC, the relay serves the web client and the
//! WebSocket, the sweeper sweeps, the call-recorder records calls both parties consented to
//! (files under `<data dir>/recordings/`), and the outbox relay hands each event to the quality
//! aggregator and event consumer handlers in the same process.
//!
//! Upstream events (UserOffline, SupportTicketCreated) have no broker to arrive on; they can be
//! posted to the workers' endpoint: `POST /events/{exchange}/{routing_key}` with the CloudEvents
//! JSON as the body (and an optional `message-id` header), which runs the same handlers.

#![forbid(unsafe_code)]

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use axum::{
    Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use clap::Parser;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use videocall_calls::CallMetrics;
use videocall_messaging::local_events::LocalEvents;
use videocall_runtime::{
    auth::{Ed25519Key, JwtKeys, Role, bearer, jwks_json},
    config::{Checker, ConfigError, Secret},
    db,
    ice::{IceArgs, IceConfig},
    ops::{self, Readiness},
    service::Service,
    supervisor::Supervisor,
    telemetry::LogFormat,
};
use videocall_signaling::signal_bus::SignalBus;

/// Where the standalone's Ed25519 token key lives unless `VIDEOCALL_KEY_FILE` says otherwise: one
/// per OS user, so `videocall --token` mints tokens every standalone of this user accepts.
pub fn default_key_file() -> PathBuf {
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from(".videocall"));
    state.join("videocall").join("standalone-signing-key.jwk")
}

/// The key in `path`, made (mode 0600, published atomically so racing processes agree) if missing.
pub fn standalone_key(path: &std::path::Path) -> Result<Ed25519Key, String> {
    if !path.exists() {
        let dir = path.parent().unwrap_or(std::path::Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let temp = dir.join(format!(".key-{}", uuid::Uuid::now_v7().simple()));
        Ed25519Key::generate("standalone").write_private(&temp)?;
        // Fails if another process published its key first: then that one is used.
        let _ = std::fs::hard_link(&temp, path);
        let _ = std::fs::remove_file(&temp);
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ed25519Key::from_jwk_json(&text).map_err(|e| format!("{}: {e}", path.display()))
}
/// Writes the public half of `key` as a JWK set beside its file (what a fleet's services are
/// given as JWT_PUBLIC_KEYS); returns its path.
fn public_key_set(key_file: &std::path::Path, key: &Ed25519Key) -> Result<PathBuf, String> {
    let path = key_file.with_extension("public.jwks");
    let temp = path.with_extension(format!("tmp-{}", uuid::Uuid::now_v7().simple()));
    let written = std::fs::write(&temp, jwks_json(&[key.public_jwk()])).and_then(|()| std::fs::rename(&temp, &path));
    written.map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

const CELL_ID: &str = "standalone";

#[derive(Debug, Clone, Parser)]
#[command(
    name = "videocall",
    version,
    about = "Runs every Videocall service in one process: SQLite, in-process buses, loopback only"
)]
pub struct StandaloneArgs {
    /// Where the SQLite database lives (created if missing).
    #[arg(long, env = "VIDEOCALL_DATA_DIR", default_value = ".videocall")]
    pub data_dir: PathBuf,
    /// The relay: web client, WebSocket signaling (`/ws`), `/metrics`.
    #[arg(long, env = "HTTP_LISTEN_ADDR", default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,
    /// gRPC `videocall.v1.CallService` (with health and reflection).
    #[arg(long, env = "GRPC_LISTEN_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc: SocketAddr,
    /// The gateway's `/healthz`, `/readyz`, `/metrics`.
    #[arg(long, env = "OPS_LISTEN_ADDR", default_value = "127.0.0.1:9090")]
    pub ops: SocketAddr,
    /// The workers' `/healthz`, `/readyz`, `/metrics`, and `POST /events/{exchange}/{routing_key}`.
    #[arg(long, env = "WORKERS_LISTEN_ADDR", default_value = "127.0.0.1:9091")]
    pub workers: SocketAddr,
    /// HS256 token secret (at least 32 bytes). Without it tokens are EdDSA, signed with this
    /// user's generated key (VIDEOCALL_KEY_FILE), and only loopback addresses are allowed.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// The Ed25519 key tokens are signed with when JWT_SECRET is not set (made if missing;
    /// default `$XDG_STATE_HOME/videocall/standalone-signing-key.jwk`, or under `~/.local/state`).
    #[arg(long, env = "VIDEOCALL_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// STUN and TURN servers handed to clients (none: host candidates only, enough on one
    /// machine); TURN needs a coturn with `use-auth-secret` and the same secret.
    #[command(flatten)]
    pub ice: IceArgs,
    /// Seconds a call rings before it is missed.
    #[arg(long, env = "RING_TIMEOUT_SECS", default_value = "45")]
    pub ring_timeout_secs: i32,
    /// Active calls silent this long end as `connection_lost`.
    #[arg(long, env = "ZOMBIE_TIMEOUT_SECS", default_value = "600")]
    pub zombie_timeout_secs: u64,
    /// A party of a live call whose sockets have all been gone this long ends the call as
    /// `connection_lost` (a reload or reconnect within it keeps the call); 0 turns this off.
    #[arg(long, env = "PARTY_GRACE_SECS", default_value = "30")]
    pub party_grace_secs: u64,
    /// `text` or `json`.
    #[arg(long, env = "LOG_FORMAT", default_value = "text")]
    pub log_format: String,
    /// Print a bearer token for USER (`--role` user, agent or service) and exit.
    #[arg(long, value_name = "USER")]
    pub token: Option<String>,
    #[arg(long, default_value = "user", requires = "token")]
    pub role: String,
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct StandaloneConfig {
    pub data_dir: PathBuf,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub ops: SocketAddr,
    pub workers: SocketAddr,
    /// Verifies tokens, and mints them (`--token`, the printed page links).
    pub tokens: JwtKeys,
    /// How the gateway and relay are told to verify the same tokens (a `--flag=value`).
    pub verifier: Secret,
    pub ice: IceConfig,
    pub ring_timeout_secs: i32,
    pub zombie_timeout: Duration,
    pub party_grace: Option<Duration>,
    pub log_format: LogFormat,
}

impl StandaloneArgs {
    /// Checks every setting; the error names each bad one.
    pub fn validate(&self) -> Result<StandaloneConfig, ConfigError> {
        let mut c = Checker::new();
        let dev_secret = self.jwt_secret.is_none();
        // The services verify tokens as their own binaries would: with the HS256 secret, or with
        // the public half of the signing key (a JWK set beside it).
        let tokens = match &self.jwt_secret {
            Some(secret) => c
                .hs256_secret("JWT_SECRET", secret)
                .then(|| (JwtKeys::new(Secret::new(secret.clone())), Secret::new(format!("--jwt-secret={secret}")))),
            None => {
                let path = self.key_file.clone().unwrap_or_else(default_key_file);
                match standalone_key(&path).and_then(|key| public_key_set(&path, &key).map(|jwks| (key, jwks))) {
                    Ok((key, jwks)) => Some((
                        JwtKeys::none().with_signing_key(key),
                        Secret::new(format!("--jwt-public-keys={}", jwks.display())),
                    )),
                    Err(e) => {
                        c.check("VIDEOCALL_KEY_FILE", false, &e);
                        None
                    }
                }
            }
        };
        for (name, addr) in [
            ("HTTP_LISTEN_ADDR", self.http),
            ("GRPC_LISTEN_ADDR", self.grpc),
            ("OPS_LISTEN_ADDR", self.ops),
            ("WORKERS_LISTEN_ADDR", self.workers),
        ] {
            c.check(
                name,
                !dev_secret || addr.ip().is_loopback(),
                &format!(
                    "{addr} is not a loopback address; with the development token key only loopback is allowed \
                     (set JWT_SECRET to listen elsewhere)"
                ),
            );
        }
        let ice = self.ice.check(&mut c);
        c.check("RING_TIMEOUT_SECS", (5..=600).contains(&self.ring_timeout_secs), "must be between 5 and 600");
        c.check("ZOMBIE_TIMEOUT_SECS", self.zombie_timeout_secs >= 30, "must be at least 30");
        c.check(
            "PARTY_GRACE_SECS",
            self.party_grace_secs == 0 || (2..=3600).contains(&self.party_grace_secs),
            "must be 0 (off) or between 2 and 3600",
        );
        let log_format = c.parse::<LogFormat>("LOG_FORMAT", &self.log_format);
        c.finish()?;
        match (ice, log_format, tokens) {
            (Some(ice), Some(log_format), Some((tokens, verifier))) => Ok(StandaloneConfig {
                data_dir: self.data_dir.clone(),
                http: self.http,
                grpc: self.grpc,
                ops: self.ops,
                workers: self.workers,
                tokens,
                verifier,
                ice,
                ring_timeout_secs: self.ring_timeout_secs,
                zombie_timeout: Duration::from_secs(self.zombie_timeout_secs),
                party_grace: (self.party_grace_secs > 0).then(|| Duration::from_secs(self.party_grace_secs)),
                log_format,
            }),
            _ => Err(ConfigError(vec!["internal: a checked value is missing".into()])),
        }
    }
}

/// Mints a bearer token with the configured key or secret, valid for `ttl`.
pub fn mint_token(keys: &JwtKeys, user: &str, role: &str, ttl: Duration) -> anyhow::Result<String> {
    let role = match role {
        "user" => Role::User,
        "agent" => Role::Agent,
        "service" => Role::Service,
        other => anyhow::bail!("role `{other}` is not one of user, agent, service"),
    };
    let exp = chrono::Utc::now().timestamp() + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2);
    Ok(keys.mint(user, role, exp))
}

/// Everything bound; [`Standalone::run_until_stopped`] runs it.
pub struct Standalone {
    config: StandaloneConfig,
    db: sea_orm::DatabaseConnection,
    events: Arc<LocalEvents>,
    gateway: api_gateway::Application,
    relay: signaling_relay::Application,
    workers: TcpListener,
    workers_registry: Registry,
    sweeper: missed_call_sweeper::Sweeper,
    sweeper_schedule: cron::Schedule,
    sweeper_metrics: missed_call_sweeper::metrics::SweeperMetrics,
    bus: SignalBus,
    recorder: call_recorder::RecorderConfig,
    recorder_metrics: call_recorder::metrics::RecorderMetrics,
}

/// The settings every service here shares: the cell and the log format.
fn shared(config: &StandaloneConfig) -> Vec<String> {
    vec![format!("--cell-id={CELL_ID}"), format!("--log-format={}", config.log_format.as_str())]
}

/// The configuration of service `S` as its own binary has it by default, with `overrides` and
/// the settings every service here shares.
fn configure<S: Service>(config: &StandaloneConfig, overrides: &[String]) -> anyhow::Result<S::Config> {
    S::configured_with(&[shared(config), overrides.to_vec()].concat())
}

impl Standalone {
    /// Opens (or creates) the SQLite database and migrates it, configures every service from its
    /// own defaults with the standalone's overrides (loopback addresses, SQLite, the in-process
    /// buses), wires the in-process buses and binds every listener.
    pub async fn build(config: StandaloneConfig, shutdown: &CancellationToken) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create the data directory {}", config.data_dir.display()))?;
        let path = config.data_dir.join("videocall.sqlite3");
        let database_url = format!("sqlite://{}?mode=rwc", path.display());
        let db = db::connect_and_migrate(&database_url, shutdown).await?;
        let database = format!("--database-url={database_url}");

        let mut gateway_config = configure::<api_gateway::Application>(
            &config,
            &[
                database.clone(),
                // Unused: the outbox goes to the in-process consumers.
                "--amqp-url=amqp://in-process.invalid".to_owned(),
                config.verifier.expose().to_owned(),
                format!("--grpc-listen-addr={}", config.grpc),
                format!("--ops-listen-addr={}", config.ops),
                format!("--ring-timeout-secs={}", config.ring_timeout_secs),
                "--grpc-reflection=true".to_owned(),
                "--outbox-poll-ms=200".to_owned(),
                "--shutdown-grace-secs=5".to_owned(),
            ],
        )?;
        gateway_config.ice = config.ice.clone();
        // No Redis: one bus in this process, with the gateway's settings (the relay's are the same).
        let bus = SignalBus::in_process(gateway_config.signal_bus.clone());
        let events = Arc::new(LocalEvents::new());
        let exchange = gateway_config.events_exchange.clone();

        // Consumers of the events, bound as the RabbitMQ workers bind their queues.
        let summaries = quality_aggregator::SummaryMetrics::default();
        let aggregator = quality_aggregator::Aggregator::new(db.clone()).with_metrics(summaries.clone());
        let quality = Arc::new(quality_aggregator::consumer::handler(aggregator));
        for key in quality_aggregator::config::ROUTING_KEYS {
            events.bind("quality-aggregator", &exchange, key, quality.clone());
        }
        // The workers' call metrics: the event consumer's and the sweeper's transitions together.
        let worker_calls = CallMetrics::default();
        let consumer = configure::<event_consumer::Application>(
            &config,
            &[database.clone(), "--amqp-url=amqp://in-process.invalid".to_owned()],
        )?;
        let effects = event_consumer::Effects::new(
            db.clone(),
            &consumer.common.cell_id,
            &consumer.common.service_name,
            bus.clone(),
            consumer.support_offer_ttl,
        )
        .with_metrics(worker_calls.clone());
        for (kind, binding) in [
            (event_consumer::Kind::UserOffline, &consumer.user_offline),
            (event_consumer::Kind::TicketCreated, &consumer.ticket_created),
        ] {
            let handler = Arc::new(event_consumer::consumer::handler(effects.clone(), kind));
            events.bind("event-consumer", &binding.exchange, &binding.routing_key, handler);
        }

        let parts = api_gateway::startup::InProcessParts { db: db.clone(), bus: bus.clone(), events: events.clone() };
        let gateway = api_gateway::Application::build_in_process(gateway_config, parts).await?;

        let mut relay_config = configure::<signaling_relay::Application>(
            &config,
            &[
                config.verifier.expose().to_owned(),
                format!("--http-listen-addr={}", config.http),
                format!("--gateway-url=http://{}", gateway.local_addr()),
                "--max-connections=1000".to_owned(),
                "--shutdown-grace-secs=5".to_owned(),
                // Loopback only here: the relay's metrics stay on its HTTP port.
                "--ops-listen-addr=".to_owned(),
            ],
        )?;
        // Leases renewed well within the grace, even a short one.
        relay_config.presence_interval = config
            .party_grace
            .map_or(Duration::from_secs(5), |g| (g / 3).clamp(Duration::from_secs(1), Duration::from_secs(5)));
        let relay = signaling_relay::Application::build_with_bus(relay_config, bus.clone()).await?;

        let workers = TcpListener::bind(config.workers)
            .await
            .with_context(|| format!("cannot listen on {} (WORKERS_LISTEN_ADDR)", config.workers))?;
        let mut workers_registry = Registry::default();
        worker_calls.register(&mut workers_registry);
        summaries.register(&mut workers_registry);
        let sweeper_metrics = missed_call_sweeper::metrics::SweeperMetrics::new(&mut workers_registry);
        let sweeper_config = configure::<missed_call_sweeper::Application>(
            &config,
            &[
                database.clone(),
                "--sweep-batch-size=500".to_owned(),
                format!("--zombie-timeout-secs={}", config.zombie_timeout.as_secs()),
                format!("--party-grace-secs={}", config.party_grace.map_or(0, |g| g.as_secs())),
            ],
        )?;
        let sweeper = missed_call_sweeper::Sweeper::configured(db.clone(), &sweeper_config)
            .with_bus(Some(bus.clone()))
            .with_metrics(worker_calls);
        // Recordings go under the data directory; the recorder's peer listens on loopback only,
        // like everything else here.
        let mut recorder = configure::<call_recorder::Application>(
            &config,
            &[
                database,
                // Unused: the recorder gets the in-process bus.
                "--redis-url=redis://in-process.invalid".to_owned(),
                format!("--recordings-dir={}", config.data_dir.join("recordings").display()),
                "--recorder-id=standalone".to_owned(),
                "--poll-ms=500".to_owned(),
                "--candidate-networks=127.0.0.1".to_owned(),
                format!("--ops-listen-addr={}", config.workers),
            ],
        )?;
        recorder.ice = config.ice.clone();
        let recorder_metrics = call_recorder::metrics::RecorderMetrics::new(&mut workers_registry);
        Ok(Self {
            config,
            db,
            events,
            gateway,
            relay,
            workers,
            workers_registry,
            sweeper,
            sweeper_schedule: sweeper_config.schedule,
            sweeper_metrics,
            bus,
            recorder,
            recorder_metrics,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.relay.local_addr()
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.gateway.local_addr()
    }

    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.gateway.ops_addr()
    }

    pub fn workers_addr(&self) -> Option<SocketAddr> {
        self.workers.local_addr().ok()
    }

    pub fn config(&self) -> &StandaloneConfig {
        &self.config
    }

    /// Runs every service until `shutdown`; if one stops on its own, the others are stopped too
    /// and its error is returned.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            config,
            db,
            events,
            gateway,
            relay,
            workers,
            workers_registry,
            sweeper,
            sweeper_schedule,
            sweeper_metrics,
            bus,
            recorder,
            recorder_metrics,
        } = self;
        let ready = Readiness::default();
        let mut services = Supervisor::new();
        services.spawn("api-gateway", gateway.run_until_stopped(shutdown.clone()));
        services.spawn("signaling-relay", relay.run_until_stopped(shutdown.clone()));
        let (stop, sweeper_ready) = (shutdown.clone(), ready.clone());
        services.spawn("missed-call-sweeper", async move {
            sweeper.run(sweeper_schedule, sweeper_metrics, sweeper_ready, stop).await;
            Ok(())
        });
        let recording =
            call_recorder::serve(db.clone(), bus, recorder, recorder_metrics, Readiness::default(), shutdown.clone());
        services.spawn("call-recorder", recording);
        let stop = shutdown.clone();
        let mut registry = workers_registry;
        events.register_metrics(&mut registry);
        let app = ops::router(Arc::new(registry), ready.clone(), stop.clone()).merge(
            Router::new()
                .route("/events/{exchange}/{routing_key}", post(ingest))
                .with_state((events, config.tokens.clone())),
        );
        services.spawn("workers endpoint", async move {
            let served = axum::serve(workers, app).with_graceful_shutdown(async move { stop.cancelled().await }).await;
            served.context("workers endpoint")
        });
        ready.set(true);

        let result = services.wait(&shutdown).await;
        services.drain(None).await;
        db.close_by_ref().await.ok();
        tracing::info!("videocall stopped");
        result
    }
}

/// `POST /events/{exchange}/{routing_key}`: an upstream event (UserOffline on `presence.events` /
/// `user.offline`, SupportTicketCreated on `support.events` / `ticket.created`) handed to the
/// in-process consumers bound to it, as the RabbitMQ workers would: the `message-id` header (as
/// the AMQP message id; else the CloudEvents `id`) is what they dedupe on. 202 once applied (or a
/// duplicate), 404 when nothing listens there, 422 when a consumer can never apply it (the
/// reason says why; nothing was changed), 503 when a consumer asks to try again later.
/// Only a service principal may post (`Authorization: Bearer`, role `service`: 401 without a
/// valid token, 403 for another role), and only JSON (`application/cloudevents+json` or
/// `application/json`, else 415): a web page cannot send either without a CORS preflight, which
/// this endpoint never answers, so no page the developer opens can end their calls.
async fn ingest(
    State((events, keys)): State<(Arc<LocalEvents>, JwtKeys)>,
    Path((exchange, routing_key)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let reply = |status: StatusCode, value: serde_json::Value| {
        (status, [(axum::http::header::CONTENT_TYPE, "application/json")], value.to_string()).into_response()
    };
    let token = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(bearer);
    let principal = match token.map(|t| keys.verify(t, chrono::Utc::now().timestamp())) {
        None => {
            let error = "missing authorization: Bearer <token of a service principal>";
            return reply(StatusCode::UNAUTHORIZED, serde_json::json!({ "error": error }));
        }
        Some(Err(e)) => return reply(StatusCode::UNAUTHORIZED, serde_json::json!({"error": e.to_string()})),
        Some(Ok(principal)) => principal,
    };
    if !principal.is_service() {
        let error = "only a service principal may post events";
        return reply(StatusCode::FORBIDDEN, serde_json::json!({ "error": error }));
    }
    let content_type = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let media_type = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if !matches!(media_type.as_str(), "application/cloudevents+json" | "application/json") {
        let error = format!("content-type must be application/cloudevents+json or application/json, not `{}`", {
            content_type.chars().take(64).collect::<String>()
        });
        return reply(StatusCode::UNSUPPORTED_MEDIA_TYPE, serde_json::json!({ "error": error }));
    }
    let message_id = headers.get("message-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    match events.deliver(&exchange, &routing_key, message_id.as_deref(), &body).await {
        Ok(delivery) if delivery.consumers == 0 => reply(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": format!("no consumer is bound to `{routing_key}` on `{exchange}`")}),
        ),
        Ok(delivery) if !delivery.rejected.is_empty() => {
            let reasons: Vec<String> = delivery.rejected.iter().map(|(c, r)| format!("{c}: {r}")).collect();
            reply(
                StatusCode::UNPROCESSABLE_ENTITY,
                serde_json::json!({"error": reasons.join("; "), "message_id": message_id}),
            )
        }
        Ok(delivery) => {
            reply(StatusCode::ACCEPTED, serde_json::json!({"message_id": message_id, "consumers": delivery.consumers}))
        }
        Err(postponed) => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"error": postponed.to_string(), "message_id": message_id}),
        ),
    }
}
