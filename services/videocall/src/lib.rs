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

pub mod config;
mod ingest;

pub use config::{StandaloneArgs, StandaloneConfig, default_key_file, mint_token, standalone_key};

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use axum::{Router, routing::post};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use videocall_calls::CallMetrics;
use videocall_messaging::local_events::LocalEvents;
use videocall_runtime::{
    db,
    ops::{self, Readiness},
    service::Service,
    supervisor::Supervisor,
};
use videocall_signaling::signal_bus::SignalBus;

const CELL_ID: &str = "standalone";

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
        let quality_config = configure::<quality_aggregator::Application>(
            &config,
            &[database.clone(), "--amqp-url=amqp://in-process.invalid".to_owned()],
        )?;
        let alerts = quality_aggregator::Alerts {
            policy: quality_config.alerts,
            source: videocall_messaging::cloud_event::event_source(
                &quality_config.common.cell_id,
                &quality_config.common.service_name,
            ),
            bus: Some(bus.clone()),
        };
        let aggregator =
            quality_aggregator::Aggregator::new(db.clone()).with_metrics(summaries.clone()).with_alerts(alerts);
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
        ready.register(&mut registry);
        let app = ops::router(Arc::new(registry), ready.clone(), stop.clone()).merge(
            Router::new()
                .route("/events/{exchange}/{routing_key}", post(ingest::ingest))
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
