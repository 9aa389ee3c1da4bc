//! Three gateway replicas (three routers) on one database route 60 customers to 6 agents over two
//! desks while the agents answer, reject, ignore offers and go unavailable at random, and some
//! customers hang up while they wait. Afterwards, from the database and RabbitMQ: every call
//! ended exactly once, every transition has exactly one event, no agent ever had two offers or
//! calls at once, no call ever rang two agents at once, and every offer was closed.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use sea_orm::{EntityTrait, QueryOrder};
use videocall_entities::{call_routing_attempts, call_transitions, calls, outbox};
use videocall_proto::v1::{self as pb, CallStatus, CallType};

use crate::helpers::{TestApp, spawn_app_on_with, spawn_app_with};

/// A small deterministic generator (xorshift), so a failing run can be replayed by its seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// From when an agent was offered a call to when the offer (or the answered call) ended.
type Span = (DateTime<Utc>, DateTime<Utc>);

const CUSTOMERS: usize = 60;
const AGENTS: usize = 6;

fn desks_of(agent: usize) -> Vec<CallType> {
    match agent % 3 {
        0 => vec![CallType::Support],
        1 => vec![CallType::Sales],
        _ => vec![CallType::Support, CallType::Sales],
    }
}

fn set(available: bool, agent: usize) -> pb::SetAgentAvailabilityRequest {
    pb::SetAgentAvailabilityRequest {
        available,
        call_types: desks_of(agent).into_iter().map(|d| d as i32).collect(),
        agent_id: String::new(),
    }
}

/// One agent: looks at their offers every 50 ms and answers (then talks briefly and hangs up),
/// rejects, ignores, or goes unavailable for a while.
async fn agent(app: Arc<TestApp>, index: usize, seed: u64, stop: Arc<AtomicBool>) {
    let me = format!("agent-{index}");
    let mut rng = Rng(seed);
    let mut client = app.client().await;
    client.set_agent_availability(app.as_agent(&me, set(true, index))).await.expect("available");
    let mut handled: Vec<String> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let Ok(reply) = client
            .get_user_calls(app.as_agent(&me, pb::GetUserCallsRequest { page_size: 5, ..Default::default() }))
            .await
        else {
            continue;
        };
        let offer = reply.into_inner().calls.into_iter().find(|c| {
            c.callee_id == me
                && matches!(c.status(), CallStatus::Initiated | CallStatus::Ringing)
                && !handled.contains(&format!("{}:{}", c.id, c.routing_attempts.len()))
        });
        let Some(call) = offer else { continue };
        handled.push(format!("{}:{}", call.id, call.routing_attempts.len()));
        let id = call.id.clone();
        match rng.below(10) {
            0..=4 => {
                let _ = client.ring_call(app.as_agent(&me, pb::RingCallRequest { call_id: id.clone() })).await;
                if client.answer_call(app.as_agent(&me, pb::AnswerCallRequest { call_id: id.clone() })).await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(100 + rng.below(300))).await;
                    let _ = client.end_call(app.as_agent(&me, pb::EndCallRequest { call_id: id, reason: 0 })).await;
                }
            }
            5..=6 => {
                let _ = client.reject_call(app.as_agent(&me, pb::RejectCallRequest { call_id: id })).await;
            }
            7..=8 => {} // lets it ring out
            _ => {
                let _ = client.set_agent_availability(app.as_agent(&me, set(false, index))).await;
                tokio::time::sleep(Duration::from_millis(300 + rng.below(700))).await;
                let _ = client.set_agent_availability(app.as_agent(&me, set(true, index))).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_routers_route_sixty_customers_to_six_agents_without_a_double_booking() {
    let fast = |c: &mut api_gateway::GatewayConfig| {
        c.desk.agent_ring = Duration::from_secs(1);
        c.desk.queue_timeout = Duration::from_secs(12);
    };
    let first = spawn_app_with(fast).await;
    let (url, exchange) = (first.database_url.clone(), first.exchange.clone());
    let mut apps = vec![Arc::new(first)];
    for _ in 0..2 {
        let tap = videocall_testkit::EventTap::bind(&exchange).await;
        apps.push(Arc::new(spawn_app_on_with(url.clone(), exchange.clone(), tap, fast).await));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let agents: Vec<_> = (0..AGENTS)
        .map(|i| tokio::spawn(agent(apps[i % 3].clone(), i, 0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1), stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Customers arrive over about 3 s, on both desks, each through one of the replicas; one in
    // five hangs up after a while if nobody answered.
    let mut rng = Rng(0xDEAD_BEEF);
    let mut customers = Vec::new();
    for k in 0..CUSTOMERS {
        let app = apps[k % 3].clone();
        let desk = if rng.below(2) == 0 { CallType::Support } else { CallType::Sales };
        let abandon_after = (rng.below(5) == 0).then(|| Duration::from_millis(500 + rng.below(2500)));
        tokio::time::sleep(Duration::from_millis(rng.below(100))).await;
        customers.push(tokio::spawn(async move {
            let me = format!("customer-{k}");
            let mut client = app.client().await;
            let request =
                pb::InitiateCallRequest { request_id: "q".into(), call_type: desk as i32, ..Default::default() };
            let call =
                client.initiate_call(app.as_user(&me, request)).await.expect("queued").into_inner().call.expect("call");
            if let Some(after) = abandon_after {
                tokio::time::sleep(after).await;
                let _ =
                    client.end_call(app.as_user(&me, pb::EndCallRequest { call_id: call.id.clone(), reason: 0 })).await;
            }
            call.id
        }));
    }
    let mut ids = Vec::new();
    for c in customers {
        ids.push(c.await.expect("customer"));
    }
    ids.dedup();
    assert_eq!(ids.len(), CUSTOMERS, "one call per customer");

    // Every call reaches its end: answered and hung up, missed for want of an agent, or abandoned.
    let db = apps[0].db.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let rows = calls::Entity::find().all(&db).await.expect("calls");
        let open = rows.iter().filter(|c| !matches!(c.status.as_str(), "ended" | "missed")).count();
        if open == 0 && rows.len() == CUSTOMERS {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{open} calls still open after 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for a in agents {
        a.await.expect("agent");
    }

    let rows = calls::Entity::find().all(&db).await.expect("calls");
    let calls_by_id: HashMap<uuid::Uuid, calls::Model> = rows.into_iter().map(|c| (c.id, c)).collect();
    let transitions = call_transitions::Entity::find()
        .order_by_asc(call_transitions::Column::CallId)
        .order_by_asc(call_transitions::Column::Version)
        .all(&db)
        .await
        .expect("transitions");
    let attempts = call_routing_attempts::Entity::find()
        .order_by_asc(call_routing_attempts::Column::OfferedAt)
        .all(&db)
        .await
        .expect("attempts");

    let mut outcomes: HashMap<String, usize> = HashMap::new();
    for (id, call) in &calls_by_id {
        let mine: Vec<_> = transitions.iter().filter(|t| t.call_id == *id).collect();
        let finals = mine.iter().filter(|t| matches!(t.to_status.as_str(), "ended" | "missed" | "rejected")).count();
        assert_eq!(finals, 1, "call {id} ended exactly once: {mine:#?}");
        let versions: Vec<i64> = mine.iter().map(|t| t.version).collect();
        assert_eq!(versions, (1..=mine.len() as i64).collect::<Vec<_>>(), "call {id}: one transition per version");
        assert_eq!(call.version, mine.len() as i64);
        let reason = call.end_reason.clone().unwrap_or_default();
        assert!(
            matches!(
                (call.status.as_str(), reason.as_str()),
                ("ended", "hangup" | "abandoned") | ("missed", "no_agent")
            ),
            "call {id} ended as {} / {reason}",
            call.status
        );
        *outcomes.entry(format!("{}/{reason}", call.status)).or_default() += 1;
        // One call rings one agent at a time, its offers numbered 1..n, all closed.
        let offers: Vec<_> = attempts.iter().filter(|a| a.call_id == *id).collect();
        let mut numbers: Vec<i32> = offers.iter().map(|a| a.attempt).collect();
        numbers.sort_unstable();
        assert_eq!(numbers, (1..=offers.len() as i32).collect::<Vec<_>>(), "call {id}: attempts 1..n");
        for pair in offers.windows(2) {
            let earlier_end = pair[0].ended_at.expect("closed");
            assert!(earlier_end <= pair[1].offered_at, "call {id} rang two agents at once: {pair:#?}");
        }
        assert!(offers.iter().all(|a| a.ended_at.is_some() && a.outcome.is_some()), "call {id}: every offer closed");
        let answered = offers.iter().filter(|a| a.outcome.as_deref() == Some("answered")).count();
        assert_eq!(answered, usize::from(call.answered_at.is_some()), "call {id}: answered once at most");
    }
    // No agent ever held two offers or calls at once: an offer lasts until it ended, an answered
    // one until its call ended.
    let mut by_agent: HashMap<&str, Vec<Span>> = HashMap::new();
    for a in &attempts {
        let end = if a.outcome.as_deref() == Some("answered") {
            calls_by_id[&a.call_id].ended_at.expect("ended")
        } else {
            a.ended_at.expect("closed")
        };
        by_agent.entry(a.agent_id.as_str()).or_default().push((a.offered_at, end));
    }
    for (agent, mut spans) in by_agent {
        spans.sort();
        for pair in spans.windows(2) {
            assert!(pair[0].1 <= pair[1].0, "{agent} held two calls at once: {pair:?}");
        }
    }
    // Each transition is one outbox row and one event on RabbitMQ.
    let rows = outbox::Entity::find().all(&db).await.expect("outbox");
    assert_eq!(rows.len(), transitions.len(), "one outbox row per transition");
    let mut apps = apps.into_iter().map(|a| Arc::try_unwrap(a).ok().expect("sole owner")).collect::<Vec<_>>();
    let mut events = 0;
    while apps[0].events.next(Duration::from_secs(2)).await.is_some() {
        events += 1;
    }
    assert_eq!(events, transitions.len(), "one event per transition");
    assert!(outcomes.get("ended/hangup").copied().unwrap_or(0) > 0, "some calls were answered: {outcomes:?}");
    println!("{CUSTOMERS} customers, {AGENTS} agents, 3 routers: {outcomes:?}; {} offers", attempts.len());
    for app in apps {
        app.stop().await.expect("clean stop");
    }
}
