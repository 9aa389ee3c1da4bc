//! Blind transfer on the gateway: TransferCall, the target's AnswerCall / RejectCall, telling the
//! customer and both agents (`transfer` frames, `call_state`), and the per-desk counts. The
//! decisions are the call store's transactions (`videocall_calls::transfer`).

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use uuid::Uuid;
use videocall_calls::{
    Actor, CallRecord, CallStore,
    transfer::{Target, TransferStep, TransferView, legs},
};
use videocall_domain::CallType;
use videocall_entities::call_transfers;
use videocall_proto::v1 as pb;
use videocall_runtime::auth::{Principal, Role};
use videocall_signaling::signal_bus::SignalBus;

use crate::{convert, error::ApiError, service::user_id};

/// `videocall_transfers_total{desk,outcome}`: transfers by the call's desk (call type) and what
/// became of them (requested, transferred, rejected, no_answer, call_ended, target_offline).
#[derive(Debug, Clone, Default)]
pub struct TransferMetrics(Family<TransferLabel, Counter>);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransferLabel {
    desk: &'static str,
    outcome: String,
}

const OUTCOMES: [&str; 6] = ["requested", "transferred", "rejected", "no_answer", "call_ended", "target_offline"];

impl TransferMetrics {
    pub fn register(&self, registry: &mut Registry) {
        for desk in CallType::ALL.map(CallType::as_str) {
            for outcome in OUTCOMES {
                let _ = self.0.get_or_create(&TransferLabel { desk, outcome: outcome.to_owned() });
            }
        }
        registry.register(
            "videocall_transfers",
            "Call transfers by the call's desk (call type) and outcome: requested, then transferred or failed (rejected, no_answer, call_ended, target_offline)",
            self.0.clone(),
        );
    }

    /// Counts the step: `requested` for a ringing transfer, else its outcome.
    pub fn count(&self, step: &TransferStep) {
        let t = &step.transfer;
        let outcome = match t.status.as_str() {
            videocall_calls::transfer::status::RINGING => "requested".to_owned(),
            videocall_calls::transfer::status::TRANSFERRED => "transferred".to_owned(),
            _ => t.reason.clone().unwrap_or_default(),
        };
        self.0.get_or_create(&TransferLabel { desk: step.call.call_type.as_str(), outcome }).inc();
    }
}

/// TransferCall: checks the request, asks the store, tells everyone.
pub async fn request(
    store: &CallStore,
    bus: &SignalBus,
    metrics: &TransferMetrics,
    ring: std::time::Duration,
    p: &Principal,
    req: pb::TransferCallRequest,
) -> Result<pb::TransferCallResponse, ApiError> {
    if !matches!(p.role, Role::Agent | Role::Service) {
        return Err(ApiError::denied("only agents and services transfer calls"));
    }
    let call_id = convert::call_id(&req.call_id)?;
    let to_call_type = convert::call_type(req.to_call_type)?;
    let target = match (req.to_agent_id.is_empty(), to_call_type) {
        (false, None) => Target::Agent(user_id("to_agent_id", &req.to_agent_id)?),
        (true, Some(desk)) => Target::Desk(desk),
        (false, Some(_)) => return Err(ApiError::invalid("give to_agent_id or to_call_type, not both")),
        (true, None) => return Err(ApiError::invalid("to_agent_id or to_call_type is required")),
    };
    let actor = Actor { id: p.user_id.clone(), is_service: p.is_service() };
    let ring = chrono::Duration::from_std(ring).unwrap_or(chrono::Duration::seconds(20));
    let step = store.request_transfer(call_id, target, &actor, ring).await?;
    tracing::info!(call_id = %call_id, to = %step.transfer.to_agent_id, "transfer ringing");
    tell(bus, metrics, &step).await;
    let mut view = convert::call(&step.call);
    let transfers = store.transfers_of(&[call_id]).await?.remove(&call_id).unwrap_or_default();
    fill(&mut view, &step.call, &transfers);
    Ok(pb::TransferCallResponse { call: Some(view), transfer: Some(to_pb(&step.transfer)) })
}

/// The target's answer, if a transfer of this call rings them: the call, now theirs.
pub async fn answer(
    store: &CallStore,
    bus: &SignalBus,
    metrics: &TransferMetrics,
    p: &Principal,
    call_id: Uuid,
) -> Result<Option<CallRecord>, ApiError> {
    let Some(step) = store.accept_transfer(call_id, &p.user_id).await? else { return Ok(None) };
    tracing::info!(call_id = %call_id, from = %step.transfer.from_agent_id, to = %p.user_id, "call transferred");
    tell(bus, metrics, &step).await;
    videocall_calls::push::call_state(bus, &step.call).await;
    // The first agent is no party any more: tell them too.
    let frame = videocall_calls::view::CallStateFrame::new(&step.call);
    if let Err(error) = bus.push_to_parties(&[step.transfer.from_agent_id.as_str()], &frame).await {
        tracing::warn!(%error, call_id = %call_id, "call_state not pushed to the first agent");
    }
    Ok(Some(step.call))
}

/// The target's decline, if a transfer of this call rings them: the call, unchanged.
pub async fn decline(
    store: &CallStore,
    bus: &SignalBus,
    metrics: &TransferMetrics,
    p: &Principal,
    call_id: Uuid,
) -> Result<Option<CallRecord>, ApiError> {
    let Some(step) = store.decline_transfer(call_id, &p.user_id).await? else { return Ok(None) };
    tracing::info!(call_id = %call_id, to = %p.user_id, "transfer declined");
    tell(bus, metrics, &step).await;
    Ok(Some(step.call))
}

/// After a call ended: tells the target of a transfer it failed that the ringing stopped.
pub async fn after_end(store: &CallStore, bus: &SignalBus, metrics: &TransferMetrics, call: &CallRecord) {
    if let Some(step) = store.tell_transfer_ended_with(bus, call).await {
        metrics.count(&step);
    }
}

/// Pushes the `transfer` frame to the customer and both agents, and counts the step.
pub async fn tell(bus: &SignalBus, metrics: &TransferMetrics, step: &TransferStep) {
    metrics.count(step);
    videocall_calls::transfer::tell(bus, step).await;
}

pub fn to_pb(t: &TransferView) -> pb::Transfer {
    let to_call_type = t.to_call_type.as_deref().and_then(|d| d.parse::<CallType>().ok());
    pb::Transfer {
        transfer_id: t.transfer_id.to_string(),
        from_agent_id: t.from_agent_id.clone(),
        to_agent_id: t.to_agent_id.clone(),
        to_call_type: to_call_type.map_or(pb::CallType::Unspecified, convert::pb_call_type) as i32,
        requested_by: t.requested_by.clone(),
        status: t.status.clone(),
        reason: t.reason.clone().unwrap_or_default(),
        requested_at: Some(convert::timestamp(t.requested_at)),
        expires_at: Some(convert::timestamp(t.expires_at)),
        ended_at: t.ended_at.map(convert::timestamp),
    }
}

/// Fills `view`'s legs and transfers from the call's transfer rows.
pub fn fill(view: &mut pb::Call, call: &CallRecord, transfers: &[call_transfers::Model]) {
    view.legs = legs(call, transfers)
        .into_iter()
        .map(|l| pb::CallLeg {
            agent_id: l.agent_id,
            started_at: Some(convert::timestamp(l.started_at)),
            ended_at: l.ended_at.map(convert::timestamp),
            end_reason: l.end_reason,
        })
        .collect();
    view.transfers = transfers.iter().map(|t| to_pb(&TransferView::from(t))).collect();
}
