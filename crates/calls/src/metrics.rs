//! The call store's counter of committed transitions.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};
use videocall_domain::CallStatus;

use crate::record::CallRecord;

/// `videocall_call_transitions_total{status,call_type}`: calls that entered each state through
/// this process, by call type, counted once committed. Cheap to clone (clones count together).
///
/// Also `videocall_call_setup_seconds{call_type}` (from initiation to answer, queue time of desk
/// calls included) and `videocall_call_ring_seconds{call_type,outcome}` (from ringing to
/// answered, rejected, missed or ended), observed when the change commits.
#[derive(Debug, Clone)]
pub struct CallMetrics {
    transitions: Family<TransitionLabels, Counter>,
    setup: Family<TypeLabel, Histogram, fn() -> Histogram>,
    ring: Family<RingLabels, Histogram, fn() -> Histogram>,
}

impl Default for CallMetrics {
    fn default() -> Self {
        Self {
            transitions: Family::default(),
            setup: Family::new_with_constructor(seconds_buckets),
            ring: Family::new_with_constructor(seconds_buckets),
        }
    }
}

/// Human waits: half a second to two minutes.
fn seconds_buckets() -> Histogram {
    Histogram::new([0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 30.0, 45.0, 60.0, 120.0])
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabel {
    call_type: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RingLabels {
    call_type: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    status: &'static str,
    call_type: &'static str,
}

impl CallMetrics {
    /// Registers the family with a zero series for every status and call type, so dashboards and
    /// alerts see it from the start.
    pub fn register(&self, registry: &mut Registry) {
        for status in CallStatus::ALL {
            for call_type in videocall_domain::CallType::ALL {
                let _ = self
                    .transitions
                    .get_or_create(&TransitionLabels { status: status.as_str(), call_type: call_type.as_str() });
            }
        }
        for call_type in videocall_domain::CallType::ALL.map(videocall_domain::CallType::as_str) {
            let _ = self.setup.get_or_create(&TypeLabel { call_type });
            for outcome in ["answered", "rejected", "missed", "ended"] {
                let _ = self.ring.get_or_create(&RingLabels { call_type, outcome });
            }
        }
        registry.register(
            "videocall_call_setup_seconds",
            "From initiation to answer (desk calls: queue time included), by call type",
            self.setup.clone(),
        );
        registry.register(
            "videocall_call_ring_seconds",
            "From ringing to answered, rejected, missed or ended (the caller gave up), by call type and outcome",
            self.ring.clone(),
        );
        registry.register(
            "videocall_call_transitions",
            "Calls that entered a state (initiated, ringing, active, ended, rejected, missed) through this process, by call type",
            self.transitions.clone(),
        );
    }
}

impl CallMetrics {
    /// Counts a committed change of `call`.
    pub(crate) fn count(&self, call: &CallRecord) {
        let call_type = call.call_type.as_str();
        let labels = TransitionLabels { status: call.status.as_str(), call_type };
        self.transitions.get_or_create(&labels).inc();
        let secs = |from: chrono::DateTime<chrono::Utc>, to: chrono::DateTime<chrono::Utc>| {
            ((to - from).num_milliseconds() as f64 / 1000.0).max(0.0)
        };
        let outcome = match call.status {
            CallStatus::Active => "answered",
            CallStatus::Rejected => "rejected",
            CallStatus::Missed => "missed",
            CallStatus::Ended if call.answered_at.is_none() => "ended",
            _ => return,
        };
        if let (CallStatus::Active, Some(answered)) = (call.status, call.answered_at) {
            self.setup.get_or_create(&TypeLabel { call_type }).observe(secs(call.created_at, answered));
        }
        let left_ringing = call.answered_at.or(call.ended_at);
        if let (Some(ringing), Some(left)) = (call.ringing_at, left_ringing) {
            self.ring.get_or_create(&RingLabels { call_type, outcome }).observe(secs(ringing, left));
        }
    }
}
