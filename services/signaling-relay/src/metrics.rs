//! What the relay exposes on `/metrics`.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use videocall_signaling::signals::SignalType;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub r#type: String,
}

/// Error frame codes (docs/protocol.md).
pub const ERROR_CODES: [&str; 13] = [
    "malformed",
    "unknown_type",
    "invalid_argument",
    "unauthenticated",
    "permission_denied",
    "not_found",
    "already_exists",
    "failed_precondition",
    "resource_exhausted",
    "unavailable",
    "unimplemented",
    "unsupported",
    "internal",
];

/// Close codes the relay sends (docs/protocol.md).
pub const CLOSE_CODES: [u16; 5] = [1001, 1008, 1009, 1011, 4001];

/// Shared handles; cheap to clone.
#[derive(Debug, Clone)]
pub struct RelayMetrics {
    pub connections: Gauge,
    pub signals: Family<TypeLabel, Counter>,
    /// `signals`' counters by [`SignalType`], looked up once instead of per signal.
    signals_by_type: [Counter; 4],
    pub errors: Family<TypeLabel, Counter>,
    pub closes: Family<TypeLabel, Counter>,
    /// Time from a signal frame's arrival to its publication on Redis.
    pub signal_latency: Histogram,
    /// `signals_lost` notices: calls whose signal log the bus lost while this relay was away.
    pub signals_lost: Counter,
}

impl RelayMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let signals = Family::<TypeLabel, Counter>::default();
        let signals_by_type =
            SignalType::ALL.map(|t| signals.get_or_create(&TypeLabel { r#type: t.as_str().to_owned() }).clone());
        let m = Self {
            connections: Gauge::default(),
            signals,
            signals_by_type,
            errors: Family::default(),
            closes: Family::default(),
            signal_latency: Histogram::new([0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5]),
            signals_lost: Counter::default(),
        };
        // Zero series for every error code and close code the relay sends, so the families show
        // from the start.
        for code in ERROR_CODES {
            let _ = m.errors.get_or_create(&TypeLabel { r#type: code.to_owned() });
        }
        for code in CLOSE_CODES {
            let _ = m.closes.get_or_create(&TypeLabel { r#type: code.to_string() });
        }
        registry.register("videocall_relay_connections", "Open WebSocket connections", m.connections.clone());
        registry.register("videocall_relay_signals", "Signals relayed, by type", m.signals.clone());
        registry.register("videocall_relay_errors", "Error frames sent, by code", m.errors.clone());
        registry.register("videocall_relay_closes", "Sockets the relay closed, by close code", m.closes.clone());
        registry.register(
            "videocall_relay_signal_publish_seconds",
            "From a signal frame's arrival to its publication on the signal bus",
            m.signal_latency.clone(),
        );
        registry.register(
            "videocall_relay_signals_lost",
            "signals_lost notices sent: a call's signal log was gone after the bus came back",
            m.signals_lost.clone(),
        );
        m
    }

    /// Counts one relayed signal of `signal_type`.
    pub fn count_signal(&self, signal_type: SignalType) {
        let index = SignalType::ALL.iter().position(|t| *t == signal_type).unwrap_or_default();
        self.signals_by_type[index].inc();
    }
}
