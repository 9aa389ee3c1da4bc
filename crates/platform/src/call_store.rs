//! The call store: reads calls and changes them. Every change is one conditional UPDATE (or the
//! INSERT of a new call), an audit row and an outbox row, committed together; racing commands have
//! exactly one winner because the UPDATE only matches the status the decision was made on.

use std::{collections::BTreeMap, sync::Arc};

use chrono::{DateTime, SubsecRound, Utc};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, Condition, DatabaseConnection, DatabaseTransaction, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, SqlErr, TransactionTrait,
    sea_query::{Expr, ExprTrait},
};
use serde::Serialize;
use tokio::sync::Notify;
use uuid::Uuid;
use videocall_domain::{CallStatus, CallType, Command, Decision, Effect, EndReason, Party, decide};
use videocall_entities::{call_transitions, calls, live_call_parties, outbox, support_offers};

use crate::{
    events::{CloudEvent, call_event_names},
    quality_sample::{CALL_QUALITY_REPORTED, QualityReported, QualitySample},
};

/// A call as the services see it: the row with its enums parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    pub id: Uuid,
    pub caller_id: String,
    pub callee_id: String,
    pub call_type: CallType,
    pub status: CallStatus,
    pub end_reason: Option<EndReason>,
    pub ended_by: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub request_id: String,
    pub version: i64,
    pub ring_timeout_secs: i32,
    pub created_at: DateTime<Utc>,
    pub ringing_at: Option<DateTime<Utc>>,
    pub answered_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
}

impl CallRecord {
    /// Talk time: from answer to end.
    pub fn duration_ms(&self) -> Option<i64> {
        Some((self.ended_at? - self.answered_at?).num_milliseconds())
    }

    /// The role `actor` plays in this call, if any.
    pub fn party_of(&self, actor: &Actor) -> Option<Party> {
        if actor.is_service {
            Some(Party::Service)
        } else if actor.id == self.caller_id {
            Some(Party::Caller)
        } else if actor.id == self.callee_id {
            Some(Party::Callee)
        } else {
            None
        }
    }

    pub fn from_model(m: calls::Model) -> Result<Self, StoreError> {
        let corrupt = |detail: String| StoreError::Corrupt { id: m.id, detail };
        let status = m.status.parse().map_err(|e: videocall_domain::ParseEnumError| corrupt(e.to_string()))?;
        let call_type = m.call_type.parse().map_err(|e: videocall_domain::ParseEnumError| corrupt(e.to_string()))?;
        let end_reason = match m.end_reason.as_deref() {
            Some(r) => Some(r.parse().map_err(|e: videocall_domain::ParseEnumError| corrupt(e.to_string()))?),
            None => None,
        };
        let metadata = serde_json::from_value(m.metadata.clone()).map_err(|e| corrupt(format!("metadata: {e}")))?;
        Ok(Self {
            id: m.id,
            caller_id: m.caller_id,
            callee_id: m.callee_id,
            call_type,
            status,
            end_reason,
            ended_by: m.ended_by,
            metadata,
            request_id: m.request_id,
            version: m.version,
            ring_timeout_secs: m.ring_timeout_secs,
            created_at: m.created_at,
            ringing_at: m.ringing_at,
            answered_at: m.answered_at,
            ended_at: m.ended_at,
        })
    }
}

/// Who asks for a change: a user id, or a service acting for anyone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub id: String,
    pub is_service: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("call {0} not found")]
    NotFound(Uuid),
    #[error("not a party of this call")]
    NotAParty,
    #[error("this party may not do that")]
    Forbidden,
    #[error("call is {0}")]
    WrongState(CallStatus),
    #[error("user {0} is busy in another call")]
    Busy(String),
    #[error("end reason `{0}` cannot be given here")]
    BadReason(EndReason),
    #[error("support offer {0} is not available: unknown, expired, taken, or not this caller's")]
    OfferUnavailable(Uuid),
    /// The call's recording cannot do that now (the message says why).
    #[error("{0}")]
    Recording(String),
    #[error("stored call {id} is unreadable: {detail}")]
    Corrupt { id: Uuid, detail: String },
    #[error("database: {0}")]
    Db(#[from] DbErr),
}

/// A call to create.
#[derive(Debug, Clone)]
pub struct NewCall {
    pub request_id: String,
    pub caller_id: String,
    pub callee_id: String,
    pub call_type: CallType,
    pub metadata: BTreeMap<String, String>,
    pub ring_timeout_secs: i32,
}

/// Result of [`CallStore::initiate`]: `created` is false when the request id was seen before.
#[derive(Debug, Clone)]
pub struct Initiated {
    pub call: CallRecord,
    pub created: bool,
}

/// Filters and cursor of a history page.
#[derive(Debug, Clone)]
pub struct HistoryQuery {
    pub user_id: String,
    pub call_type: Option<CallType>,
    pub status: Option<CallStatus>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Only calls older than this one (the previous page's last id).
    pub before: Option<Uuid>,
    pub limit: u64,
}

#[derive(Debug, Clone)]
pub struct HistoryPage {
    pub calls: Vec<CallRecord>,
    /// Id to pass as `before` for the next page; None on the last page.
    pub next: Option<Uuid>,
}

/// Reads and changes calls. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CallStore {
    db: DatabaseConnection,
    event_source: String,
    /// Woken after each commit that wrote an outbox row, so the relay publishes at once.
    outbox_wake: Arc<Notify>,
    metrics: CallMetrics,
}

/// `videocall_call_transitions_total{status,call_type}`: calls that entered each state through
/// this process, by call type, counted once committed. Cheap to clone (clones count together).
#[derive(Debug, Clone, Default)]
pub struct CallMetrics {
    transitions: Family<TransitionLabels, Counter>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    status: &'static str,
    call_type: &'static str,
}

impl CallMetrics {
    /// Registers the family with a zero series for every status and call type, so dashboards and
    /// alerts see it from the start.
    pub fn register(&self, registry: &mut Registry) {
        for status in CallStatus::ALL {
            for call_type in videocall_domain::CallType::ALL {
                let _ = self
                    .transitions
                    .get_or_create(&TransitionLabels { status: status.as_str(), call_type: call_type.as_str() });
            }
        }
        registry.register(
            "videocall_call_transitions",
            "Calls that entered a state (initiated, ringing, active, ended, rejected, missed) through this process, by call type",
            self.transitions.clone(),
        );
    }
}

/// Which party the conditional update requires the actor to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PartyFilter {
    /// Checked already (or a service, which acts for anyone).
    Any,
    Caller,
    Callee,
    Either,
}

/// The step a command usually takes — from the status the call's normal course gives it (ring
/// from initiated, answer and reject from ringing, end from active) — and the party it must come
/// from, when the transition table gives that step one effect for whoever may take it. `None`
/// when the command has no such single step; the caller then reads the call first.
fn usual_step(command: Command, actor: &Actor) -> Option<(CallStatus, PartyFilter, Effect)> {
    let from = match command {
        Command::Ring => CallStatus::Initiated,
        Command::Answer | Command::Reject | Command::Miss => CallStatus::Ringing,
        Command::End(_) => CallStatus::Active,
    };
    let effect_for = |party| match decide(from, command, party) {
        Decision::Apply(effect) => Some(effect),
        _ => None,
    };
    if actor.is_service {
        return effect_for(Party::Service).map(|effect| (from, PartyFilter::Any, effect));
    }
    match (effect_for(Party::Caller), effect_for(Party::Callee)) {
        (Some(a), Some(b)) if a == b => Some((from, PartyFilter::Either, a)),
        (Some(a), None) => Some((from, PartyFilter::Caller, a)),
        (None, Some(b)) => Some((from, PartyFilter::Callee, b)),
        _ => None,
    }
}

/// Statuses advance at most four times, so this many attempts always reach a decision.
const MAX_ATTEMPTS: usize = 6;

impl CallStore {
    pub fn new(db: DatabaseConnection, event_source: String, outbox_wake: Arc<Notify>) -> Self {
        Self { db, event_source, outbox_wake, metrics: CallMetrics::default() }
    }

    /// Counts committed changes into `metrics` (registered by the caller).
    pub fn with_metrics(mut self, metrics: CallMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Counts a committed change of `call` (callers of [`Self::transition_in`] call this after
    /// their commit; the store's own commands do it themselves).
    pub fn count_committed(&self, call: &CallRecord) {
        let labels = TransitionLabels { status: call.status.as_str(), call_type: call.call_type.as_str() };
        self.metrics.transitions.get_or_create(&labels).inc();
    }

    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    pub async fn get(&self, id: Uuid) -> Result<CallRecord, StoreError> {
        let model = calls::Entity::find_by_id(id).one(&self.db).await?.ok_or(StoreError::NotFound(id))?;
        CallRecord::from_model(model)
    }

    async fn find_by_request(&self, caller_id: &str, request_id: &str) -> Result<Option<CallRecord>, StoreError> {
        calls::Entity::find()
            .filter(calls::Column::CallerId.eq(caller_id))
            .filter(calls::Column::RequestId.eq(request_id))
            .one(&self.db)
            .await?
            .map(CallRecord::from_model)
            .transpose()
    }

    /// Creates a call, unless this caller already made one with `request_id` (then returns it).
    /// Refuses with `Busy` when either party is in a live call; the database decides that race.
    #[tracing::instrument(skip_all, fields(caller_id = %new.caller_id, callee_id = %new.callee_id), err)]
    pub async fn initiate(&self, new: NewCall, actor_id: &str) -> Result<Initiated, StoreError> {
        self.initiate_inner(new, None, actor_id).await
    }

    /// Like [`initiate`](Self::initiate), taking up a video support offer in the same
    /// transaction: the offer must be the caller's, unexpired and not yet taken, and ends up
    /// `accepted` with this call's id.
    #[tracing::instrument(skip_all, fields(caller_id = %new.caller_id, offer_id = %offer_id), err)]
    pub async fn initiate_for_offer(
        &self,
        new: NewCall,
        offer_id: Uuid,
        actor_id: &str,
    ) -> Result<Initiated, StoreError> {
        self.initiate_inner(new, Some(offer_id), actor_id).await
    }

    /// A support offer, to read its ticket and agent before taking it up.
    pub async fn support_offer(&self, id: Uuid) -> Result<Option<support_offers::Model>, StoreError> {
        Ok(support_offers::Entity::find_by_id(id).one(&self.db).await?)
    }

    /// Records activity on an active call (a signal or a quality report), which keeps the
    /// sweeper from ending it as a zombie.
    pub async fn touch_activity(&self, id: Uuid) -> Result<(), StoreError> {
        calls::Entity::update_many()
            .col_expr(calls::Column::UpdatedAt, Expr::value(Utc::now().trunc_subsecs(6)))
            .filter(calls::Column::Id.eq(id))
            .filter(calls::Column::Status.eq(CallStatus::Active.as_str()))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Inserts first and looks the request id up only when a unique constraint fails: a repeat
    /// of a live call collides on the caller's live-party row, a repeat of a finished one on
    /// `(caller_id, request_id)`. One query less on the common path.
    async fn initiate_inner(&self, new: NewCall, offer: Option<Uuid>, actor_id: &str) -> Result<Initiated, StoreError> {
        let now = Utc::now().trunc_subsecs(6);
        let call = CallRecord {
            id: Uuid::now_v7(),
            caller_id: new.caller_id,
            callee_id: new.callee_id,
            call_type: new.call_type,
            status: CallStatus::Initiated,
            end_reason: None,
            ended_by: None,
            metadata: new.metadata,
            request_id: new.request_id,
            version: 1,
            ring_timeout_secs: new.ring_timeout_secs,
            created_at: now,
            ringing_at: None,
            answered_at: None,
            ended_at: None,
        };
        match self.insert_new(&call, offer, actor_id, now).await {
            Ok(()) => {
                self.wake_outbox();
                self.count_committed(&call);
                Ok(Initiated { call, created: true })
            }
            Err(StoreError::Db(e)) if is_unique_violation(&e) => {
                // Either the same request raced us, or a party is busy.
                if let Some(existing) = self.find_by_request(&call.caller_id, &call.request_id).await? {
                    return Ok(Initiated { call: existing, created: false });
                }
                let busy = live_call_parties::Entity::find_by_id(call.callee_id.clone()).one(&self.db).await?;
                let user = if busy.is_some() { call.callee_id } else { call.caller_id };
                Err(StoreError::Busy(user))
            }
            Err(e) => Err(e),
        }
    }

    async fn insert_new(
        &self,
        call: &CallRecord,
        offer: Option<Uuid>,
        actor_id: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin().await?;
        let parties = [&call.caller_id, &call.callee_id].map(|user| live_call_parties::ActiveModel {
            user_id: Set(user.clone()),
            call_id: Set(call.id),
            since: Set(now),
        });
        live_call_parties::Entity::insert_many(parties).exec_without_returning(&txn).await?;
        calls::Entity::insert(calls::ActiveModel {
            id: Set(call.id),
            caller_id: Set(call.caller_id.clone()),
            callee_id: Set(call.callee_id.clone()),
            call_type: Set(call.call_type.as_str().to_owned()),
            status: Set(call.status.as_str().to_owned()),
            end_reason: Set(None),
            ended_by: Set(None),
            metadata: Set(serde_json::to_value(&call.metadata).unwrap_or_default()),
            request_id: Set(call.request_id.clone()),
            version: Set(call.version),
            ring_timeout_secs: Set(call.ring_timeout_secs),
            created_at: Set(now),
            ring_deadline_at: Set(now + chrono::Duration::seconds(i64::from(call.ring_timeout_secs))),
            ringing_at: Set(None),
            answered_at: Set(None),
            ended_at: Set(None),
            updated_at: Set(now),
        })
        .exec_without_returning(&txn)
        .await?;
        // After the inserts, so a repeated request collides on them and returns its call.
        if let Some(offer_id) = offer {
            let taken = support_offers::Entity::update_many()
                .col_expr(support_offers::Column::Status, Expr::value("accepted"))
                .col_expr(support_offers::Column::CallId, Expr::value(call.id))
                .filter(support_offers::Column::Id.eq(offer_id))
                .filter(support_offers::Column::CustomerId.eq(&call.caller_id))
                .filter(support_offers::Column::Status.eq("offered"))
                .filter(support_offers::Column::ExpiresAt.gt(now))
                .exec(&txn)
                .await?;
            if taken.rows_affected == 0 {
                txn.rollback().await?;
                return Err(StoreError::OfferUnavailable(offer_id));
            }
        }
        self.record_change(&txn, call, None, actor_id, now).await?;
        txn.commit().await?;
        Ok(())
    }

    /// Applies `command` from `actor` to call `id`: one winner per race, idempotent repeats.
    #[tracing::instrument(skip_all, fields(call_id = %id, actor = %actor.id, ?command), err)]
    pub async fn apply(&self, id: Uuid, command: Command, actor: &Actor) -> Result<CallRecord, StoreError> {
        // The usual case first, without reading the call: the conditional update from the status
        // this command usually finds, for the party it must come from. If it matches nothing
        // (another status, another party, a repeat), read the call and decide as below.
        if let Some((from, party, effect)) = usual_step(command, actor) {
            let txn = self.db.begin().await?;
            if let Some(changed) = self.transition_from(&txn, id, from, party, effect, &actor.id).await? {
                txn.commit().await?;
                self.wake_outbox();
                self.count_committed(&changed);
                return Ok(changed);
            }
            txn.rollback().await?;
        }
        for _ in 0..MAX_ATTEMPTS {
            let call = self.get(id).await?;
            let party = call.party_of(actor).ok_or(StoreError::NotAParty)?;
            match decide(call.status, command, party) {
                Decision::AlreadyDone => return Ok(call),
                Decision::Refuse { current } => return Err(StoreError::WrongState(current)),
                Decision::Forbidden => return Err(StoreError::Forbidden),
                Decision::BadReason(reason) => return Err(StoreError::BadReason(reason)),
                Decision::Apply(effect) => {
                    let txn = self.db.begin().await?;
                    if let Some(changed) = self.transition_in(&txn, &call, effect, &actor.id).await? {
                        txn.commit().await?;
                        self.wake_outbox();
                        self.count_committed(&changed);
                        return Ok(changed);
                    }
                    txn.rollback().await?;
                    // Someone else moved the call first: decide again on what they left.
                }
            }
        }
        Err(StoreError::Db(DbErr::Custom(format!("call {id} kept changing under {MAX_ATTEMPTS} attempts"))))
    }

    /// Tells the outbox relay of this process that new rows were committed.
    pub fn wake_outbox(&self) {
        self.outbox_wake.notify_one();
    }

    /// Applies `effect` to `call` inside `txn`: the conditional update (it matches only while the
    /// call is still in `call.status`), the audit row and the outbox row. `None` when the call had
    /// already moved on; the caller then rolls back and decides again.
    pub async fn transition_in(
        &self,
        txn: &DatabaseTransaction,
        call: &CallRecord,
        effect: Effect,
        actor_id: &str,
    ) -> Result<Option<CallRecord>, StoreError> {
        self.transition_from(txn, call.id, call.status, PartyFilter::Any, effect, actor_id).await
    }

    /// The conditional update from `from` (and, with `party`, only if `actor_id` is that party),
    /// then the audit and outbox rows. `None` when nothing matched.
    async fn transition_from(
        &self,
        txn: &DatabaseTransaction,
        id: Uuid,
        from: CallStatus,
        party: PartyFilter,
        effect: Effect,
        actor_id: &str,
    ) -> Result<Option<CallRecord>, StoreError> {
        let now = Utc::now().trunc_subsecs(6);
        let mut update = calls::Entity::update_many()
            .col_expr(calls::Column::Status, Expr::value(effect.to.as_str()))
            .col_expr(calls::Column::Version, Expr::col(calls::Column::Version).add(1))
            .col_expr(calls::Column::UpdatedAt, Expr::value(now));
        update = match effect.to {
            CallStatus::Ringing => update.col_expr(calls::Column::RingingAt, Expr::value(now)),
            CallStatus::Active => update.col_expr(calls::Column::AnsweredAt, Expr::value(now)),
            _ => update,
        };
        if let Some(reason) = effect.reason {
            update = update
                .col_expr(calls::Column::EndedAt, Expr::value(now))
                .col_expr(calls::Column::EndReason, Expr::value(reason.as_str()))
                .col_expr(calls::Column::EndedBy, Expr::value(actor_id));
        }
        update = match party {
            PartyFilter::Any => update,
            PartyFilter::Caller => update.filter(calls::Column::CallerId.eq(actor_id)),
            PartyFilter::Callee => update.filter(calls::Column::CalleeId.eq(actor_id)),
            PartyFilter::Either => update.filter(
                Condition::any().add(calls::Column::CallerId.eq(actor_id)).add(calls::Column::CalleeId.eq(actor_id)),
            ),
        };
        let updated = update
            .filter(calls::Column::Id.eq(id))
            .filter(calls::Column::Status.eq(from.as_str()))
            .exec_with_returning(txn)
            .await?;
        let Some(model) = updated.into_iter().next() else {
            return Ok(None);
        };
        let changed = CallRecord::from_model(model)?;
        if changed.status.is_terminal() {
            live_call_parties::Entity::delete_many().filter(live_call_parties::Column::CallId.eq(id)).exec(txn).await?;
        }
        self.record_change(txn, &changed, Some(from), actor_id, now).await?;
        Ok(Some(changed))
    }

    /// The audit row and the outbox row of a change that `call` now reflects.
    async fn record_change(
        &self,
        txn: &DatabaseTransaction,
        call: &CallRecord,
        from: Option<CallStatus>,
        actor_id: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        call_transitions::Entity::insert(call_transitions::ActiveModel {
            id: Set(Uuid::now_v7()),
            call_id: Set(call.id),
            from_status: Set(from.map(|s| s.as_str().to_owned())),
            to_status: Set(call.status.as_str().to_owned()),
            reason: Set(call.end_reason.map(|r| r.as_str().to_owned())),
            actor: Set(actor_id.to_owned()),
            version: Set(call.version),
            created_at: Set(now),
        })
        .exec_without_returning(txn)
        .await?;

        let (event_type, routing_key) = call_event_names(call.status);
        let event_id = Uuid::now_v7();
        let data = CallEventData::new(call, from);
        let envelope = CloudEvent::new(event_id, &self.event_source, event_type, &call.id.to_string(), now, data);
        let payload = serde_json::to_string(&envelope).map_err(|e| DbErr::Custom(format!("event encoding: {e}")))?;
        insert_outbox(txn, event_id, call.id, (event_type, routing_key), payload, now).await?;
        Ok(())
    }

    /// Writes one CallQualityReported outbox row (routing key `call.quality`, subject = the call)
    /// for a sample `reporter_id` measured in call `call_id`, and wakes the relay. The caller has
    /// checked the sample and that the reporter is a party of the active call. Returns the event id.
    #[tracing::instrument(skip_all, fields(call_id = %call_id, reporter_id = %reporter_id), err)]
    pub async fn record_quality_sample(
        &self,
        call_id: Uuid,
        reporter_id: &str,
        sample: &QualitySample,
    ) -> Result<Uuid, StoreError> {
        let now = Utc::now().trunc_subsecs(6);
        let (event_type, routing_key) = CALL_QUALITY_REPORTED;
        let event_id = Uuid::now_v7();
        let data = QualityReported::new(call_id, reporter_id, sample, now);
        let envelope = CloudEvent::new(event_id, &self.event_source, event_type, &call_id.to_string(), now, data);
        let payload = serde_json::to_string(&envelope).map_err(|e| DbErr::Custom(format!("event encoding: {e}")))?;
        insert_outbox(&self.db, event_id, call_id, (event_type, routing_key), payload, now).await?;
        self.wake_outbox();
        Ok(event_id)
    }

    /// One page of a user's calls (as caller or callee), newest first.
    pub async fn history(&self, q: &HistoryQuery) -> Result<HistoryPage, StoreError> {
        let mut select = calls::Entity::find().filter(
            Condition::any().add(calls::Column::CallerId.eq(&q.user_id)).add(calls::Column::CalleeId.eq(&q.user_id)),
        );
        if let Some(t) = q.call_type {
            select = select.filter(calls::Column::CallType.eq(t.as_str()));
        }
        if let Some(s) = q.status {
            select = select.filter(calls::Column::Status.eq(s.as_str()));
        }
        if let Some(since) = q.since {
            select = select.filter(calls::Column::CreatedAt.gte(since));
        }
        if let Some(until) = q.until {
            select = select.filter(calls::Column::CreatedAt.lt(until));
        }
        if let Some(before) = q.before {
            select = select.filter(calls::Column::Id.lt(before));
        }
        let mut models = select.order_by_desc(calls::Column::Id).limit(q.limit + 1).all(&self.db).await?;
        let more = models.len() as u64 > q.limit;
        models.truncate(q.limit as usize);
        let calls = models.into_iter().map(CallRecord::from_model).collect::<Result<Vec<_>, _>>()?;
        let next = if more { calls.last().map(|c| c.id) } else { None };
        Ok(HistoryPage { calls, next })
    }
}

fn is_unique_violation(e: &DbErr) -> bool {
    matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)))
}

/// `data` of every call event: the call after the change, and the status it left.
#[derive(Debug, Serialize)]
struct CallEventData<'a> {
    call_id: Uuid,
    caller_id: &'a str,
    callee_id: &'a str,
    call_type: &'static str,
    status: &'static str,
    previous_status: Option<&'static str>,
    end_reason: Option<&'static str>,
    ended_by: Option<&'a str>,
    version: i64,
    created_at: DateTime<Utc>,
    ringing_at: Option<DateTime<Utc>>,
    answered_at: Option<DateTime<Utc>>,
    ended_at: Option<DateTime<Utc>>,
    duration_ms: Option<i64>,
    metadata: &'a BTreeMap<String, String>,
}

impl<'a> CallEventData<'a> {
    fn new(call: &'a CallRecord, from: Option<CallStatus>) -> Self {
        Self {
            call_id: call.id,
            caller_id: &call.caller_id,
            callee_id: &call.callee_id,
            call_type: call.call_type.as_str(),
            status: call.status.as_str(),
            previous_status: from.map(CallStatus::as_str),
            end_reason: call.end_reason.map(EndReason::as_str),
            ended_by: call.ended_by.as_deref(),
            version: call.version,
            created_at: call.created_at,
            ringing_at: call.ringing_at,
            answered_at: call.answered_at,
            ended_at: call.ended_at,
            duration_ms: call.duration_ms(),
            metadata: &call.metadata,
        }
    }
}

/// Writes one outbox row: event `names` (CloudEvents type, AMQP routing key) about `aggregate_id`,
/// available at once. Inside the caller's transaction when `conn` is one.
pub async fn insert_outbox<C: sea_orm::ConnectionTrait>(
    conn: &C,
    event_id: Uuid,
    aggregate_id: Uuid,
    names: (&str, &str),
    payload: String,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    outbox::Entity::insert(outbox::ActiveModel {
        id: Set(event_id),
        aggregate_id: Set(aggregate_id),
        event_type: Set(names.0.to_owned()),
        routing_key: Set(names.1.to_owned()),
        payload: Set(payload),
        created_at: Set(now),
        available_at: Set(now),
        attempts: Set(0),
        last_error: Set(None),
        published_at: Set(None),
    })
    .exec_without_returning(conn)
    .await?;
    Ok(())
}

/// A call as clients see it in JSON (WebSocket frames, notices).
#[derive(Debug, Clone, Serialize)]
pub struct CallView {
    pub id: Uuid,
    pub caller_id: String,
    pub callee_id: String,
    pub call_type: &'static str,
    pub status: &'static str,
    pub end_reason: Option<&'static str>,
    pub ended_by: Option<String>,
    pub version: i64,
    pub ring_timeout_secs: i32,
    pub created_at: DateTime<Utc>,
    pub ringing_at: Option<DateTime<Utc>>,
    pub answered_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
    pub metadata: BTreeMap<String, String>,
}

impl From<&CallRecord> for CallView {
    fn from(c: &CallRecord) -> Self {
        Self {
            id: c.id,
            caller_id: c.caller_id.clone(),
            callee_id: c.callee_id.clone(),
            call_type: c.call_type.as_str(),
            status: c.status.as_str(),
            end_reason: c.end_reason.map(EndReason::as_str),
            ended_by: c.ended_by.clone(),
            version: c.version,
            ring_timeout_secs: c.ring_timeout_secs,
            created_at: c.created_at,
            ringing_at: c.ringing_at,
            answered_at: c.answered_at,
            ended_at: c.ended_at,
            duration_ms: c.duration_ms(),
            metadata: c.metadata.clone(),
        }
    }
}

/// The server frame that tells a party its call changed: `{"type":"call_state","call":{...}}`.
#[derive(Debug, Clone, Serialize)]
pub struct CallStateFrame {
    #[serde(rename = "type")]
    pub frame_type: &'static str,
    pub call: CallView,
}

impl CallStateFrame {
    pub fn new(call: &CallRecord) -> Self {
        Self { frame_type: "call_state", call: call.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast path may only do what the transition table would: for each command, the step it
    /// tries is the table's `Apply` for every party its filter admits, and for no other party.
    #[test]
    fn usual_steps_agree_with_the_transition_table() {
        let commands = [
            Command::Ring,
            Command::Answer,
            Command::Reject,
            Command::End(None),
            Command::End(Some(EndReason::IceFailed)),
            Command::End(Some(EndReason::UserOffline)),
            Command::Miss,
        ];
        let user = Actor { id: "u".into(), is_service: false };
        let service = Actor { id: "s".into(), is_service: true };
        for command in commands {
            for actor in [&user, &service] {
                let Some((from, filter, effect)) = usual_step(command, actor) else { continue };
                let admitted: &[Party] = match filter {
                    PartyFilter::Any => &[Party::Service],
                    PartyFilter::Caller => &[Party::Caller],
                    PartyFilter::Callee => &[Party::Callee],
                    PartyFilter::Either => &[Party::Caller, Party::Callee],
                };
                for party in [Party::Caller, Party::Callee, Party::Service] {
                    let table = decide(from, command, party);
                    if admitted.contains(&party) {
                        assert_eq!(table, Decision::Apply(effect), "{command:?} by {party:?} from {from:?}");
                    } else if !actor.is_service && party != Party::Service {
                        assert!(!matches!(table, Decision::Apply(_)), "{command:?}: {party:?} left out of {filter:?}");
                    }
                }
            }
        }
        // The lifecycle's steps all take the fast path.
        assert_eq!(
            usual_step(Command::Ring, &user).map(|s| (s.0, s.1)),
            Some((CallStatus::Initiated, PartyFilter::Callee))
        );
        assert_eq!(
            usual_step(Command::Answer, &user).map(|s| (s.0, s.1)),
            Some((CallStatus::Ringing, PartyFilter::Callee))
        );
        assert_eq!(
            usual_step(Command::End(None), &user).map(|s| (s.0, s.1)),
            Some((CallStatus::Active, PartyFilter::Either))
        );
        assert_eq!(usual_step(Command::Miss, &user), None, "only a service misses calls");
    }
}
