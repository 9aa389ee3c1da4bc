//! The call store's counter of committed transitions.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use videocall_domain::CallStatus;

use crate::record::CallRecord;

/// `videocall_call_transitions_total{status,call_type}`: calls that entered each state through
/// this process, by call type, counted once committed. Cheap to clone (clones count together).
#[derive(Debug, Clone, Default)]
pub struct CallMetrics {
    transitions: Family<TransitionLabels, Counter>,
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
        let labels = TransitionLabels { status: call.status.as_str(), call_type: call.call_type.as_str() };
        self.transitions.get_or_create(&labels).inc();
    }
}
