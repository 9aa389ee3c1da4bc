//! What clients see of a call in JSON: the call view and the `call_state` frame pushed to both
//! parties (the WebSocket wire shapes; docs/protocol.md).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;
use videocall_domain::EndReason;

use crate::record::CallRecord;

/// A call as clients see it in JSON (WebSocket frames, notices).
#[derive(Debug, Clone, Serialize)]
pub struct CallView {
    pub id: Uuid,
    pub caller_id: String,
    pub callee_id: String,
    pub call_type: &'static str,
    pub status: &'static str,
    pub end_reason: Option<&'static str>,
    pub ended_by: Option<String>,
    pub version: i64,
    pub ring_timeout_secs: i32,
    pub created_at: DateTime<Utc>,
    pub ringing_at: Option<DateTime<Utc>>,
    pub answered_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
    pub metadata: BTreeMap<String, String>,
    /// Desk calls: when the call joined its desk's queue (null for calls to a person).
    pub queued_at: Option<DateTime<Utc>>,
}

impl From<&CallRecord> for CallView {
    fn from(c: &CallRecord) -> Self {
        Self {
            id: c.id,
            caller_id: c.caller_id.clone(),
            callee_id: c.callee_id.clone(),
            call_type: c.call_type.as_str(),
            status: c.status.as_str(),
            end_reason: c.end_reason.map(EndReason::as_str),
            ended_by: c.ended_by.clone(),
            version: c.version,
            ring_timeout_secs: c.ring_timeout_secs,
            created_at: c.created_at,
            ringing_at: c.ringing_at,
            answered_at: c.answered_at,
            ended_at: c.ended_at,
            duration_ms: c.duration_ms(),
            metadata: c.metadata.clone(),
            queued_at: c.queued_at,
        }
    }
}

/// The server frame that tells a party its call changed: `{"type":"call_state","call":{...}}`.
#[derive(Debug, Clone, Serialize)]
pub struct CallStateFrame {
    #[serde(rename = "type")]
    pub frame_type: &'static str,
    pub call: CallView,
}

impl CallStateFrame {
    pub fn new(call: &CallRecord) -> Self {
        Self { frame_type: "call_state", call: call.into() }
    }
}
