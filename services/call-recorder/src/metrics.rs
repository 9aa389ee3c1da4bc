//! What the recorder exposes on `/metrics`.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use videocall_calls::recordings::RecordingStatus;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: &'static str,
}

/// Cheap to clone (shared handles).
#[derive(Debug, Clone)]
pub struct RecorderMetrics {
    pub running: Gauge,
    pub finished: Family<StatusLabel, Counter>,
    pub bytes: Counter,
    pub abandoned: Counter,
}

impl RecorderMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            running: Gauge::default(),
            finished: Family::default(),
            bytes: Counter::default(),
            abandoned: Counter::default(),
        };
        for status in ["complete", "failed"] {
            let _ = metrics.finished.get_or_create(&StatusLabel { status });
        }
        registry.register("videocall_recordings_running", "Recordings this instance runs now", metrics.running.clone());
        registry.register(
            "videocall_recordings_finished",
            "Recordings this instance ended, by status (complete, failed)",
            metrics.finished.clone(),
        );
        registry.register(
            "videocall_recording_bytes",
            "Bytes of the recordings this instance completed",
            metrics.bytes.clone(),
        );
        registry.register(
            "videocall_recordings_abandoned",
            "Active recordings whose recorder stopped renewing, failed by this instance",
            metrics.abandoned.clone(),
        );
        metrics
    }

    pub fn finished(&self, status: RecordingStatus, bytes: i64) {
        self.finished.get_or_create(&StatusLabel { status: status.as_str() }).inc();
        self.bytes.inc_by(u64::try_from(bytes).unwrap_or(0));
    }
}
