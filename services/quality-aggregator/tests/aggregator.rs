//! The quality-aggregator end to end: real CloudEvents published on a real RabbitMQ exchange (unique
//! per test), summaries read from a fresh PostgreSQL database; and once with the real gateway in
//! front, through UpdateCallQuality and GetCall.

use std::{future::Future, net::SocketAddr, time::Duration};
use videocall_runtime::service::Service;

use clap::Parser;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties,
    options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};
use quality_aggregator::{AggregatorArgs, AggregatorConfig, consumer::REASON_HEADER};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use videocall_entities::{call_quality, processed_messages, quality_samples};

const WAIT: Duration = Duration::from_secs(15);

/// Polls `probe` every 50 ms until it yields a value; panics naming `what` after [`WAIT`].
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Harness {
    db: DatabaseConnection,
    database_url: String,
    config: AggregatorConfig,
    ops: SocketAddr,
    amqp: Connection,
    channel: Channel,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Harness {
    async fn start() -> Self {
        videocall_runtime::telemetry::init_for_tests();
        let database_url = videocall_testkit::fresh_database().await;
        let db = videocall_runtime::db::connect_and_migrate(&database_url, &Default::default()).await.expect("db");
        let u = videocall_testkit::unique_name;
        let config = AggregatorArgs::try_parse_from([
            "quality-aggregator".to_owned(),
            format!("--database-url={database_url}"),
            format!("--amqp-url={}", videocall_testkit::amqp_url()),
            format!("--events-exchange={}", u("test.events")),
            format!("--quality-queue={}", u("test.quality")),
            format!("--dlx-exchange={}", u("test.dlx")),
            "--max-retries=1".to_owned(),
            "--ops-listen-addr=127.0.0.1:0".to_owned(),
            // Samples reported back to back in tests: a wide window so a slow run still judges them.
            "--alert-window-secs=120".to_owned(),
            format!("--cell-id={}", u("test")),
            format!("--queue-type={}", videocall_testkit::QUEUE_TYPE),
        ])
        .expect("flags")
        .validate()
        .expect("valid config");
        let shutdown = CancellationToken::new();
        let app = quality_aggregator::Application::build(config.clone(), &shutdown).await.expect("binds");
        let ops = app.ops_addr().expect("ops address");
        let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        let amqp = Connection::connect(&videocall_testkit::amqp_url(), ConnectionProperties::default())
            .await
            .expect("RabbitMQ reachable");
        let channel = amqp.create_channel().await.expect("channel");
        channel.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
        let h = Self { db, database_url, config, ops, amqp, channel, shutdown, task };
        eventually("a consumer on the queue", || async { h.consumers().await.filter(|n| *n > 0) }).await;
        h
    }

    async fn consumers(&self) -> Option<u32> {
        let probe = self.amqp.create_channel().await.ok()?;
        let q = probe
            .queue_declare(
                self.config.queue.as_str().into(),
                QueueDeclareOptions { passive: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .ok()?;
        let _ = probe.close(200, "probe".into()).await;
        Some(q.consumer_count())
    }

    async fn publish(&self, routing_key: &str, message_id: Option<&str>, body: &[u8]) {
        let mut properties = BasicProperties::default().with_delivery_mode(2);
        if let Some(id) = message_id {
            properties = properties.with_message_id(id.into());
        }
        let confirm = self
            .channel
            .basic_publish(
                self.config.events_exchange.as_str().into(),
                routing_key.into(),
                BasicPublishOptions { mandatory: true, ..Default::default() },
                body,
                properties,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert_eq!(confirm, Confirmation::Ack(None), "routed to the aggregator's queue");
    }

    async fn send(&self, event: &Value) {
        let routing_key = match event["type"].as_str() {
            Some("CallQualityReported") => "call.quality",
            Some("CallEnded") => "call.ended",
            Some("CallMissed") => "call.missed",
            _ => "call.rejected",
        };
        self.publish(routing_key, event["id"].as_str(), event.to_string().as_bytes()).await;
    }

    /// Waits until `n` messages are recorded as processed, and checks it is exactly `n`.
    async fn wait_processed(&self, n: u64) {
        let count = || async { processed_messages::Entity::find().count(&self.db).await.expect("count") };
        eventually(&format!("{n} processed messages"), || async { (count().await >= n).then_some(()) }).await;
        assert_eq!(count().await, n);
    }

    /// Waits until the `/metrics` counter of `outcome` reaches `n`.
    async fn wait_outcome(&self, outcome: &str, n: u64) {
        let line = format!("videocall_quality_messages_total{{outcome=\"{outcome}\"}} {n}");
        eventually(&line, || async {
            let (_, body) = videocall_testkit::http_get(self.ops, "/metrics").await?;
            body.lines().any(|l| l == line).then_some(())
        })
        .await;
    }

    async fn rows(&self, call: Uuid) -> Vec<call_quality::Model> {
        call_quality::Entity::find()
            .filter(call_quality::Column::CallId.eq(call))
            .order_by_asc(call_quality::Column::Scope)
            .all(&self.db)
            .await
            .expect("summary rows")
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        let task = std::mem::replace(&mut self.task, tokio::spawn(async { Ok(()) }));
        let result = tokio::time::timeout(WAIT, task).await.expect("stops promptly").expect("no panic");
        result.expect("run returns Ok on shutdown");
        assert_eq!(self.consumers().await, Some(0), "no consumer left on the queue");
    }
}

#[allow(clippy::too_many_arguments)]
fn sample(
    call: Uuid,
    reporter: &str,
    direction: &str,
    rtt: f64,
    jitter: f64,
    loss: f64,
    kbps: f64,
    w: u32,
    h: u32,
) -> Value {
    json!({
        "specversion": "1.0", "id": Uuid::now_v7().to_string(), "source": "/videocall/test/api-gateway",
        "type": "CallQualityReported", "time": "2026-11-25T09:00:00.000Z", "subject": call.to_string(),
        "datacontenttype": "application/json",
        "data": {"call_id": call, "reporter_id": reporter, "direction": direction, "rtt_ms": rtt,
                 "jitter_ms": jitter, "packet_loss_percent": loss, "bitrate_kbps": kbps, "width": w,
                 "height": h, "fps": 30.0, "reported_at": "2026-11-25T09:00:00Z"}
    })
}

fn ending(call: Uuid, event_type: &str) -> Value {
    json!({"specversion": "1.0", "id": Uuid::now_v7().to_string(), "source": "/videocall/test/api-gateway",
           "type": event_type, "subject": call.to_string(), "data": {"call_id": call, "status": "ended"}})
}

fn close(what: &str, actual: f64, expected: f64) {
    assert!((actual - expected).abs() < 1e-9, "{what}: expected {expected}, got {actual}");
}

/// (count, avg rtt, avg jitter, avg loss, max loss, avg bitrate, resolution, stability, mos).
fn check(row: &call_quality::Model, expected: (i64, f64, f64, f64, f64, f64, &str, f64, f64)) {
    let scope = &row.scope;
    assert_eq!(row.sample_count, expected.0, "{scope}: sample_count");
    close(&format!("{scope} avg_rtt_ms"), row.avg_rtt_ms, expected.1);
    close(&format!("{scope} avg_jitter_ms"), row.avg_jitter_ms, expected.2);
    close(&format!("{scope} avg_packet_loss"), row.avg_packet_loss, expected.3);
    close(&format!("{scope} max_packet_loss"), row.max_packet_loss, expected.4);
    close(&format!("{scope} avg_bitrate_kbps"), row.avg_bitrate_kbps, expected.5);
    assert_eq!(row.resolution, expected.6, "{scope}: resolution");
    close(&format!("{scope} stability"), row.stability, expected.7);
    close(&format!("{scope} mos"), row.mos, expected.8);
}

#[tokio::test]
async fn samples_become_per_direction_summaries_with_the_hand_computed_numbers() {
    let h = Harness::start().await;
    let call = Uuid::now_v7();
    // The samples of quality_math's hand computation: uplink A, B; downlink C (bitrate 0) and D
    // (loss 60 %), both disconnects.
    h.send(&sample(call, "alice", "outbound", 100.0, 10.0, 1.0, 1000.0, 1280, 720)).await;
    h.send(&sample(call, "alice", "outbound", 200.0, 20.0, 3.0, 2000.0, 1280, 720)).await;
    h.send(&sample(call, "bob", "inbound", 60.0, 4.0, 0.0, 0.0, 640, 360)).await;
    h.send(&sample(call, "bob", "inbound", 140.0, 12.0, 60.0, 500.0, 1920, 1080)).await;
    h.wait_processed(4).await;

    let rows = h.rows(call).await;
    let scopes: Vec<_> = rows.iter().map(|r| r.scope.as_str()).collect();
    assert_eq!(scopes, ["all", "inbound", "outbound"]);
    // all: (100+200+60+140)/4 = 125; (10+20+4+12)/4 = 11.5; (1+3+0+60)/4 = 16; max 60;
    // (1000+2000+0+500)/4 = 875; 1280x720 twice; (1 − 2/4)/(1 + √32.75/10) = 0.318010292…;
    // R = 93.2 − 95.5/40 − 2.5·16 = 50.8125 → MOS 2.617698706…
    check(&rows[0], (4, 125.0, 11.5, 16.0, 60.0, 875.0, "1280x720", 0.31801029210930865, 2.617698706298828));
    // inbound: 100, 8, 30, 60, 250; tie → 1920x1080; all disconnects → 0; R = 16.3 → MOS 1.153157571
    check(&rows[1], (2, 100.0, 8.0, 30.0, 60.0, 250.0, "1920x1080", 0.0, 1.153157571));
    // outbound: 150, 15, 2, 3, 1500; 1280x720; σ = 5 → 1/1.5; R = 85.325 → MOS 4.208348894…
    check(&rows[2], (2, 150.0, 15.0, 2.0, 3.0, 1500.0, "1280x720", 2.0 / 3.0, 4.208348894078125));
    assert_eq!(rows[0].disconnects, 2);
    assert_eq!(rows[0].resolutions, json!({"1280x720": 2, "640x360": 1, "1920x1080": 1}));
    assert!(rows.iter().all(|r| r.finalized_at.is_none()), "the call has not ended");
    let stored = quality_samples::Entity::find().filter(quality_samples::Column::CallId.eq(call)).count(&h.db).await;
    assert_eq!(stored.expect("count"), 4);
    h.stop().await;
}

#[tokio::test]
async fn a_redelivered_message_is_applied_once() {
    let h = Harness::start().await;
    let call = Uuid::now_v7();
    let event = sample(call, "alice", "inbound", 80.0, 5.0, 1.0, 900.0, 640, 480);
    h.send(&event).await;
    h.send(&event).await; // same CloudEvents id
    let body = event.to_string();
    h.publish("call.quality", Some("amqp-id-1"), body.as_bytes()).await;
    h.publish("call.quality", Some("amqp-id-1"), body.as_bytes()).await; // same AMQP message_id
    h.wait_outcome("applied", 2).await;
    h.wait_outcome("duplicate", 2).await;
    h.wait_processed(2).await;
    let rows = h.rows(call).await;
    assert_eq!(rows.iter().map(|r| r.sample_count).collect::<Vec<_>>(), [2, 2], "all and inbound, 2 each");
    let stored = quality_samples::Entity::find().count(&h.db).await.expect("count");
    assert_eq!(stored, 2, "one row per distinct message id");
    h.stop().await;
}

#[tokio::test]
async fn poison_messages_are_dead_lettered_with_the_reason_and_change_nothing() {
    let h = Harness::start().await;
    let call = Uuid::now_v7();
    h.publish("call.quality", Some("p-1"), b"{not json").await;
    h.send(&sample(call, "alice", "inbound", -5.0, 1.0, 0.0, 100.0, 0, 0)).await;
    h.send(&sample(call, "alice", "sideways", 5.0, 1.0, 0.0, 100.0, 0, 0)).await;
    h.send(&sample(call, "alice", "inbound", 5.0, 1.0, 0.0, 100.0, 1280, 0)).await;

    let dlq = format!("{}.dlq", h.config.queue);
    let mut reasons = Vec::new();
    while reasons.len() < 4 {
        let message = eventually("a dead letter", || async {
            h.channel.basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: true }).await.expect("basic.get")
        })
        .await;
        let headers = message.delivery.properties.headers().clone().expect("headers");
        match headers.inner().get(REASON_HEADER) {
            Some(AMQPValue::LongString(s)) => reasons.push(s.to_string()),
            other => panic!("no reason header: {other:?}"),
        }
    }
    assert!(reasons[0].starts_with("malformed: body is not JSON"), "{reasons:?}");
    assert_eq!(reasons[1], "malformed: data.rtt_ms must be between 0 and 60000, got -5");
    assert!(reasons[2].contains("unknown variant `sideways`"), "{reasons:?}");
    assert_eq!(reasons[3], "malformed: data.width and height must both be 0 (no video) or both positive, got 1280x0");
    assert!(h.rows(call).await.is_empty(), "no summary from poison");
    assert_eq!(quality_samples::Entity::find().count(&h.db).await.expect("count"), 0);
    assert_eq!(processed_messages::Entity::find().count(&h.db).await.expect("count"), 0);
    h.stop().await;
}

#[tokio::test]
async fn call_ended_finalizes_and_later_samples_are_stored_but_change_nothing() {
    let h = Harness::start().await;
    let call = Uuid::now_v7();
    h.send(&sample(call, "alice", "outbound", 100.0, 10.0, 1.0, 1000.0, 1280, 720)).await;
    h.send(&ending(call, "CallEnded")).await;
    h.wait_processed(2).await;
    let before = h.rows(call).await;
    assert!(before.iter().all(|r| r.finalized_at.is_some()), "every scope final: {before:?}");

    h.send(&sample(call, "bob", "inbound", 900.0, 90.0, 40.0, 10.0, 320, 240)).await;
    h.send(&ending(call, "CallEnded")).await; // a second ending changes nothing either
    h.wait_processed(4).await;
    let after = h.rows(call).await;
    assert_eq!(after.len(), 2, "no inbound row appeared: {after:?}");
    let all = &after[0];
    // One sample: rtt 100, jitter 10, loss 1 → MOS 4.305864079 (quality_math's first example).
    check(all, (1, 100.0, 10.0, 1.0, 1.0, 1000.0, "1280x720", 1.0, 4.305864079));
    assert_eq!(all.late_samples, 1);
    assert_eq!(all.finalized_at, before[0].finalized_at, "finalized once");
    let late = quality_samples::Entity::find()
        .filter(quality_samples::Column::Applied.eq(false))
        .all(&h.db)
        .await
        .expect("samples");
    assert_eq!(late.iter().map(|s| s.reporter_id.as_str()).collect::<Vec<_>>(), ["bob"], "stored, not applied");

    // A missed call without samples gets an empty, final summary.
    let missed = Uuid::now_v7();
    h.send(&ending(missed, "CallMissed")).await;
    h.wait_processed(5).await;
    let rows = h.rows(missed).await;
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].scope.as_str(), rows[0].sample_count), ("all", 0));
    assert!(rows[0].finalized_at.is_some());

    // /metrics: one summary finalized with samples (the second ending and the empty missed call
    // add nothing), its MOS and loss in the distributions; every message's lag observed once.
    let (_, body) = videocall_testkit::http_get(h.ops, "/metrics").await.expect("metrics");
    for line in [
        "videocall_call_mos_count 1",
        "videocall_call_mos_sum 4.305864079",
        "videocall_call_packet_loss_percent_sum 1.0",
        "videocall_quality_messages_total{outcome=\"finalized\"} 3",
    ] {
        assert!(body.lines().any(|l| l.starts_with(line)), "metrics have {line}:\n{body}");
    }
    assert!(body.contains("videocall_queue_lag_seconds_count{queue="), "{body}");
    h.stop().await;
}

mod end_to_end {
    //! Gateway and aggregator together: UpdateCallQuality → outbox → RabbitMQ → aggregator →
    //! call_quality → GetCall.

    use super::*;
    use api_gateway::{Application, GatewayConfig, RingTimeouts};
    use tonic::Request;
    use videocall_proto::v1::{self as pb, call_service_client::CallServiceClient};
    use videocall_runtime::{
        auth::{JwtKeys, Role},
        config::{Common, Secret},
        ice::IceConfig,
        telemetry::LogFormat,
    };

    const JWT_SECRET: &str = "end-to-end-test-secret-0123456789";

    fn gateway_config(database_url: String, exchange: &str) -> GatewayConfig {
        GatewayConfig {
            call_policy: api_gateway::CallPolicy::open(),
            grpc_reflection: false,
            unrouted: videocall_testkit::classic_unrouted(),
            common: Common { service_name: "api-gateway".into(), cell_id: "test".into(), log_format: LogFormat::Text },
            database_url,
            amqp_url: videocall_testkit::amqp_url(),
            signal_bus: videocall_signaling::signal_bus::SignalBusConfig {
                redis_url: std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
                cell_id: videocall_testkit::unique_name("test"),
                log_capacity: 256,
                log_ttl: Duration::from_secs(600),
            },
            grpc_listen_addr: "127.0.0.1:0".parse().expect("addr"),
            tokens: videocall_runtime::auth::JwtKeys::new(Secret::new(JWT_SECRET)),
            ice: IceConfig {
                stun_urls: vec![],
                turn_urls: vec![],
                turn_secret: None,
                turn_ttl: Duration::from_secs(3600),
            },
            ring_timeouts: RingTimeouts { support: 45, sales: 45, consult: 45 },
            desk: Default::default(),
            events_exchange: exchange.to_owned(),
            outbox_batch_size: 100,
            outbox_poll_interval: Duration::from_millis(100),
            shutdown_grace: Duration::from_secs(5),
            ops_listen_addr: None,
        }
    }

    type Client = CallServiceClient<tonic::transport::Channel>;

    /// A gateway on the harness' database and exchange, its client, and how to stop it.
    async fn gateway(h: &Harness) -> (Client, CancellationToken, JoinHandle<anyhow::Result<()>>) {
        let shutdown = CancellationToken::new();
        let gateway = Application::build(gateway_config(h.database_url.clone(), &h.config.events_exchange), &shutdown)
            .await
            .expect("gateway builds");
        let addr = gateway.local_addr();
        let task = tokio::spawn(gateway.run_until_stopped(shutdown.clone()));
        let client = CallServiceClient::connect(format!("http://{addr}")).await.expect("connect");
        (client, shutdown, task)
    }

    fn as_user<T>(user: &str, message: T) -> Request<T> {
        let token = JwtKeys::new(Secret::new(JWT_SECRET)).mint(user, Role::User, chrono::Utc::now().timestamp() + 600);
        let mut request = Request::new(message);
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ascii"));
        request
    }

    fn report(call_id: &str, direction: &str, rtt: f64, jitter: f64, loss: f64) -> pb::UpdateCallQualityRequest {
        pb::UpdateCallQualityRequest {
            call_id: call_id.into(),
            rtt_ms: rtt,
            jitter_ms: jitter,
            packet_loss_percent: loss,
            bitrate_kbps: 1200.0,
            width: 1280,
            height: 720,
            fps: 30.0,
            direction: direction.into(),
        }
    }

    #[tokio::test]
    async fn a_reported_sample_reaches_get_call_and_is_final_after_the_hangup() {
        let h = Harness::start().await;
        // Every other event of the call needs a queue too, or the relay keeps it pending.
        let tap = videocall_testkit::EventTap::bind(&h.config.events_exchange).await;
        let (mut client, shutdown, gateway_task) = gateway(&h).await;

        let req = pb::InitiateCallRequest {
            callee_id: "bob".into(),
            call_type: pb::CallType::Support as i32,
            ..Default::default()
        };
        let id =
            client.initiate_call(as_user("alice", req)).await.expect("initiate").into_inner().call.expect("call").id;
        client.answer_call(as_user("bob", pb::AnswerCallRequest { call_id: id.clone() })).await.expect("answer");
        // alice's uplink and bob's downlink: rtt 100/200, jitter 10/20, loss 1/3 (quality_math's uplink pair).
        client.update_call_quality(as_user("alice", report(&id, "outbound", 100.0, 10.0, 1.0))).await.expect("alice");
        client.update_call_quality(as_user("bob", report(&id, "inbound", 200.0, 20.0, 3.0))).await.expect("bob");

        let reader = client.clone();
        let get = |user: &'static str| {
            let (mut client, id) = (reader.clone(), id.clone());
            async move {
                let reply = client.get_call(as_user(user, pb::GetCallRequest { call_id: id })).await.expect("get");
                reply.into_inner().call.expect("call").quality
            }
        };
        let q = eventually("a summary of 2 samples in GetCall", || async {
            get("alice").await.filter(|q| q.sample_count == 2)
        })
        .await;
        // Both: averages 150 / 15 / 2, max 3, σ_jitter 5 → stability 2/3, R = 85.325 → MOS 4.208348894…
        assert!(!q.finalized);
        close("avg_rtt_ms", q.avg_rtt_ms, 150.0);
        close("avg_jitter_ms", q.avg_jitter_ms, 15.0);
        close("avg_packet_loss_percent", q.avg_packet_loss_percent, 2.0);
        close("max_packet_loss_percent", q.max_packet_loss_percent, 3.0);
        close("avg_bitrate_kbps", q.avg_bitrate_kbps, 1200.0);
        close("stability", q.stability, 2.0 / 3.0);
        close("mos", q.mos, 4.208348894078125);
        assert_eq!(q.resolution, "1280x720");
        let (inbound, outbound) = (q.inbound.expect("inbound"), q.outbound.expect("outbound"));
        assert_eq!((inbound.sample_count, outbound.sample_count), (1, 1));
        close("inbound rtt", inbound.avg_rtt_ms, 200.0);
        close("outbound rtt", outbound.avg_rtt_ms, 100.0);
        close("outbound mos", outbound.mos, 4.305864079);

        client.end_call(as_user("bob", pb::EndCallRequest { call_id: id.clone(), reason: 0 })).await.expect("end");
        let q = eventually("a final summary", || async { get("bob").await.filter(|q| q.finalized) }).await;
        assert_eq!(q.sample_count, 2);
        let history = client
            .get_user_calls(as_user("bob", pb::GetUserCallsRequest::default()))
            .await
            .expect("history")
            .into_inner();
        let summary = history.calls[0].quality.as_ref().expect("history carries the summary");
        assert!(summary.finalized && summary.sample_count == 2, "{summary:?}");

        shutdown.cancel();
        gateway_task.await.expect("joins").expect("gateway stops cleanly");
        tap.delete_exchange(&h.config.events_exchange).await;
        h.stop().await;
    }

    /// One party's user channel on the aggregator's signal bus: the frames pushed to them.
    async fn frames_of(cell_id: &str, user: &str) -> tokio::sync::mpsc::UnboundedReceiver<Value> {
        use futures_util::StreamExt;
        let url = std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let mut pubsub = redis::Client::open(url).expect("url").get_async_pubsub().await.expect("Redis reachable");
        pubsub.subscribe(videocall_signaling::redis_keys::user_channel(cell_id, user)).await.expect("subscribe");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut messages = pubsub.into_on_message();
            while let Some(m) = messages.next().await {
                let frame: Value = serde_json::from_slice(m.get_payload_bytes()).unwrap_or(Value::Null);
                if tx.send(frame).is_err() {
                    break;
                }
            }
        });
        rx
    }

    #[tokio::test]
    async fn quality_alerts_open_once_per_lasting_drop_reach_both_parties_and_show_in_get_call() {
        let h = Harness::start().await;
        let mut tap = videocall_testkit::EventTap::bind(&h.config.events_exchange).await;
        let (mut client, shutdown, gateway_task) = gateway(&h).await;
        let cell = h.config.common.cell_id.clone();
        let (mut alice_frames, mut bob_frames) = (frames_of(&cell, "alice").await, frames_of(&cell, "bob").await);

        let req = pb::InitiateCallRequest {
            callee_id: "bob".into(),
            call_type: pb::CallType::Sales as i32,
            ..Default::default()
        };
        let id =
            client.initiate_call(as_user("alice", req)).await.expect("initiate").into_inner().call.expect("call").id;
        client.answer_call(as_user("bob", pb::AnswerCallRequest { call_id: id.clone() })).await.expect("answer");

        // bob measures what alice sends him: good is 40 ms / 0.2 % (MOS 4.38), bad 80 ms / 12 %.
        let mut stored = 0;
        let mut series = |samples: &'static str| {
            let (mut client, id, db) = (client.clone(), id.clone(), h.db.clone());
            let start = stored;
            stored += samples.len() as u64;
            async move {
                for (i, kind) in samples.chars().enumerate() {
                    let (rtt, loss) = if kind == 'G' { (40.0, 0.2) } else { (80.0, 12.0) };
                    let reporter = if kind == 'a' { "alice" } else { "bob" };
                    let sample = report(&id, "inbound", rtt, 3.0, loss);
                    client.update_call_quality(as_user(reporter, sample)).await.expect("report");
                    // One at a time, as a client reports every 2 s: each is stored before the next.
                    let n = start + i as u64 + 1;
                    eventually(&format!("{n} stored samples"), || async {
                        (quality_samples::Entity::find().count(&db).await.expect("count") >= n).then_some(())
                    })
                    .await;
                }
            }
        };
        series("GGGG").await; // steady
        series("BGGG").await; // a dip of one sample
        series("BBGBBGa").await; // two short runs, and one bad sample of the other path (alice's 'a')
        let alerts = |events: Vec<videocall_testkit::Event>| -> Vec<Value> {
            events.into_iter().filter(|e| e.routing_key.starts_with("call.quality_")).map(|e| e.body).collect()
        };
        let mut quiet = Vec::new();
        while let Some(e) = tap.next(Duration::from_millis(800)).await {
            quiet.push(e);
        }
        assert_eq!(alerts(quiet), Vec::<Value>::new(), "no alert for a dip or for runs shorter than 3");
        series("BBBB").await; // a lasting drop: the third bad sample opens the episode
        series("GGG").await; // good three times in a row: it ends

        let mut events = Vec::new();
        while let Some(e) = tap.next(Duration::from_secs(2)).await {
            events.push(e);
        }
        let bodies = alerts(events);
        let types: Vec<&str> = bodies.iter().map(|b| b["type"].as_str().unwrap_or_default()).collect();
        assert_eq!(types, ["CallQualityDegraded", "CallQualityRecovered"], "{bodies:#?}");
        let (down, up) = (&bodies[0]["data"], &bodies[1]["data"]);
        assert_eq!(down["alert_id"], up["alert_id"], "one episode");
        assert_eq!(bodies[0]["subject"], json!(id));
        for d in [down, up] {
            assert_eq!((d["call_id"].as_str(), d["call_type"].as_str()), (Some(id.as_str()), Some("sales")));
            assert_eq!((d["sender_id"].as_str(), d["receiver_id"].as_str()), (Some("alice"), Some("bob")));
            assert_eq!(
                (d["likely_cause_id"].as_str(), d["direction"].as_str()),
                (Some("alice"), Some("caller_to_callee"))
            );
        }
        assert_eq!(down["state"], "degraded");
        close("degraded loss", down["packet_loss_percent"].as_f64().expect("loss"), 12.0);
        close("degraded rtt", down["rtt_ms"].as_f64().expect("rtt"), 80.0);
        assert!(down["ended_at"].is_null());
        assert_eq!(up["state"], "recovered");
        close("recovered loss", up["packet_loss_percent"].as_f64().expect("loss"), 0.2);
        assert!(up["mos"].as_f64().expect("mos") > 4.0);
        assert!(up["ended_at"].is_string());

        // Both parties got both frames, as the events say.
        for (who, frames) in [("alice", &mut alice_frames), ("bob", &mut bob_frames)] {
            let mut got = Vec::new();
            while got.len() < 2 {
                let frame = tokio::time::timeout(WAIT, frames.recv()).await.expect("a frame in time").expect("open");
                if frame["type"] == "quality.alert" {
                    got.push(frame);
                }
            }
            let states: Vec<&str> = got.iter().map(|f| f["state"].as_str().unwrap_or_default()).collect();
            assert_eq!(states, ["degraded", "recovered"], "{who}: {got:#?}");
            assert_eq!(got[0]["alert_id"], down["alert_id"], "{who}");
            assert_eq!(got[0]["likely_cause_id"], "alice", "{who}");
        }

        // Another drop, then the call ends while it lasts: closed as call_ended, no recovered event.
        series("BBB").await;
        client.end_call(as_user("alice", pb::EndCallRequest { call_id: id.clone(), reason: 0 })).await.expect("end");
        let call = eventually("the second episode closed by the ending", || async {
            let reply = client.clone().get_call(as_user("bob", pb::GetCallRequest { call_id: id.clone() })).await;
            let call = reply.expect("get").into_inner().call.expect("call");
            (call.quality_alerts.len() == 2 && call.quality_alerts[1].ended_at.is_some()).then_some(call)
        })
        .await;
        let episodes: Vec<(&str, &str, &str)> = call
            .quality_alerts
            .iter()
            .map(|a| (a.sender_id.as_str(), a.direction.as_str(), a.end_reason.as_str()))
            .collect();
        assert_eq!(episodes, [("alice", "caller_to_callee", "recovered"), ("alice", "caller_to_callee", "call_ended")]);
        assert_eq!(call.quality_alerts[0].alert_id, down["alert_id"].as_str().expect("id"));
        assert!(call.quality_alerts.iter().all(|a| a.worst_mos <= a.mos && a.mos < 3.3));
        let mut events = Vec::new();
        while let Some(e) = tap.next(Duration::from_secs(2)).await {
            events.push(e);
        }
        let types: Vec<String> =
            alerts(events).iter().map(|b| b["type"].as_str().unwrap_or_default().to_owned()).collect();
        assert_eq!(types, ["CallQualityDegraded"], "the second episode opened; the call's end closed it silently");
        let (_, body) = videocall_testkit::http_get(h.ops, "/metrics").await.expect("metrics");
        for line in [
            "videocall_quality_alerts_total{desk=\"sales\",state=\"degraded\"} 2",
            "videocall_quality_alerts_total{desk=\"sales\",state=\"recovered\"} 1",
            "videocall_quality_degraded_calls_total{desk=\"sales\"} 1",
            "videocall_quality_degraded_calls_total{desk=\"support\"} 0",
        ] {
            assert!(body.lines().any(|l| l == line), "metrics have {line}:\n{body}");
        }

        shutdown.cancel();
        gateway_task.await.expect("joins").expect("gateway stops cleanly");
        tap.delete_exchange(&h.config.events_exchange).await;
        h.stop().await;
    }
}
