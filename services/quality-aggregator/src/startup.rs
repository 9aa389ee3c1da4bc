//! The aggregator's shell: `build` binds the operations endpoint, `run_until_stopped` connects and
//! consumes until shutdown.

use std::net::SocketAddr;

use anyhow::Context;
use lapin::Connection;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use videocall_messaging::{amqp, cloud_event::event_source};
use videocall_runtime::{
    db,
    ops::{OpsServer, Readiness},
    service::Service,
};

use crate::{
    config::{AggregatorArgs, AggregatorConfig},
    consumer::{self, ConsumerMetrics, QueueConsumer, Settings},
    summaries::{Aggregator, Alerts, SummaryMetrics},
};
use videocall_signaling::signal_bus::SignalBus;

/// A bound aggregator: the operations endpoint listens; `run` does the rest.
pub struct Application {
    config: AggregatorConfig,
    ops: OpsServer,
}

impl Application {
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops.local_addr()
    }
}

impl Service for Application {
    videocall_runtime::service_configuration!("quality-aggregator", AggregatorArgs => AggregatorConfig);

    /// Binds the operations endpoint (port 0 in tests; read it back with [`Application::ops_addr`]).
    async fn build(config: AggregatorConfig, _shutdown: &CancellationToken) -> anyhow::Result<Self> {
        let ops = OpsServer::bind(config.ops_listen_addr).await?;
        Ok(Self { config, ops })
    }

    /// Connects to PostgreSQL (migrating it), Redis (lazily: only for the best-effort
    /// `quality.alert` frames) and RabbitMQ, and consumes until `shutdown`; the
    /// broker connection is re-established with backoff whenever it fails. On shutdown the
    /// consumer stops, the message in flight is settled, connections close.
    async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self { config, ops } = self;
        let mut registry = Registry::default();
        let metrics = consumer::metrics(&mut registry, &config.queue);
        let summaries = SummaryMetrics::default();
        summaries.register(&mut registry);
        let ready = Readiness::default();
        let ops_task = tokio::spawn(ops.serve(registry, ready.clone(), shutdown.clone()));
        let db = db::connect_and_migrate(&config.database_url, &shutdown).await?;
        let bus = SignalBus::connect_lazy(&config.redis_url, &config.common.cell_id).context("REDIS_URL")?;
        let alerts = Alerts {
            policy: config.alerts,
            source: event_source(&config.common.cell_id, &config.common.service_name),
            bus: Some(bus),
        };
        let aggregator = Aggregator::new(db.clone()).with_metrics(summaries).with_alerts(alerts);
        let settings = Settings {
            exchange: config.events_exchange.clone(),
            queue: config.queue.clone(),
            dlx_exchange: config.dlx_exchange.clone(),
            prefetch: config.prefetch,
            max_retries: config.max_retries,
            queue_type: config.queue_type,
        };
        amqp::run_sessions(&config.amqp_url, &config.common.service_name, &shutdown, &ready, |connection| async {
            let result = session(&connection, &aggregator, &settings, &metrics, &ready, &shutdown).await;
            (connection, result)
        })
        .await;
        tracing::info!("quality-aggregator stopped");
        db.close_by_ref().await.ok();
        ops_task.await??;
        Ok(())
    }
}

/// One broker connection's life: declare, then consume until shutdown or a failure.
async fn session(
    connection: &Connection,
    aggregator: &Aggregator,
    settings: &Settings,
    metrics: &ConsumerMetrics,
    ready: &Readiness,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    videocall_messaging::amqp::declare_events_exchange(connection, &settings.exchange, None)
        .await
        .with_context(|| format!("declaring exchange {}", settings.exchange))?;
    let publisher = consumer::publisher_channel(connection).await.context("opening the publisher channel")?;
    consumer::declare(connection, settings)
        .await
        .with_context(|| format!("declaring queue {} on exchange {}", settings.queue, settings.exchange))?;
    let consumer = QueueConsumer {
        aggregator: aggregator.clone(),
        settings: settings.clone(),
        publisher: publisher.clone(),
        metrics: metrics.clone(),
    };
    ready.set(true);
    let watcher = connection.create_channel().await.context("opening the dead-letter watch channel")?;
    let queues = [settings.queue.clone()];
    tokio::select! {
        consumed = consumer.run(connection, shutdown) => consumed?,
        () = metrics.watch_dead_letters(&watcher, &queues) => {}
    }
    let _ = watcher.close(200, "shutting down".into()).await;
    let _ = publisher.close(200, "shutting down".into()).await;
    Ok(())
}
