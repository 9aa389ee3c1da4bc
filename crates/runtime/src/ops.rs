//! The operations endpoint of every service: `GET /healthz` (the process runs), `GET /readyz`
//! (its dependencies answer; 503 otherwise, and from the moment shutdown starts) and
//! `GET /metrics` (Prometheus text format).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::Context;
use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus_client::{encoding::text::encode, registry::Registry};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Whether the service can do its work now, also shown as the `videocall_ready` gauge (1 or 0)
/// once registered. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    flag: Arc<AtomicBool>,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.flag.store(ready, Ordering::Relaxed);
        self.gauge.set(i64::from(ready));
    }

    pub fn get(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    /// Registers `videocall_ready` (what `/readyz` says, as 1 or 0) in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "videocall_ready",
            "1 while the service can do its work (what /readyz says), else 0",
            self.gauge.clone(),
        );
    }
}

#[derive(Clone)]
struct HealthState {
    ready: Readiness,
    shutdown: CancellationToken,
}

/// The routes, to serve alone or merge into a service's own HTTP router.
pub fn router(registry: Arc<Registry>, ready: Readiness, shutdown: CancellationToken) -> Router {
    health_router(ready, shutdown).merge(metrics_router(registry))
}

/// `/healthz` and `/readyz` alone (for a service whose metrics are served elsewhere).
pub fn health_router(ready: Readiness, shutdown: CancellationToken) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(HealthState { ready, shutdown })
}

/// `/metrics` alone.
pub fn metrics_router(registry: Arc<Registry>) -> Router {
    Router::new().route("/metrics", get(metrics)).with_state(registry)
}

async fn readyz(State(state): State<HealthState>) -> Response {
    if state.ready.get() && !state.shutdown.is_cancelled() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

async fn metrics(State(registry): State<Arc<Registry>>) -> Response {
    let mut body = String::new();
    match encode(&mut body, &registry) {
        Ok(()) => ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
            .into_response(),
        Err(error) => {
            tracing::error!(%error, "cannot encode metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// A bound operations listener.
pub struct OpsServer {
    listener: TcpListener,
}

impl OpsServer {
    pub async fn bind(addr: SocketAddr) -> anyhow::Result<Self> {
        let listener =
            TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} (OPS_LISTEN_ADDR)"))?;
        Ok(Self { listener })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until `shutdown`; `registry` gains `videocall_ready`.
    pub async fn serve(
        self,
        mut registry: Registry,
        ready: Readiness,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        ready.register(&mut registry);
        self.serve_shared(Arc::new(registry), ready, shutdown).await
    }

    /// As [`Self::serve`], for a registry the caller shares (and registers `videocall_ready` in).
    pub async fn serve_shared(
        self,
        registry: Arc<Registry>,
        ready: Readiness,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let app = router(registry, ready, shutdown.clone());
        axum::serve(self.listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
            .context("operations endpoint")
    }
}
