//! UpdateCallQuality (a party's sample of its active call becomes one `call.quality` outbox event)
//! and the quality summaries that GetCall and GetUserCalls attach to the calls they return.

use std::collections::HashMap;

use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder};
use uuid::Uuid;
use videocall_calls::{
    Actor, CallStore, StoreError,
    quality_sample::{Direction, QualitySample},
};
use videocall_domain::{CallStatus, Party};
use videocall_entities::{call_quality, calls, quality_alerts};
use videocall_proto::v1 as pb;

use crate::{convert, error::ApiError};

/// Scope names of `call_quality` rows.
const ALL: &str = "all";

/// Checks the sample, then that `actor` is one of the two parties of the active call, then writes
/// the event. Bad input is refused before the database is asked anything.
#[tracing::instrument(skip_all, fields(call_id = %req.call_id, user_id = %actor.id), err)]
pub async fn report(
    store: &CallStore,
    policy: &crate::policy::Policy,
    actor: &Actor,
    req: pb::UpdateCallQualityRequest,
) -> Result<pb::UpdateCallQualityResponse, ApiError> {
    let call_id = convert::call_id(&req.call_id)?;
    let direction: Direction = req.direction.parse().map_err(ApiError::invalid)?;
    let sample = QualitySample {
        rtt_ms: req.rtt_ms,
        jitter_ms: req.jitter_ms,
        packet_loss_percent: req.packet_loss_percent,
        bitrate_kbps: req.bitrate_kbps,
        width: req.width,
        height: req.height,
        fps: req.fps,
        direction,
    };
    sample.validate().map_err(ApiError::invalid)?;
    let call = store.get(call_id).await?;
    // Only a party measures media; a service principal is no party here.
    let as_user = Actor { is_service: false, ..actor.clone() };
    if !matches!(call.party_of(&as_user), Some(Party::Caller | Party::Callee)) {
        return Err(ApiError::denied("only the call's two parties report its quality"));
    }
    if call.status != CallStatus::Active {
        return Err(StoreError::WrongState(call.status).into());
    }
    // Only a sample that would be recorded counts against the reporter's pace.
    policy.take_quality_sample(call.id, &actor.id)?;
    store.record_quality_sample(call.id, &actor.id, &sample).await?;
    // A report is activity: it keeps the sweeper from ending the call as connection_lost.
    if let Err(error) = store.touch_activity(call.id).await {
        tracing::warn!(%error, call_id = %call.id, "could not record call activity");
    }
    Ok(pb::UpdateCallQualityResponse {})
}

/// The summary of one call, if the aggregator has one (one query).
pub async fn summary(db: &DatabaseConnection, call_id: Uuid) -> Result<Option<pb::CallQuality>, ApiError> {
    Ok(summaries(db, &[call_id]).await?.remove(&call_id))
}

/// The summaries of `call_ids`, in one `WHERE call_id IN (...)` query.
pub async fn summaries(db: &DatabaseConnection, call_ids: &[Uuid]) -> Result<HashMap<Uuid, pb::CallQuality>, ApiError> {
    if call_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = call_quality::Entity::find()
        .filter(call_quality::Column::CallId.is_in(call_ids.iter().copied()))
        .all(db)
        .await
        .map_err(StoreError::from)?;
    let mut by_call: HashMap<Uuid, Vec<call_quality::Model>> = HashMap::new();
    for row in rows {
        by_call.entry(row.call_id).or_default().push(row);
    }
    Ok(by_call.into_iter().filter_map(|(id, rows)| to_pb(&rows).map(|q| (id, q))).collect())
}

/// The live quality alert episodes of `call_ids`, oldest first per call, in one query.
pub async fn alerts(
    db: &DatabaseConnection,
    call_ids: &[Uuid],
) -> Result<HashMap<Uuid, Vec<pb::QualityAlert>>, ApiError> {
    let mut by_call: HashMap<Uuid, Vec<pb::QualityAlert>> = HashMap::new();
    if call_ids.is_empty() {
        return Ok(by_call);
    }
    let rows = quality_alerts::Entity::find()
        .filter(quality_alerts::Column::CallId.is_in(call_ids.iter().copied()))
        .order_by_asc(quality_alerts::Column::StartedAt)
        .order_by_asc(quality_alerts::Column::Id)
        .all(db)
        .await
        .map_err(StoreError::from)?;
    let callers: HashMap<Uuid, String> = calls::Entity::find()
        .filter(calls::Column::Id.is_in(call_ids.iter().copied()))
        .all(db)
        .await
        .map_err(StoreError::from)?
        .into_iter()
        .map(|c| (c.id, c.caller_id))
        .collect();
    for r in rows {
        let from_caller = callers.get(&r.call_id).is_some_and(|caller| *caller == r.sender_id);
        by_call.entry(r.call_id).or_default().push(pb::QualityAlert {
            alert_id: r.id.to_string(),
            direction: if from_caller { "caller_to_callee" } else { "callee_to_caller" }.to_owned(),
            sender_id: r.sender_id,
            receiver_id: r.receiver_id,
            started_at: Some(convert::timestamp(r.started_at)),
            ended_at: r.ended_at.map(convert::timestamp),
            end_reason: r.end_reason.unwrap_or_default(),
            mos: r.mos,
            packet_loss_percent: r.packet_loss_percent,
            rtt_ms: r.rtt_ms,
            worst_mos: r.worst_mos,
        });
    }
    Ok(by_call)
}

fn stats(row: &call_quality::Model) -> pb::QualityStats {
    pb::QualityStats {
        sample_count: row.sample_count,
        avg_rtt_ms: row.avg_rtt_ms,
        avg_jitter_ms: row.avg_jitter_ms,
        avg_packet_loss_percent: row.avg_packet_loss,
        max_packet_loss_percent: row.max_packet_loss,
        avg_bitrate_kbps: row.avg_bitrate_kbps,
        resolution: row.resolution.clone(),
        stability: row.stability,
        mos: row.mos,
    }
}

/// One call's rows (`all`, `inbound`, `outbound`) as the proto summary; None without an `all` row.
fn to_pb(rows: &[call_quality::Model]) -> Option<pb::CallQuality> {
    let all = rows.iter().find(|r| r.scope == ALL)?;
    let direction = |d: Direction| Some(rows.iter().find(|r| r.scope == d.as_str()).map(stats).unwrap_or_default());
    let s = stats(all);
    Some(pb::CallQuality {
        sample_count: s.sample_count,
        avg_rtt_ms: s.avg_rtt_ms,
        avg_jitter_ms: s.avg_jitter_ms,
        avg_packet_loss_percent: s.avg_packet_loss_percent,
        max_packet_loss_percent: s.max_packet_loss_percent,
        avg_bitrate_kbps: s.avg_bitrate_kbps,
        resolution: s.resolution,
        stability: s.stability,
        mos: s.mos,
        finalized: all.finalized_at.is_some(),
        inbound: direction(Direction::Inbound),
        outbound: direction(Direction::Outbound),
    })
}
