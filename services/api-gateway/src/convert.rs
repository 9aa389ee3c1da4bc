//! Conversions between proto messages and the domain/store types, and input parsing that turns
//! bad values into INVALID_ARGUMENT.

use chrono::{DateTime, Utc};
use uuid::Uuid;
use videocall_calls::CallRecord;
use videocall_domain::{CallStatus, CallType, EndReason};
use videocall_proto::v1 as pb;
use videocall_runtime::ice::IceServer;

use crate::error::ApiError;

pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.timestamp(), nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0) }
}

pub fn from_timestamp(field: &str, t: &prost_types::Timestamp) -> Result<DateTime<Utc>, ApiError> {
    let nanos = u32::try_from(t.nanos).map_err(|_| ApiError::invalid(format!("{field} has negative nanos")))?;
    DateTime::from_timestamp(t.seconds, nanos).ok_or_else(|| ApiError::invalid(format!("{field} is out of range")))
}

pub fn call_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::invalid(format!("call_id `{}` is not a UUID", truncate(raw, 64))))
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// `None` for UNSPECIFIED; INVALID_ARGUMENT for numbers the enum does not have.
pub fn call_type(raw: i32) -> Result<Option<CallType>, ApiError> {
    let value = pb::CallType::try_from(raw).map_err(|_| ApiError::invalid(format!("unknown call_type {raw}")))?;
    Ok(match value {
        pb::CallType::Unspecified => None,
        pb::CallType::Support => Some(CallType::Support),
        pb::CallType::Sales => Some(CallType::Sales),
        pb::CallType::Consult => Some(CallType::Consult),
    })
}

pub fn call_status(raw: i32) -> Result<Option<CallStatus>, ApiError> {
    let value = pb::CallStatus::try_from(raw).map_err(|_| ApiError::invalid(format!("unknown status {raw}")))?;
    Ok(match value {
        pb::CallStatus::Unspecified => None,
        pb::CallStatus::Initiated => Some(CallStatus::Initiated),
        pb::CallStatus::Ringing => Some(CallStatus::Ringing),
        pb::CallStatus::Active => Some(CallStatus::Active),
        pb::CallStatus::Ended => Some(CallStatus::Ended),
        pb::CallStatus::Rejected => Some(CallStatus::Rejected),
        pb::CallStatus::Missed => Some(CallStatus::Missed),
        pb::CallStatus::Queued => Some(CallStatus::Queued),
    })
}

pub fn end_reason(raw: i32) -> Result<Option<EndReason>, ApiError> {
    let value = pb::EndReason::try_from(raw).map_err(|_| ApiError::invalid(format!("unknown end reason {raw}")))?;
    Ok(match value {
        pb::EndReason::Unspecified => None,
        pb::EndReason::Hangup => Some(EndReason::Hangup),
        pb::EndReason::Cancelled => Some(EndReason::Cancelled),
        pb::EndReason::Rejected => Some(EndReason::Rejected),
        pb::EndReason::Busy => Some(EndReason::Busy),
        pb::EndReason::Timeout => Some(EndReason::Timeout),
        pb::EndReason::UserOffline => Some(EndReason::UserOffline),
        pb::EndReason::IceFailed => Some(EndReason::IceFailed),
        pb::EndReason::MediaFailed => Some(EndReason::MediaFailed),
        pb::EndReason::ConnectionLost => Some(EndReason::ConnectionLost),
        pb::EndReason::Error => Some(EndReason::Error),
        pb::EndReason::NoAgent => Some(EndReason::NoAgent),
        pb::EndReason::Abandoned => Some(EndReason::Abandoned),
    })
}

pub fn pb_call_type(t: CallType) -> pb::CallType {
    match t {
        CallType::Support => pb::CallType::Support,
        CallType::Sales => pb::CallType::Sales,
        CallType::Consult => pb::CallType::Consult,
    }
}

fn pb_status(s: CallStatus) -> pb::CallStatus {
    match s {
        CallStatus::Initiated => pb::CallStatus::Initiated,
        CallStatus::Ringing => pb::CallStatus::Ringing,
        CallStatus::Active => pb::CallStatus::Active,
        CallStatus::Ended => pb::CallStatus::Ended,
        CallStatus::Rejected => pb::CallStatus::Rejected,
        CallStatus::Missed => pb::CallStatus::Missed,
        CallStatus::Queued => pb::CallStatus::Queued,
    }
}

fn pb_reason(r: EndReason) -> pb::EndReason {
    match r {
        EndReason::Hangup => pb::EndReason::Hangup,
        EndReason::Cancelled => pb::EndReason::Cancelled,
        EndReason::Rejected => pb::EndReason::Rejected,
        EndReason::Busy => pb::EndReason::Busy,
        EndReason::Timeout => pb::EndReason::Timeout,
        EndReason::UserOffline => pb::EndReason::UserOffline,
        EndReason::IceFailed => pb::EndReason::IceFailed,
        EndReason::MediaFailed => pb::EndReason::MediaFailed,
        EndReason::ConnectionLost => pb::EndReason::ConnectionLost,
        EndReason::Error => pb::EndReason::Error,
        EndReason::NoAgent => pb::EndReason::NoAgent,
        EndReason::Abandoned => pb::EndReason::Abandoned,
    }
}

pub fn call(c: &CallRecord) -> pb::Call {
    pb::Call {
        id: c.id.to_string(),
        caller_id: c.caller_id.clone(),
        callee_id: c.callee_id.clone(),
        call_type: pb_call_type(c.call_type) as i32,
        status: pb_status(c.status) as i32,
        end_reason: c.end_reason.map_or(pb::EndReason::Unspecified, pb_reason) as i32,
        ended_by: c.ended_by.clone().unwrap_or_default(),
        metadata: c.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        created_at: Some(timestamp(c.created_at)),
        ringing_at: c.ringing_at.map(timestamp),
        answered_at: c.answered_at.map(timestamp),
        ended_at: c.ended_at.map(timestamp),
        duration_ms: c.duration_ms().unwrap_or(0),
        version: c.version,
        request_id: c.request_id.clone(),
        ring_timeout_secs: c.ring_timeout_secs,
        // Filled in by the queries that load summaries (crate::quality).
        quality: None,
        // Filled in where the recording is loaded (crate::recording).
        recording: None,
        queued_at: c.queued_at.map(timestamp),
        // Filled in where the attempts are loaded (crate::desk).
        routing_attempts: Vec::new(),
        // Filled in where the alerts are loaded (crate::quality).
        quality_alerts: Vec::new(),
        // Filled in where the transfers are loaded (crate::transfer).
        legs: Vec::new(),
        transfers: Vec::new(),
    }
}

pub fn ice_servers(servers: Vec<IceServer>) -> Vec<pb::IceServer> {
    servers
        .into_iter()
        .map(|s| pb::IceServer { urls: s.urls, username: s.username, credential: s.credential })
        .collect()
}
