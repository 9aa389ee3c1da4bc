//! The sweeper's shell: `build` binds the operations endpoint, `run_until_stopped` connects and
//! sweeps on the schedule until shutdown.

use std::net::SocketAddr;

use anyhow::Context;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use videocall_calls::CallMetrics;
use videocall_runtime::{
    db,
    ops::{OpsServer, Readiness},
    service::Service,
};
use videocall_signaling::signal_bus::SignalBus;

use crate::{
    Sweeper,
    config::{SweeperArgs, SweeperConfig},
    metrics::SweeperMetrics,
};

/// missed-call-sweeper, bound: its operations endpoint listens (port 0 in tests: read it back with
/// [`Application::ops_addr`]); [`Service::run_until_stopped`] does the rest.
pub struct Application {
    config: SweeperConfig,
    ops: OpsServer,
}

impl Application {
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops.local_addr()
    }
}

impl Service for Application {
    videocall_runtime::service_configuration!("missed-call-sweeper", SweeperArgs => SweeperConfig);

    async fn build(config: SweeperConfig, _shutdown: &CancellationToken) -> anyhow::Result<Self> {
        let ops = OpsServer::bind(config.ops_listen_addr).await?;
        Ok(Self { config, ops })
    }

    /// Serves `/healthz`, `/readyz`, `/metrics`, connects, and runs the sweeper until `shutdown`.
    async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self { config, ops } = self;
        let mut registry = Registry::default();
        let metrics = SweeperMetrics::new(&mut registry);
        let call_metrics = CallMetrics::default();
        call_metrics.register(&mut registry);
        let ready = Readiness::default();
        let ops_task = tokio::spawn(ops.serve(registry, ready.clone(), shutdown.clone()));
        let db = db::connect_and_migrate(&config.database_url, &shutdown).await?;
        ready.set(true);
        let bus = match &config.redis_url {
            Some(url) => Some(SignalBus::connect_lazy(url, &config.common.cell_id).context("REDIS_URL")?),
            None => None,
        };
        let sweeper = Sweeper::configured(db.clone(), &config).with_bus(bus).with_metrics(call_metrics);
        sweeper.run(config.schedule, metrics, ready, shutdown).await;
        db.close_by_ref().await.ok();
        ops_task.await??;
        Ok(())
    }
}
