//! Scenario 3: outbox rows drained per second by the gateway's outbox relay into a bound queue,
//! beside raw confirmed publishing with lapin (confirm_select, same batch size, same messages).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::Utc;
use lapin::{
    BasicProperties, Confirmation, Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions},
};
use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use videocall_messaging::outbox_relay::{OutboxRelay, OutboxRelayConfig, RelayState, backlog};

use crate::{
    Scale,
    fleet::EventSink,
    report::Report,
    stats::{Progress, phase, rate},
};

const BATCH: u64 = 100;

fn payload(i: usize) -> String {
    let now = Utc::now();
    serde_json::json!({
        "specversion": "1.0", "id": Uuid::now_v7(), "source": "videocall/loadgen/api-gateway", "type": "CallRinging",
        "time": now, "subject": Uuid::now_v7(), "datacontenttype": "application/json",
        "data": {"call_id": Uuid::now_v7(), "caller_id": format!("a{i}"), "callee_id": format!("b{i}"), "call_type": "support",
                 "status": "ringing", "previous_status": "initiated", "end_reason": null, "ended_by": null, "version": 2,
                 "created_at": now, "ringing_at": now, "answered_at": null, "ended_at": null, "duration_ms": null, "metadata": {}}
    })
    .to_string()
}

struct Outcome {
    published: u64,
    in_queue: u32,
    elapsed: Duration,
}

async fn run_relay(scale: &Scale) -> anyhow::Result<Outcome> {
    let exchange = videocall_testkit::unique_name("videocall.events.loadgen-outbox");
    let sink = EventSink::bind(&exchange).await?;
    let url = videocall_testkit::fresh_database().await;
    let stop = CancellationToken::new();
    let db = videocall_runtime::db::connect_and_migrate(&url, &stop).await?;
    let wake = Arc::new(Notify::new());
    let relay = OutboxRelay::new(
        db.clone(),
        OutboxRelayConfig {
            amqp_url: videocall_testkit::amqp_url(),
            exchange: exchange.clone(),
            batch_size: BATCH,
            poll_interval: Duration::from_millis(200),
            connection_name: "loadgen-outbox".into(),
            unrouted: videocall_testkit::classic_unrouted(),
        },
        wake.clone(),
    );
    let mut state = relay.state();
    let task = tokio::spawn(relay.run(stop.clone()));
    tokio::time::timeout(Duration::from_secs(10), state.wait_for(|s| *s == RelayState::Connected)).await??;
    // Write the rows first (one transaction), then time the drain from the commit.
    let now = Utc::now();
    let txn = db.begin().await?;
    for chunk in (0..scale.rows).collect::<Vec<_>>().chunks(500) {
        let mut sql = String::from(
            "INSERT INTO outbox (id, aggregate_id, event_type, routing_key, payload, created_at, available_at, attempts) VALUES ",
        );
        let mut values: Vec<Value> = Vec::new();
        for (j, &i) in chunk.iter().enumerate() {
            let b = j * 4;
            sql += &format!(
                "{}(${}, ${}, 'CallRinging', 'call.ringing', ${}, ${}, ${}, 0)",
                if j > 0 { "," } else { "" },
                b + 1,
                b + 2,
                b + 3,
                b + 4,
                b + 4
            );
            values.extend([Uuid::now_v7().into(), Uuid::now_v7().into(), payload(i).into(), now.into()]);
        }
        txn.execute_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, values)).await?;
    }
    txn.commit().await?;
    let total = scale.rows as u64;
    let done = Arc::new(AtomicU64::new(0));
    let progress = Progress::start("outbox relay".into(), "rows published", total, done.clone());
    let started = Instant::now();
    wake.notify_one();
    let deadline = started + scale.deadline;
    let mut left = total;
    while Instant::now() < deadline {
        left = backlog(&db).await?;
        done.store(total - left.min(total), Ordering::Relaxed);
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    drop(progress);
    stop.cancel();
    let _ = task.await;
    let in_queue = settle_depth(&sink, total).await;
    sink.delete(&exchange).await;
    db.close().await.ok();
    Ok(Outcome { published: total - left, in_queue, elapsed })
}

/// The queue depth, waiting briefly for it to reach `expected` (the broker counts asynchronously).
async fn settle_depth(sink: &EventSink, expected: u64) -> u32 {
    let mut depth = 0;
    for _ in 0..50 {
        depth = sink.depth().await.unwrap_or(0);
        if u64::from(depth) >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    depth
}

async fn run_raw(scale: &Scale) -> anyhow::Result<Outcome> {
    let exchange = videocall_testkit::unique_name("videocall.events.loadgen-raw");
    let sink = EventSink::bind(&exchange).await?;
    let connection = Connection::connect(&videocall_testkit::amqp_url(), ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let bodies: Vec<String> = (0..scale.rows).map(payload).collect();
    let total = scale.rows as u64;
    let done = Arc::new(AtomicU64::new(0));
    let progress = Progress::start("raw lapin".into(), "confirmed", total, done.clone());
    let started = Instant::now();
    let deadline = started + scale.deadline;
    let mut confirmed = 0;
    for batch in bodies.chunks(BATCH as usize) {
        if Instant::now() > deadline {
            break;
        }
        let mut pending = Vec::with_capacity(batch.len());
        for body in batch {
            let properties = BasicProperties::default()
                .with_message_id(Uuid::now_v7().to_string().into())
                .with_type("CallRinging".into())
                .with_content_type("application/cloudevents+json".into())
                .with_delivery_mode(2)
                .with_timestamp(Utc::now().timestamp() as u64);
            pending.push(
                channel
                    .basic_publish(
                        exchange.as_str().into(),
                        "call.ringing".into(),
                        BasicPublishOptions { mandatory: true, ..Default::default() },
                        body.as_bytes(),
                        properties,
                    )
                    .await?,
            );
        }
        for confirm in pending {
            if matches!(confirm.await?, Confirmation::Ack(None)) {
                confirmed += 1;
            }
        }
        done.store(confirmed, Ordering::Relaxed);
    }
    let elapsed = started.elapsed();
    drop(progress);
    let in_queue = settle_depth(&sink, total).await;
    let _ = connection.close(200, "done".into()).await;
    sink.delete(&exchange).await;
    Ok(Outcome { published: confirmed, in_queue, elapsed })
}

pub async fn run(scale: &Scale) -> anyhow::Result<Report> {
    let mut report = Report::new(
        "outbox",
        "3. Outbox relay vs raw confirmed publishing",
        &["path", "batch", "messages", "in queue", "messages/s"],
    );
    phase("outbox", format!("{} rows through the outbox relay", scale.rows));
    let relay = run_relay(scale).await?;
    phase("outbox", format!("relay: {} in {:.2?}", relay.published, relay.elapsed));
    let raw = run_raw(scale).await?;
    phase("outbox", format!("raw: {} in {:.2?}", raw.published, raw.elapsed));
    let total = scale.rows as u64;
    for (label, o) in [("outbox relay (PostgreSQL → RabbitMQ, confirms)", &relay), ("raw lapin, confirm_select", &raw)]
    {
        report.row(vec![
            label.into(),
            BATCH.to_string(),
            format!("{}/{total}", o.published),
            o.in_queue.to_string(),
            format!("{:.0}", rate(o.published, o.elapsed)),
        ]);
        if o.published != total || u64::from(o.in_queue) != total {
            report.problem(format!("{label}: {} published, {} in the queue, of {total}", o.published, o.in_queue));
        }
    }
    let ratio = rate(relay.published, relay.elapsed) / rate(raw.published, raw.elapsed).max(1e-9);
    report.notes.push(format!(
        "Relay at {:.0}% of raw. The relay claims {BATCH} rows `FOR UPDATE SKIP LOCKED`, publishes them (persistent, mandatory), waits for every confirm and marks them sent in the same transaction, then claims the next batch; the raw run publishes the same bodies in batches of {BATCH} and waits for the confirms. The rows were committed before the clock started; the clock stops when the backlog query says 0.",
        ratio * 100.0
    ));
    Ok(report)
}
