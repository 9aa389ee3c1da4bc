//! Support desks on the gateway: SetAgentAvailability, GetQueue, and the router every replica
//! runs (offers queued calls to agents, takes back unanswered offers, tells waiting customers
//! their place). The decisions are the call store's transactions (`videocall_calls::desk`), so
//! replicas route together without talking to each other.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use videocall_calls::{CallRecord, CallStore, desk::Attempt};
use videocall_domain::CallType;
use videocall_proto::v1 as pb;
use videocall_runtime::auth::{Principal, Role};
use videocall_signaling::signal_bus::SignalBus;

use crate::{config::DeskTimeouts, convert, error::ApiError};

/// How often a router looks at the queues when nothing woke it.
const ROUTE_EVERY: Duration = Duration::from_millis(250);
/// How often the waiting customers' positions are looked at; a position is told when it
/// changed, and at least every [`POSITION_AT_LEAST`].
const POSITIONS_EVERY: Duration = Duration::from_secs(1);
const POSITION_AT_LEAST: Duration = Duration::from_secs(10);
/// Calls one router offers per desk and round (the rest wait for the next round).
const ROUTES_PER_ROUND: usize = 100;
/// The actor recorded for the router's transitions.
pub const ROUTER: &str = "desk-router";

pub fn attempts_pb(attempts: &[Attempt]) -> Vec<pb::RoutingAttempt> {
    attempts
        .iter()
        .map(|a| pb::RoutingAttempt {
            attempt: a.attempt,
            agent_id: a.agent_id.clone(),
            offered_at: Some(convert::timestamp(a.offered_at)),
            ended_at: a.ended_at.map(convert::timestamp),
            outcome: a.outcome.clone().unwrap_or_default(),
        })
        .collect()
}

fn desks(raw: &[i32]) -> Result<Vec<CallType>, ApiError> {
    let mut out = Vec::new();
    for t in raw {
        let t = convert::call_type(*t)?
            .ok_or_else(|| ApiError::invalid("call_types must not hold CALL_TYPE_UNSPECIFIED"))?;
        if !out.contains(&t) {
            out.push(t);
        }
    }
    Ok(out)
}

/// SetAgentAvailability: an agent for themselves, or a service naming the agent.
pub async fn set_availability(
    store: &CallStore,
    wake: &Notify,
    p: &Principal,
    req: pb::SetAgentAvailabilityRequest,
) -> Result<pb::AgentAvailability, ApiError> {
    let agent_id = match (req.agent_id.trim(), p.role) {
        ("", Role::Agent) => p.user_id.clone(),
        ("", Role::Service) => return Err(ApiError::invalid("agent_id is required for a service")),
        ("", Role::User) => return Err(ApiError::denied("only agents set their availability")),
        (id, Role::Service) => crate::service::user_id("agent_id", id)?,
        (id, Role::Agent) if id == p.user_id => p.user_id.clone(),
        (_, _) => return Err(ApiError::denied("only a service may set another agent's availability")),
    };
    let call_types = desks(&req.call_types)?;
    let call_types = if call_types.is_empty() && !req.available {
        // Going unavailable keeps the desks the agent had.
        store.agent(&agent_id).await?.map(|a| a.call_types).unwrap_or_default()
    } else {
        call_types
    };
    if req.available && call_types.is_empty() {
        return Err(ApiError::invalid("call_types must name at least one desk when available"));
    }
    let agent = store.set_availability(&agent_id, req.available, &call_types).await?;
    if agent.available {
        wake.notify_one();
    }
    Ok(pb::AgentAvailability {
        agent_id: agent.agent_id,
        available: agent.available,
        call_types: agent.call_types.into_iter().map(|t| convert::pb_call_type(t) as i32).collect(),
        idle_since: Some(convert::timestamp(agent.idle_since)),
    })
}

/// GetQueue: agents and services only.
pub async fn queue(
    store: &CallStore,
    p: &Principal,
    req: pb::GetQueueRequest,
) -> Result<pb::GetQueueResponse, ApiError> {
    if p.role == Role::User {
        return Err(ApiError::denied("only agents and services read a desk's queue"));
    }
    let desk = convert::call_type(req.call_type)?.ok_or_else(|| ApiError::invalid("call_type is required"))?;
    let snapshot = store.queue(desk).await?;
    let now = chrono::Utc::now();
    let agents = snapshot.available_agents.len();
    Ok(pb::GetQueueResponse {
        call_type: req.call_type,
        waiting: snapshot
            .waiting
            .iter()
            .map(|w| pb::QueuedCall {
                call_id: w.call_id.to_string(),
                caller_id: w.caller_id.clone(),
                position: u32::try_from(w.position).unwrap_or(u32::MAX),
                queued_at: Some(convert::timestamp(w.queued_at)),
                waited_ms: (now - w.queued_at).num_milliseconds().max(0),
                estimated_wait_secs: snapshot.estimated_wait_secs(w.position, agents).map_or(-1, |s| s as i64),
            })
            .collect(),
        available_agents: snapshot.available_agents,
    })
}

/// Answered within this long of joining the queue counts for the service level.
pub const SERVICE_LEVEL_SECS: i64 = 20;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeskLabel {
    desk: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    desk: &'static str,
    outcome: &'static str,
}

type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// The desks' metrics: the queue now and the last hour's outcomes (read from the database by every
/// replica's router, so every replica shows the same values), and the offers this replica made.
#[derive(Debug, Clone, Default)]
pub struct DeskMetrics {
    waiting: Family<DeskLabel, Gauge>,
    longest_wait: Family<DeskLabel, FloatGauge>,
    available_agents: Family<DeskLabel, Gauge>,
    last_hour: Family<OutcomeLabel, Gauge>,
    service_level: Family<DeskLabel, FloatGauge>,
    offers: Family<DeskLabel, Counter>,
}

impl DeskMetrics {
    pub fn register(&self, registry: &mut Registry) {
        for desk in CallType::ALL.map(CallType::as_str) {
            let _ = self.waiting.get_or_create(&DeskLabel { desk });
            let _ = self.longest_wait.get_or_create(&DeskLabel { desk });
            let _ = self.available_agents.get_or_create(&DeskLabel { desk });
            let _ = self.offers.get_or_create(&DeskLabel { desk });
            self.service_level.get_or_create(&DeskLabel { desk }).set(1.0);
            for outcome in ["answered", "abandoned", "no_agent"] {
                let _ = self.last_hour.get_or_create(&OutcomeLabel { desk, outcome });
            }
        }
        registry.register("videocall_desk_waiting_calls", "Calls waiting in the desk's queue", self.waiting.clone());
        registry.register(
            "videocall_desk_longest_wait_seconds",
            "How long the desk's oldest queued call has waited",
            self.longest_wait.clone(),
        );
        registry.register(
            "videocall_desk_available_agents",
            "Available agents of the desk in no live call",
            self.available_agents.clone(),
        );
        registry.register(
            "videocall_desk_calls_last_hour",
            "Desk calls of the last hour by outcome: answered, abandoned (the customer hung up first), no_agent (missed)",
            self.last_hour.clone(),
        );
        registry.register(
            "videocall_desk_service_level",
            "Share of the last hour's finished desk waits answered within 20 s (1 when none finished)",
            self.service_level.clone(),
        );
        registry.register(
            "videocall_desk_offers",
            "Desk calls offered to an agent by this replica's router",
            self.offers.clone(),
        );
    }
}

/// Offers queued calls to agents, takes back offers nobody answered, fails transfers nobody
/// answered, and tells the waiting customers where they stand. One per gateway replica; [`Router::wake`] makes it look at once.
pub struct Router {
    store: CallStore,
    bus: SignalBus,
    timeouts: DeskTimeouts,
    wake: Arc<Notify>,
    metrics: DeskMetrics,
    transfers: crate::transfer::TransferMetrics,
}

impl Router {
    pub fn new(store: CallStore, bus: SignalBus, timeouts: DeskTimeouts, wake: Arc<Notify>) -> Self {
        let transfers = crate::transfer::TransferMetrics::default();
        Self { store, bus, timeouts, wake, metrics: DeskMetrics::default(), transfers }
    }

    /// Counts expired transfers into `metrics` (registered by the caller).
    pub fn with_transfer_metrics(mut self, metrics: crate::transfer::TransferMetrics) -> Self {
        self.transfers = metrics;
        self
    }

    /// Counts into `metrics` (registered by the caller).
    pub fn with_metrics(mut self, metrics: DeskMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut told: HashMap<Uuid, (usize, Option<u64>, Instant)> = HashMap::new();
        let mut positions_at = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(ROUTE_EVERY) => {}
            }
            if let Err(error) = self.round().await {
                tracing::warn!(%error, "desk routing round failed; next round soon");
                continue;
            }
            if positions_at.elapsed() >= POSITIONS_EVERY {
                positions_at = Instant::now();
                if let Err(error) = self.tell_positions(&mut told).await {
                    tracing::warn!(%error, "queue positions not told");
                }
            }
        }
    }

    /// One round: transfers and offers that rang out, then each desk's calls to free agents.
    pub async fn round(&self) -> Result<(), ApiError> {
        for step in self.store.expire_transfers().await? {
            tracing::info!(call_id = %step.call.id, to = %step.transfer.to_agent_id, "transfer unanswered; the call stays");
            crate::transfer::tell(&self.bus, &self.transfers, &step).await;
        }
        for (call, agent) in self.store.requeue_unanswered(ROUTER).await? {
            tracing::info!(call_id = %call.id, %agent, "desk call unanswered; back in the queue");
            self.tell(&call, Some(&agent)).await;
        }
        for call in self.store.miss_overdue_queued(ROUTER).await? {
            tracing::info!(call_id = %call.id, "desk call missed: no agent answered in time");
            self.tell(&call, None).await;
        }
        let ring = chrono::Duration::from_std(self.timeouts.agent_ring).unwrap_or(chrono::Duration::seconds(20));
        for desk in CallType::ALL {
            for _ in 0..ROUTES_PER_ROUND {
                let Some(call) = self.store.route_next(desk, ring, ROUTER).await? else { break };
                self.metrics.offers.get_or_create(&DeskLabel { desk: desk.as_str() }).inc();
                tracing::info!(call_id = %call.id, agent = %call.callee_id, desk = %desk, "desk call offered");
                self.tell(&call, None).await;
            }
        }
        Ok(())
    }

    /// Pushes the call's state to its parties, and to the agent it was taken back from.
    async fn tell(&self, call: &CallRecord, previous_agent: Option<&str>) {
        videocall_calls::push::call_state(&self.bus, call).await;
        if let Some(agent) = previous_agent {
            let frame = videocall_calls::view::CallStateFrame::new(call);
            if let Err(error) = self.bus.push_to_parties(&[agent], &frame).await {
                tracing::warn!(%error, call_id = %call.id, "withdrawn offer not told to the agent");
            }
        }
    }

    async fn tell_positions(&self, told: &mut HashMap<Uuid, (usize, Option<u64>, Instant)>) -> Result<(), ApiError> {
        let mut still_waiting = Vec::new();
        let now = chrono::Utc::now();
        for desk in CallType::ALL {
            let snapshot = self.store.queue(desk).await?;
            let agents = snapshot.available_agents.len();
            let label = DeskLabel { desk: desk.as_str() };
            self.metrics.waiting.get_or_create(&label).set(snapshot.waiting.len() as i64);
            self.metrics.available_agents.get_or_create(&label).set(agents as i64);
            let longest =
                snapshot.waiting.first().map_or(0.0, |w| (now - w.queued_at).num_milliseconds() as f64 / 1000.0);
            self.metrics.longest_wait.get_or_create(&label).set(longest.max(0.0));
            let outcomes = self
                .store
                .desk_outcomes(desk, now - chrono::Duration::hours(1), chrono::Duration::seconds(SERVICE_LEVEL_SECS))
                .await?;
            for (outcome, n) in
                [("answered", outcomes.answered), ("abandoned", outcomes.abandoned), ("no_agent", outcomes.no_agent)]
            {
                self.metrics.last_hour.get_or_create(&OutcomeLabel { desk: desk.as_str(), outcome }).set(n as i64);
            }
            self.metrics.service_level.get_or_create(&label).set(outcomes.service_level());
            for w in &snapshot.waiting {
                still_waiting.push(w.call_id);
                let estimate = snapshot.estimated_wait_secs(w.position, agents);
                let due = match told.get(&w.call_id) {
                    Some((position, est, at)) => {
                        *position != w.position || *est != estimate || at.elapsed() >= POSITION_AT_LEAST
                    }
                    None => true,
                };
                if !due {
                    continue;
                }
                // The `queue.position` frame (docs/protocol.md).
                let frame = serde_json::json!({
                    "type": "queue.position",
                    "call_id": w.call_id.to_string(),
                    "call_type": desk.as_str(),
                    "position": w.position,
                    "waiting": snapshot.waiting.len(),
                    "estimated_wait_secs": estimate,
                });
                match self.bus.publish_to_user(&w.caller_id, &frame).await {
                    Ok(()) => {
                        told.insert(w.call_id, (w.position, estimate, Instant::now()));
                    }
                    Err(error) => tracing::warn!(%error, call_id = %w.call_id, "queue position not told"),
                }
            }
        }
        told.retain(|id, _| still_waiting.contains(id));
        Ok(())
    }
}
