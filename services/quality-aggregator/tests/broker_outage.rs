//! Fault suite, broker outage (issue 7): RabbitMQ vanishes for 10 s in the middle of 1,000 call
//! lifecycles, and nothing is lost.
//!
//! The gateway (outbox relay) and the quality-aggregator both reach the real RabbitMQ through one
//! [`FaultProxy`]; cutting it drops their connections and refuses new ones, as a stopped broker
//! would, while the broker itself (shared with other tests) keeps running. An [`EventTap`] bound
//! directly on the real exchange sees every message that got through. Afterwards: no outbox row
//! is left unpublished, every event reached the tap at least once (duplicates are counted, not
//! forbidden), nothing else did, and the aggregator applied each of its events exactly once.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};
use videocall_runtime::service::Service;

use api_gateway::{Application, GatewayConfig, RingTimeouts};
use chrono::{DateTime, Utc};
use clap::Parser;
use lapin::{Connection, ConnectionProperties, options::QueueDeclareOptions, types::FieldTable};
use quality_aggregator::{AggregatorArgs, summaries::CONSUMER};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter};
use tokio_util::sync::CancellationToken;
use tonic::{Request, transport::Channel};
use videocall_entities::{call_quality, outbox, processed_messages, quality_samples};
use videocall_proto::v1::{self as pb, call_service_client::CallServiceClient};
use videocall_runtime::{
    auth::{JwtKeys, Role},
    config::{Common, Secret},
    ice::IceConfig,
    telemetry::LogFormat,
};
use videocall_testkit::{EventTap, amqp_url, fault_proxy::FaultProxy, fresh_database, http_get, unique_name};

const LIFECYCLES: usize = 1_000;
/// Lifecycles driven at once (each a chain of five RPCs).
const CONCURRENCY: usize = 16;
/// The line is cut once this many lifecycles are complete...
const CUT_AFTER: usize = 250;
/// ...for this long.
const CUT_FOR: Duration = Duration::from_secs(10);
/// Per RPC: far above what one takes, so a hang is reported as one.
const RPC_DEADLINE: Duration = Duration::from_secs(20);
/// For the backlog to drain and the aggregator to catch up after the restore.
const DRAIN_WAIT: Duration = Duration::from_secs(60);
/// Events per lifecycle: initiated, ringing, answered, quality, ended.
const EVENTS_PER_LIFECYCLE: usize = 5;
const JWT_SECRET: &str = "broker-outage-test-secret-0123456789";
const RABBITMQ: &str = "127.0.0.1:5672";

fn gateway_config(database_url: String, amqp_url: String, exchange: &str) -> GatewayConfig {
    GatewayConfig {
        call_policy: api_gateway::CallPolicy::open(),
        grpc_reflection: false,
        unrouted: videocall_testkit::classic_unrouted(),
        common: Common { service_name: "api-gateway".into(), cell_id: "test".into(), log_format: LogFormat::Text },
        database_url,
        amqp_url,
        signal_bus: videocall_signaling::signal_bus::SignalBusConfig {
            redis_url: std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
            cell_id: unique_name("test"),
            log_capacity: 256,
            log_ttl: Duration::from_secs(600),
        },
        grpc_listen_addr: "127.0.0.1:0".parse().expect("addr"),
        tokens: videocall_runtime::auth::JwtKeys::new(Secret::new(JWT_SECRET)),
        ice: IceConfig { stun_urls: vec![], turn_urls: vec![], turn_secret: None, turn_ttl: Duration::from_secs(3600) },
        ring_timeouts: RingTimeouts::uniform(600),
        desk: Default::default(),
        events_exchange: exchange.to_owned(),
        outbox_batch_size: 100,
        outbox_poll_interval: Duration::from_millis(100),
        shutdown_grace: Duration::from_secs(5),
        ops_listen_addr: None,
    }
}

fn as_user<T>(keys: &JwtKeys, user: &str, message: T) -> Request<T> {
    let token = keys.mint(user, Role::User, Utc::now().timestamp() + 600);
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ascii"));
    request.set_timeout(RPC_DEADLINE);
    request
}

/// One call from `c<i>` to `a<i>`: initiate, ring, answer, one quality sample, hang up.
async fn lifecycle(client: &mut CallServiceClient<Channel>, keys: &JwtKeys, i: usize) -> Result<(), String> {
    let (caller, callee) = (format!("c{i}"), format!("a{i}"));
    let fail = |step: &str, status: tonic::Status| format!("lifecycle {i}: {step}: {status}");
    let initiate = pb::InitiateCallRequest {
        request_id: format!("outage-{i}"),
        callee_id: callee.clone(),
        call_type: pb::CallType::Support as i32,
        ..Default::default()
    };
    let call = client.initiate_call(as_user(keys, &caller, initiate)).await.map_err(|s| fail("initiate", s))?;
    let id = call.into_inner().call.ok_or_else(|| format!("lifecycle {i}: no call in the reply"))?.id;
    client
        .ring_call(as_user(keys, &callee, pb::RingCallRequest { call_id: id.clone() }))
        .await
        .map_err(|s| fail("ring", s))?;
    client
        .answer_call(as_user(keys, &callee, pb::AnswerCallRequest { call_id: id.clone() }))
        .await
        .map_err(|s| fail("answer", s))?;
    let sample = pb::UpdateCallQualityRequest {
        call_id: id.clone(),
        rtt_ms: 80.0,
        jitter_ms: 5.0,
        packet_loss_percent: 0.5,
        bitrate_kbps: 1500.0,
        width: 1280,
        height: 720,
        fps: 30.0,
        direction: "outbound".into(),
    };
    client.update_call_quality(as_user(keys, &caller, sample)).await.map_err(|s| fail("quality", s))?;
    client
        .end_call(as_user(keys, &caller, pb::EndCallRequest { call_id: id, reason: 0 }))
        .await
        .map_err(|s| fail("end", s))?;
    Ok(())
}

/// Polls `probe` every 100 ms until it is true; panics naming `what` after `wait`.
async fn wait_until<F, Fut>(what: &str, wait: Duration, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + wait;
    while !probe().await {
        assert!(Instant::now() < deadline, "timed out after {wait:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn ready(ops: SocketAddr) -> Option<u16> {
    http_get(ops, "/readyz").await.map(|(status, _)| status)
}

/// The value of the first `/metrics` line starting with `prefix`, 0 when absent.
async fn metric(ops: SocketAddr, prefix: &str) -> u64 {
    let (_, body) = http_get(ops, "/metrics").await.expect("aggregator /metrics answers");
    body.lines().find_map(|l| l.strip_prefix(prefix).and_then(|v| v.trim().parse().ok())).unwrap_or_default()
}

async fn backlog(db: &DatabaseConnection) -> u64 {
    outbox::Entity::find().filter(outbox::Column::PublishedAt.is_null()).count(db).await.expect("count backlog")
}

fn secs(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_milliseconds() as f64 / 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_second_broker_outage_during_1000_lifecycles_loses_nothing() {
    videocall_runtime::telemetry::init_for_tests();
    let proxy = FaultProxy::start(RABBITMQ.parse().expect("addr")).await;
    let proxied_amqp = proxy.rewrite_url(&amqp_url());
    let database_url = fresh_database().await;
    let exchange = unique_name("test.outage.events");
    let mut tap = EventTap::bind(&exchange).await;

    // The aggregator, through the proxy, on the gateway's database and exchange.
    let aggregator_config = AggregatorArgs::try_parse_from([
        "quality-aggregator".to_owned(),
        format!("--database-url={database_url}"),
        format!("--amqp-url={proxied_amqp}"),
        format!("--events-exchange={exchange}"),
        format!("--quality-queue={}", unique_name("test.outage.quality")),
        format!("--dlx-exchange={}", unique_name("test.outage.dlx")),
        "--ops-listen-addr=127.0.0.1:0".to_owned(),
        format!("--queue-type={}", videocall_testkit::QUEUE_TYPE),
    ])
    .expect("flags")
    .validate()
    .expect("valid config");
    let shutdown = CancellationToken::new();
    let aggregator =
        quality_aggregator::Application::build(aggregator_config.clone(), &shutdown).await.expect("aggregator binds");
    let aggregator_ops = aggregator.ops_addr().expect("ops address");
    let aggregator_task = tokio::spawn(aggregator.run_until_stopped(shutdown.clone()));
    wait_until("the aggregator to consume", Duration::from_secs(30), || async {
        ready(aggregator_ops).await == Some(200)
    })
    .await;

    let gateway = Application::build(gateway_config(database_url.clone(), proxied_amqp, &exchange), &shutdown)
        .await
        .expect("gateway builds");
    let db = gateway.db().clone();
    let client = CallServiceClient::connect(format!("http://{}", gateway.local_addr())).await.expect("connect");
    let gateway_task = tokio::spawn(gateway.run_until_stopped(shutdown.clone()));
    let keys = Arc::new(JwtKeys::new(Secret::new(JWT_SECRET)));

    // Drive the lifecycles; the outage is cut in from the side once CUT_AFTER are done.
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let (mut client, keys, next, done) = (client.clone(), keys.clone(), next.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= LIFECYCLES {
                    return Ok::<(), String>(());
                }
                lifecycle(&mut client, &keys, i).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    wait_until("lifecycles before the cut", Duration::from_secs(60), || async {
        done.load(Ordering::Relaxed) >= CUT_AFTER
    })
    .await;
    let cut_at = Utc::now();
    let done_at_cut = done.load(Ordering::Relaxed);
    proxy.cut();
    // The aggregator notices it lost the broker (its readiness says so) while the cut lasts.
    wait_until("the aggregator /readyz to turn 503 during the cut", CUT_FOR, || async {
        ready(aggregator_ops).await == Some(503)
    })
    .await;
    let aggregator_not_ready_after = secs(cut_at, Utc::now());
    tokio::time::sleep(CUT_FOR.saturating_sub(Duration::from_secs_f64(aggregator_not_ready_after.max(0.0)))).await;
    let done_at_restore = done.load(Ordering::Relaxed);
    let backlog_at_restore = backlog(&db).await;
    let restored_at = Utc::now();
    proxy.restore();
    wait_until("the aggregator /readyz to be 200 after the restore", Duration::from_secs(30), || async {
        ready(aggregator_ops).await == Some(200)
    })
    .await;
    let aggregator_ready_after = secs(restored_at, Utc::now());

    for worker in workers {
        worker.await.expect("worker task").unwrap_or_else(|e| panic!("a lifecycle failed: {e}"));
    }
    let drive_time = started.elapsed();
    let lifecycles_done_at = Utc::now();
    assert_eq!(done.load(Ordering::Relaxed), LIFECYCLES);

    // Bounded wait for the backlog to drain and the aggregator to apply every event it is bound to.
    let expected_events = (LIFECYCLES * EVENTS_PER_LIFECYCLE) as u64;
    wait_until("the outbox backlog to drain", DRAIN_WAIT, || async { backlog(&db).await == 0 }).await;
    let rows = outbox::Entity::find().all(&db).await.expect("outbox rows");
    assert_eq!(rows.len() as u64, expected_events, "one outbox row per event");
    let by_id: HashMap<String, &outbox::Model> = rows.iter().map(|r| (r.id.to_string(), r)).collect();

    // Every event reached the real exchange at least once; nothing else did.
    let mut deliveries: HashMap<String, usize> = HashMap::new();
    let deadline = Instant::now() + DRAIN_WAIT;
    while deliveries.len() < rows.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(event) = tap.next(left).await else {
            let missing: Vec<_> = by_id.keys().filter(|id| !deliveries.contains_key(*id)).take(10).collect();
            panic!("the tap saw {} of {} events; missing e.g. {missing:?}", deliveries.len(), rows.len());
        };
        let id = event.message_id.clone().expect("every event has a message id");
        let row = by_id.get(&id).unwrap_or_else(|| panic!("an event that is not in the outbox: {event:#?}"));
        assert_eq!(event.routing_key, row.routing_key, "routing key of {id}");
        assert_eq!(event.body["id"].as_str(), Some(id.as_str()), "message id is the CloudEvents id");
        *deliveries.entry(id).or_default() += 1;
    }
    // Late duplicates (a batch republished after a lost confirm) arrive within a quiet second.
    let mut extra = 0;
    while let Some(event) = tap.next(Duration::from_secs(1)).await {
        extra += 1;
        assert!(extra <= rows.len(), "more duplicates than events: the tap never goes quiet");
        let id = event.message_id.clone().expect("message id");
        assert!(by_id.contains_key(&id), "an event that is not in the outbox: {event:#?}");
        *deliveries.entry(id).or_default() += 1;
    }
    let tap_total: usize = deliveries.values().sum();
    let tap_duplicates = tap_total - deliveries.len();
    let mut per_key: HashMap<&str, usize> = HashMap::new();
    for row in &rows {
        *per_key.entry(row.routing_key.as_str()).or_default() += 1;
    }
    for key in ["call.initiated", "call.ringing", "call.answered", "call.quality", "call.ended"] {
        assert_eq!(per_key.get(key).copied(), Some(LIFECYCLES), "{key} events: {per_key:?}");
    }

    // The outage was real: the rows written while the line was cut waited for the restore.
    let written_during_cut: Vec<_> =
        rows.iter().filter(|r| r.created_at > cut_at && r.created_at < restored_at).collect();
    assert!(!written_during_cut.is_empty(), "lifecycles went on during the cut, so events were written then");
    let margin = chrono::Duration::seconds(1);
    let published_during_cut =
        rows.iter().filter(|r| r.published_at.is_some_and(|p| p > cut_at + margin && p < restored_at)).count();
    assert_eq!(published_during_cut, 0, "nothing can be confirmed while the broker is unreachable");
    assert!(backlog_at_restore > 0, "the backlog grew during the cut");
    let stats = proxy.stats();
    assert!(stats.cut >= 2, "both the relay's and the aggregator's connections were cut: {stats:?}");
    let postponed = rows.iter().filter(|r| r.attempts > 0).count();
    let first_after_restore = rows.iter().filter_map(|r| r.published_at).filter(|p| *p >= restored_at).min();
    let pending_at_restore_drained = rows
        .iter()
        .filter(|r| r.created_at < restored_at)
        .filter_map(|r| r.published_at)
        .max()
        .expect("rows were published");
    let last_published = rows.iter().filter_map(|r| r.published_at).max().expect("rows were published");

    // The aggregator applied each call.quality and call.ended exactly once.
    let aggregator_events = rows.iter().filter(|r| r.routing_key == "call.quality" || r.routing_key == "call.ended");
    let aggregator_ids: HashSet<String> = aggregator_events.map(|r| r.id.to_string()).collect();
    assert_eq!(aggregator_ids.len(), 2 * LIFECYCLES);
    let processed = || async {
        processed_messages::Entity::find()
            .filter(processed_messages::Column::Consumer.eq(CONSUMER))
            .all(&db)
            .await
            .expect("processed messages")
    };
    wait_until("the aggregator to apply every call.quality and call.ended", DRAIN_WAIT, || async {
        processed().await.len() >= aggregator_ids.len()
    })
    .await;
    let processed = processed().await;
    let applied_at = processed.iter().map(|p| p.processed_at).max().expect("processed rows");
    let processed: HashSet<String> = processed.into_iter().map(|p| p.message_id).collect();
    assert_eq!(processed, aggregator_ids, "the aggregator's inbox holds exactly its events");
    let samples = quality_samples::Entity::find().all(&db).await.expect("samples");
    assert_eq!(samples.len(), LIFECYCLES, "one stored sample per call: {} rows", samples.len());
    let calls_with_a_sample: HashSet<_> = samples.iter().map(|s| s.call_id).collect();
    assert_eq!(calls_with_a_sample.len(), LIFECYCLES, "no call's sample stored twice");
    let summaries =
        call_quality::Entity::find().filter(call_quality::Column::Scope.eq("all")).all(&db).await.expect("summaries");
    assert_eq!(summaries.len(), LIFECYCLES, "one summary per call");
    let mut late = 0;
    for s in &summaries {
        assert!(s.finalized_at.is_some(), "call {} finalized", s.call_id);
        // The sample counts once: in the summary, or as late when its CallEnded overtook it.
        assert_eq!(s.sample_count + s.late_samples, 1, "call {}: the sample applied exactly once: {s:?}", s.call_id);
        late += s.late_samples;
    }
    let dlq = queue_depth(&format!("{}.dlq", aggregator_config.queue)).await;
    assert_eq!(dlq, 0, "nothing dead-lettered");
    let aggregator_duplicates = metric(aggregator_ops, "videocall_quality_messages_total{outcome=\"duplicate\"}").await;

    eprintln!(
        "broker outage: {LIFECYCLES} lifecycles ({} events) driven in {:.1} s with {CONCURRENCY} at once; \
         cut for {:.1} s after {done_at_cut} lifecycles ({} done at restore); aggregator not ready {:.2} s into the cut and ready {:.2} s after the restore; \
         backlog at restore {backlog_at_restore} rows; first publish {:.2} s after restore; \
         rows pending at restore all published {:.2} s after restore; last row published {:.2} s after the last \
         lifecycle; aggregator's last event applied {:.2} s after the last lifecycle; rows postponed by a failed publish {postponed}; \
         tap deliveries {tap_total} ({tap_duplicates} duplicates); aggregator duplicates {aggregator_duplicates}; \
         late samples {late}; proxy {stats:?}",
        expected_events,
        drive_time.as_secs_f64(),
        secs(cut_at, restored_at),
        done_at_restore,
        aggregator_not_ready_after,
        aggregator_ready_after,
        first_after_restore.map(|p| secs(restored_at, p)).unwrap_or(f64::NAN),
        secs(restored_at, pending_at_restore_drained),
        secs(lifecycles_done_at, last_published).max(0.0),
        secs(lifecycles_done_at, applied_at),
    );

    shutdown.cancel();
    gateway_task.await.expect("gateway joins").expect("gateway stops cleanly");
    aggregator_task.await.expect("aggregator joins").expect("aggregator stops cleanly");
    tap.delete_exchange(&exchange).await;
}

/// Messages waiting in `queue` on the real broker.
async fn queue_depth(queue: &str) -> u32 {
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default()).await.expect("RabbitMQ");
    let channel = connection.create_channel().await.expect("channel");
    let q = channel
        .queue_declare(queue.into(), QueueDeclareOptions { passive: true, ..Default::default() }, FieldTable::default())
        .await
        .expect("the dead-letter queue exists");
    let _ = connection.close(200, "probe".into()).await;
    q.message_count()
}
