//! Live quality alerts, the effects: inside the transaction that stores a sample, the sample's
//! media path (sender → receiver) is judged on its newest samples by [`AlertPolicy`]; an episode
//! that opens or ends is written to `quality_alerts` with its CloudEvent
//! (`call.quality_degraded` / `call.quality_recovered`) in the outbox, in that same transaction.
//! After the commit the caller pushes the same data to both parties as a `quality.alert` frame.

use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, Condition, DatabaseTransaction, DbErr, EntityTrait,
    IntoActiveModel, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
};
use serde::Serialize;
use uuid::Uuid;
use videocall_calls::quality_sample::{Direction, QualityReported};
use videocall_entities::{calls, quality_alerts, quality_samples};
use videocall_messaging::outbox::{NewEvent, write_event};

use crate::alerts::{AlertPolicy, Point, Verdict, Window};

/// CloudEvents `type` and routing key of an episode's start.
pub const CALL_QUALITY_DEGRADED: (&str, &str) = ("CallQualityDegraded", "call.quality_degraded");
/// CloudEvents `type` and routing key of an episode's end.
pub const CALL_QUALITY_RECOVERED: (&str, &str) = ("CallQualityRecovered", "call.quality_recovered");
/// `end_reason` of an episode still open when its call ended (no event).
pub const CALL_ENDED: &str = "call_ended";

/// `data` of both events, and the body of the `quality.alert` frame.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertData {
    pub alert_id: Uuid,
    pub call_id: Uuid,
    pub call_type: String,
    /// `degraded` | `recovered`.
    pub state: &'static str,
    /// Whose media degraded: the party whose uplink is the likely cause.
    pub sender_id: String,
    pub receiver_id: String,
    pub likely_cause_id: String,
    /// `caller_to_callee` | `callee_to_caller`.
    pub direction: &'static str,
    /// Averages over the samples that decided it.
    pub mos: f64,
    pub packet_loss_percent: f64,
    pub rtt_ms: f64,
    pub jitter_ms: f64,
    /// The lowest window MOS of the episode so far.
    pub worst_mos: f64,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
}

/// The `quality.alert` frame: [`AlertData`] with its frame type.
#[derive(Debug, Serialize)]
pub struct AlertFrame<'a> {
    #[serde(rename = "type")]
    pub frame_type: &'static str,
    #[serde(flatten)]
    pub data: &'a AlertData,
}

/// An episode that opened or ended with this sample.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertChange {
    pub data: AlertData,
    /// Caller and callee: who gets the frame.
    pub parties: [String; 2],
    /// The call's first episode (for the per-desk count of degraded calls).
    pub first_of_call: bool,
}

/// Judges the path of `s` (stored already in `txn`) and records an episode's start or end.
/// Samples of calls we do not know, or from someone not a party, raise nothing.
pub async fn judge_path(
    txn: &DatabaseTransaction,
    policy: &AlertPolicy,
    source: &str,
    s: &QualityReported,
) -> Result<Option<AlertChange>, DbErr> {
    let Some(call) = calls::Entity::find_by_id(s.call_id).one(txn).await? else {
        return Ok(None);
    };
    let reporter = s.reporter_id.as_str();
    let other = match reporter {
        r if r == call.caller_id => call.callee_id.as_str(),
        r if r == call.callee_id => call.caller_id.as_str(),
        _ => return Ok(None),
    };
    if other.is_empty() {
        return Ok(None);
    }
    let (sender, receiver) = match s.direction {
        Direction::Inbound => (other, reporter),
        Direction::Outbound => (reporter, other),
    };
    // Both views of the path: the receiver's inbound samples and the sender's outbound ones.
    let newest = quality_samples::Entity::find()
        .filter(quality_samples::Column::CallId.eq(s.call_id))
        .filter(
            Condition::any()
                .add(
                    Condition::all()
                        .add(quality_samples::Column::ReporterId.eq(receiver))
                        .add(quality_samples::Column::Direction.eq(Direction::Inbound.as_str())),
                )
                .add(
                    Condition::all()
                        .add(quality_samples::Column::ReporterId.eq(sender))
                        .add(quality_samples::Column::Direction.eq(Direction::Outbound.as_str())),
                ),
        )
        .order_by_desc(quality_samples::Column::ReportedAt)
        .order_by_desc(quality_samples::Column::ReceivedAt)
        .limit(policy.samples as u64)
        .all(txn)
        .await?;
    let points: Vec<Point> = newest
        .iter()
        .map(|r| Point {
            at: r.reported_at,
            rtt_ms: r.rtt_ms,
            jitter_ms: r.jitter_ms,
            loss_percent: r.packet_loss_percent,
        })
        .collect();
    let open = quality_alerts::Entity::find()
        .filter(quality_alerts::Column::CallId.eq(s.call_id))
        .filter(quality_alerts::Column::SenderId.eq(sender))
        .filter(quality_alerts::Column::ReceiverId.eq(receiver))
        .filter(quality_alerts::Column::EndedAt.is_null())
        .one(txn)
        .await?;
    let direction = if sender == call.caller_id { "caller_to_callee" } else { "callee_to_caller" };
    let data = |id: Uuid, state: &'static str, w: &Window, worst: f64, started_at, ended_at| AlertData {
        alert_id: id,
        call_id: call.id,
        call_type: call.call_type.clone(),
        state,
        sender_id: sender.to_owned(),
        receiver_id: receiver.to_owned(),
        likely_cause_id: sender.to_owned(),
        direction,
        mos: w.mos,
        packet_loss_percent: w.loss_percent,
        rtt_ms: w.rtt_ms,
        jitter_ms: w.jitter_ms,
        worst_mos: worst,
        started_at,
        ended_at,
    };
    let (data, first_of_call) = match (policy.judge(&points, open.is_some()), open) {
        (Verdict::Degraded(w), None) => {
            let earlier =
                quality_alerts::Entity::find().filter(quality_alerts::Column::CallId.eq(call.id)).count(txn).await?;
            let id = Uuid::now_v7();
            quality_alerts::Entity::insert(quality_alerts::ActiveModel {
                id: Set(id),
                call_id: Set(call.id),
                sender_id: Set(sender.to_owned()),
                receiver_id: Set(receiver.to_owned()),
                started_at: Set(w.newest),
                mos: Set(w.mos),
                packet_loss_percent: Set(w.loss_percent),
                rtt_ms: Set(w.rtt_ms),
                worst_mos: Set(w.mos),
                ended_at: Set(None),
                end_reason: Set(None),
            })
            .exec_without_returning(txn)
            .await?;
            (data(id, "degraded", &w, w.mos, w.newest, None), earlier == 0)
        }
        (Verdict::Recovered(w), Some(episode)) => {
            let (id, started_at, worst) = (episode.id, episode.started_at, episode.worst_mos);
            let mut active = episode.into_active_model();
            active.ended_at = Set(Some(w.newest));
            active.end_reason = Set(Some("recovered".to_owned()));
            active.update(txn).await?;
            (data(id, "recovered", &w, worst, started_at, Some(w.newest)), false)
        }
        (Verdict::Unchanged(Some(w)), Some(episode)) if w.mos < episode.worst_mos => {
            let mut active = episode.into_active_model();
            active.worst_mos = Set(w.mos);
            active.update(txn).await?;
            return Ok(None);
        }
        _ => return Ok(None),
    };
    let names = if data.state == "degraded" { CALL_QUALITY_DEGRADED } else { CALL_QUALITY_RECOVERED };
    let subject = call.id.to_string();
    let time = Utc::now().trunc_subsecs(6);
    write_event(txn, NewEvent { source, names, subject: &subject, aggregate_id: call.id, time, data: &data }).await?;
    Ok(Some(AlertChange { data, parties: [call.caller_id.clone(), call.callee_id.clone()], first_of_call }))
}

/// Closes the call's open episodes when it ends (`end_reason` `call_ended`, no event: the call's
/// own ending says it). Returns how many were open.
pub async fn close_for_ended_call(txn: &DatabaseTransaction, call_id: Uuid) -> Result<u64, DbErr> {
    let now = Utc::now().trunc_subsecs(6);
    let closed = quality_alerts::Entity::update_many()
        .col_expr(quality_alerts::Column::EndedAt, sea_orm::sea_query::Expr::value(now))
        .col_expr(quality_alerts::Column::EndReason, sea_orm::sea_query::Expr::value(CALL_ENDED))
        .filter(quality_alerts::Column::CallId.eq(call_id))
        .filter(quality_alerts::Column::EndedAt.is_null())
        .exec(txn)
        .await?;
    Ok(closed.rows_affected)
}
