//! The events a call emits: their CloudEvents type and routing key, and the `data` they carry.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;
use videocall_domain::{CallStatus, EndReason};

use crate::record::CallRecord;

/// CloudEvents `type` and AMQP routing key of the event a call entering `status` emits.
pub fn call_event_names(status: CallStatus) -> (&'static str, &'static str) {
    match status {
        CallStatus::Queued => ("CallQueued", "call.queued"),
        CallStatus::Initiated => ("CallInitiated", "call.initiated"),
        CallStatus::Ringing => ("CallRinging", "call.ringing"),
        CallStatus::Active => ("CallAnswered", "call.answered"),
        CallStatus::Ended => ("CallEnded", "call.ended"),
        CallStatus::Rejected => ("CallRejected", "call.rejected"),
        CallStatus::Missed => ("CallMissed", "call.missed"),
    }
}

/// A desk call offered to an agent (queued -> initiated, the agent its callee): one per attempt.
pub const CALL_ROUTED: (&str, &str) = ("CallRouted", "call.routed");

/// `data` of every call event: the call after the change, and the status it left.
#[derive(Debug, Serialize)]
pub(crate) struct CallEventData<'a> {
    call_id: Uuid,
    caller_id: &'a str,
    callee_id: &'a str,
    call_type: &'static str,
    status: &'static str,
    previous_status: Option<&'static str>,
    end_reason: Option<&'static str>,
    ended_by: Option<&'a str>,
    version: i64,
    created_at: DateTime<Utc>,
    ringing_at: Option<DateTime<Utc>>,
    answered_at: Option<DateTime<Utc>>,
    ended_at: Option<DateTime<Utc>>,
    duration_ms: Option<i64>,
    metadata: &'a BTreeMap<String, String>,
    /// Desk calls only: when the call joined its queue.
    #[serde(skip_serializing_if = "Option::is_none")]
    queued_at: Option<DateTime<Utc>>,
}

impl<'a> CallEventData<'a> {
    pub(crate) fn new(call: &'a CallRecord, from: Option<CallStatus>) -> Self {
        Self {
            call_id: call.id,
            caller_id: &call.caller_id,
            callee_id: &call.callee_id,
            call_type: call.call_type.as_str(),
            status: call.status.as_str(),
            previous_status: from.map(CallStatus::as_str),
            end_reason: call.end_reason.map(EndReason::as_str),
            ended_by: call.ended_by.as_deref(),
            version: call.version,
            created_at: call.created_at,
            ringing_at: call.ringing_at,
            answered_at: call.answered_at,
            ended_at: call.ended_at,
            duration_ms: call.duration_ms(),
            metadata: &call.metadata,
            queued_at: call.queued_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_has_distinct_names() {
        let names: std::collections::HashSet<_> = CallStatus::ALL.into_iter().map(call_event_names).collect();
        assert_eq!(names.len(), CallStatus::ALL.len());
        assert_eq!(call_event_names(CallStatus::Active), ("CallAnswered", "call.answered"));
    }
}
