//! missed-call-sweeper: on a cron schedule, calls still initiated or ringing past their ring
//! deadline (by the database's clock) become `missed`, with a CallMissed event in the same
//! transaction. Due rows are claimed with `FOR UPDATE SKIP LOCKED`, so replicas split the work and
//! a concurrent answer either wins before the sweep or is refused after it.

#![forbid(unsafe_code)]

pub mod config;
pub mod metrics;

use std::{str::FromStr, sync::Arc, time::Duration};

use anyhow::Context;
use chrono::{DateTime, Utc};
use prometheus_client::registry::Registry;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    Statement, TransactionTrait,
    sea_query::{LockBehavior, LockType},
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use videocall_domain::{CallStatus, Command, Decision, EndReason, Party, decide};
use videocall_entities::calls;
use videocall_platform::{
    call_store::{CallMetrics, CallRecord, CallStore, StoreError},
    db,
    events::event_source,
    ops::{OpsServer, Readiness},
    signal_bus::SignalBus,
};

use crate::metrics::{ResultLabel, SweeperMetrics};

pub use config::{SweeperArgs, SweeperConfig};

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    pub missed: u64,
    /// Active calls ended as `connection_lost` for lack of activity.
    pub zombies: u64,
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
    bus: Option<SignalBus>,
}

impl Sweeper {
    pub fn new(db: DatabaseConnection, cell_id: &str, service_name: &str, batch_size: u64) -> Self {
        let store = CallStore::new(db, event_source(cell_id, service_name), Arc::new(Notify::new()));
        Self { store, actor: service_name.to_owned(), batch_size, zombie_timeout: None, bus: None }
    }

    /// Counts the calls it misses or ends into `metrics` (`videocall_call_transitions_total`).
    pub fn with_metrics(mut self, metrics: CallMetrics) -> Self {
        self.store = self.store.with_metrics(metrics);
        self
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
        if report.missed + report.zombies > 0 {
            tracing::info!(missed = report.missed, zombies = report.zombies, batches = report.batches, "calls swept");
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
                    .filter(calls::Column::Status.is_in([CallStatus::Initiated.as_str(), CallStatus::Ringing.as_str()]))
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
            if let Decision::Apply(effect) = decide(call.status, command, Party::Service)
                && let Some(after) = self.store.transition_in(&txn, &call, effect, &self.actor).await?
            {
                changed.push(after);
            }
        }
        txn.commit().await?;
        if !changed.is_empty() {
            self.store.wake_outbox();
        }
        for call in &changed {
            self.store.count_committed(call);
        }
        if let Some(bus) = &self.bus {
            for call in &changed {
                bus.push_call_state(call).await;
            }
        }
        Ok((claimed, changed.len() as u64))
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

/// Serves `/healthz`, `/readyz`, `/metrics`, connects, and runs the sweeper until `shutdown`.
pub async fn run(config: SweeperConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let ops = OpsServer::bind(config.ops_listen_addr).await?;
    let mut registry = Registry::default();
    let metrics = SweeperMetrics::new(&mut registry);
    let call_metrics = CallMetrics::default();
    call_metrics.register(&mut registry);
    let ready = Readiness::default();
    let ops_task = tokio::spawn(ops.serve(registry, ready.clone(), shutdown.clone()));
    let db = db::connect_and_migrate(&config.database_url, &shutdown).await?;
    ready.set(true);
    let bus = match &config.redis_url {
        Some(url) => Some(SignalBus::connect_lazy(url, &config.common.cell_id).context("REDIS_URL")?),
        None => None,
    };
    let sweeper = Sweeper::new(db.clone(), &config.common.cell_id, &config.common.service_name, config.batch_size)
        .with_zombie_timeout(config.zombie_timeout)
        .with_bus(bus)
        .with_metrics(call_metrics);
    sweeper.run(config.schedule, metrics, ready, shutdown).await;
    db.close_by_ref().await.ok();
    ops_task.await??;
    Ok(())
}

/// Parses a cron expression with seconds (`sec min hour day-of-month month day-of-week [year]`).
pub fn parse_schedule(raw: &str) -> Result<cron::Schedule, String> {
    cron::Schedule::from_str(raw).map_err(|e| e.to_string())
}
