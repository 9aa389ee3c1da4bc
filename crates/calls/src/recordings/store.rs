//! The recordings table: consent, claims under a lease, status changes and their events.

use chrono::{DateTime, Duration as ChronoDuration, SubsecRound, Utc};
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QuerySelect,
    TransactionTrait,
    sea_query::{Expr, ExprTrait, OnConflict},
};
use serde::Serialize;
use uuid::Uuid;
use videocall_domain::{CallStatus, Party};
use videocall_entities::{calls, recordings};

use videocall_messaging::outbox::{NewEvent, write_event};

use super::{Outcome, RecordingStatus, RecordingView, manifest_sha256, recording_event_names};
use crate::record::{CallRecord, StoreError};

#[derive(Serialize)]
struct RecordingEventData<'a> {
    recording_id: Uuid,
    call_id: Uuid,
    caller_id: &'a str,
    callee_id: &'a str,
    #[serde(flatten)]
    recording: &'a RecordingView,
}

/// Reads and changes recordings. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RecordingStore {
    db: DatabaseConnection,
    event_source: String,
}

/// A changed row is retried this many times when another writer got there first.
const MAX_ATTEMPTS: usize = 8;

impl RecordingStore {
    pub fn new(db: DatabaseConnection, event_source: String) -> Self {
        Self { db, event_source }
    }

    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    pub async fn get(&self, call_id: Uuid) -> Result<Option<RecordingView>, StoreError> {
        recordings::Entity::find_by_id(call_id).one(&self.db).await?.map(RecordingView::from_model).transpose()
    }

    /// The recordings of `call_ids` (calls without one are absent), in one query.
    pub async fn get_many(&self, call_ids: &[Uuid]) -> Result<Vec<RecordingView>, StoreError> {
        if call_ids.is_empty() {
            return Ok(Vec::new());
        }
        recordings::Entity::find()
            .filter(recordings::Column::CallId.is_in(call_ids.iter().copied()))
            .all(&self.db)
            .await?
            .into_iter()
            .map(RecordingView::from_model)
            .collect()
    }

    /// A party gives (`consent`) or withdraws its consent to record `call`. The first consent
    /// requests the recording; the other party's consent starts it; a withdrawal before both
    /// consented only clears that party's consent, and one while it starts or records stops it
    /// (the recorder keeps what it wrote). Returns the recording, or `None` when a withdrawal met
    /// no recording. Repeats change nothing.
    #[tracing::instrument(skip_all, fields(call_id = %call.id, user_id, consent), err)]
    pub async fn set_consent(
        &self,
        call: &CallRecord,
        party: Party,
        user_id: &str,
        consent: bool,
    ) -> Result<(Option<RecordingView>, bool), StoreError> {
        if !matches!(party, Party::Caller | Party::Callee) {
            return Err(StoreError::NotAParty);
        }
        for _ in 0..MAX_ATTEMPTS {
            let now = Utc::now().trunc_subsecs(6);
            let Some(current) = self.get(call.id).await? else {
                if !consent {
                    return Ok((None, false));
                }
                if call.status.is_terminal() {
                    return Err(StoreError::WrongState(call.status));
                }
                let inserted = recordings::Entity::insert(recordings::ActiveModel {
                    call_id: Set(call.id),
                    id: Set(Uuid::now_v7()),
                    status: Set(RecordingStatus::Requested.as_str().to_owned()),
                    caller_consent: Set(party == Party::Caller),
                    callee_consent: Set(party == Party::Callee),
                    requested_by: Set(user_id.to_owned()),
                    stop_requested: Set(false),
                    worker_id: Set(None),
                    lease_until: Set(None),
                    started_at: Set(None),
                    ended_at: Set(None),
                    duration_ms: Set(0),
                    size_bytes: Set(0),
                    sha256: Set(String::new()),
                    files: Set(serde_json::json!([])),
                    error: Set(None),
                    version: Set(1),
                    created_at: Set(now),
                    updated_at: Set(now),
                })
                .on_conflict(OnConflict::column(recordings::Column::CallId).do_nothing().to_owned())
                .exec_without_returning(&self.db)
                .await?;
                if inserted == 1 {
                    return Ok((self.get(call.id).await?, true));
                }
                continue;
            };
            let mine = if party == Party::Caller { current.caller_consent } else { current.callee_consent };
            let theirs = if party == Party::Caller { current.callee_consent } else { current.caller_consent };
            let status = current.status;
            if status.is_terminal() {
                if consent {
                    return Err(StoreError::Recording(format!("this call's recording is {}", status.as_str())));
                }
                return Ok((Some(current), false));
            }
            if mine == consent {
                return Ok((Some(current), false));
            }
            if consent && call.status.is_terminal() {
                return Err(StoreError::WrongState(call.status));
            }
            let column = if party == Party::Caller {
                recordings::Column::CallerConsent
            } else {
                recordings::Column::CalleeConsent
            };
            let mut update = recordings::Entity::update_many()
                .col_expr(column, Expr::value(consent))
                .col_expr(recordings::Column::Version, Expr::col(recordings::Column::Version).add(1))
                .col_expr(recordings::Column::UpdatedAt, Expr::value(now));
            if consent && theirs && status == RecordingStatus::Requested {
                update = update.col_expr(recordings::Column::Status, Expr::value(RecordingStatus::Starting.as_str()));
            }
            if !consent && status.is_running() {
                update = update.col_expr(recordings::Column::StopRequested, Expr::value(true));
            }
            let changed = update
                .filter(recordings::Column::CallId.eq(call.id))
                .filter(recordings::Column::Version.eq(current.version))
                .exec(&self.db)
                .await?;
            if changed.rows_affected == 1 {
                return Ok((self.get(call.id).await?, true));
            }
        }
        Err(StoreError::Recording("the recording kept changing; retry".into()))
    }

    /// Takes up to `limit` recordings that wait for a recorder (`starting`, not owned or with an
    /// expired lease) of calls that are active, for `worker_id` until `lease`. A waiting recording
    /// whose call ended before it began fails here.
    pub async fn claim(
        &self,
        worker_id: &str,
        lease: std::time::Duration,
        limit: u64,
    ) -> Result<Vec<RecordingView>, StoreError> {
        let now = Utc::now().trunc_subsecs(6);
        let waiting = recordings::Entity::find()
            .filter(recordings::Column::Status.eq(RecordingStatus::Starting.as_str()))
            .filter(
                Condition::any()
                    .add(recordings::Column::WorkerId.is_null())
                    .add(recordings::Column::LeaseUntil.lt(now)),
            )
            .limit(limit * 4)
            .all(&self.db)
            .await?;
        if waiting.is_empty() {
            return Ok(Vec::new());
        }
        let statuses: std::collections::HashMap<Uuid, String> = calls::Entity::find()
            .filter(calls::Column::Id.is_in(waiting.iter().map(|r| r.call_id)))
            .all(&self.db)
            .await?
            .into_iter()
            .map(|c| (c.id, c.status))
            .collect();
        let mut claimed = Vec::new();
        for row in waiting {
            if claimed.len() as u64 >= limit {
                break;
            }
            let call_status = statuses.get(&row.call_id).and_then(|s| s.parse::<CallStatus>().ok());
            let recording = RecordingView::from_model(row)?;
            match call_status {
                Some(CallStatus::Active) => {}
                Some(s) if s.is_terminal() => {
                    let error = format!("the call was {s} before the recording began");
                    self.finish_row(&recording, None, Outcome::Failed { files: Vec::new(), error }).await?;
                    continue;
                }
                _ => continue,
            }
            let until = now + ChronoDuration::from_std(lease).unwrap_or(ChronoDuration::seconds(30));
            let taken = recordings::Entity::update_many()
                .col_expr(recordings::Column::WorkerId, Expr::value(worker_id))
                .col_expr(recordings::Column::LeaseUntil, Expr::value(until))
                .col_expr(recordings::Column::Version, Expr::col(recordings::Column::Version).add(1))
                .col_expr(recordings::Column::UpdatedAt, Expr::value(now))
                .filter(recordings::Column::CallId.eq(recording.call_id))
                .filter(recordings::Column::Version.eq(recording.version))
                .exec(&self.db)
                .await?;
            if taken.rows_affected == 1
                && let Some(mine) = self.get(recording.call_id).await?
            {
                claimed.push(mine);
            }
        }
        Ok(claimed)
    }

    /// Extends `worker_id`'s lease; returns the recording as it is now, or `None` when this worker
    /// no longer owns it (its lease ran out and another took it, or it was failed as abandoned).
    pub async fn renew(
        &self,
        call_id: Uuid,
        worker_id: &str,
        lease: std::time::Duration,
    ) -> Result<Option<RecordingView>, StoreError> {
        let now = Utc::now().trunc_subsecs(6);
        let until = now + ChronoDuration::from_std(lease).unwrap_or(ChronoDuration::seconds(30));
        let renewed = recordings::Entity::update_many()
            .col_expr(recordings::Column::LeaseUntil, Expr::value(until))
            .filter(recordings::Column::CallId.eq(call_id))
            .filter(recordings::Column::WorkerId.eq(worker_id))
            .filter(
                recordings::Column::Status
                    .is_in([RecordingStatus::Starting.as_str(), RecordingStatus::Active.as_str()]),
            )
            .exec(&self.db)
            .await?;
        if renewed.rows_affected == 0 {
            return Ok(None);
        }
        self.get(call_id).await
    }

    /// `starting` → `active` for the owner: media of both parties reaches it. Writes
    /// RecordingStarted. `None` if it was not this worker's starting recording any more.
    pub async fn activate(&self, call: &CallRecord, worker_id: &str) -> Result<Option<RecordingView>, StoreError> {
        let now = Utc::now().trunc_subsecs(6);
        let txn = self.db.begin().await?;
        let changed = recordings::Entity::update_many()
            .col_expr(recordings::Column::Status, Expr::value(RecordingStatus::Active.as_str()))
            .col_expr(recordings::Column::StartedAt, Expr::value(now))
            .col_expr(recordings::Column::Version, Expr::col(recordings::Column::Version).add(1))
            .col_expr(recordings::Column::UpdatedAt, Expr::value(now))
            .filter(recordings::Column::CallId.eq(call.id))
            .filter(recordings::Column::WorkerId.eq(worker_id))
            .filter(recordings::Column::Status.eq(RecordingStatus::Starting.as_str()))
            .exec_with_returning(&txn)
            .await?;
        let Some(model) = changed.into_iter().next() else {
            return Ok(None);
        };
        let recording = RecordingView::from_model(model)?;
        self.write_event(&txn, call, &recording, now).await?;
        txn.commit().await?;
        Ok(Some(recording))
    }

    /// Ends the owner's recording (`starting` or `active`) with `outcome`, writing its event.
    /// `None` if this worker no longer owned it.
    pub async fn finish(
        &self,
        call: &CallRecord,
        worker_id: &str,
        outcome: Outcome,
    ) -> Result<Option<RecordingView>, StoreError> {
        // A consent change may bump the version between the read and the update: read again.
        for _ in 0..MAX_ATTEMPTS {
            let Some(current) = self.get(call.id).await? else { return Ok(None) };
            if current.worker_id.as_deref() != Some(worker_id) || !current.status.is_running() {
                return Ok(None);
            }
            if let Some(done) = self.finish_row(&current, Some(call), outcome.clone()).await? {
                return Ok(Some(done));
            }
        }
        Err(StoreError::Recording("the recording kept changing; retry".into()))
    }

    /// Fails the recordings whose recorder stopped renewing while they were active (it died with
    /// the files half written); a `starting` one is simply claimed again. Returns the failed ones.
    pub async fn fail_abandoned(&self) -> Result<Vec<RecordingView>, StoreError> {
        let now = Utc::now().trunc_subsecs(6);
        let abandoned = recordings::Entity::find()
            .filter(recordings::Column::Status.eq(RecordingStatus::Active.as_str()))
            .filter(recordings::Column::LeaseUntil.lt(now))
            .limit(100)
            .all(&self.db)
            .await?;
        let mut failed = Vec::new();
        for row in abandoned {
            let recording = RecordingView::from_model(row)?;
            let outcome = Outcome::Failed {
                files: Vec::new(),
                error: format!(
                    "recorder {} stopped while recording",
                    recording.worker_id.as_deref().unwrap_or("unknown")
                ),
            };
            if let Some(done) = self.finish_row(&recording, None, outcome).await? {
                failed.push(done);
            }
        }
        Ok(failed)
    }

    /// Conditional on the version `current` was read at: a racing change wins and this returns
    /// `None`.
    async fn finish_row(
        &self,
        current: &RecordingView,
        call: Option<&CallRecord>,
        outcome: Outcome,
    ) -> Result<Option<RecordingView>, StoreError> {
        let now = Utc::now().trunc_subsecs(6);
        let (status, files, duration_ms, error) = match outcome {
            Outcome::Complete { files, duration_ms, reason } => (RecordingStatus::Complete, files, duration_ms, reason),
            Outcome::Failed { files, error } => (RecordingStatus::Failed, files, 0, Some(error)),
        };
        let size: u64 = files.iter().map(|f| f.bytes).sum();
        let sha = if files.is_empty() { String::new() } else { manifest_sha256(&files) };
        let error = error.map(|e| e.chars().take(512).collect::<String>());
        let files_json = serde_json::to_value(&files).map_err(|e| DbErr::Custom(format!("recording files: {e}")))?;
        let txn = self.db.begin().await?;
        let changed = recordings::Entity::update_many()
            .col_expr(recordings::Column::Status, Expr::value(status.as_str()))
            .col_expr(recordings::Column::EndedAt, Expr::value(now))
            .col_expr(recordings::Column::DurationMs, Expr::value(duration_ms))
            .col_expr(recordings::Column::SizeBytes, Expr::value(i64::try_from(size).unwrap_or(i64::MAX)))
            .col_expr(recordings::Column::Sha256, Expr::value(sha))
            .col_expr(recordings::Column::Files, Expr::value(files_json))
            .col_expr(recordings::Column::Error, Expr::value(error))
            .col_expr(recordings::Column::LeaseUntil, Expr::value(Option::<DateTime<Utc>>::None))
            .col_expr(recordings::Column::Version, Expr::col(recordings::Column::Version).add(1))
            .col_expr(recordings::Column::UpdatedAt, Expr::value(now))
            .filter(recordings::Column::CallId.eq(current.call_id))
            .filter(recordings::Column::Version.eq(current.version))
            .exec_with_returning(&txn)
            .await?;
        let Some(model) = changed.into_iter().next() else {
            return Ok(None);
        };
        let recording = RecordingView::from_model(model)?;
        let call = match call {
            Some(c) => c.clone(),
            None => {
                let model = calls::Entity::find_by_id(current.call_id)
                    .one(&txn)
                    .await?
                    .ok_or(StoreError::NotFound(current.call_id))?;
                CallRecord::from_model(model)?
            }
        };
        self.write_event(&txn, &call, &recording, now).await?;
        txn.commit().await?;
        Ok(Some(recording))
    }

    async fn write_event<C: ConnectionTrait>(
        &self,
        conn: &C,
        call: &CallRecord,
        recording: &RecordingView,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let Some(names) = recording_event_names(recording.status) else { return Ok(()) };
        let data = RecordingEventData {
            recording_id: recording.id,
            call_id: call.id,
            caller_id: &call.caller_id,
            callee_id: &call.callee_id,
            recording,
        };
        let subject = recording.id.to_string();
        let event =
            NewEvent { source: &self.event_source, names, subject: &subject, aggregate_id: call.id, time: now, data };
        write_event(conn, event).await?;
        Ok(())
    }
}
