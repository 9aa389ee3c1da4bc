//! Blind transfer of an active call's agent side to another agent, or to a desk's longest-idle
//! free agent. The customer stays in the call throughout; the target rings; on answer the call's
//! callee becomes the target in one conditional update (the first agent's leg ends), and the
//! customer renegotiates with the new agent. A target that declines, does not answer within the
//! ring time, or goes offline fails the transfer and the call stays with the first agent, who
//! never left it. A call that ends while a transfer rings fails it too (`call_ended`), in the
//! ending's own transaction. Each step is one transaction with its event in the outbox.

use chrono::{DateTime, Duration, SubsecRound, Utc};
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait,
    sea_query::{Expr, ExprTrait, LockType},
};
use serde::Serialize;
use uuid::Uuid;
use videocall_domain::{CallStatus, CallType};
use videocall_entities::{agents, call_transfers, call_transitions, calls, live_call_parties};
use videocall_messaging::outbox::{NewEvent, write_event_traced};
use videocall_signaling::signal_bus::SignalBus;

use crate::{
    record::{Actor, CallRecord, StoreError},
    store::{CallStore, is_unique_violation},
    view::CallView,
};

pub const CALL_TRANSFER_REQUESTED: (&str, &str) = ("CallTransferRequested", "call.transfer_requested");
pub const CALL_TRANSFERRED: (&str, &str) = ("CallTransferred", "call.transferred");
pub const CALL_TRANSFER_FAILED: (&str, &str) = ("CallTransferFailed", "call.transfer_failed");

/// `call_transfers.status`.
pub mod status {
    pub const RINGING: &str = "ringing";
    pub const TRANSFERRED: &str = "transferred";
    pub const FAILED: &str = "failed";
}

/// `call_transfers.reason` of a failed transfer.
pub mod reason {
    /// The target declined.
    pub const REJECTED: &str = "rejected";
    /// The target did not answer within the ring time.
    pub const NO_ANSWER: &str = "no_answer";
    /// The call ended while the target rang.
    pub const CALL_ENDED: &str = "call_ended";
    /// The target went offline (UserOffline) while it rang.
    pub const TARGET_OFFLINE: &str = "target_offline";
}

/// Where a transfer goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Agent(String),
    /// The desk's longest-idle free agent.
    Desk(CallType),
}

/// A transfer as clients and events see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransferView {
    pub transfer_id: Uuid,
    pub call_id: Uuid,
    pub from_agent_id: String,
    pub to_agent_id: String,
    pub to_call_type: Option<String>,
    pub requested_by: String,
    pub status: String,
    pub reason: Option<String>,
    pub requested_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
}

impl From<&call_transfers::Model> for TransferView {
    fn from(t: &call_transfers::Model) -> Self {
        Self {
            transfer_id: t.id,
            call_id: t.call_id,
            from_agent_id: t.from_agent_id.clone(),
            to_agent_id: t.to_agent_id.clone(),
            to_call_type: t.to_call_type.clone(),
            requested_by: t.requested_by.clone(),
            status: t.status.clone(),
            reason: t.reason.clone(),
            requested_at: t.requested_at,
            expires_at: t.expires_at,
            ended_at: t.ended_at,
        }
    }
}

/// The `transfer` frame pushed to the customer and both agents: the transfer and the call.
#[derive(Debug, Clone, Serialize)]
pub struct TransferFrame {
    #[serde(rename = "type")]
    pub frame_type: &'static str,
    pub transfer: TransferView,
    pub call: CallView,
}

/// `data` of the three transfer events: the transfer, and the call's ids and version.
#[derive(Debug, Serialize)]
struct TransferEventData<'a> {
    #[serde(flatten)]
    transfer: &'a TransferView,
    caller_id: &'a str,
    callee_id: &'a str,
    call_type: &'static str,
    version: i64,
}

/// A transfer step that was taken: the call after it, the transfer, and who is told.
#[derive(Debug, Clone)]
pub struct TransferStep {
    pub call: CallRecord,
    pub transfer: TransferView,
}

impl TransferStep {
    /// The customer, the first agent and the target.
    pub fn told(&self) -> Vec<&str> {
        let mut told = vec![self.call.caller_id.as_str(), self.transfer.from_agent_id.as_str()];
        told.push(self.transfer.to_agent_id.as_str());
        told.dedup();
        told
    }

    pub fn frame(&self) -> TransferFrame {
        TransferFrame { frame_type: "transfer", transfer: self.transfer.clone(), call: (&self.call).into() }
    }
}

/// Pushes the step's `transfer` frame to the customer and both agents (best effort, logged).
pub async fn tell(bus: &SignalBus, step: &TransferStep) {
    match bus.push_to_parties(&step.told(), &step.frame()).await {
        Ok(()) => {}
        Err(error) => tracing::warn!(%error, call_id = %step.call.id, "transfer frame not pushed"),
    }
}

/// One leg of a call: an agent's time in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leg {
    pub agent_id: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    /// `transferred`, or the call's end reason for the last leg; empty while it lasts.
    pub end_reason: String,
}

/// The agent legs of an answered call, from its completed transfers (oldest first).
pub fn legs(call: &CallRecord, transfers: &[call_transfers::Model]) -> Vec<Leg> {
    let Some(mut started_at) = call.answered_at else { return Vec::new() };
    let done: Vec<&call_transfers::Model> = transfers.iter().filter(|t| t.status == status::TRANSFERRED).collect();
    let mut agent = done.first().map_or(call.callee_id.clone(), |t| t.from_agent_id.clone());
    let mut legs = Vec::new();
    for t in done {
        let ended_at = t.ended_at.unwrap_or(started_at);
        legs.push(Leg { agent_id: agent, started_at, ended_at: Some(ended_at), end_reason: "transferred".into() });
        agent = t.to_agent_id.clone();
        started_at = ended_at;
    }
    let end_reason = call.end_reason.map(|r| r.as_str().to_owned()).unwrap_or_default();
    legs.push(Leg { agent_id: agent, started_at, ended_at: call.ended_at, end_reason });
    legs
}

impl CallStore {
    /// Asks for a transfer of active call `call_id` to `target`, ringing it for `ring`: by the
    /// call's agent (its callee) or a service.
    #[tracing::instrument(skip_all, fields(call_id = %call_id, actor = %actor.id), err)]
    pub async fn request_transfer(
        &self,
        call_id: Uuid,
        target: Target,
        actor: &Actor,
        ring: Duration,
    ) -> Result<TransferStep, StoreError> {
        let txn = self.db().begin().await?;
        let call = locked_call(&txn, call_id).await?;
        if !actor.is_service && actor.id != call.callee_id {
            return Err(if actor.id == call.caller_id { StoreError::Forbidden } else { StoreError::NotAParty });
        }
        if call.status != CallStatus::Active {
            return Err(StoreError::WrongState(call.status));
        }
        if let Some(open) = open_transfer(&txn, call_id).await? {
            return Err(StoreError::Transfer(format!("a transfer to {} is ringing already", open.to_agent_id)));
        }
        let (to_agent, to_call_type) = match target {
            Target::Agent(agent) => {
                if agent == call.callee_id || agent == call.caller_id {
                    return Err(StoreError::Invalid(format!("{agent} is in this call already")));
                }
                (agent, None)
            }
            Target::Desk(desk) => {
                let free = self.free_agents(&txn, desk, 50).await?;
                let agent = free
                    .into_iter()
                    .map(|a| a.agent_id)
                    .find(|a| *a != call.callee_id && *a != call.caller_id)
                    .ok_or_else(|| StoreError::Transfer(format!("no agent of the {desk} desk is free")))?;
                (agent, Some(desk.as_str().to_owned()))
            }
        };
        let now = Utc::now().trunc_subsecs(6);
        // The target's live-call row: busy in another call (or ringing for one) fails here.
        let claimed = live_call_parties::Entity::insert(live_call_parties::ActiveModel {
            user_id: Set(to_agent.clone()),
            call_id: Set(call.id),
            since: Set(now),
        })
        .exec_without_returning(&txn)
        .await;
        match claimed {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => return Err(StoreError::Busy(to_agent)),
            Err(e) => return Err(e.into()),
        }
        let row = call_transfers::Model {
            id: Uuid::now_v7(),
            call_id: call.id,
            from_agent_id: call.callee_id.clone(),
            to_agent_id: to_agent,
            to_call_type,
            requested_by: actor.id.clone(),
            requested_at: now,
            expires_at: now + ring,
            status: status::RINGING.to_owned(),
            reason: None,
            ended_at: None,
        };
        let inserted = call_transfers::Entity::insert(call_transfers::ActiveModel {
            id: Set(row.id),
            call_id: Set(row.call_id),
            from_agent_id: Set(row.from_agent_id.clone()),
            to_agent_id: Set(row.to_agent_id.clone()),
            to_call_type: Set(row.to_call_type.clone()),
            requested_by: Set(row.requested_by.clone()),
            requested_at: Set(row.requested_at),
            expires_at: Set(row.expires_at),
            status: Set(row.status.clone()),
            reason: Set(None),
            ended_at: Set(None),
        })
        .exec_without_returning(&txn)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Transfer("another transfer of this call is ringing".into()));
            }
            Err(e) => return Err(e.into()),
        }
        let step = TransferStep { transfer: (&row).into(), call };
        self.transfer_event(&txn, &step, CALL_TRANSFER_REQUESTED, now).await?;
        txn.commit().await?;
        self.wake_outbox();
        Ok(step)
    }

    /// The target answers: the call's callee becomes `agent` (the first agent's leg ends).
    /// `None` when no transfer of this call rings `agent` (the caller then answers as usual).
    #[tracing::instrument(skip_all, fields(call_id = %call_id, agent = %agent), err)]
    pub async fn accept_transfer(&self, call_id: Uuid, agent: &str) -> Result<Option<TransferStep>, StoreError> {
        let txn = self.db().begin().await?;
        let call = locked_call(&txn, call_id).await?;
        let Some(open) = open_transfer(&txn, call_id).await?.filter(|t| t.to_agent_id == agent) else {
            return over_for(&txn, call_id, agent).await;
        };
        if call.status != CallStatus::Active || call.callee_id != open.from_agent_id {
            // Only an ending moves an active call, and it closes the transfer in its transaction.
            return Err(StoreError::WrongState(call.status));
        }
        let now = Utc::now().trunc_subsecs(6);
        let updated = calls::Entity::update_many()
            .col_expr(calls::Column::CalleeId, Expr::value(agent))
            .col_expr(calls::Column::Version, Expr::col(calls::Column::Version).add(1))
            .col_expr(calls::Column::UpdatedAt, Expr::value(now))
            .filter(calls::Column::Id.eq(call_id))
            .filter(calls::Column::Status.eq(CallStatus::Active.as_str()))
            .filter(calls::Column::CalleeId.eq(&open.from_agent_id))
            .exec_with_returning(&txn)
            .await?;
        let Some(model) = updated.into_iter().next() else {
            return Err(StoreError::WrongState(call.status));
        };
        let moved = CallRecord::from_model(model)?;
        call_transitions::Entity::insert(call_transitions::ActiveModel {
            id: Set(Uuid::now_v7()),
            call_id: Set(call_id),
            from_status: Set(Some(CallStatus::Active.as_str().to_owned())),
            to_status: Set(CallStatus::Active.as_str().to_owned()),
            reason: Set(None),
            actor: Set(agent.to_owned()),
            version: Set(moved.version),
            created_at: Set(now),
        })
        .exec_without_returning(&txn)
        .await?;
        let transfer = close(&txn, open, status::TRANSFERRED, None, now).await?;
        live_call_parties::Entity::delete_many()
            .filter(live_call_parties::Column::UserId.eq(&transfer.from_agent_id))
            .filter(live_call_parties::Column::CallId.eq(call_id))
            .exec(&txn)
            .await?;
        // The first agent waits again from now, as after any call.
        agents::Entity::update_many()
            .col_expr(agents::Column::IdleSince, Expr::value(now))
            .filter(agents::Column::AgentId.eq(&transfer.from_agent_id))
            .exec(&txn)
            .await?;
        let step = TransferStep { call: moved, transfer };
        self.transfer_event(&txn, &step, CALL_TRANSFERRED, now).await?;
        txn.commit().await?;
        self.wake_outbox();
        Ok(Some(step))
    }

    /// The target declines. `None` when no transfer of this call rings `agent`.
    pub async fn decline_transfer(&self, call_id: Uuid, agent: &str) -> Result<Option<TransferStep>, StoreError> {
        let txn = self.db().begin().await?;
        let call = locked_call(&txn, call_id).await?;
        let Some(open) = open_transfer(&txn, call_id).await?.filter(|t| t.to_agent_id == agent) else {
            return over_for(&txn, call_id, agent).await;
        };
        let step = self.fail_in(&txn, call, open, reason::REJECTED).await?;
        txn.commit().await?;
        self.wake_outbox();
        Ok(Some(step))
    }

    /// Fails the transfers that rang past their expiry (`no_answer`).
    pub async fn expire_transfers(&self) -> Result<Vec<TransferStep>, StoreError> {
        let now = Utc::now().trunc_subsecs(6);
        let due = call_transfers::Entity::find()
            .filter(call_transfers::Column::EndedAt.is_null())
            .filter(call_transfers::Column::ExpiresAt.lte(now))
            .limit(100)
            .all(self.db())
            .await?;
        self.fail_each(due, reason::NO_ANSWER).await
    }

    /// Inside `txn` (the UserOffline transaction): fails the transfers ringing `agent`
    /// (`target_offline`). The caller pushes the steps after its commit.
    pub async fn fail_transfers_to(
        &self,
        txn: &DatabaseTransaction,
        agent: &str,
    ) -> Result<Vec<TransferStep>, StoreError> {
        let ringing = call_transfers::Entity::find()
            .filter(call_transfers::Column::EndedAt.is_null())
            .filter(call_transfers::Column::ToAgentId.eq(agent))
            .order_by_asc(call_transfers::Column::CallId)
            .all(txn)
            .await?;
        let mut failed = Vec::new();
        for row in ringing {
            let call = locked_call(txn, row.call_id).await?;
            if let Some(open) = open_transfer(txn, row.call_id).await?.filter(|t| t.id == row.id) {
                failed.push(self.fail_in(txn, call, open, reason::TARGET_OFFLINE).await?);
            }
        }
        Ok(failed)
    }

    async fn fail_each(&self, rows: Vec<call_transfers::Model>, why: &str) -> Result<Vec<TransferStep>, StoreError> {
        let mut failed = Vec::new();
        for row in rows {
            let txn = self.db().begin().await?;
            let call = locked_call(&txn, row.call_id).await?;
            // Read again under the call's lock: it may have been answered or closed meanwhile.
            let Some(open) = open_transfer(&txn, row.call_id).await?.filter(|t| t.id == row.id) else {
                txn.rollback().await?;
                continue;
            };
            failed.push(self.fail_in(&txn, call, open, why).await?);
            txn.commit().await?;
            self.wake_outbox();
        }
        Ok(failed)
    }

    /// Inside the transaction that ends `call`: fails its ringing transfer (`call_ended`). The
    /// target's live-call row goes with the call's other rows.
    pub(crate) async fn fail_open_transfer_of_ended(
        &self,
        txn: &DatabaseTransaction,
        call: &CallRecord,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        if let Some(open) = open_transfer(txn, call.id).await? {
            let transfer = close(txn, open, status::FAILED, Some(reason::CALL_ENDED), now).await?;
            let step = TransferStep { call: call.clone(), transfer };
            self.transfer_event(txn, &step, CALL_TRANSFER_FAILED, now).await?;
        }
        Ok(())
    }

    async fn fail_in(
        &self,
        txn: &DatabaseTransaction,
        call: CallRecord,
        open: call_transfers::Model,
        why: &str,
    ) -> Result<TransferStep, StoreError> {
        let now = Utc::now().trunc_subsecs(6);
        let transfer = close(txn, open, status::FAILED, Some(why), now).await?;
        live_call_parties::Entity::delete_many()
            .filter(live_call_parties::Column::UserId.eq(&transfer.to_agent_id))
            .filter(live_call_parties::Column::CallId.eq(call.id))
            .exec(txn)
            .await?;
        let step = TransferStep { call, transfer };
        self.transfer_event(txn, &step, CALL_TRANSFER_FAILED, now).await?;
        Ok(step)
    }

    /// The transfers of each of `call_ids`, oldest first.
    pub async fn transfers_of(
        &self,
        call_ids: &[Uuid],
    ) -> Result<std::collections::HashMap<Uuid, Vec<call_transfers::Model>>, StoreError> {
        let mut by_call: std::collections::HashMap<Uuid, Vec<call_transfers::Model>> = Default::default();
        if call_ids.is_empty() {
            return Ok(by_call);
        }
        let rows = call_transfers::Entity::find()
            .filter(call_transfers::Column::CallId.is_in(call_ids.iter().copied()))
            .order_by_asc(call_transfers::Column::CallId)
            .order_by_asc(call_transfers::Column::RequestedAt)
            .order_by_asc(call_transfers::Column::Id)
            .all(self.db())
            .await?;
        for r in rows {
            by_call.entry(r.call_id).or_default().push(r);
        }
        Ok(by_call)
    }

    /// After `call` ended: the transfer its ending failed (`call_ended`), if any, once its target
    /// was told that the ringing stopped (best effort, like every frame).
    pub async fn tell_transfer_ended_with(&self, bus: &SignalBus, call: &CallRecord) -> Option<TransferStep> {
        if !call.status.is_terminal() || call.answered_at.is_none() {
            return None; // only active calls are transferred
        }
        let failed = call_transfers::Entity::find()
            .filter(call_transfers::Column::CallId.eq(call.id))
            .filter(call_transfers::Column::Reason.eq(reason::CALL_ENDED))
            .one(self.db())
            .await;
        match failed {
            Ok(Some(t)) => {
                let step = TransferStep { call: call.clone(), transfer: (&t).into() };
                tell(bus, &step).await;
                Some(step)
            }
            Ok(None) => None,
            Err(error) => {
                tracing::warn!(%error, call_id = %call.id, "the ended call's transfer was not told");
                None
            }
        }
    }

    async fn transfer_event(
        &self,
        txn: &DatabaseTransaction,
        step: &TransferStep,
        names: (&str, &str),
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let data = TransferEventData {
            transfer: &step.transfer,
            caller_id: &step.call.caller_id,
            callee_id: &step.call.callee_id,
            call_type: step.call.call_type.as_str(),
            version: step.call.version,
        };
        let subject = step.call.id.to_string();
        let event = NewEvent {
            source: self.event_source(),
            names,
            subject: &subject,
            aggregate_id: step.call.id,
            time: now,
            data,
        };
        write_event_traced(txn, event, step.call.trace_context.as_deref()).await?;
        Ok(())
    }
}

/// The call, locked for the transaction on PostgreSQL (transfers and endings of one call serialise).
async fn locked_call(txn: &DatabaseTransaction, call_id: Uuid) -> Result<CallRecord, StoreError> {
    let mut select = calls::Entity::find_by_id(call_id);
    if txn.get_database_backend() == DbBackend::Postgres {
        select = select.lock(LockType::Update);
    }
    let model = select.one(txn).await?.ok_or(StoreError::NotFound(call_id))?;
    CallRecord::from_model(model)
}

/// No transfer of the call rings `agent`: `None` if none ever did (the command is for the call
/// itself), else the error that says how their transfer ended.
async fn over_for(txn: &DatabaseTransaction, call_id: Uuid, agent: &str) -> Result<Option<TransferStep>, StoreError> {
    let last = call_transfers::Entity::find()
        .filter(call_transfers::Column::CallId.eq(call_id))
        .filter(call_transfers::Column::ToAgentId.eq(agent))
        .order_by_desc(call_transfers::Column::RequestedAt)
        .one(txn)
        .await?;
    match last {
        None => Ok(None),
        Some(t) => Err(StoreError::Transfer(match t.reason {
            Some(why) => format!("the transfer to you is over: {why}"),
            None => format!("the transfer to you is over: {}", t.status),
        })),
    }
}

async fn open_transfer(txn: &DatabaseTransaction, call_id: Uuid) -> Result<Option<call_transfers::Model>, StoreError> {
    Ok(call_transfers::Entity::find()
        .filter(call_transfers::Column::CallId.eq(call_id))
        .filter(call_transfers::Column::EndedAt.is_null())
        .one(txn)
        .await?)
}

/// Ends an open transfer with `status` (and `why`): the view of it after.
async fn close(
    txn: &DatabaseTransaction,
    open: call_transfers::Model,
    status: &str,
    why: Option<&str>,
    now: DateTime<Utc>,
) -> Result<TransferView, StoreError> {
    call_transfers::Entity::update_many()
        .col_expr(call_transfers::Column::Status, Expr::value(status))
        .col_expr(call_transfers::Column::Reason, Expr::value(why.map(str::to_owned)))
        .col_expr(call_transfers::Column::EndedAt, Expr::value(now))
        .filter(call_transfers::Column::Id.eq(open.id))
        .filter(call_transfers::Column::EndedAt.is_null())
        .exec(txn)
        .await?;
    let mut view = TransferView::from(&open);
    view.status = status.to_owned();
    view.reason = why.map(str::to_owned);
    view.ended_at = Some(now);
    Ok(view)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use videocall_domain::EndReason;

    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).expect("time")
    }

    fn transfer(from: &str, to: &str, state: &str, ended: i64) -> call_transfers::Model {
        call_transfers::Model {
            id: Uuid::now_v7(),
            call_id: Uuid::nil(),
            from_agent_id: from.into(),
            to_agent_id: to.into(),
            to_call_type: None,
            requested_by: from.into(),
            requested_at: at(ended - 5),
            expires_at: at(ended + 15),
            status: state.into(),
            reason: (state == status::FAILED).then(|| reason::REJECTED.into()),
            ended_at: Some(at(ended)),
        }
    }

    fn call(callee: &str, answered: Option<i64>, ended: Option<i64>) -> CallRecord {
        CallRecord {
            id: Uuid::nil(),
            caller_id: "carol".into(),
            callee_id: callee.into(),
            call_type: CallType::Support,
            status: if ended.is_some() { CallStatus::Ended } else { CallStatus::Active },
            end_reason: ended.map(|_| EndReason::Hangup),
            ended_by: ended.map(|_| "carol".into()),
            metadata: BTreeMap::new(),
            request_id: String::new(),
            version: 5,
            ring_timeout_secs: 45,
            created_at: at(0),
            ringing_at: Some(at(1)),
            answered_at: answered.map(at),
            ended_at: ended.map(at),
            queued_at: None,
            trace_context: None,
        }
    }

    #[test]
    fn legs_follow_the_completed_transfers_and_skip_the_failed_ones() {
        let transfers = [
            transfer("agent-1", "agent-9", status::FAILED, 20),
            transfer("agent-1", "agent-2", status::TRANSFERRED, 30),
            transfer("agent-2", "agent-3", status::TRANSFERRED, 50),
        ];
        let legs = legs(&call("agent-3", Some(10), Some(70)), &transfers);
        type Shown<'a> = (&'a str, DateTime<Utc>, Option<DateTime<Utc>>, &'a str);
        let shown: Vec<Shown> =
            legs.iter().map(|l| (l.agent_id.as_str(), l.started_at, l.ended_at, l.end_reason.as_str())).collect();
        assert_eq!(
            shown,
            [
                ("agent-1", at(10), Some(at(30)), "transferred"),
                ("agent-2", at(30), Some(at(50)), "transferred"),
                ("agent-3", at(50), Some(at(70)), "hangup"),
            ]
        );
    }

    #[test]
    fn an_untransferred_call_has_one_leg_and_an_unanswered_one_none() {
        let live = legs(&call("agent-1", Some(10), None), &[]);
        assert_eq!(
            live,
            [Leg { agent_id: "agent-1".into(), started_at: at(10), ended_at: None, end_reason: String::new() }]
        );
        assert!(legs(&call("agent-1", None, None), &[]).is_empty());
    }
}
