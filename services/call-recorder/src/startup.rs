//! The recorder's shell: `build` binds the operations endpoint, `run_until_stopped` connects and
//! records until shutdown.

use std::net::SocketAddr;

use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use videocall_runtime::{
    db,
    ops::{OpsServer, Readiness},
    service::Service,
};
use videocall_signaling::signal_bus::{SignalBus, SignalBusConfig};

use crate::{
    SIGNAL_LOG_CAPACITY, SIGNAL_LOG_TTL,
    config::{RecorderArgs, RecorderConfig},
    metrics::RecorderMetrics,
    serve,
};

/// call-recorder, bound: its operations endpoint listens (port 0 in tests: read it back with
/// [`Application::ops_addr`]); [`Service::run_until_stopped`] does the rest.
pub struct Application {
    config: RecorderConfig,
    ops: OpsServer,
}

impl Application {
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops.local_addr()
    }
}

impl Service for Application {
    videocall_runtime::service_configuration!("call-recorder", RecorderArgs => RecorderConfig);

    async fn build(config: RecorderConfig, _shutdown: &CancellationToken) -> anyhow::Result<Self> {
        let ops = OpsServer::bind(config.ops_listen_addr).await?;
        Ok(Self { config, ops })
    }

    /// Serves `/healthz`, `/readyz`, `/metrics`, connects, and records until `shutdown`; running
    /// recordings then finish with what they wrote.
    async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self { config, ops } = self;
        let mut registry = Registry::default();
        let metrics = RecorderMetrics::new(&mut registry);
        let ready = Readiness::default();
        let ops_task = tokio::spawn(ops.serve(registry, ready.clone(), shutdown.clone()));
        let db = db::connect_and_migrate(&config.database_url, &shutdown).await?;
        let bus_config = SignalBusConfig {
            redis_url: config.redis_url.clone(),
            cell_id: config.common.cell_id.clone(),
            log_capacity: SIGNAL_LOG_CAPACITY,
            log_ttl: SIGNAL_LOG_TTL,
        };
        let bus = SignalBus::connect_with_retry(bus_config, &shutdown).await?;
        let result = serve(db.clone(), bus, config, metrics, ready, shutdown).await;
        db.close_by_ref().await.ok();
        ops_task.await??;
        result
    }
}
