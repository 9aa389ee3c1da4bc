//! SetRecordingConsent, and the recordings GetCall and GetUserCalls attach to the calls they return.

use std::collections::HashMap;

use uuid::Uuid;
use videocall_calls::{
    Actor, CallStore,
    recordings::{RecordingStatus, RecordingStore, RecordingView},
};
use videocall_domain::Party;
use videocall_proto::v1 as pb;
use videocall_signaling::signal_bus::SignalBus;

use crate::{convert, error::ApiError};

fn pb_status(s: RecordingStatus) -> pb::RecordingStatus {
    match s {
        RecordingStatus::Requested => pb::RecordingStatus::Requested,
        RecordingStatus::Starting => pb::RecordingStatus::Starting,
        RecordingStatus::Active => pb::RecordingStatus::Active,
        RecordingStatus::Complete => pb::RecordingStatus::Complete,
        RecordingStatus::Failed => pb::RecordingStatus::Failed,
    }
}

pub fn to_pb(r: &RecordingView) -> pb::Recording {
    pb::Recording {
        id: r.id.to_string(),
        status: pb_status(r.status) as i32,
        caller_consent: r.caller_consent,
        callee_consent: r.callee_consent,
        requested_by: r.requested_by.clone(),
        started_at: r.started_at.map(convert::timestamp),
        ended_at: r.ended_at.map(convert::timestamp),
        duration_ms: r.duration_ms,
        size_bytes: r.size_bytes,
        sha256: r.sha256.clone(),
        files: r
            .files
            .iter()
            .map(|f| pb::RecordedFile {
                name: f.name.clone(),
                party: f.party.clone(),
                kind: f.kind.clone(),
                codec: f.codec.clone(),
                frames: f.frames,
                duration_ms: f.duration_ms,
                bytes: f.bytes,
                sha256: f.sha256.clone(),
            })
            .collect(),
        error: r.error.clone().unwrap_or_default(),
        version: r.version,
    }
}

/// Records `actor`'s consent (one of the two parties; a service cannot consent for them), then
/// tells both parties when it changed anything. Returns the call with its recording.
#[tracing::instrument(skip_all, fields(call_id = %req.call_id, user_id = %actor.id, consent = req.consent), err)]
pub async fn set_consent(
    calls: &CallStore,
    recordings: &RecordingStore,
    bus: &SignalBus,
    actor: &Actor,
    req: pb::SetRecordingConsentRequest,
) -> Result<pb::CallResponse, ApiError> {
    let call_id = convert::call_id(&req.call_id)?;
    let call = calls.get(call_id).await?;
    let as_user = Actor { is_service: false, ..actor.clone() };
    let party = match call.party_of(&as_user) {
        Some(p @ (Party::Caller | Party::Callee)) => p,
        _ => return Err(ApiError::denied("only the call's two parties consent to its recording")),
    };
    let (recording, changed) = recordings.set_consent(&call, party, &actor.id, req.consent).await?;
    if changed && let Some(recording) = &recording {
        videocall_calls::push::recording(bus, &call, recording).await;
    }
    let mut view = convert::call(&call);
    view.recording = recording.as_ref().map(to_pb);
    Ok(pb::CallResponse { call: Some(view) })
}

/// The recordings of `call_ids`, in one query.
pub async fn for_calls(
    recordings: &RecordingStore,
    call_ids: &[Uuid],
) -> Result<HashMap<Uuid, pb::Recording>, ApiError> {
    Ok(recordings.get_many(call_ids).await?.iter().map(|r| (r.call_id, to_pb(r))).collect())
}
