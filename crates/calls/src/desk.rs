//! Support desks: customers call a desk (a call type), not a person. Agents say which desks they
//! serve and whether they are available; the router offers each desk's oldest queued call to the
//! available agent of that desk who has waited longest, rings them, and on a reject or no answer
//! in time puts the call back in the queue for the next one — the same call throughout.
//!
//! Every decision is a transaction on the database, so any number of routers (gateway replicas)
//! route together: an agent is in at most one live call because `live_call_parties` has the user
//! as its primary key (the insert of a second one fails), and a call rings at most one agent
//! because the move out of `queued` is a conditional update (the second router's matches
//! nothing). A router that loses a race rolls back and tries again.

use std::collections::HashMap;

use chrono::{DateTime, Duration, SubsecRound, Utc};
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, Condition, ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, TransactionTrait,
    sea_query::{Expr, LockBehavior, LockType, OnConflict, Query},
};
use uuid::Uuid;
use videocall_domain::{CallStatus, CallType, Command, Decision, EndReason, Party, decide};
use videocall_entities::{agent_desks, agents, call_routing_attempts, calls, live_call_parties};

use crate::{
    record::{CallRecord, StoreError},
    store::{CallStore, is_unique_violation},
};

/// How an offer of a desk call to an agent ended.
pub mod outcome {
    pub const ANSWERED: &str = "answered";
    pub const REJECTED: &str = "rejected";
    pub const NO_ANSWER: &str = "no_answer";
    pub const ABANDONED: &str = "abandoned";
    /// The call ended otherwise while it rang (the agent or customer went offline, the queue
    /// timed out).
    pub const ENDED: &str = "ended";
}

/// An agent's availability as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    pub agent_id: String,
    pub available: bool,
    pub call_types: Vec<CallType>,
    pub idle_since: DateTime<Utc>,
}

/// One offer of a desk call to an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub attempt: i32,
    pub agent_id: String,
    pub offered_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub outcome: Option<String>,
}

/// A waiting call of a desk's queue, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub call_id: Uuid,
    pub caller_id: String,
    /// 1 for the next call to be offered.
    pub position: usize,
    pub queued_at: DateTime<Utc>,
}

/// How a desk's calls fared over a period ([`CallStore::desk_outcomes`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeskOutcomes {
    pub answered: u64,
    /// Answered within the service-level time of joining the queue.
    pub answered_within: u64,
    pub abandoned: u64,
    pub no_agent: u64,
}

impl DeskOutcomes {
    /// The share of the period's finished waits answered in time: answered within / (answered +
    /// abandoned + no agent); 1 when no wait finished.
    pub fn service_level(&self) -> f64 {
        let finished = self.answered + self.abandoned + self.no_agent;
        if finished == 0 { 1.0 } else { self.answered_within as f64 / finished as f64 }
    }
}

/// A desk's queue now.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSnapshot {
    pub call_type: CallType,
    pub waiting: Vec<Waiting>,
    /// Available agents of the desk not in a live call, the longest idle first.
    pub available_agents: Vec<String>,
    /// Mean time from joining the queue to an agent's answer over the desk's last answered calls
    /// (at most 20, of the last hour); `None` without any.
    pub mean_answer_secs: Option<f64>,
}

impl QueueSnapshot {
    /// The estimated wait of the call at `position`: the recent mean time to answer for each call
    /// ahead of it and itself, shared by the desk's agents; `None` without recent answers.
    pub fn estimated_wait_secs(&self, position: usize, agents: usize) -> Option<u64> {
        let mean = self.mean_answer_secs?;
        Some((mean * position as f64 / agents.max(1) as f64).round() as u64)
    }
}

/// The bookkeeping of a desk call's transition (inside its transaction): the open offer ends with
/// the outcome the transition means, and an agent whose offer or call ended waits again from now
/// (to the back of the line).
pub(crate) async fn after_transition(
    txn: &DatabaseTransaction,
    call: &CallRecord,
    actor_id: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let open = call_routing_attempts::Entity::find()
        .filter(call_routing_attempts::Column::CallId.eq(call.id))
        .filter(call_routing_attempts::Column::EndedAt.is_null())
        .one(txn)
        .await?;
    let outcome = match call.status {
        CallStatus::Active => Some(outcome::ANSWERED),
        CallStatus::Queued => Some(match &open {
            Some(a) if a.agent_id == actor_id => outcome::REJECTED,
            _ => outcome::NO_ANSWER,
        }),
        s if s.is_terminal() => {
            Some(if call.end_reason == Some(EndReason::Abandoned) { outcome::ABANDONED } else { outcome::ENDED })
        }
        _ => None,
    };
    let mut waits_again: Option<String> = None;
    if let (Some(open), Some(outcome)) = (open, outcome) {
        call_routing_attempts::Entity::update_many()
            .col_expr(call_routing_attempts::Column::EndedAt, Expr::value(now))
            .col_expr(call_routing_attempts::Column::Outcome, Expr::value(outcome))
            .filter(call_routing_attempts::Column::Id.eq(open.id))
            .exec(txn)
            .await?;
        if outcome != outcome::ANSWERED {
            waits_again = Some(open.agent_id);
        }
    }
    if call.status.is_terminal() && !call.callee_id.is_empty() {
        waits_again = Some(call.callee_id.clone());
    }
    if let Some(agent) = waits_again {
        agents::Entity::update_many()
            .col_expr(agents::Column::IdleSince, Expr::value(now))
            .filter(agents::Column::AgentId.eq(agent))
            .exec(txn)
            .await?;
    }
    Ok(())
}

impl CallStore {
    /// Sets an agent's availability and the desks they serve (at least one when available).
    /// Becoming available starts their idle time now; staying available keeps it.
    #[tracing::instrument(skip_all, fields(agent_id = %agent_id, available), err)]
    pub async fn set_availability(
        &self,
        agent_id: &str,
        available: bool,
        call_types: &[CallType],
    ) -> Result<Agent, StoreError> {
        let now = Utc::now().trunc_subsecs(6);
        let txn = self.db().begin().await?;
        let before = agents::Entity::find_by_id(agent_id.to_owned()).one(&txn).await?;
        let idle_since = match &before {
            Some(b) if b.available && available => b.idle_since,
            _ => now,
        };
        let row = agents::ActiveModel {
            agent_id: Set(agent_id.to_owned()),
            available: Set(available),
            idle_since: Set(idle_since),
            updated_at: Set(now),
        };
        agents::Entity::insert(row)
            .on_conflict(
                OnConflict::column(agents::Column::AgentId)
                    .update_columns([agents::Column::Available, agents::Column::IdleSince, agents::Column::UpdatedAt])
                    .to_owned(),
            )
            .exec_without_returning(&txn)
            .await?;
        agent_desks::Entity::delete_many().filter(agent_desks::Column::AgentId.eq(agent_id)).exec(&txn).await?;
        if !call_types.is_empty() {
            let rows = call_types.iter().map(|t| agent_desks::ActiveModel {
                agent_id: Set(agent_id.to_owned()),
                call_type: Set(t.as_str().to_owned()),
            });
            agent_desks::Entity::insert_many(rows).exec_without_returning(&txn).await?;
        }
        txn.commit().await?;
        let mut call_types = call_types.to_vec();
        call_types.sort_by_key(|t| t.as_str());
        call_types.dedup();
        Ok(Agent { agent_id: agent_id.to_owned(), available, call_types, idle_since })
    }

    /// An agent's availability, if they ever set it.
    pub async fn agent(&self, agent_id: &str) -> Result<Option<Agent>, StoreError> {
        let Some(row) = agents::Entity::find_by_id(agent_id.to_owned()).one(self.db()).await? else {
            return Ok(None);
        };
        let desks =
            agent_desks::Entity::find().filter(agent_desks::Column::AgentId.eq(agent_id)).all(self.db()).await?;
        let mut call_types: Vec<CallType> = desks.iter().filter_map(|d| d.call_type.parse().ok()).collect();
        call_types.sort_by_key(|t| t.as_str());
        Ok(Some(Agent { agent_id: row.agent_id, available: row.available, call_types, idle_since: row.idle_since }))
    }

    /// Whether `agent_id` would be offered a call of `desk` now: available for it and in no live call.
    pub async fn is_routable(&self, agent_id: &str, desk: CallType) -> Result<bool, StoreError> {
        let Some(agent) = self.agent(agent_id).await? else { return Ok(false) };
        let busy = live_call_parties::Entity::find_by_id(agent_id.to_owned()).one(self.db()).await?.is_some();
        Ok(agent.available && agent.call_types.contains(&desk) && !busy)
    }

    /// Makes agents unavailable (the user went offline, or their sockets were gone past the
    /// grace), on `conn` (the pool or the caller's transaction). Returns how many were available.
    pub async fn make_unavailable<C: ConnectionTrait>(
        &self,
        conn: &C,
        agent_ids: &[String],
    ) -> Result<u64, StoreError> {
        if agent_ids.is_empty() {
            return Ok(0);
        }
        let now = Utc::now().trunc_subsecs(6);
        let done = agents::Entity::update_many()
            .col_expr(agents::Column::Available, Expr::value(false))
            .col_expr(agents::Column::UpdatedAt, Expr::value(now))
            .filter(agents::Column::AgentId.is_in(agent_ids.iter().cloned()))
            .filter(agents::Column::Available.eq(true))
            .exec(conn)
            .await?;
        Ok(done.rows_affected)
    }

    /// The available agents of `desk` in no live call, the longest idle first (at most `limit`).
    pub(crate) async fn free_agents<C: ConnectionTrait>(
        &self,
        conn: &C,
        desk: CallType,
        limit: u64,
    ) -> Result<Vec<agents::Model>, StoreError> {
        let serving = Query::select()
            .column(agent_desks::Column::AgentId)
            .from(agent_desks::Entity)
            .and_where(agent_desks::Column::CallType.eq(desk.as_str()))
            .to_owned();
        let busy = Query::select().column(live_call_parties::Column::UserId).from(live_call_parties::Entity).to_owned();
        Ok(agents::Entity::find()
            .filter(agents::Column::Available.eq(true))
            .filter(agents::Column::AgentId.in_subquery(serving))
            .filter(agents::Column::AgentId.not_in_subquery(busy))
            .order_by_asc(agents::Column::IdleSince)
            .order_by_asc(agents::Column::AgentId)
            .limit(limit)
            .all(conn)
            .await?)
    }

    /// Offers the oldest queued call of `desk` to the longest-idle free agent of that desk (an
    /// agent this call has not been offered to yet before one it has), ringing them for `ring`.
    /// `None` when the desk has no queued call or no free agent, or another router took either
    /// first (the caller simply tries again).
    #[tracing::instrument(skip_all, fields(desk = %desk), err)]
    pub async fn route_next(
        &self,
        desk: CallType,
        ring: Duration,
        actor_id: &str,
    ) -> Result<Option<CallRecord>, StoreError> {
        let db = self.db();
        let txn = db.begin().await?;
        let mut oldest = calls::Entity::find()
            .filter(calls::Column::Status.eq(CallStatus::Queued.as_str()))
            .filter(calls::Column::CallType.eq(desk.as_str()))
            .order_by_asc(calls::Column::QueuedAt)
            .order_by_asc(calls::Column::Id)
            .limit(1);
        if db.get_database_backend() == DbBackend::Postgres {
            // Another router holding the oldest call takes it; this one looks at the next.
            oldest = oldest.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
        }
        let Some(row) = oldest.one(&txn).await? else {
            txn.rollback().await?;
            return Ok(None);
        };
        let call = CallRecord::from_model(row)?;
        let candidates = self.free_agents(&txn, desk, 50).await?;
        let tried: Vec<String> = call_routing_attempts::Entity::find()
            .filter(call_routing_attempts::Column::CallId.eq(call.id))
            .all(&txn)
            .await?
            .into_iter()
            .map(|a| a.agent_id)
            .collect();
        let agent = candidates
            .iter()
            .filter(|a| a.agent_id != call.caller_id)
            .min_by_key(|a| (tried.contains(&a.agent_id), a.idle_since, a.agent_id.clone()))
            .map(|a| a.agent_id.clone());
        let Some(agent) = agent else {
            txn.rollback().await?;
            return Ok(None);
        };
        let now = Utc::now().trunc_subsecs(6);
        // The agent's live-call row: a second call for them fails here, whoever routes it.
        let claimed = live_call_parties::Entity::insert(live_call_parties::ActiveModel {
            user_id: Set(agent.clone()),
            call_id: Set(call.id),
            since: Set(now),
        })
        .exec_without_returning(&txn)
        .await;
        match claimed {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                txn.rollback().await?;
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        }
        let Decision::Apply(effect) = decide(call.status, Command::Route, Party::Service) else {
            txn.rollback().await?;
            return Ok(None);
        };
        calls::Entity::update_many()
            .col_expr(calls::Column::CalleeId, Expr::value(&agent))
            .filter(calls::Column::Id.eq(call.id))
            .filter(calls::Column::Status.eq(CallStatus::Queued.as_str()))
            .exec(&txn)
            .await?;
        let Some(routed) = self.transition_in(&txn, &call, effect, actor_id).await? else {
            txn.rollback().await?;
            return Ok(None);
        };
        call_routing_attempts::Entity::insert(call_routing_attempts::ActiveModel {
            id: Set(Uuid::now_v7()),
            call_id: Set(call.id),
            attempt: Set(i32::try_from(tried.len()).unwrap_or(i32::MAX - 1) + 1),
            agent_id: Set(agent),
            offered_at: Set(now),
            expires_at: Set(now + ring),
            ended_at: Set(None),
            outcome: Set(None),
        })
        .exec_without_returning(&txn)
        .await?;
        txn.commit().await?;
        self.wake_outbox();
        self.count_committed(&routed);
        Ok(Some(routed))
    }

    /// The router's `command` on `call` as it was read, in a transaction of its own: the call
    /// after it, or `None` when the table refuses it or someone moved the call first.
    async fn service_step(
        &self,
        call: &CallRecord,
        command: Command,
        actor_id: &str,
    ) -> Result<Option<CallRecord>, StoreError> {
        let Decision::Apply(effect) = decide(call.status, command, Party::Service) else { return Ok(None) };
        let txn = self.db().begin().await?;
        let Some(changed) = self.transition_in(&txn, call, effect, actor_id).await? else {
            txn.rollback().await?;
            return Ok(None);
        };
        txn.commit().await?;
        self.wake_outbox();
        self.count_committed(&changed);
        Ok(Some(changed))
    }

    /// Puts back in their queues the desk calls whose offer rang unanswered past its expiry.
    /// Returns each requeued call with the agent it rang.
    pub async fn requeue_unanswered(&self, actor_id: &str) -> Result<Vec<(CallRecord, String)>, StoreError> {
        let now = Utc::now().trunc_subsecs(6);
        let expired = call_routing_attempts::Entity::find()
            .filter(call_routing_attempts::Column::EndedAt.is_null())
            .filter(call_routing_attempts::Column::ExpiresAt.lte(now))
            .limit(100)
            .all(self.db())
            .await?;
        let mut requeued = Vec::new();
        for attempt in expired {
            let call = self.get(attempt.call_id).await?;
            if call.callee_id != attempt.agent_id {
                continue;
            }
            if let Some(changed) = self.service_step(&call, Command::Requeue, actor_id).await? {
                requeued.push((changed, attempt.agent_id));
            }
        }
        Ok(requeued)
    }

    /// Misses the queued desk calls whose queue timeout passed (`no_agent`); the sweeper does the
    /// same for every overdue call, this is the router's share so a desk works without it.
    pub async fn miss_overdue_queued(&self, actor_id: &str) -> Result<Vec<CallRecord>, StoreError> {
        let now = Utc::now().trunc_subsecs(6);
        let overdue = calls::Entity::find()
            .filter(calls::Column::Status.eq(CallStatus::Queued.as_str()))
            .filter(calls::Column::RingDeadlineAt.lte(now))
            .limit(100)
            .all(self.db())
            .await?;
        let mut missed = Vec::new();
        for row in overdue {
            let call = CallRecord::from_model(row)?;
            missed.extend(self.service_step(&call, Command::Miss, actor_id).await?);
        }
        Ok(missed)
    }

    /// A desk call's offers, in order.
    pub async fn attempts(&self, call_id: Uuid) -> Result<Vec<Attempt>, StoreError> {
        Ok(self.attempts_of(&[call_id]).await?.remove(&call_id).unwrap_or_default())
    }

    /// The offers of each of `call_ids` (only desk calls have any), in order.
    pub async fn attempts_of(&self, call_ids: &[Uuid]) -> Result<HashMap<Uuid, Vec<Attempt>>, StoreError> {
        let mut by_call: HashMap<Uuid, Vec<Attempt>> = HashMap::new();
        if call_ids.is_empty() {
            return Ok(by_call);
        }
        let rows = call_routing_attempts::Entity::find()
            .filter(call_routing_attempts::Column::CallId.is_in(call_ids.iter().copied()))
            .order_by_asc(call_routing_attempts::Column::CallId)
            .order_by_asc(call_routing_attempts::Column::Attempt)
            .all(self.db())
            .await?;
        for r in rows {
            by_call.entry(r.call_id).or_default().push(Attempt {
                attempt: r.attempt,
                agent_id: r.agent_id,
                offered_at: r.offered_at,
                expires_at: r.expires_at,
                ended_at: r.ended_at,
                outcome: r.outcome,
            });
        }
        Ok(by_call)
    }

    /// How `desk`'s calls fared since `since`: answered (and how many within `within` of joining
    /// the queue), abandoned, missed for want of an agent.
    pub async fn desk_outcomes(
        &self,
        desk: CallType,
        since: DateTime<Utc>,
        within: Duration,
    ) -> Result<DeskOutcomes, StoreError> {
        // Only the four columns it needs, of the desk calls answered or ended in the period: the
        // router reads this every second.
        type Row = (Option<DateTime<Utc>>, Option<DateTime<Utc>>, Option<DateTime<Utc>>, Option<String>);
        let finished: Vec<Row> = calls::Entity::find()
            .select_only()
            .columns([
                calls::Column::AnsweredAt,
                calls::Column::QueuedAt,
                calls::Column::EndedAt,
                calls::Column::EndReason,
            ])
            .filter(calls::Column::CallType.eq(desk.as_str()))
            .filter(calls::Column::QueuedAt.is_not_null())
            .filter(Condition::any().add(calls::Column::AnsweredAt.gte(since)).add(calls::Column::EndedAt.gte(since)))
            .limit(100_000)
            .into_tuple()
            .all(self.db())
            .await?;
        let mut out = DeskOutcomes::default();
        for (answered_at, queued_at, ended_at, end_reason) in finished {
            let ended_in_period = ended_at.is_some_and(|t| t >= since);
            match (answered_at, queued_at, end_reason.as_deref()) {
                (Some(answered), Some(queued), _) if answered >= since => {
                    out.answered += 1;
                    if answered - queued <= within {
                        out.answered_within += 1;
                    }
                }
                (None, _, Some("abandoned")) if ended_in_period => out.abandoned += 1,
                (None, _, Some("no_agent")) if ended_in_period => out.no_agent += 1,
                _ => {}
            }
        }
        Ok(out)
    }

    /// `desk`'s queue now: the waiting calls, the free agents, the recent mean time to answer.
    pub async fn queue(&self, desk: CallType) -> Result<QueueSnapshot, StoreError> {
        let db = self.db();
        let rows = calls::Entity::find()
            .filter(calls::Column::Status.eq(CallStatus::Queued.as_str()))
            .filter(calls::Column::CallType.eq(desk.as_str()))
            .order_by_asc(calls::Column::QueuedAt)
            .order_by_asc(calls::Column::Id)
            .limit(1000)
            .all(db)
            .await?;
        let waiting = rows
            .into_iter()
            .enumerate()
            .map(|(i, r)| Waiting {
                call_id: r.id,
                caller_id: r.caller_id,
                position: i + 1,
                queued_at: r.queued_at.unwrap_or(r.created_at),
            })
            .collect();
        let available_agents = self.free_agents(db, desk, 1000).await?.into_iter().map(|a| a.agent_id).collect();
        let since = Utc::now() - Duration::hours(1);
        let answered = calls::Entity::find()
            .filter(calls::Column::CallType.eq(desk.as_str()))
            .filter(calls::Column::QueuedAt.is_not_null())
            .filter(calls::Column::AnsweredAt.gte(since))
            .order_by_desc(calls::Column::AnsweredAt)
            .limit(20)
            .all(db)
            .await?;
        let waits: Vec<f64> = answered
            .iter()
            .filter_map(|c| Some((c.answered_at? - c.queued_at?).num_milliseconds() as f64 / 1000.0))
            .collect();
        let mean_answer_secs = (!waits.is_empty()).then(|| waits.iter().sum::<f64>() / waits.len() as f64);
        Ok(QueueSnapshot { call_type: desk, waiting, available_agents, mean_answer_secs })
    }
}
