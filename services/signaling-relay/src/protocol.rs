//! The WebSocket protocol: JSON text frames with a `type`. See docs/protocol.md.
//!
//! Client → server: call control `call.initiate`, `call.ring`, `call.answer`, `call.reject`,
//! `call.end`, `call.quality`; signals `offer`, `answer`, `ice-candidate`, `hangup`; `resume`
//! and `ping`. Server → client: `hello`, `ack`, `error`, `call_state`, the signals (with `seq`),
//! `pong`, and notices such as `video_support_offered`.

use serde::Serialize;
use videocall_proto::v1 as pb;

pub use crate::frames::{
    Availability, CallCommand, Consent, Envelope, Initiate, Quality, QueueGet, Resume, SignalIn, TransferRequest,
};

#[derive(Debug, Serialize)]
pub struct Error<'a> {
    #[serde(rename = "type")]
    pub frame_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a serde_json::Value>,
    pub code: &'a str,
    pub message: &'a str,
}

pub fn error(id: Option<&serde_json::Value>, code: &str, message: &str) -> String {
    serde_json::to_string(&Error { frame_type: "error", id, code, message }).unwrap_or_default()
}

/// A signal's ack: its sequence number, and the frame's `id` when it had one.
pub fn signal_ack(id: Option<&serde_json::Value>, seq: u64) -> String {
    #[derive(Serialize)]
    struct Ack<'a> {
        #[serde(rename = "type")]
        frame_type: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a serde_json::Value>,
        seq: u64,
    }
    serde_json::to_string(&Ack { frame_type: "ack", id, seq }).unwrap_or_default()
}

/// The snake_case name of a gRPC code, as error frames carry it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        InvalidArgument | OutOfRange => "invalid_argument",
        Unauthenticated => "unauthenticated",
        PermissionDenied => "permission_denied",
        NotFound => "not_found",
        FailedPrecondition | Aborted => "failed_precondition",
        AlreadyExists => "already_exists",
        ResourceExhausted => "resource_exhausted",
        Unimplemented => "unimplemented",
        Unavailable | DeadlineExceeded | Cancelled => "unavailable",
        _ => "internal",
    }
}

/// A protobuf timestamp as RFC 3339 with microseconds (JSON null when unset).
pub fn timestamp_json(t: &Option<prost_types::Timestamp>) -> Option<String> {
    ts(t)
}

/// A protobuf timestamp as RFC 3339 with microseconds.
fn ts(t: &Option<prost_types::Timestamp>) -> Option<String> {
    t.as_ref()
        .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)))
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
}

/// The domain's status of a call the gateway returned.
pub fn domain_status(status: pb::CallStatus) -> videocall_domain::CallStatus {
    use videocall_domain::CallStatus as S;
    match status {
        pb::CallStatus::Initiated | pb::CallStatus::Unspecified => S::Initiated,
        pb::CallStatus::Ringing => S::Ringing,
        pb::CallStatus::Active => S::Active,
        pb::CallStatus::Ended => S::Ended,
        pb::CallStatus::Rejected => S::Rejected,
        pb::CallStatus::Missed => S::Missed,
        pb::CallStatus::Queued => S::Queued,
    }
}

/// A transfer as the `transfer` frames and acks show it (the gateway's `TransferView`).
pub fn transfer_json(call_id: &str, t: &pb::Transfer) -> serde_json::Value {
    let to_call_type = pb::CallType::try_from(t.to_call_type)
        .ok()
        .filter(|c| *c != pb::CallType::Unspecified)
        .map(|c| c.as_str_name().trim_start_matches("CALL_TYPE_").to_ascii_lowercase());
    serde_json::json!({
        "transfer_id": t.transfer_id,
        "call_id": call_id,
        "from_agent_id": t.from_agent_id,
        "to_agent_id": t.to_agent_id,
        "to_call_type": to_call_type,
        "requested_by": t.requested_by,
        "status": t.status,
        "reason": (!t.reason.is_empty()).then_some(&t.reason),
        "requested_at": ts(&t.requested_at),
        "expires_at": ts(&t.expires_at),
        "ended_at": ts(&t.ended_at),
    })
}

pub fn call_json(c: &pb::Call) -> serde_json::Value {
    let name = |s: &str, prefix: &str| s.strip_prefix(prefix).unwrap_or(s).to_ascii_lowercase();
    let call_type =
        pb::CallType::try_from(c.call_type).map(|t| name(t.as_str_name(), "CALL_TYPE_")).unwrap_or_default();
    let status = pb::CallStatus::try_from(c.status).map(|s| name(s.as_str_name(), "CALL_STATUS_")).unwrap_or_default();
    let end_reason = pb::EndReason::try_from(c.end_reason)
        .ok()
        .filter(|r| *r != pb::EndReason::Unspecified)
        .map(|r| name(r.as_str_name(), "END_REASON_"));
    serde_json::json!({
        "id": c.id,
        "caller_id": c.caller_id,
        "callee_id": c.callee_id,
        "call_type": call_type,
        "status": status,
        "end_reason": end_reason,
        "ended_by": (!c.ended_by.is_empty()).then_some(&c.ended_by),
        "version": c.version,
        "ring_timeout_secs": c.ring_timeout_secs,
        "created_at": ts(&c.created_at),
        "ringing_at": ts(&c.ringing_at),
        "answered_at": ts(&c.answered_at),
        "ended_at": ts(&c.ended_at),
        "duration_ms": (c.ended_at.is_some() && c.answered_at.is_some()).then_some(c.duration_ms),
        "metadata": c.metadata,
        "quality": c.quality.as_ref().map(|q| serde_json::json!({
            "sample_count": q.sample_count,
            "avg_rtt_ms": q.avg_rtt_ms,
            "avg_jitter_ms": q.avg_jitter_ms,
            "avg_packet_loss_percent": q.avg_packet_loss_percent,
            "max_packet_loss_percent": q.max_packet_loss_percent,
            "avg_bitrate_kbps": q.avg_bitrate_kbps,
            "resolution": q.resolution,
            "stability": q.stability,
            "mos": q.mos,
            "finalized": q.finalized,
        })),
        "recording": c.recording.as_ref().map(recording_json),
        "queued_at": ts(&c.queued_at),
        "routing_attempts": c.routing_attempts.iter().map(|a| serde_json::json!({
            "attempt": a.attempt,
            "agent_id": a.agent_id,
            "offered_at": ts(&a.offered_at),
            "ended_at": ts(&a.ended_at),
            "outcome": (!a.outcome.is_empty()).then_some(&a.outcome),
        })).collect::<Vec<_>>(),
        "quality_alerts": c.quality_alerts.iter().map(|a| serde_json::json!({
            "alert_id": a.alert_id,
            "sender_id": a.sender_id,
            "receiver_id": a.receiver_id,
            "direction": a.direction,
            "started_at": ts(&a.started_at),
            "ended_at": ts(&a.ended_at),
            "end_reason": (!a.end_reason.is_empty()).then_some(&a.end_reason),
            "mos": a.mos,
            "packet_loss_percent": a.packet_loss_percent,
            "rtt_ms": a.rtt_ms,
            "worst_mos": a.worst_mos,
        })).collect::<Vec<_>>(),
        "legs": c.legs.iter().map(|l| serde_json::json!({
            "agent_id": l.agent_id,
            "started_at": ts(&l.started_at),
            "ended_at": ts(&l.ended_at),
            "end_reason": (!l.end_reason.is_empty()).then_some(&l.end_reason),
        })).collect::<Vec<_>>(),
        "transfers": c.transfers.iter().map(|t| transfer_json(&c.id, t)).collect::<Vec<_>>(),
    })
}

/// A recording as the `recording` frames the gateway and recorder push show it.
pub fn recording_json(r: &pb::Recording) -> serde_json::Value {
    let status = pb::RecordingStatus::try_from(r.status)
        .map(|s| s.as_str_name().trim_start_matches("RECORDING_STATUS_").to_ascii_lowercase())
        .unwrap_or_default();
    let files: Vec<_> = r
        .files
        .iter()
        .map(|f| {
            serde_json::json!({
                "name": f.name, "party": f.party, "kind": f.kind, "codec": f.codec, "frames": f.frames,
                "duration_ms": f.duration_ms, "bytes": f.bytes, "sha256": f.sha256,
            })
        })
        .collect();
    serde_json::json!({
        "id": r.id,
        "status": status,
        "caller_consent": r.caller_consent,
        "callee_consent": r.callee_consent,
        "requested_by": r.requested_by,
        "started_at": ts(&r.started_at),
        "ended_at": ts(&r.ended_at),
        "duration_ms": r.duration_ms,
        "size_bytes": r.size_bytes,
        "sha256": r.sha256,
        "files": files,
        "error": (!r.error.is_empty()).then_some(&r.error),
        "version": r.version,
    })
}

/// `RTCIceServer`-shaped JSON for the browser.
pub fn ice_json(servers: &[pb::IceServer]) -> serde_json::Value {
    servers
        .iter()
        .map(|s| {
            if s.username.is_empty() {
                serde_json::json!({ "urls": s.urls })
            } else {
                serde_json::json!({ "urls": s.urls, "username": s.username, "credential": s.credential })
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    #[test]
    fn signal_acks_carry_the_seq_and_the_frames_id() {
        let with_id: Value = serde_json::from_str(&super::signal_ack(Some(&json!("s-7")), 42)).expect("json");
        assert_eq!(with_id, json!({"type": "ack", "id": "s-7", "seq": 42}));
        let numeric: Value = serde_json::from_str(&super::signal_ack(Some(&json!(9)), 1)).expect("json");
        assert_eq!(numeric, json!({"type": "ack", "id": 9, "seq": 1}));
        let without: Value = serde_json::from_str(&super::signal_ack(None, u64::MAX)).expect("json");
        assert_eq!(without, json!({"type": "ack", "seq": u64::MAX}));
    }
}
