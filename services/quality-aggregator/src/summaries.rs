//! What each message does to the database, in one transaction with its `processed_messages` row:
//! a sample is stored and folded into the call's `all` row and its direction's row (locked, so
//! replicas serialise per call); an ending finalizes the call's summary.

use std::collections::BTreeMap;

use std::time::Duration;

use chrono::{SubsecRound, Utc};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};
use sea_orm::{
    ActiveModelTrait,
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, EntityTrait,
    IntoActiveModel, QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
    sea_query::{Expr, ExprTrait, LockType},
};
use uuid::Uuid;
use videocall_calls::quality_sample::QualityReported;
use videocall_entities::{call_quality, quality_samples};
pub use videocall_messaging::inbound::Failure;
use videocall_messaging::inbound::record_message;
use videocall_signaling::signal_bus::SignalBus;

use crate::{
    alerts::AlertPolicy,
    episodes::{self, AlertChange, AlertFrame},
    messages::{self, Event},
    quality_math::Totals,
};

/// `processed_messages.consumer` of this service: fixed, so replicas share one inbox.
pub const CONSUMER: &str = "quality-aggregator";
/// Scope of the row that covers both directions.
pub const ALL: &str = "all";

/// What applying a message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The sample was stored and changed the summary.
    Applied,
    /// The sample was stored, but the summary was final already and stays as it was.
    Late,
    /// The call's summary is now final.
    Finalized,
    /// This message id was applied before; nothing changed.
    Duplicate,
}

/// Applies messages. Cheap to clone.
#[derive(Clone)]
pub struct Aggregator {
    db: DatabaseConnection,
    metrics: SummaryMetrics,
    alerts: Alerts,
}

/// How live quality alerts are judged, whose name their events carry, and where the frames go.
#[derive(Clone)]
pub struct Alerts {
    pub policy: AlertPolicy,
    /// CloudEvents `source` of the alert events.
    pub source: String,
    /// The signal bus the `quality.alert` frames go out on; without one only the events are written.
    pub bus: Option<SignalBus>,
}

impl Default for Alerts {
    fn default() -> Self {
        Self {
            policy: AlertPolicy::default(),
            source: videocall_messaging::cloud_event::event_source("local", CONSUMER),
            bus: None,
        }
    }
}

/// The finalized summaries, as distributions: `videocall_call_mos` and
/// `videocall_call_packet_loss_percent` (both directions together), observed once per call with
/// samples when its summary becomes final. Cheap to clone (clones observe together).
#[derive(Debug, Clone)]
pub struct SummaryMetrics {
    mos: Histogram,
    loss: Histogram,
    alerts: Family<AlertLabels, Counter>,
    degraded_calls: Family<DeskLabel, Counter>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AlertLabels {
    desk: String,
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeskLabel {
    desk: String,
}

impl Default for SummaryMetrics {
    fn default() -> Self {
        Self {
            mos: Histogram::new([1.5, 2.0, 2.5, 3.0, 3.5, 3.8, 4.0, 4.2, 4.4]),
            loss: Histogram::new([0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0]),
            alerts: Family::default(),
            degraded_calls: Family::default(),
        }
    }
}

impl SummaryMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register("videocall_call_mos", "E-model MOS of each finalized call summary", self.mos.clone());
        registry.register(
            "videocall_call_packet_loss_percent",
            "Average packet loss of each finalized call summary",
            self.loss.clone(),
        );
        for call_type in videocall_domain::CallType::ALL {
            let desk = call_type.as_str().to_owned();
            for state in ["degraded", "recovered"] {
                let _ = self.alerts.get_or_create(&AlertLabels { desk: desk.clone(), state });
            }
            let _ = self.degraded_calls.get_or_create(&DeskLabel { desk });
        }
        registry.register(
            "videocall_quality_alerts",
            "Live quality alert episodes that started (degraded) or ended (recovered), by desk (call type)",
            self.alerts.clone(),
        );
        registry.register(
            "videocall_quality_degraded_calls",
            "Calls that had their first live quality alert, by desk (call type)",
            self.degraded_calls.clone(),
        );
    }
}

impl Aggregator {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db, metrics: SummaryMetrics::default(), alerts: Alerts::default() }
    }

    /// Judges live quality alerts with `alerts` (the default policy, and no frames, otherwise).
    pub fn with_alerts(mut self, alerts: Alerts) -> Self {
        self.alerts = alerts;
        self
    }

    /// Observes finalized summaries into `metrics` (registered by the caller).
    pub fn with_metrics(mut self, metrics: SummaryMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Parses and applies one message body.
    pub async fn apply(&self, message_id: Option<&str>, body: &[u8]) -> Result<Outcome, Failure> {
        let incoming = messages::parse(message_id, body)?;
        match incoming.event {
            Event::Sample(sample) => self.sample(&incoming.message_id, &sample).await,
            Event::Finalize { call_id } => self.finalize(&incoming.message_id, call_id).await,
        }
    }

    #[tracing::instrument(skip_all, fields(call_id = %s.call_id, direction = %s.direction), err)]
    async fn sample(&self, message_id: &str, s: &QualityReported) -> Result<Outcome, Failure> {
        let txn = self.db.begin().await?;
        if !record_message(&txn, CONSUMER, message_id).await? {
            txn.rollback().await?;
            return Ok(Outcome::Duplicate);
        }
        let now = Utc::now().trunc_subsecs(6);
        let direction = s.direction.as_str();
        // The `all` row first (every transaction of a call locks it first: one lock order), and the
        // direction's row only while the summary is open, so a late sample creates nothing.
        let mut rows = lock_rows(&txn, s.call_id, &[ALL]).await?;
        let finalized = rows.iter().any(|r| r.finalized_at.is_some());
        if !finalized {
            rows.extend(lock_rows(&txn, s.call_id, &[direction]).await?);
        }
        quality_samples::Entity::insert(quality_samples::ActiveModel {
            id: Set(Uuid::now_v7()),
            call_id: Set(s.call_id),
            reporter_id: Set(s.reporter_id.clone()),
            direction: Set(direction.to_owned()),
            rtt_ms: Set(s.rtt_ms),
            jitter_ms: Set(s.jitter_ms),
            packet_loss_percent: Set(s.packet_loss_percent),
            bitrate_kbps: Set(s.bitrate_kbps),
            width: Set(i32::try_from(s.width).unwrap_or(i32::MAX)),
            height: Set(i32::try_from(s.height).unwrap_or(i32::MAX)),
            fps: Set(s.fps),
            applied: Set(!finalized),
            reported_at: Set(s.reported_at),
            received_at: Set(now),
        })
        .exec_without_returning(&txn)
        .await?;
        if finalized {
            call_quality::Entity::update_many()
                .col_expr(call_quality::Column::LateSamples, Expr::col(call_quality::Column::LateSamples).add(1))
                .filter(call_quality::Column::CallId.eq(s.call_id))
                .filter(call_quality::Column::Scope.eq(ALL))
                .exec(&txn)
                .await?;
            txn.commit().await?;
            tracing::info!("sample after finalization: stored, summary unchanged");
            return Ok(Outcome::Late);
        }
        let sample = s.sample();
        for row in rows.drain(..) {
            let mut totals = totals_of(&row)?;
            totals.add(&sample);
            write(&txn, row, &totals, now).await?;
        }
        let change = episodes::judge_path(&txn, &self.alerts.policy, &self.alerts.source, s).await?;
        txn.commit().await?;
        if let Some(change) = change {
            self.announce(&change).await;
        }
        Ok(Outcome::Applied)
    }

    /// Counts an episode's start or end and pushes it to both parties as a `quality.alert` frame:
    /// best effort (the event is in the outbox already, and GetCall shows the episode).
    async fn announce(&self, change: &AlertChange) {
        let data = &change.data;
        tracing::info!(
            alert_id = %data.alert_id, state = data.state, sender = %data.sender_id,
            mos = data.mos, loss = data.packet_loss_percent, "quality alert"
        );
        let desk = data.call_type.clone();
        self.metrics.alerts.get_or_create(&AlertLabels { desk: desk.clone(), state: data.state }).inc();
        if change.first_of_call {
            self.metrics.degraded_calls.get_or_create(&DeskLabel { desk }).inc();
        }
        let Some(bus) = &self.alerts.bus else { return };
        let parties: Vec<&str> = change.parties.iter().map(String::as_str).collect();
        let frame = AlertFrame { frame_type: "quality.alert", data };
        match tokio::time::timeout(Duration::from_secs(3), bus.push_to_parties(&parties, &frame)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, alert_id = %data.alert_id, "quality.alert not pushed"),
            Err(_) => tracing::warn!(alert_id = %data.alert_id, "quality.alert not pushed (signal bus timed out)"),
        }
    }

    #[tracing::instrument(skip_all, fields(call_id = %call_id), err)]
    async fn finalize(&self, message_id: &str, call_id: Uuid) -> Result<Outcome, Failure> {
        let txn = self.db.begin().await?;
        if !record_message(&txn, CONSUMER, message_id).await? {
            txn.rollback().await?;
            return Ok(Outcome::Duplicate);
        }
        let now = Utc::now().trunc_subsecs(6);
        // The `all` row exists afterwards even for a call without samples: an empty, final summary.
        lock_rows(&txn, call_id, &[ALL]).await?;
        let finalized = call_quality::Entity::update_many()
            .col_expr(call_quality::Column::FinalizedAt, Expr::value(now))
            .col_expr(call_quality::Column::UpdatedAt, Expr::value(now))
            .filter(call_quality::Column::CallId.eq(call_id))
            .filter(call_quality::Column::FinalizedAt.is_null())
            .exec(&txn)
            .await?;
        episodes::close_for_ended_call(&txn, call_id).await?;
        let summary = if finalized.rows_affected > 0 {
            call_quality::Entity::find()
                .filter(call_quality::Column::CallId.eq(call_id))
                .filter(call_quality::Column::Scope.eq(ALL))
                .one(&txn)
                .await?
        } else {
            None
        };
        txn.commit().await?;
        if let Some(summary) = summary.filter(|s| s.sample_count > 0) {
            self.metrics.mos.observe(summary.mos);
            self.metrics.loss.observe(summary.avg_packet_loss);
        }
        Ok(Outcome::Finalized)
    }
}

fn empty_row(call_id: Uuid, scope: &str) -> call_quality::ActiveModel {
    call_quality::ActiveModel {
        call_id: Set(call_id),
        scope: Set(scope.to_owned()),
        sample_count: Set(0),
        sum_rtt_ms: Set(0.0),
        sum_jitter_ms: Set(0.0),
        sum_jitter_sq: Set(0.0),
        sum_packet_loss: Set(0.0),
        max_packet_loss: Set(0.0),
        sum_bitrate_kbps: Set(0.0),
        disconnects: Set(0),
        resolutions: Set(serde_json::json!({})),
        avg_rtt_ms: Set(0.0),
        avg_jitter_ms: Set(0.0),
        avg_packet_loss: Set(0.0),
        avg_bitrate_kbps: Set(0.0),
        resolution: Set(String::new()),
        stability: Set(0.0),
        mos: Set(0.0),
        late_samples: Set(0),
        finalized_at: Set(None),
        updated_at: Set(Utc::now().trunc_subsecs(6)),
    }
}

/// Makes sure the call's rows of `scopes` exist, then reads them locked (`FOR UPDATE` on
/// PostgreSQL), in scope order so that concurrent transactions lock in one order.
async fn lock_rows(
    txn: &DatabaseTransaction,
    call_id: Uuid,
    scopes: &[&str],
) -> Result<Vec<call_quality::Model>, DbErr> {
    call_quality::Entity::insert_many(scopes.iter().map(|scope| empty_row(call_id, scope)))
        .on_conflict_do_nothing()
        .exec_without_returning(txn)
        .await?;
    let mut select = call_quality::Entity::find()
        .filter(call_quality::Column::CallId.eq(call_id))
        .filter(call_quality::Column::Scope.is_in(scopes.iter().copied()))
        .order_by_asc(call_quality::Column::Scope);
    if txn.get_database_backend() == DbBackend::Postgres {
        select = select.lock(LockType::Update);
    }
    select.all(txn).await
}

fn totals_of(row: &call_quality::Model) -> Result<Totals, Failure> {
    let resolutions: BTreeMap<String, i64> = serde_json::from_value(row.resolutions.clone()).map_err(|e| {
        Failure::Permanent(format!("call_quality {}/{}: resolutions unreadable: {e}", row.call_id, row.scope))
    })?;
    Ok(Totals {
        count: row.sample_count,
        sum_rtt_ms: row.sum_rtt_ms,
        sum_jitter_ms: row.sum_jitter_ms,
        sum_jitter_sq: row.sum_jitter_sq,
        sum_packet_loss: row.sum_packet_loss,
        max_packet_loss: row.max_packet_loss,
        sum_bitrate_kbps: row.sum_bitrate_kbps,
        disconnects: row.disconnects,
        resolutions,
    })
}

async fn write(
    txn: &DatabaseTransaction,
    row: call_quality::Model,
    t: &Totals,
    now: chrono::DateTime<Utc>,
) -> Result<(), Failure> {
    let summary = t.summary();
    let resolutions = serde_json::to_value(&t.resolutions).map_err(|e| Failure::Permanent(e.to_string()))?;
    let mut active = row.into_active_model();
    active.sample_count = Set(t.count);
    active.sum_rtt_ms = Set(t.sum_rtt_ms);
    active.sum_jitter_ms = Set(t.sum_jitter_ms);
    active.sum_jitter_sq = Set(t.sum_jitter_sq);
    active.sum_packet_loss = Set(t.sum_packet_loss);
    active.max_packet_loss = Set(t.max_packet_loss);
    active.sum_bitrate_kbps = Set(t.sum_bitrate_kbps);
    active.disconnects = Set(t.disconnects);
    active.resolutions = Set(resolutions);
    active.avg_rtt_ms = Set(summary.avg_rtt_ms);
    active.avg_jitter_ms = Set(summary.avg_jitter_ms);
    active.avg_packet_loss = Set(summary.avg_packet_loss);
    active.avg_bitrate_kbps = Set(summary.avg_bitrate_kbps);
    active.resolution = Set(summary.resolution);
    active.stability = Set(summary.stability);
    active.mos = Set(summary.mos);
    active.updated_at = Set(now);
    active.update(txn).await?;
    Ok(())
}
