//! Scenario 2: call lifecycles (initiate → ring → answer → end) per second through the gateway's
//! gRPC API, beside raw SQL doing the same writes in the same number of transactions.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use chrono::Utc;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement, TransactionTrait, Value};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use videocall_proto::v1::{self as pb, call_service_client::CallServiceClient};
use videocall_runtime::auth::JwtKeys;

use crate::{
    Scale,
    fleet::{Fleet, JWT_SECRET, token},
    report::Report,
    stats::{Progress, Summary, ms, phase, rate},
};

struct Outcome {
    done: u64,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
    latency: Summary,
}

/// `message` with `authorization: Bearer <token>`.
pub(crate) fn authed<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = format!("Bearer {token}").parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

async fn one_lifecycle(
    client: &mut CallServiceClient<tonic::transport::Channel>,
    caller_token: &str,
    (callee_id, callee_token): (&str, &str),
) -> Result<(), tonic::Status> {
    let call = client
        .initiate_call(authed(
            caller_token,
            pb::InitiateCallRequest {
                request_id: Uuid::now_v7().to_string(),
                caller_id: String::new(),
                callee_id: callee_id.to_owned(),
                call_type: pb::CallType::Support as i32,
                metadata: Default::default(),
                ..Default::default()
            },
        ))
        .await?
        .into_inner()
        .call
        .ok_or_else(|| tonic::Status::internal("no call"))?;
    let call_id = call.id;
    client.ring_call(authed(callee_token, pb::RingCallRequest { call_id: call_id.clone() })).await?;
    client.answer_call(authed(callee_token, pb::AnswerCallRequest { call_id: call_id.clone() })).await?;
    let ended = client
        .end_call(authed(caller_token, pb::EndCallRequest { call_id, reason: pb::EndReason::Unspecified as i32 }))
        .await?
        .into_inner()
        .call
        .ok_or_else(|| tonic::Status::internal("no call"))?;
    if ended.status != pb::CallStatus::Ended as i32 {
        return Err(tonic::Status::internal(format!("call ended in status {}", ended.status)));
    }
    Ok(())
}

async fn run_grpc(fleet: &Fleet, scale: &Scale) -> anyhow::Result<Outcome> {
    let keys = JwtKeys::new(videocall_runtime::config::Secret::new(JWT_SECRET));
    let total = (scale.pairs * scale.lifecycles) as u64;
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error: Arc<Mutex<Option<String>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<u64>>> = Arc::default();
    let deadline = Instant::now() + scale.deadline;
    let progress = Progress::start("lifecycle gRPC".into(), "lifecycles", total, done.clone());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..scale.pairs {
        let mut client = CallServiceClient::connect(format!("http://{}", fleet.gateway)).await?;
        let b = format!("lc-b{k}");
        let (ta, tb) = (token(&keys, &format!("lc-a{k}")), token(&keys, &b));
        let (done, errors, first_error, latencies, n) =
            (done.clone(), errors.clone(), first_error.clone(), latencies.clone(), scale.lifecycles);
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::with_capacity(n);
            for _ in 0..n {
                if Instant::now() > deadline {
                    break;
                }
                let t = Instant::now();
                match one_lifecycle(&mut client, &ta, (&b, &tb)).await {
                    Ok(()) => {
                        mine.push(t.elapsed().as_micros() as u64);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(status) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        first_error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(status.to_string());
                    }
                }
            }
            latencies.lock().unwrap_or_else(|p| p.into_inner()).extend(mine);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed();
    drop(progress);
    let samples = std::mem::take(&mut *latencies.lock().unwrap_or_else(|p| p.into_inner()));
    let first_error = first_error.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(Outcome {
        done: done.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        first_error,
        elapsed,
        latency: Summary::of(samples),
    })
}

fn stmt(sql: &str, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

/// A CloudEvents body of the size the gateway writes.
fn event_payload(call_id: Uuid, event_type: &str, status: &str, now: chrono::DateTime<Utc>) -> String {
    serde_json::json!({
        "specversion": "1.0", "id": Uuid::now_v7(), "source": "videocall/loadgen/api-gateway", "type": event_type,
        "time": now, "subject": call_id, "datacontenttype": "application/json",
        "data": {"call_id": call_id, "caller_id": "raw-a", "callee_id": "raw-b", "call_type": "support",
                 "status": status, "previous_status": null, "end_reason": null, "ended_by": null, "version": 1,
                 "created_at": now, "ringing_at": null, "answered_at": null, "ended_at": null,
                 "duration_ms": null, "metadata": {}}
    })
    .to_string()
}

async fn audit_and_outbox<C: ConnectionTrait>(
    txn: &C,
    call_id: Uuid,
    from: Option<&str>,
    to: &str,
    version: i64,
    event: (&str, &str),
    now: chrono::DateTime<Utc>,
) -> Result<(), sea_orm::DbErr> {
    txn.execute_raw(stmt(
        "INSERT INTO call_transitions (id, call_id, from_status, to_status, reason, actor, version, created_at) \
         VALUES ($1, $2, $3, $4, NULL, $5, $6, $7)",
        vec![
            Uuid::now_v7().into(),
            call_id.into(),
            from.map(str::to_owned).into(),
            to.into(),
            "raw".into(),
            version.into(),
            now.into(),
        ],
    ))
    .await?;
    txn.execute_raw(stmt(
        "INSERT INTO outbox (id, aggregate_id, event_type, routing_key, payload, created_at, available_at, attempts) \
         VALUES ($1, $2, $3, $4, $5, $6, $6, 0)",
        vec![
            Uuid::now_v7().into(),
            call_id.into(),
            event.0.into(),
            event.1.into(),
            event_payload(call_id, event.0, to, now).into(),
            now.into(),
        ],
    ))
    .await?;
    Ok(())
}

/// The gateway's writes of one lifecycle, without its reads: 4 transactions.
async fn raw_lifecycle(db: &DatabaseConnection, caller: &str, callee: &str) -> Result<(), sea_orm::DbErr> {
    let id = Uuid::now_v7();
    let now = Utc::now();
    let txn = db.begin().await?;
    txn.execute_raw(stmt(
        "INSERT INTO live_call_parties (user_id, call_id, since) VALUES ($1, $3, $4), ($2, $3, $4)",
        vec![caller.into(), callee.into(), id.into(), now.into()],
    ))
    .await?;
    txn.execute_raw(stmt(
        "INSERT INTO calls (id, caller_id, callee_id, call_type, status, metadata, request_id, version, \
         ring_timeout_secs, created_at, ring_deadline_at, updated_at) \
         VALUES ($1, $2, $3, 'support', 'initiated', '{}'::jsonb, $4, 1, 45, $5, $6, $5)",
        vec![
            id.into(),
            caller.into(),
            callee.into(),
            Uuid::now_v7().to_string().into(),
            now.into(),
            (now + chrono::Duration::seconds(45)).into(),
        ],
    ))
    .await?;
    audit_and_outbox(&txn, id, None, "initiated", 1, ("CallInitiated", "call.initiated"), now).await?;
    txn.commit().await?;
    let steps = [
        ("initiated", "ringing", "ringing_at", ("CallRinging", "call.ringing")),
        ("ringing", "active", "answered_at", ("CallAnswered", "call.answered")),
        ("active", "ended", "ended_at", ("CallEnded", "call.ended")),
    ];
    for (version, (from, to, column, event)) in (2i64..).zip(steps) {
        let now = Utc::now();
        let txn = db.begin().await?;
        let extra = if to == "ended" { ", end_reason = 'hangup', ended_by = $4" } else { "" };
        let sql = format!(
            "UPDATE calls SET status = $1, version = version + 1, updated_at = $2, {column} = $2{extra} \
             WHERE id = $3 AND status = '{from}' RETURNING *"
        );
        let mut values: Vec<Value> = vec![to.into(), now.into(), id.into()];
        if to == "ended" {
            values.push(caller.into());
        }
        let updated = txn.query_all_raw(stmt(&sql, values)).await?;
        if updated.len() != 1 {
            return Err(sea_orm::DbErr::Custom(format!("update {from} → {to} matched {} rows", updated.len())));
        }
        if to == "ended" {
            txn.execute_raw(stmt("DELETE FROM live_call_parties WHERE call_id = $1", vec![id.into()])).await?;
        }
        audit_and_outbox(&txn, id, Some(from), to, version, event, now).await?;
        txn.commit().await?;
    }
    Ok(())
}

async fn run_raw(scale: &Scale) -> anyhow::Result<Outcome> {
    let url = videocall_testkit::fresh_database().await;
    // The gateway's pool settings and migrations.
    let db = videocall_runtime::db::connect_and_migrate(&url, &CancellationToken::new()).await?;
    let total = (scale.pairs * scale.lifecycles) as u64;
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error: Arc<Mutex<Option<String>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<u64>>> = Arc::default();
    let deadline = Instant::now() + scale.deadline;
    let progress = Progress::start("lifecycle raw SQL".into(), "lifecycles", total, done.clone());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..scale.pairs {
        let (db, done, errors, first_error, latencies, n) =
            (db.clone(), done.clone(), errors.clone(), first_error.clone(), latencies.clone(), scale.lifecycles);
        tasks.push(tokio::spawn(async move {
            let (a, b) = (format!("raw-a{k}"), format!("raw-b{k}"));
            let mut mine = Vec::with_capacity(n);
            for _ in 0..n {
                if Instant::now() > deadline {
                    break;
                }
                let t = Instant::now();
                match raw_lifecycle(&db, &a, &b).await {
                    Ok(()) => {
                        mine.push(t.elapsed().as_micros() as u64);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        first_error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e.to_string());
                    }
                }
            }
            latencies.lock().unwrap_or_else(|p| p.into_inner()).extend(mine);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed();
    drop(progress);
    db.close().await.ok();
    let samples = std::mem::take(&mut *latencies.lock().unwrap_or_else(|p| p.into_inner()));
    let first_error = first_error.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(Outcome {
        done: done.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        first_error,
        elapsed,
        latency: Summary::of(samples),
    })
}

async fn count(db: &DatabaseConnection, sql: &str) -> anyhow::Result<i64> {
    let row = db.query_one_raw(stmt(sql, vec![])).await?.context("a row")?;
    Ok(row.try_get_by_index::<i64>(0)?)
}

pub async fn run(scale: &Scale) -> anyhow::Result<Report> {
    let mut report = Report::new(
        "lifecycle",
        "2. Call lifecycle through gRPC vs raw SQL",
        &[
            "path",
            "clients",
            "lifecycles",
            "lifecycles/s",
            "transactions/s",
            "p50 ms / lifecycle",
            "p99 ms / lifecycle",
        ],
    );
    phase("lifecycle", "starting gateway");
    let fleet = Fleet::spawn(0, crate::fleet::no_ice()).await?;
    let grpc = run_grpc(&fleet, scale).await?;
    phase("lifecycle", format!("gRPC: {} lifecycles in {:.2?}", grpc.done, grpc.elapsed));
    let db = Database::connect(fleet.database_url.as_str()).await?;
    let ended = count(&db, "SELECT COUNT(*) FROM calls WHERE status = 'ended'").await?;
    let outbox_rows = count(&db, "SELECT COUNT(*) FROM outbox").await?;
    let audits = count(&db, "SELECT COUNT(*) FROM call_transitions").await?;
    db.close().await.ok();
    fleet.stop().await;
    let raw = run_raw(scale).await?;
    phase("lifecycle", format!("raw SQL: {} lifecycles in {:.2?}", raw.done, raw.elapsed));
    let total = (scale.pairs * scale.lifecycles) as u64;
    for (label, o) in
        [("gRPC → api-gateway → PostgreSQL", &grpc), ("raw SQL, same writes (sea-orm raw statements)", &raw)]
    {
        report.row(vec![
            label.into(),
            scale.pairs.to_string(),
            format!("{}/{total}", o.done),
            format!("{:.0}", rate(o.done, o.elapsed)),
            format!("{:.0}", rate(o.done * 4, o.elapsed)),
            ms(o.latency.p50_us),
            ms(o.latency.p99_us),
        ]);
        if o.done != total || o.errors > 0 {
            report.problem(format!(
                "{label}: {} of {total} lifecycles, {} errors (first: {})",
                o.done,
                o.errors,
                o.first_error.as_deref().unwrap_or("-")
            ));
        }
    }
    let expected = grpc.done as i64;
    if (ended, outbox_rows, audits) != (expected, expected * 4, expected * 4) {
        report.problem(format!(
            "gateway database: {ended} ended calls, {outbox_rows} outbox rows, {audits} audit rows for {expected} lifecycles"
        ));
    }
    let ratio = rate(grpc.done, grpc.elapsed) / rate(raw.done, raw.elapsed).max(1e-9);
    report.verdict("≥ 50% of raw SQL", ratio >= 0.5, format!("{:.0}%", ratio * 100.0));
    report.notes.push("Each client is one gRPC channel running lifecycles back to back with distinct caller/callee users; raw SQL runs the same number of tasks on a pool with the gateway's settings (16 connections), on its own fresh database. Raw SQL does only the writes (1 insert transaction: 2 live parties + call + audit + outbox; 3 conditional-update transactions each with audit + outbox, the last also deleting the live parties); the gateway also reads the call before each command (idempotency by request_id, then the decision), authenticates the token, publishes a `call_state` frame to both parties on Redis, and its outbox relay publishes the events to RabbitMQ meanwhile.".into());
    Ok(report)
}
