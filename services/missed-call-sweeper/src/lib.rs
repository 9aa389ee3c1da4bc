//! missed-call-sweeper: on a cron schedule, calls still initiated or ringing past their ring
//! deadline (by the database's clock) become `missed`, with a CallMissed event in the same
//! transaction. Due rows are claimed with `FOR UPDATE SKIP LOCKED`, so replicas split the work and
//! a concurrent answer either wins before the sweep or is refused after it.

#![forbid(unsafe_code)]

pub mod config;
pub mod metrics;
pub mod startup;

use std::{str::FromStr, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    Statement, TransactionTrait,
    sea_query::{LockBehavior, LockType},
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use videocall_calls::{CallMetrics, CallRecord, CallStore, StoreError};
use videocall_domain::{CallStatus, Command, Decision, EndReason, Party, decide_for};
use videocall_entities::calls;
use videocall_messaging::cloud_event::event_source;
use videocall_runtime::ops::Readiness;
use videocall_signaling::signal_bus::SignalBus;

use crate::metrics::{ResultLabel, SweeperMetrics};

pub use config::{SweeperArgs, SweeperConfig};
pub use startup::Application;

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    pub missed: u64,
    /// Active calls ended as `connection_lost` for lack of activity.
    pub zombies: u64,
    /// Calls ended as `connection_lost` because a party's sockets were gone past the grace.
    pub lost: u64,
    pub batches: u64,
}

/// What a sweep looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// Unanswered past the ring deadline: missed.
    Overdue,
    /// Active with no activity (transition, signal, quality report) since the cut-off: ended.
    Zombie,
}

/// Marks overdue calls missed. Cheap to clone; replicas may run side by side.
#[derive(Debug, Clone)]
pub struct Sweeper {
    store: CallStore,
    actor: String,
    batch_size: u64,
    /// Active calls silent this long end with `connection_lost`; None leaves them alone.
    zombie_timeout: Option<Duration>,
    /// A party whose presence lease ran out this long ago loses their call (needs `bus`).
    party_grace: Option<Duration>,
    bus: Option<SignalBus>,
}

/// A party counts as one that used a relay in this call if its lease ran out no earlier than this
/// before the call was created (clock skew between the bus and the database, and the lease's
/// renewal period, fit in it). Parties that never connected to a relay (gRPC clients) are left
/// alone.
const PRESENCE_MARGIN: chrono::Duration = chrono::Duration::seconds(15);
/// Parties away for longer than the grace plus this are no longer looked at (their calls were
/// ended when the grace ran out, or the zombie sweep ends them).
const PRESENCE_LOOKBACK: Duration = Duration::from_secs(600);
/// Away users looked up in one query.
const AWAY_CHUNK: usize = 500;

impl Sweeper {
    pub fn new(db: DatabaseConnection, cell_id: &str, service_name: &str, batch_size: u64) -> Self {
        let store = CallStore::new(db, event_source(cell_id, service_name), Arc::new(Notify::new()));
        Self { store, actor: service_name.to_owned(), batch_size, zombie_timeout: None, party_grace: None, bus: None }
    }

    /// Counts the calls it misses or ends into `metrics` (`videocall_call_transitions_total`).
    pub fn with_metrics(mut self, metrics: CallMetrics) -> Self {
        self.store = self.store.with_metrics(metrics);
        self
    }

    /// A sweeper as `config` sets it up (batch size, zombie timeout, party grace), on `db`.
    pub fn configured(db: DatabaseConnection, config: &SweeperConfig) -> Self {
        Self::new(db, &config.common.cell_id, &config.common.service_name, config.batch_size)
            .with_zombie_timeout(config.zombie_timeout)
            .with_party_grace(config.party_grace)
    }

    /// Tells both parties' connections through `bus` when their call is missed or ended.
    pub fn with_bus(mut self, bus: Option<SignalBus>) -> Self {
        self.bus = bus;
        self
    }

    /// Also end active calls with no activity for `timeout` (reason `connection_lost`).
    pub fn with_zombie_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.zombie_timeout = timeout;
        self
    }

    /// Also end live calls whose party's sockets have all been gone for `grace` (reason
    /// `connection_lost`): an active call when either party is away, a ringing one when the
    /// caller is (a callee who is away simply does not answer: the call is missed). Needs the bus
    /// ([`Self::with_bus`]), where the relays keep their users' presence leases.
    pub fn with_party_grace(mut self, grace: Option<Duration>) -> Self {
        self.party_grace = grace;
        self
    }

    /// Sweeps until no call is overdue (or a zombie), batch by batch.
    #[tracing::instrument(skip_all, fields(actor = %self.actor), err)]
    pub async fn sweep_once(&self) -> Result<SweepReport, StoreError> {
        let now = database_now(self.store.db()).await?;
        let mut report = SweepReport::default();
        let mut targets = vec![(Target::Overdue, now)];
        if let Some(timeout) = self.zombie_timeout {
            targets.push((Target::Zombie, now - chrono::Duration::from_std(timeout).unwrap_or_default()));
        }
        for (target, cutoff) in targets {
            loop {
                let (claimed, changed) = self.sweep_batch(target, cutoff).await?;
                report.batches += 1;
                match target {
                    Target::Overdue => report.missed += changed,
                    Target::Zombie => report.zombies += changed,
                }
                if claimed < self.batch_size {
                    break;
                }
            }
        }
        if let (Some(grace), Some(bus)) = (self.party_grace, &self.bus) {
            report.lost = self.sweep_lost_parties(bus, grace).await?;
        }
        if report.missed + report.zombies + report.lost > 0 {
            tracing::info!(
                missed = report.missed,
                zombies = report.zombies,
                lost = report.lost,
                batches = report.batches,
                "calls swept"
            );
        }
        Ok(report)
    }

    /// One transaction: claim up to `batch_size` calls due before `cutoff` that no other replica
    /// holds, and move each (missed, or ended as connection_lost).
    async fn sweep_batch(&self, target: Target, cutoff: DateTime<Utc>) -> Result<(u64, u64), StoreError> {
        let db = self.store.db();
        let txn = db.begin().await?;
        let (mut due, command) = match target {
            Target::Overdue => (
                calls::Entity::find()
                    .filter(calls::Column::Status.is_in(
                        [CallStatus::Queued, CallStatus::Initiated, CallStatus::Ringing].map(CallStatus::as_str),
                    ))
                    .filter(calls::Column::RingDeadlineAt.lte(cutoff))
                    .order_by_asc(calls::Column::RingDeadlineAt),
                Command::Miss,
            ),
            Target::Zombie => (
                calls::Entity::find()
                    .filter(calls::Column::Status.eq(CallStatus::Active.as_str()))
                    .filter(calls::Column::UpdatedAt.lte(cutoff))
                    .order_by_asc(calls::Column::UpdatedAt),
                Command::End(Some(EndReason::ConnectionLost)),
            ),
        };
        due = due.limit(self.batch_size);
        if db.get_database_backend() == DbBackend::Postgres {
            due = due.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
        }
        let rows = due.all(&txn).await?;
        let claimed = rows.len() as u64;
        let mut changed = Vec::new();
        for row in rows {
            let call = CallRecord::from_model(row)?;
            if let Decision::Apply(effect) = decide_for(call.routing(), call.status, command, Party::Service)
                && let Some(after) = self.store.transition_in(&txn, &call, effect, &self.actor).await?
            {
                changed.push(after);
            }
        }
        txn.commit().await?;
        self.committed(&changed).await;
        Ok((claimed, changed.len() as u64))
    }

    /// Ends the live calls of parties away longer than `grace` (see [`Self::with_party_grace`]).
    /// A bus that cannot be read skips this part of the sweep (logged): nobody is judged away on
    /// data that could not be read.
    async fn sweep_lost_parties(&self, bus: &SignalBus, grace: Duration) -> Result<u64, StoreError> {
        let away = match bus.away_longer_than(grace, PRESENCE_LOOKBACK).await {
            Ok(away) => away,
            Err(error) => {
                tracing::warn!(%error, "presence leases unreadable; party grace not checked this sweep");
                return Ok(0);
            }
        };
        let mut ended = 0;
        for chunk in away.chunks(AWAY_CHUNK) {
            let left: std::collections::HashMap<&str, DateTime<Utc>> =
                chunk.iter().map(|(user, at)| (user.as_str(), *at)).collect();
            let users: Vec<&str> = left.keys().copied().collect();
            let db = self.store.db();
            let txn = db.begin().await?;
            // Agents whose sockets are gone past the grace take no desk calls until they say so.
            let agents: Vec<String> = users.iter().map(|u| (*u).to_owned()).collect();
            self.store.make_unavailable(&txn, &agents).await?;
            let live = [CallStatus::Queued, CallStatus::Initiated, CallStatus::Ringing, CallStatus::Active]
                .map(CallStatus::as_str);
            let mut query = calls::Entity::find().filter(calls::Column::Status.is_in(live)).filter(
                sea_orm::Condition::any()
                    .add(calls::Column::CallerId.is_in(users.clone()))
                    .add(calls::Column::CalleeId.is_in(users)),
            );
            if db.get_database_backend() == DbBackend::Postgres {
                query = query.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
            }
            let mut changed = Vec::new();
            for row in query.all(&txn).await? {
                let call = CallRecord::from_model(row)?;
                let away_since =
                    |user: &str| left.get(user).copied().filter(|at| *at >= call.created_at - PRESENCE_MARGIN);
                let lost = away_since(&call.caller_id).is_some()
                    || (call.status == CallStatus::Active && away_since(&call.callee_id).is_some());
                if !lost {
                    continue;
                }
                let command = Command::End(Some(EndReason::ConnectionLost));
                if let Decision::Apply(effect) = decide_for(call.routing(), call.status, command, Party::Service)
                    && let Some(after) = self.store.transition_in(&txn, &call, effect, &self.actor).await?
                {
                    changed.push(after);
                }
            }
            txn.commit().await?;
            ended += changed.len() as u64;
            self.committed(&changed).await;
        }
        Ok(ended)
    }

    /// After a sweep's transaction: wake the outbox relay, count, tell both parties.
    async fn committed(&self, changed: &[CallRecord]) {
        if !changed.is_empty() {
            self.store.wake_outbox();
        }
        for call in changed {
            self.store.count_committed(call);
        }
        if let Some(bus) = &self.bus {
            for call in changed {
                videocall_calls::push::call_state(bus, call).await;
                // A transfer that rang for an ended call: its target stops ringing.
                self.store.tell_transfer_ended_with(bus, call).await;
            }
        }
    }

    /// Sweeps at every tick of `schedule` until `shutdown`. A failed sweep is logged and retried at
    /// the next tick; readiness follows whether the last sweep reached the database.
    pub async fn run(
        self,
        schedule: cron::Schedule,
        metrics: SweeperMetrics,
        ready: Readiness,
        shutdown: CancellationToken,
    ) {
        tracing::info!(%schedule, "missed-call sweeper running");
        loop {
            let Some(next) = schedule.upcoming(Utc).next() else {
                tracing::warn!("the schedule has no future ticks; stopping");
                return;
            };
            let wait = (next - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let started = std::time::Instant::now();
            match self.sweep_once().await {
                Ok(report) => {
                    metrics.missed.inc_by(report.missed);
                    metrics.zombies.inc_by(report.zombies);
                    metrics.lost.inc_by(report.lost);
                    metrics.sweeps.get_or_create(&ResultLabel { result: "ok" }).inc();
                    ready.set(true);
                }
                Err(error) => {
                    metrics.sweeps.get_or_create(&ResultLabel { result: "error" }).inc();
                    ready.set(false);
                    tracing::warn!(%error, "sweep failed; retrying at the next tick");
                }
            }
            metrics.duration.observe(started.elapsed().as_secs_f64());
        }
    }
}

/// The database's clock (PostgreSQL `now()`), so replicas on machines with skewed clocks agree.
/// SQLite runs in the same process as its writers, so the process clock is the database clock.
pub async fn database_now(db: &DatabaseConnection) -> Result<DateTime<Utc>, StoreError> {
    if db.get_database_backend() != DbBackend::Postgres {
        return Ok(Utc::now());
    }
    let row = db
        .query_one_raw(Statement::from_string(DbBackend::Postgres, "SELECT now() AS now"))
        .await?
        .ok_or_else(|| StoreError::Db(sea_orm::DbErr::Custom("SELECT now() returned nothing".into())))?;
    Ok(row.try_get::<DateTime<Utc>>("", "now")?)
}

/// Parses a cron expression with seconds (`sec min hour day-of-month month day-of-week [year]`).
pub fn parse_schedule(raw: &str) -> Result<cron::Schedule, String> {
    cron::Schedule::from_str(raw).map_err(|e| e.to_string())
}
