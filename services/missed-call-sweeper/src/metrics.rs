//! What the sweeper exposes on `/metrics`.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

/// Counters and timings of the sweeps. Cheap to clone (shared handles).
#[derive(Debug, Clone)]
pub struct SweeperMetrics {
    pub sweeps: Family<ResultLabel, Counter>,
    pub missed: Counter,
    pub zombies: Counter,
    pub lost: Counter,
    pub duration: Histogram,
}

impl SweeperMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            sweeps: Family::default(),
            missed: Counter::default(),
            zombies: Counter::default(),
            lost: Counter::default(),
            duration: Histogram::new([0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0]),
        };
        for result in ["ok", "error"] {
            let _ = metrics.sweeps.get_or_create(&ResultLabel { result });
        }
        registry.register("videocall_sweeps", "Sweeps run, by result (ok, error)", metrics.sweeps.clone());
        registry.register("videocall_calls_missed", "Calls this sweeper marked missed", metrics.missed.clone());
        registry.register(
            "videocall_calls_ended_inactive",
            "Active calls this sweeper ended as connection_lost",
            metrics.zombies.clone(),
        );
        registry.register(
            "videocall_calls_ended_party_lost",
            "Live calls this sweeper ended as connection_lost because a party's sockets were gone past the grace",
            metrics.lost.clone(),
        );
        registry.register("videocall_sweep_duration_seconds", "Time one sweep took", metrics.duration.clone());
        metrics
    }
}
