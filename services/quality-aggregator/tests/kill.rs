//! quality-aggregator as a real process (the binary beside this test; scripts/test.sh builds it),
//! SIGKILLed three times while it works through a backlog on a real RabbitMQ queue: the broker
//! redelivers what was not acknowledged, the inbox recognises what was already committed, and
//! every sample counts exactly once.

use std::{
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use lapin::{
    BasicProperties, Confirmation, Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions},
    types::FieldTable,
};
use sea_orm::{ColumnTrait, Database, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::json;
use uuid::Uuid;
use videocall_entities::{call_quality, processed_messages, quality_samples};
use videocall_testkit::process::{Process, loopback, temp_dir, workspace_binary};

const CALLS: usize = 20;
const SAMPLES_PER_CALL: usize = 15;
const TOTAL: u64 = (CALLS * (SAMPLES_PER_CALL + 1)) as u64;

struct Settings {
    database_url: String,
    exchange: String,
    queue: String,
    dlx: String,
    logs: std::path::PathBuf,
}

impl Settings {
    /// Starts the aggregator and waits until it consumes (`/readyz`).
    async fn start(&self, run: usize) -> (Process, SocketAddr) {
        let ops = loopback();
        let mut command = workspace_binary("quality-aggregator");
        command
            .env("DATABASE_URL", &self.database_url)
            .env("AMQP_URL", videocall_testkit::amqp_url())
            .env("EVENTS_EXCHANGE", &self.exchange)
            .env("QUALITY_QUEUE", &self.queue)
            .env("DLX_EXCHANGE", &self.dlx)
            .env("PREFETCH", "32")
            .env("OPS_LISTEN_ADDR", ops.to_string());
        let mut process = Process::spawn(&format!("quality-aggregator-{run}"), command, &self.logs);
        process.wait_ready(ops, "/readyz").await;
        (process, ops)
    }
}

async fn processed(db: &DatabaseConnection) -> u64 {
    processed_messages::Entity::find().count(db).await.expect("count processed")
}

/// `videocall_quality_messages_total{outcome=…}` of a running aggregator (0 if not there yet).
async fn outcome(ops: SocketAddr, name: &str) -> u64 {
    let prefix = format!("videocall_quality_messages_total{{outcome=\"{name}\"}} ");
    let body = videocall_testkit::http_get(ops, "/metrics").await.map(|(_, b)| b).unwrap_or_default();
    body.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|n| n.trim().parse().ok()).unwrap_or(0)
}

fn rtt(call: usize, sample: usize) -> f64 {
    (call * 1000 + sample + 1) as f64
}

#[tokio::test]
async fn an_aggregator_killed_mid_backlog_applies_every_message_once() {
    videocall_runtime::telemetry::init_for_tests();
    let u = videocall_testkit::unique_name;
    let settings = Settings {
        database_url: videocall_testkit::fresh_database().await,
        exchange: u("test.events.kill"),
        queue: u("test.quality.kill"),
        dlx: u("test.dlx.kill"),
        logs: temp_dir("aggregator-kill"),
    };
    // A first run declares the durable queue and stops; the backlog then piles up with no consumer.
    let (first, _) = settings.start(0).await;
    let status = first.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "SIGTERM stops it with 0: {status}");
    let db = Database::connect(settings.database_url.as_str()).await.expect("test's own pool");

    let amqp = Connection::connect(&videocall_testkit::amqp_url(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ reachable");
    let channel = amqp.create_channel().await.expect("channel");
    channel.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    let calls: Vec<Uuid> = (0..CALLS).map(|_| Uuid::now_v7()).collect();
    let mut confirms = Vec::new();
    for (c, call) in calls.iter().enumerate() {
        let mut events: Vec<(&str, serde_json::Value)> = (0..SAMPLES_PER_CALL)
            .map(|s| {
                let direction = if s % 2 == 0 { "inbound" } else { "outbound" };
                let body = json!({
                    "specversion": "1.0", "id": Uuid::now_v7().to_string(), "source": "/videocall/test/api-gateway",
                    "type": "CallQualityReported", "subject": call.to_string(),
                    "data": {"call_id": call, "reporter_id": "alice", "direction": direction, "rtt_ms": rtt(c, s),
                             "jitter_ms": 5.0, "packet_loss_percent": 1.0, "bitrate_kbps": 900.0, "width": 640,
                             "height": 480, "fps": 30.0, "reported_at": "2026-11-25T09:00:00Z"}
                });
                ("call.quality", body)
            })
            .collect();
        events.push((
            "call.ended",
            json!({"specversion": "1.0", "id": Uuid::now_v7().to_string(), "source": "/videocall/test/api-gateway",
                   "type": "CallEnded", "subject": call.to_string(), "data": {"call_id": call, "status": "ended"}}),
        ));
        for (routing_key, body) in events {
            let id = body["id"].as_str().expect("id").to_owned();
            let confirm = channel
                .basic_publish(
                    settings.exchange.as_str().into(),
                    routing_key.into(),
                    BasicPublishOptions { mandatory: true, ..Default::default() },
                    body.to_string().as_bytes(),
                    BasicProperties::default().with_delivery_mode(2).with_message_id(id.into()),
                )
                .await
                .expect("publish");
            confirms.push(confirm);
        }
    }
    for confirm in confirms {
        assert_eq!(confirm.await.expect("confirm"), Confirmation::Ack(None), "routed to the aggregator's queue");
    }

    // Three runs killed at a quarter, a half and three quarters of the backlog.
    let mut killed_at = Vec::new();
    let mut duplicates = 0;
    for run in 1..=3u64 {
        let (process, ops) = settings.start(run as usize).await;
        let target = TOTAL * run / 4;
        let started = Instant::now();
        while processed(&db).await < target {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "run {run} stuck below {target}:\n{}",
                process.output()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        duplicates += outcome(ops, "duplicate").await;
        process.kill_9().await;
        killed_at.push(processed(&db).await);
    }

    // The last run finishes the backlog.
    let (last, ops) = settings.start(4).await;
    let started = Instant::now();
    while processed(&db).await < TOTAL {
        assert!(started.elapsed() < Duration::from_secs(60), "backlog not done in 60 s:\n{}", last.output());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let finished_in = started.elapsed();
    let probe = amqp.create_channel().await.expect("probe channel");
    let drained = Instant::now();
    loop {
        let queue = probe
            .queue_declare(
                settings.queue.as_str().into(),
                QueueDeclareOptions { passive: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .expect("queue exists");
        if queue.message_count() == 0
            && outcome(ops, "applied").await
                + outcome(ops, "late").await
                + outcome(ops, "finalized").await
                + outcome(ops, "duplicate").await
                >= TOTAL - killed_at[2]
        {
            break;
        }
        assert!(drained.elapsed() < Duration::from_secs(30), "queue not drained:\n{}", last.output());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    duplicates += outcome(ops, "duplicate").await;
    assert_eq!(outcome(ops, "dead_lettered").await, 0, "nothing was dead-lettered");
    assert_eq!(processed(&db).await, TOTAL, "one inbox row per message id");

    // Every sample stored once, and counted once in its call's summary.
    let samples = quality_samples::Entity::find().all(&db).await.expect("samples");
    assert_eq!(samples.len(), CALLS * SAMPLES_PER_CALL, "one stored sample per sample message");
    let mut late_total = 0;
    for (c, call) in calls.iter().enumerate() {
        let mut stored: Vec<_> = samples.iter().filter(|s| s.call_id == *call).collect();
        stored.sort_by(|a, b| a.rtt_ms.total_cmp(&b.rtt_ms));
        let rtts: Vec<f64> = stored.iter().map(|s| s.rtt_ms).collect();
        let expected: Vec<f64> = (0..SAMPLES_PER_CALL).map(|s| rtt(c, s)).collect();
        assert_eq!(rtts, expected, "call {c}: each sample once");
        let rows: HashMap<String, call_quality::Model> = call_quality::Entity::find()
            .filter(call_quality::Column::CallId.eq(*call))
            .all(&db)
            .await
            .expect("summary")
            .into_iter()
            .map(|r| (r.scope.clone(), r))
            .collect();
        let all = rows.get("all").unwrap_or_else(|| panic!("call {c} has an `all` summary"));
        let applied: Vec<_> = stored.iter().filter(|s| s.applied).collect();
        assert_eq!(all.sample_count, applied.len() as i64, "call {c}: applied samples counted once");
        assert_eq!(all.sample_count + all.late_samples, SAMPLES_PER_CALL as i64, "call {c}: applied + late");
        let sum: f64 = applied.iter().map(|s| s.rtt_ms).sum();
        assert!((all.sum_rtt_ms - sum).abs() < 1e-6, "call {c}: rtt sum {} vs {sum}", all.sum_rtt_ms);
        let by_direction: i64 =
            ["inbound", "outbound"].iter().filter_map(|d| rows.get(*d)).map(|r| r.sample_count).sum();
        assert_eq!(by_direction, all.sample_count, "call {c}: directions add up");
        assert!(all.finalized_at.is_some(), "call {c}: finalized by its CallEnded");
        late_total += all.late_samples;
    }
    println!(
        "kill -9 x3 over a backlog of {TOTAL} messages: killed at {killed_at:?} processed; {duplicates} \
         redeliveries recognised as duplicates; last run finished in {finished_in:?}; {late_total} samples \
         arrived after their call's end (redelivered behind it), stored as late"
    );

    let status = last.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "SIGTERM stops it with 0: {status}");
    let _ = probe.queue_delete(settings.queue.as_str().into(), QueueDeleteOptions::default()).await;
    let _ = probe.queue_delete(format!("{}.dlq", settings.queue).as_str().into(), QueueDeleteOptions::default()).await;
    let _ = probe.exchange_delete(settings.exchange.as_str().into(), Default::default()).await;
    let _ = probe.exchange_delete(settings.dlx.as_str().into(), Default::default()).await;
}
