//! Scenario 8: the support desk. `pairs` customers (50) call the support desk at once; 5 agents
//! on a relay answer each offer the moment its `call_state` arrives and hang up at once, until
//! every call was answered. Reported from the database: queue → answered per call (mostly the
//! wait behind the others), the hand-off (an agent's call ended → their next offer), the drain
//! time; beside raw SQL running the statements of one routing decision in one transaction.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use chrono::Utc;
use sea_orm::{ConnectionTrait, Database, DbBackend, EntityTrait, Statement, TransactionTrait, Value};
use serde_json::json;
use uuid::Uuid;
use videocall_entities::{call_routing_attempts, calls};
use videocall_proto::v1::{self as pb, call_service_client::CallServiceClient};
use videocall_runtime::auth::{JwtKeys, Role};
use videocall_testkit::ws::Client;

use crate::{
    Scale,
    fleet::{Fleet, JWT_SECRET, no_ice},
    lifecycle::authed,
    report::Report,
    stats::{Summary, ms, phase},
};

const AGENTS: usize = 5;

/// One agent: answers every offer of theirs as it arrives and hangs up at once.
async fn agent(
    mut ws: Client,
    me: String,
    answered: Arc<AtomicU64>,
    total: u64,
    deadline: Instant,
) -> anyhow::Result<()> {
    while answered.load(Ordering::Relaxed) < total && Instant::now() < deadline {
        let Some(frame) = ws.next_within(Duration::from_millis(200)).await else { continue };
        let call = &frame["call"];
        if frame["type"] != "call_state" || call["callee_id"] != me.as_str() || call["status"] != "initiated" {
            continue;
        }
        let id = call["id"].as_str().unwrap_or_default().to_owned();
        let ack = ws.request(json!({"type": "call.answer", "call_id": id})).await;
        if ack["type"] != "ack" {
            anyhow::bail!("answer refused: {ack}");
        }
        answered.fetch_add(1, Ordering::Relaxed);
        ws.request(json!({"type": "call.end", "call_id": id})).await;
    }
    Ok(())
}

pub async fn run(scale: &Scale) -> anyhow::Result<Report> {
    let customers = scale.pairs;
    let mut report = Report::new(
        "desk",
        &format!("Support desk: {customers} customers waiting, {AGENTS} agents answering at once"),
        &["path", "calls", "p50 ms", "p99 ms", "max ms"],
    );
    phase("desk", "starting the gateway (with its router) and a relay");
    let fleet = Fleet::spawn(1, no_ice()).await?;
    let keys = JwtKeys::new(videocall_runtime::config::Secret::new(JWT_SECRET));
    let exp = Utc::now().timestamp() + 3600;
    let answered = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + scale.deadline;
    let mut agents = Vec::new();
    for a in 0..AGENTS {
        let me = format!("desk-agent-{a}");
        let url = format!("ws://{}/ws?token={}", fleet.relays[0], keys.mint(&me, Role::Agent, exp));
        let mut ws = Client::connect(&url).await.map_err(|e| anyhow::anyhow!("agent socket: {e}"))?;
        let ack = ws.request(json!({"type": "agent.availability", "available": true, "call_types": ["support"]})).await;
        anyhow::ensure!(ack["type"] == "ack", "availability refused: {ack}");
        agents.push((ws, me));
    }
    let client = CallServiceClient::connect(format!("http://{}", fleet.gateway)).await?;
    phase("desk", format!("{customers} customers call the support desk at once"));
    let started = Instant::now();
    let total = customers as u64;
    let tasks: Vec<_> =
        agents.into_iter().map(|(ws, me)| tokio::spawn(agent(ws, me, answered.clone(), total, deadline))).collect();
    let calls: Vec<_> = (0..customers)
        .map(|k| {
            let (mut client, token) = (client.clone(), fleet.token(&format!("desk-customer-{k}")));
            tokio::spawn(async move {
                let request = pb::InitiateCallRequest {
                    request_id: format!("desk-{k}"),
                    call_type: pb::CallType::Support as i32,
                    ..Default::default()
                };
                client.initiate_call(authed(&token, request)).await.map(|_| ())
            })
        })
        .collect();
    for call in calls {
        call.await.context("customer task")??;
    }
    for t in tasks {
        t.await.context("agent task")??;
    }
    let drained = started.elapsed();
    anyhow::ensure!(answered.load(Ordering::Relaxed) == total, "only {answered:?} of {total} answered in time");

    // From the database: queue → answered per call, and each agent's hand-offs.
    let db = Database::connect(&fleet.database_url).await?;
    let rows = calls::Entity::find().all(&db).await?;
    let attempts = call_routing_attempts::Entity::find().all(&db).await?;
    let to_answer: Vec<u64> =
        rows.iter().filter_map(|c| Some((c.answered_at? - c.queued_at?).num_microseconds()?.max(0) as u64)).collect();
    let ended: HashMap<Uuid, chrono::DateTime<Utc>> = rows.iter().filter_map(|c| Some((c.id, c.ended_at?))).collect();
    let mut by_agent: HashMap<&str, Vec<&call_routing_attempts::Model>> = HashMap::new();
    for a in &attempts {
        by_agent.entry(a.agent_id.as_str()).or_default().push(a);
    }
    let mut handoffs = Vec::new();
    for offers in by_agent.values_mut() {
        offers.sort_by_key(|a| a.offered_at);
        for pair in offers.windows(2) {
            if let Some(end) = ended.get(&pair[0].call_id) {
                handoffs.push((pair[1].offered_at - *end).num_microseconds().unwrap_or(0).max(0) as u64);
            }
        }
    }
    let offers = attempts.len();
    fleet.stop().await;

    let raw = raw_routing(customers).await?;
    let row =
        |name: &str, s: &Summary| vec![name.to_owned(), s.count.to_string(), ms(s.p50_us), ms(s.p99_us), ms(s.max_us)];
    let (answer, handoff) = (Summary::of(to_answer), Summary::of(handoffs));
    report.row(row("queue → agent answered (each call; includes waiting behind the others)", &answer));
    report.row(row("hand-off: agent's call ended → their next offer", &handoff));
    report.row(row("raw PostgreSQL: one routing decision's statements in one transaction", &raw));
    report.notes.push(format!(
        "All {customers} calls answered in {:.2} s with {AGENTS} agents ({offers} offers: none rejected or missed); \
         the router looks at the queues every 250 ms and at once when a call is queued, goes back to its queue, \
         or ends (the agent is free), so a hand-off costs one routing transaction plus the agent's answer.",
        drained.as_secs_f64()
    ));
    report.notes.push(
        "Raw: on a separate database with the same schema, the router's statements for one offer (oldest queued call \
         FOR UPDATE SKIP LOCKED, longest-idle free agent, the agent's live-call row, the conditional update, the attempt, \
         the audit and outbox rows) as plain SQL, one transaction each, one after the other."
            .into(),
    );
    Ok(report)
}

fn stmt(sql: &str, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

/// `n` routing decisions in raw SQL on a fresh database: per transaction latency.
async fn raw_routing(n: usize) -> anyhow::Result<Summary> {
    let url = videocall_testkit::fresh_database().await;
    let db = videocall_runtime::db::connect_and_migrate(&url, &Default::default()).await?;
    let now = Utc::now();
    for k in 0..n {
        db.execute_raw(stmt(
            "INSERT INTO calls (id, caller_id, callee_id, call_type, status, metadata, request_id, version, \
             ring_timeout_secs, created_at, ring_deadline_at, updated_at, queued_at) \
             VALUES ($1, $2, '', 'support', 'queued', '{}', 'raw', 1, 300, $3, $3, $3, $3)",
            vec![Uuid::now_v7().into(), format!("raw-customer-{k}").into(), now.into()],
        ))
        .await?;
        db.execute_raw(stmt(
            "INSERT INTO agents (agent_id, available, idle_since, updated_at) VALUES ($1, true, $2, $2)",
            vec![format!("raw-agent-{k}").into(), now.into()],
        ))
        .await?;
        db.execute_raw(stmt(
            "INSERT INTO agent_desks (agent_id, call_type) VALUES ($1, 'support')",
            vec![format!("raw-agent-{k}").into()],
        ))
        .await?;
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let txn = db.begin().await?;
        let call = txn
            .query_one_raw(stmt(
                "SELECT id FROM calls WHERE status = 'queued' AND call_type = 'support' ORDER BY queued_at, id LIMIT 1 \
                 FOR UPDATE SKIP LOCKED",
                vec![],
            ))
            .await?
            .context("a queued call")?;
        let call_id: Uuid = call.try_get("", "id")?;
        let agent = txn
            .query_one_raw(stmt(
                "SELECT agent_id FROM agents WHERE available AND agent_id IN (SELECT agent_id FROM agent_desks WHERE \
                 call_type = 'support') AND agent_id NOT IN (SELECT user_id FROM live_call_parties) \
                 ORDER BY idle_since, agent_id LIMIT 50",
                vec![],
            ))
            .await?
            .context("a free agent")?;
        let agent_id: String = agent.try_get("", "agent_id")?;
        let now = Utc::now();
        txn.execute_raw(stmt(
            "INSERT INTO live_call_parties (user_id, call_id, since) VALUES ($1, $2, $3)",
            vec![agent_id.clone().into(), call_id.into(), now.into()],
        ))
        .await?;
        txn.execute_raw(stmt(
            "UPDATE calls SET callee_id = $1, status = 'initiated', version = version + 1, updated_at = $2 \
             WHERE id = $3 AND status = 'queued'",
            vec![agent_id.clone().into(), now.into(), call_id.into()],
        ))
        .await?;
        txn.execute_raw(stmt(
            "INSERT INTO call_routing_attempts (id, call_id, attempt, agent_id, offered_at, expires_at) \
             VALUES ($1, $2, 1, $3, $4, $4)",
            vec![Uuid::now_v7().into(), call_id.into(), agent_id.into(), now.into()],
        ))
        .await?;
        txn.execute_raw(stmt(
            "INSERT INTO call_transitions (id, call_id, from_status, to_status, reason, actor, version, created_at) \
             VALUES ($1, $2, 'queued', 'initiated', NULL, 'raw', 2, $3)",
            vec![Uuid::now_v7().into(), call_id.into(), now.into()],
        ))
        .await?;
        txn.execute_raw(stmt(
            "INSERT INTO outbox (id, aggregate_id, event_type, routing_key, payload, created_at, available_at, attempts) \
             VALUES ($1, $2, 'CallRouted', 'call.routed', '{}', $3, $3, 0)",
            vec![Uuid::now_v7().into(), call_id.into(), now.into()],
        ))
        .await?;
        txn.commit().await?;
        samples.push(t.elapsed().as_micros() as u64);
    }
    Ok(Summary::of(samples))
}
