//! Building (connect, migrate, bind) and running (serve gRPC, relay the outbox, report health) the
//! gateway. `build` binds, so tests use port 0 and read the address back.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, gauge::Gauge},
    registry::Registry,
};
use sea_orm::DatabaseConnection;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect};
use tokio::{net::TcpListener, sync::Notify};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use videocall_calls::{CallMetrics, CallStore, recordings::RecordingStore};
use videocall_domain::{CallStatus, CallType};
use videocall_entities::calls;
use videocall_messaging::{
    cloud_event::event_source,
    local_events::LocalEvents,
    outbox_relay::{self, OutboxRelay, OutboxRelayConfig},
};
use videocall_proto::{FILE_DESCRIPTOR_SET, v1::call_service_server::CallServiceServer};
use videocall_runtime::{
    db,
    ops::{OpsServer, Readiness},
    service::Service,
    supervisor::Supervisor,
};
use videocall_signaling::signal_bus::{SignalBus, hub::Hub};

use crate::{
    config::{GatewayArgs, GatewayConfig},
    service::{CallApi, authenticate},
};

/// Largest gRPC message accepted or sent.
const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// Longest a request may run, whatever deadline the client asked for.
const SERVER_TIMEOUT: Duration = Duration::from_secs(30);
const READINESS_PERIOD: Duration = Duration::from_secs(5);

pub struct Application {
    config: GatewayConfig,
    listener: TcpListener,
    ops: Option<OpsServer>,
    db: DatabaseConnection,
    bus: SignalBus,
    outbox_wake: Arc<Notify>,
    local_events: Option<Arc<LocalEvents>>,
}

/// What the standalone binary hands the gateway instead of letting it connect: its database, its
/// in-process signal bus and events.
pub struct InProcessParts {
    pub db: DatabaseConnection,
    pub bus: SignalBus,
    pub events: Arc<LocalEvents>,
}

impl Application {
    /// Binds with the standalone binary's database, bus and events (the outbox goes to in-process
    /// consumers instead of RabbitMQ).
    pub async fn build_in_process(config: GatewayConfig, parts: InProcessParts) -> anyhow::Result<Self> {
        Self::bind(config, parts.db, parts.bus, Some(parts.events)).await
    }

    async fn bind(
        config: GatewayConfig,
        db: DatabaseConnection,
        bus: SignalBus,
        local_events: Option<Arc<LocalEvents>>,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(config.grpc_listen_addr)
            .await
            .with_context(|| format!("cannot listen on {}", config.grpc_listen_addr))?;
        let ops = match config.ops_listen_addr {
            Some(addr) => Some(OpsServer::bind(addr).await?),
            None => None,
        };
        Ok(Self { config, listener, ops, db, bus, outbox_wake: Arc::new(Notify::new()), local_events })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.grpc_listen_addr)
    }

    /// Where `/healthz`, `/readyz` and `/metrics` are served, if they are.
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops.as_ref().and_then(OpsServer::local_addr)
    }

    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }
}

impl Service for Application {
    videocall_runtime::service_configuration!("api-gateway", GatewayArgs => GatewayConfig);

    /// Connects to the database (waiting for it), runs migrations and binds the gRPC port.
    async fn build(config: GatewayConfig, shutdown: &CancellationToken) -> anyhow::Result<Self> {
        let db = db::connect_and_migrate(&config.database_url, shutdown).await?;
        let bus = SignalBus::connect_with_retry(config.signal_bus.clone(), shutdown).await?;
        Self::bind(config, db, bus, None).await
    }

    /// Serves until `shutdown`: health turns NOT_SERVING first, in-flight requests get
    /// `shutdown_grace` to finish. Returns an error naming the task that failed, if one did.
    async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self { config, listener, ops, db, bus, outbox_wake, local_events } = self;
        let in_process = local_events.is_some();
        let source = event_source(&config.common.cell_id, &config.common.service_name);
        let call_metrics = CallMetrics::default();
        let store = CallStore::new(db.clone(), source.clone(), outbox_wake.clone()).with_metrics(call_metrics.clone());
        let stop_serving = CancellationToken::new();
        let (hub, hub_task) = Hub::start(bus.clone(), None, shutdown.clone());
        let desk_wake = std::sync::Arc::new(tokio::sync::Notify::new());
        let desk_metrics = crate::desk::DeskMetrics::default();
        let transfer_metrics = crate::transfer::TransferMetrics::default();
        let router = crate::desk::Router::new(store.clone(), bus.clone(), config.desk, desk_wake.clone())
            .with_metrics(desk_metrics.clone())
            .with_transfer_metrics(transfer_metrics.clone());
        let api = CallApi {
            hub,
            policy: crate::policy::Policy::new(db.clone(), config.call_policy),
            store,
            recordings: RecordingStore::new(db.clone(), source),
            ice: config.ice.clone(),
            ring_timeouts: config.ring_timeouts,
            desk: config.desk,
            desk_wake,
            transfer_metrics: transfer_metrics.clone(),
            bus,
            stopping: stop_serving.clone(),
        };
        let keys = config.tokens.clone();
        let call_service = CallServiceServer::new(api)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let call_service = tonic::service::interceptor::InterceptedService::new(call_service, authenticate(keys));

        let health = tonic_health::server::HealthReporter::new();
        let health_service = crate::health::service(health.clone(), stop_serving.clone());
        // Reflection lists every RPC to whoever asks: only where an operator turned it on.
        let reflection = if config.grpc_reflection {
            let service = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
                .build_v1()
                .context("reflection service")?;
            Some(service)
        } else {
            None
        };

        let relay = OutboxRelay::new(
            db.clone(),
            OutboxRelayConfig {
                amqp_url: config.amqp_url.clone(),
                exchange: config.events_exchange.clone(),
                batch_size: config.outbox_batch_size,
                poll_interval: config.outbox_poll_interval,
                connection_name: format!("{}-outbox", config.common.service_name),
                unrouted: config.unrouted,
            },
            outbox_wake,
        );
        let mut registry = Registry::default();
        let relay = match local_events {
            Some(events) => {
                events.register_metrics(&mut registry);
                relay.deliver_in_process(events)
            }
            None => relay,
        };
        relay.register_metrics(&mut registry);
        call_metrics.register(&mut registry);
        desk_metrics.register(&mut registry);
        transfer_metrics.register(&mut registry);
        let gauges = Gauges::new(&mut registry);
        let ready = Readiness::default();

        let mut tasks = Supervisor::new();
        if let Some(ops) = ops {
            tasks.spawn("operations endpoint", ops.serve(registry, ready.clone(), stop_serving.clone()));
        }
        let (stop, addr) = (stop_serving.clone(), listener.local_addr().map(|a| a.to_string()).unwrap_or_default());
        tasks.spawn("grpc server", async move {
            tracing::info!(%addr, "gRPC listening");
            tonic::transport::Server::builder()
                .trace_fn(request_span)
                .timeout(SERVER_TIMEOUT)
                .layer(crate::deadline::DeadlineLayer { max: SERVER_TIMEOUT })
                .add_service(health_service)
                .add_optional_service(reflection)
                .add_service(call_service)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop.cancelled_owned())
                .await
                .context("gRPC server")
        });
        tasks.spawn("outbox relay", relay.run(shutdown.clone()));
        tasks.spawn("desk router", router.run(shutdown.clone()));
        let (stop, health_reporter, pool, is_ready) = (shutdown.clone(), health.clone(), db.clone(), ready.clone());
        tasks.spawn("readiness", async move {
            readiness(pool, health_reporter, is_ready, gauges, stop).await;
            Ok(())
        });

        let result = tasks.wait(&shutdown).await;
        // NOT_SERVING first, so load balancers stop sending before the listener closes; Watch
        // streams end once they have said so, signal streams with UNAVAILABLE.
        ready.set(false);
        health.set_service_status("", ServingStatus::NotServing).await;
        health.set_not_serving::<CallServiceServer<CallApi>>().await;
        stop_serving.cancel();
        tasks.drain(Some(config.shutdown_grace)).await;
        hub_task.abort();
        if !in_process {
            db.close_by_ref().await.ok(); // in process, the database is the binary's to close
        }
        tracing::info!("api-gateway stopped");
        result
    }
}

/// The span of one gRPC request: a child of the caller's span when the request carries a W3C
/// `traceparent` (the relay sends its frame's); `call_id` is filled in by the handlers.
fn request_span(request: &tonic::codegen::http::Request<()>) -> tracing::Span {
    let span = tracing::info_span!(
        "grpc",
        otel.name = %request.uri().path(),
        rpc.method = %request.uri().path(),
        call_id = tracing::field::Empty,
    );
    if let Some(traceparent) = request.headers().get("traceparent").and_then(|v| v.to_str().ok()) {
        videocall_runtime::telemetry::trace_context::set_parent(&span, traceparent);
    }
    span
}

/// Gauges read from the database at each readiness check.
struct Gauges {
    outbox_backlog: Gauge,
    outbox_oldest: Gauge<f64, std::sync::atomic::AtomicU64>,
    live_calls: Family<StatusLabel, Gauge>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
    call_type: &'static str,
}

impl Gauges {
    fn new(registry: &mut Registry) -> Self {
        let gauges =
            Self { outbox_backlog: Gauge::default(), outbox_oldest: Gauge::default(), live_calls: Family::default() };
        registry.register(
            "videocall_outbox_backlog",
            "Events not yet confirmed by the broker",
            gauges.outbox_backlog.clone(),
        );
        registry.register(
            "videocall_outbox_oldest_pending_seconds",
            "Age of the oldest event not yet confirmed by the broker (0 when none waits)",
            gauges.outbox_oldest.clone(),
        );
        registry.register(
            "videocall_live_calls",
            "Calls initiated, ringing or active, by status and call type",
            gauges.live_calls.clone(),
        );
        gauges
    }

    async fn refresh(&self, db: &DatabaseConnection) -> Result<(), sea_orm::DbErr> {
        let backlog = outbox_relay::backlog(db).await?;
        self.outbox_backlog.set(i64::try_from(backlog).unwrap_or(i64::MAX));
        let oldest = outbox_relay::oldest_pending(db).await?;
        let age = oldest.map_or(0.0, |at| (chrono::Utc::now() - at).num_milliseconds().max(0) as f64 / 1000.0);
        self.outbox_oldest.set(age);
        let live = [CallStatus::Initiated, CallStatus::Ringing, CallStatus::Active];
        let counts: Vec<(String, String, i64)> = calls::Entity::find()
            .select_only()
            .column(calls::Column::Status)
            .column(calls::Column::CallType)
            .column_as(calls::Column::Id.count(), "n")
            .filter(calls::Column::Status.is_in(live.map(CallStatus::as_str)))
            .group_by(calls::Column::Status)
            .group_by(calls::Column::CallType)
            .into_tuple()
            .all(db)
            .await?;
        // Every combination is set, so one that empties drops back to 0.
        for status in live {
            for call_type in CallType::ALL {
                let n = counts
                    .iter()
                    .find(|(s, t, _)| s == status.as_str() && t == call_type.as_str())
                    .map_or(0, |(_, _, n)| *n);
                self.live_calls
                    .get_or_create(&StatusLabel { status: status.as_str(), call_type: call_type.as_str() })
                    .set(n);
            }
        }
        Ok(())
    }
}

/// Keeps health SERVING (and `/readyz` 200) while the database answers, NOT_SERVING while it
/// does not; refreshes the gauges.
async fn readiness(
    db: DatabaseConnection,
    health: tonic_health::server::HealthReporter,
    ready: Readiness,
    gauges: Gauges,
    stop: CancellationToken,
) {
    let mut last = None;
    loop {
        let status = match db::ping(&db).await.and(gauges.refresh(&db).await) {
            Ok(()) => ServingStatus::Serving,
            Err(error) => {
                tracing::warn!(%error, "database ping failed; reporting NOT_SERVING");
                ServingStatus::NotServing
            }
        };
        ready.set(status == ServingStatus::Serving);
        if last != Some(status) {
            health.set_service_status("", status).await;
            health.set_service_status("videocall.v1.CallService", status).await;
            last = Some(status);
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(READINESS_PERIOD) => {}
        }
    }
}
