//! call-recorder: records the calls whose two parties consented. It takes `starting` recordings of
//! active calls (a lease in the `recordings` row, so replicas split the work and a dead one's
//! recordings do not hang), offers each party a receive-only WebRTC peer connection through the
//! signal bus (`@recorder`), writes every audio and video track it receives (Ogg Opus, IVF VP8)
//! under `RECORDINGS_DIR/<call id>/`, and records the outcome — status, files, size, duration,
//! checksum — with its event (RecordingStarted, RecordingCompleted, RecordingFailed) in the outbox.

#![forbid(unsafe_code)]

pub mod config;
pub mod media_files;
pub mod metrics;
pub mod routing;
pub mod session;
pub mod startup;

use std::{sync::Arc, time::Duration};

use tokio::{sync::watch, task::JoinSet};
use tokio_util::sync::CancellationToken;
use videocall_calls::{CallStore, recordings::RecordingStore};
use videocall_messaging::cloud_event::event_source;
use videocall_runtime::ops::Readiness;
use videocall_signaling::signal_bus::SignalBus;
use webrtc::{
    api::{
        API, APIBuilder, interceptor_registry::register_default_interceptors, media_engine::MediaEngine,
        setting_engine::SettingEngine,
    },
    ice::{
        mdns::MulticastDnsMode,
        udp_network::{EphemeralUDP, UDPNetwork},
    },
    ice_transport::ice_candidate_type::RTCIceCandidateType,
    interceptor::registry::Registry as InterceptorRegistry,
};

pub use config::{RecorderArgs, RecorderConfig};
pub use startup::Application;

use crate::{metrics::RecorderMetrics, routing::Routes, session::Recorder};

/// The signal log settings the relays use by default (SIGNAL_LOG_CAPACITY, SIGNAL_LOG_TTL_SECS):
/// the recorder's signals are trimmed and expire like theirs.
pub(crate) const SIGNAL_LOG_CAPACITY: usize = 256;
pub(crate) const SIGNAL_LOG_TTL: Duration = Duration::from_secs(3600);

/// The WebRTC stack every recording leg is made with: default codecs (VP8, Opus, ...), the default
/// interceptors (NACK, RTCP reports), host candidates only on `candidate_networks` (loopback too
/// when a network holds it), no mDNS, the 1:1 NAT addresses and the UDP port range if set.
pub fn webrtc_api(config: &RecorderConfig) -> anyhow::Result<API> {
    let mut media = MediaEngine::default();
    media.register_default_codecs()?;
    let interceptors = register_default_interceptors(InterceptorRegistry::new(), &mut media)?;
    let mut settings = SettingEngine::default();
    settings.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
    if !config.candidate_networks.is_empty() {
        let networks = config.candidate_networks.clone();
        let loopback = networks.iter().any(|n| {
            n.contains(std::net::IpAddr::from([127, 0, 0, 1]))
                || n.contains(std::net::IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]))
        });
        settings.set_include_loopback_candidate(loopback);
        settings.set_ip_filter(Box::new(move |ip| networks.iter().any(|n| n.contains(ip))));
    }
    if !config.nat_1to1_ips.is_empty() {
        settings.set_nat_1to1_ips(config.nat_1to1_ips.clone(), RTCIceCandidateType::Host);
    }
    if let Some((min, max)) = config.udp_ports {
        settings.set_udp_network(UDPNetwork::Ephemeral(EphemeralUDP::new(min, max)?));
    }
    Ok(APIBuilder::new()
        .with_media_engine(media)
        .with_interceptor_registry(interceptors)
        .with_setting_engine(settings)
        .build())
}

/// Records with an open database and signal bus until `shutdown` (the standalone binary runs this
/// on its SQLite file and in-process bus); `ready` tells whether it can take recordings.
pub async fn serve(
    db: sea_orm::DatabaseConnection,
    bus: SignalBus,
    config: RecorderConfig,
    metrics: RecorderMetrics,
    ready: Readiness,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    tokio::fs::create_dir_all(&config.recordings_dir)
        .await
        .map_err(|e| anyhow::anyhow!("RECORDINGS_DIR {}: {e}", config.recordings_dir.display()))?;
    let source = event_source(&config.common.cell_id, &config.common.service_name);
    let recorder = Arc::new(Recorder {
        recordings: RecordingStore::new(db.clone(), source.clone()),
        calls: CallStore::new(db, source, Arc::default()),
        bus: bus.clone(),
        api: webrtc_api(&config)?,
        routes: Routes::default(),
        config,
        metrics,
    });
    let (subscribed_tx, mut subscribed) = watch::channel(false);
    let routing = tokio::spawn(routing::run(bus, recorder.routes.clone(), subscribed_tx, shutdown.clone()));
    let sessions_stop = CancellationToken::new();
    let mut sessions = JoinSet::new();
    let mut poll = tokio::time::interval(recorder.config.poll);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = poll.tick() => {}
        }
        while sessions.try_join_next().is_some() {}
        // Signals to the recorder must have a listener before any offer goes out.
        if !*subscribed.borrow_and_update() {
            ready.set(false);
            continue;
        }
        if let Err(error) = take_work(&recorder, &mut sessions, &sessions_stop).await {
            ready.set(false);
            tracing::warn!(%error, "cannot read or claim recordings");
        } else {
            ready.set(true);
        }
    }
    sessions_stop.cancel();
    let finished =
        tokio::time::timeout(Duration::from_secs(15), async { while sessions.join_next().await.is_some() {} });
    if finished.await.is_err() {
        tracing::warn!("recordings did not finish within 15 s of shutdown; their leases will lapse");
    }
    routing.abort();
    Ok(())
}

/// One poll: fail what dead recorders left, then take what waits, up to the free slots.
async fn take_work(
    recorder: &Arc<Recorder>,
    sessions: &mut JoinSet<()>,
    stop: &CancellationToken,
) -> Result<(), videocall_calls::StoreError> {
    for recording in recorder.recordings.fail_abandoned().await? {
        recorder.metrics.abandoned.inc();
        let error = recording.error.as_deref().unwrap_or("");
        tracing::warn!(call_id = %recording.call_id, error, "abandoned recording failed");
        if let Ok(call) = recorder.calls.get(recording.call_id).await {
            videocall_calls::push::recording(&recorder.bus, &call, &recording).await;
        }
    }
    let free = recorder.config.max_concurrent.saturating_sub(sessions.len());
    if free == 0 {
        return Ok(());
    }
    for recording in recorder.recordings.claim(&recorder.config.recorder_id, recorder.config.lease, free as u64).await?
    {
        tracing::info!(call_id = %recording.call_id, "recording taken");
        sessions.spawn(recorder.clone().record(recording, stop.clone()));
    }
    Ok(())
}
