//! The event consumer's shell: `build` binds the operations endpoint, `run_until_stopped` connects
//! and consumes both queues until shutdown.

use std::net::SocketAddr;

use anyhow::Context;
use lapin::Connection;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use videocall_calls::CallMetrics;
use videocall_messaging::amqp;
use videocall_runtime::{
    db,
    ops::{OpsServer, Readiness},
    service::Service,
};
use videocall_signaling::signal_bus::SignalBus;

use crate::{
    config::{ConsumerArgs, ConsumerConfig},
    consumer::{self, ConsumerMetrics, QueueConsumer, Settings},
    effects::{Effects, Kind},
};

/// event-consumer, bound: its operations endpoint listens (port 0 in tests: read it back with
/// [`Application::ops_addr`]); [`Service::run_until_stopped`] does the rest.
pub struct Application {
    config: ConsumerConfig,
    ops: OpsServer,
}

impl Application {
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops.local_addr()
    }
}

impl Service for Application {
    videocall_runtime::service_configuration!("event-consumer", ConsumerArgs => ConsumerConfig);

    async fn build(config: ConsumerConfig, _shutdown: &CancellationToken) -> anyhow::Result<Self> {
        let ops = OpsServer::bind(config.ops_listen_addr).await?;
        Ok(Self { config, ops })
    }

    /// Connects to PostgreSQL, Redis (lazily: it is only for best-effort notices) and RabbitMQ, and
    /// consumes until `shutdown`; the broker connection is re-established with backoff whenever it
    /// fails. On shutdown the consumers stop, the message in flight is settled, connections close.
    async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self { config, ops } = self;
        let mut registry = Registry::default();
        let metrics = consumer::metrics(&mut registry);
        for binding in [&config.user_offline, &config.ticket_created] {
            metrics.init(&binding.queue, &consumer::OUTCOMES);
        }
        let call_metrics = CallMetrics::default();
        call_metrics.register(&mut registry);
        let ready = Readiness::default();
        let ops_task = tokio::spawn(ops.serve(registry, ready.clone(), shutdown.clone()));
        let db = db::connect_and_migrate(&config.database_url, &shutdown).await?;
        let bus = SignalBus::connect_lazy(&config.redis_url, &config.common.cell_id).context("REDIS_URL")?;
        let effects = Effects::new(
            db.clone(),
            &config.common.cell_id,
            &config.common.service_name,
            bus,
            config.support_offer_ttl,
        )
        .with_metrics(call_metrics);
        let settings = Settings {
            dlx_exchange: config.dlx_exchange.clone(),
            prefetch: config.prefetch,
            max_retries: config.max_retries,
            queue_type: config.queue_type,
        };
        amqp::run_sessions(&config.amqp_url, &config.common.service_name, &shutdown, &ready, |connection| async {
            let result = session(&connection, &config, &effects, &settings, &metrics, &ready, &shutdown).await;
            (connection, result)
        })
        .await;
        tracing::info!("event-consumer stopped");
        db.close_by_ref().await.ok();
        ops_task.await??;
        Ok(())
    }
}

/// One broker connection's life: declare, then consume both queues until shutdown or a failure.
async fn session(
    connection: &Connection,
    config: &ConsumerConfig,
    effects: &Effects,
    settings: &Settings,
    metrics: &ConsumerMetrics,
    ready: &Readiness,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let publisher = consumer::publisher_channel(connection).await.context("opening the publisher channel")?;
    for binding in [&config.user_offline, &config.ticket_created] {
        consumer::declare(connection, binding, settings)
            .await
            .with_context(|| format!("declaring queue {} on exchange {}", binding.queue, binding.exchange))?;
    }
    let consumers = [(Kind::UserOffline, &config.user_offline), (Kind::TicketCreated, &config.ticket_created)].map(
        |(kind, binding)| QueueConsumer {
            binding: binding.clone(),
            kind,
            effects: effects.clone(),
            settings: settings.clone(),
            publisher: publisher.clone(),
            metrics: metrics.clone(),
        },
    );
    ready.set(true);
    let [offline, tickets] = &consumers;
    let watcher = connection.create_channel().await.context("opening the dead-letter watch channel")?;
    let queues = [config.user_offline.queue.clone(), config.ticket_created.queue.clone()];
    tokio::select! {
        consumed = async { tokio::try_join!(offline.run(connection, shutdown), tickets.run(connection, shutdown)) } => {
            consumed?;
        }
        () = metrics.watch_dead_letters(&watcher, &queues) => {}
    }
    let _ = watcher.close(200, "shutting down".into()).await;
    let _ = publisher.close(200, "shutting down".into()).await;
    Ok(())
}
