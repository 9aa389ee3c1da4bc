//! The call store: reads calls and changes them. Every change is one conditional UPDATE (or the
//! INSERT of a new call), an audit row and an outbox row, committed together; racing commands have
//! exactly one winner because the UPDATE only matches the status the decision was made on.

use std::sync::Arc;

use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, Condition, DatabaseConnection, DatabaseTransaction, DbErr, EntityTrait, QueryFilter, SqlErr,
    TransactionTrait,
    sea_query::{Expr, ExprTrait},
};
use tokio::sync::Notify;
use uuid::Uuid;
use videocall_domain::{CallStatus, Command, Decision, Effect, Party, decide, decide_for};
use videocall_entities::{call_transitions, calls, live_call_parties, support_offers};
use videocall_messaging::outbox::{NewEvent, write_event, write_event_traced};

use crate::{
    events::{CALL_ROUTED, CallEventData, call_event_names},
    metrics::CallMetrics,
    quality_sample::{CALL_QUALITY_REPORTED, QualityReported, QualitySample},
    record::{Actor, CallRecord, Initiated, NewCall, StoreError},
};

/// Reads and changes calls. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CallStore {
    db: DatabaseConnection,
    event_source: String,
    /// Woken after each commit that wrote an outbox row, so the relay publishes at once.
    outbox_wake: Arc<Notify>,
    metrics: CallMetrics,
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
        // The router's steps: it knows the call it moves.
        Command::Route | Command::Requeue => return None,
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
        self.metrics.count(call);
    }

    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// CloudEvents `source` of the events this store writes.
    pub(crate) fn event_source(&self) -> &str {
        &self.event_source
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
        let desk = new.callee_id.is_empty();
        let call = CallRecord {
            id: Uuid::now_v7(),
            caller_id: new.caller_id,
            callee_id: new.callee_id,
            call_type: new.call_type,
            status: if desk { CallStatus::Queued } else { CallStatus::Initiated },
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
            queued_at: desk.then_some(now),
            // The request's trace becomes the call's: every event of the call continues it.
            trace_context: videocall_messaging::trace_context::current(),
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
        let parties = call.parties().into_iter().map(|user| live_call_parties::ActiveModel {
            user_id: Set(user.to_owned()),
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
            queued_at: Set(call.queued_at),
            trace_context: Set(call.trace_context.clone()),
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
        // Reject and Miss do otherwise on a desk call (back to the queue; no agent): read it first.
        let same_for_desks = !matches!(command, Command::Reject | Command::Miss);
        if let Some((from, party, effect)) = usual_step(command, actor).filter(|_| same_for_desks) {
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
            match decide_for(call.routing(), call.status, command, party) {
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
        if effect.to == CallStatus::Queued {
            // Back in the queue: the agent it rang is no longer its callee.
            update = update
                .col_expr(calls::Column::CalleeId, Expr::value(""))
                .col_expr(calls::Column::RingingAt, Expr::value(Option::<DateTime<Utc>>::None));
        }
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
        if changed.status.is_terminal() || changed.status == CallStatus::Queued {
            // A requeued call keeps its customer only.
            let mut gone = live_call_parties::Entity::delete_many().filter(live_call_parties::Column::CallId.eq(id));
            if !changed.status.is_terminal() {
                gone = gone.filter(live_call_parties::Column::UserId.ne(&changed.caller_id));
            }
            gone.exec(txn).await?;
        }
        if changed.queued_at.is_some() {
            crate::desk::after_transition(txn, &changed, actor_id, now).await?;
        }
        self.record_change(txn, &changed, Some(from), actor_id, now).await?;
        if changed.status.is_terminal() && from == CallStatus::Active {
            // A transfer ringing for this call fails with it (the target's row went above); its
            // event follows the ending's.
            self.fail_open_transfer_of_ended(txn, &changed, now).await?;
        }
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

        let subject = call.id.to_string();
        let names = match (from, call.status) {
            (Some(CallStatus::Queued), CallStatus::Initiated) => CALL_ROUTED,
            _ => call_event_names(call.status),
        };
        let data = CallEventData::new(call, from);
        let event =
            NewEvent { source: &self.event_source, names, subject: &subject, aggregate_id: call.id, time: now, data };
        write_event_traced(txn, event, call.trace_context.as_deref()).await?;
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
        let subject = call_id.to_string();
        let data = QualityReported::new(call_id, reporter_id, sample, now);
        let event = NewEvent {
            source: &self.event_source,
            names: CALL_QUALITY_REPORTED,
            subject: &subject,
            aggregate_id: call_id,
            time: now,
            data,
        };
        let event_id = write_event(&self.db, event).await?;
        self.wake_outbox();
        Ok(event_id)
    }
}

pub(crate) fn is_unique_violation(e: &DbErr) -> bool {
    matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)))
}

#[cfg(test)]
mod tests {
    use videocall_domain::EndReason;

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
