//! Fault suite, database outage (issue 7): PostgreSQL vanishes for 5 s under light load. The
//! gateway reaches the real PostgreSQL through a [`FaultProxy`]; cutting it drops every pooled
//! connection and refuses new ones, as a restarting server would, while the server itself (shared
//! with other tests) keeps running. Readiness must notice, commands must fail fast with
//! UNAVAILABLE, the gateway must come back by itself, and no transition may be half applied.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};
use videocall_runtime::service::Service;

use sea_orm::{Database, EntityTrait};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tonic::{Code, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
use videocall_entities::{call_transitions, calls, live_call_parties, outbox};
use videocall_proto::v1::{self as pb, call_service_client::CallServiceClient};
use videocall_runtime::{
    auth::{JwtKeys, Role},
    config::Secret,
};
use videocall_testkit::{EventTap, fault_proxy::FaultProxy, fresh_database, http_get, unique_name};

use crate::helpers::{JWT_SECRET, config, with_token};

const POSTGRES: &str = "127.0.0.1:5432";
const CUT_FOR: Duration = Duration::from_secs(5);
/// The gateway checks the database every 5 s, and a check may wait 5 s for a connection.
const NOTICE_WITHIN: Duration = Duration::from_secs(15);
/// Per RPC. The pool gives up on a connection after 5 s, so a command during the outage must be
/// refused well before this.
const RPC_DEADLINE: Duration = Duration::from_secs(15);
/// Light load: this many lifecycles at once, each a chain of four commands.
const LOADERS: usize = 2;
/// Lifecycles started together just before the cut, so that some commands are mid-transaction.
const BURST: usize = 24;
/// Upper bound on lifecycles per loader, so the load loop ends even if the stop flag never comes.
const MAX_LIFECYCLES_PER_LOADER: usize = 2_000;

fn request<T>(keys: &JwtKeys, user: &str, message: T) -> tonic::Request<T> {
    let mut request = with_token(&keys.mint(user, Role::User, chrono::Utc::now().timestamp() + 600), message);
    request.set_timeout(RPC_DEADLINE);
    request
}

/// How one command ended: its code and how long it took.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    code: Code,
    took: Duration,
}

async fn timed<T>(
    outcomes: &Mutex<Vec<Outcome>>,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, tonic::Status> {
    let started = Instant::now();
    let result = call.await;
    let code = result.as_ref().map(|_| Code::Ok).unwrap_or_else(|s| s.code());
    outcomes.lock().await.push(Outcome { code, took: started.elapsed() });
    result.map(tonic::Response::into_inner)
}

/// One call from `<prefix>c<n>` to `<prefix>a<n>`: initiate, ring, answer, end; stops at the
/// first refused command (the call stays where it got to, which is what the audit check is for).
async fn lifecycle(
    client: &mut CallServiceClient<Channel>,
    keys: &JwtKeys,
    user: &str,
    outcomes: &Mutex<Vec<Outcome>>,
) -> Result<(), tonic::Status> {
    let (caller, callee) = (format!("{user}-caller"), format!("{user}-callee"));
    let initiate = pb::InitiateCallRequest {
        callee_id: callee.clone(),
        call_type: pb::CallType::Sales as i32,
        ..Default::default()
    };
    let call = timed(outcomes, client.initiate_call(request(keys, &caller, initiate))).await?;
    let id = call.call.map(|c| c.id).unwrap_or_default();
    timed(outcomes, client.ring_call(request(keys, &callee, pb::RingCallRequest { call_id: id.clone() }))).await?;
    timed(outcomes, client.answer_call(request(keys, &callee, pb::AnswerCallRequest { call_id: id.clone() }))).await?;
    timed(outcomes, client.end_call(request(keys, &caller, pb::EndCallRequest { call_id: id, reason: 0 }))).await?;
    Ok(())
}

async fn readyz(ops: SocketAddr) -> Option<u16> {
    http_get(ops, "/readyz").await.map(|(status, _)| status)
}

async fn health(channel: &Channel) -> Option<i32> {
    let mut client = HealthClient::new(channel.clone());
    let mut check = tonic::Request::new(HealthCheckRequest { service: "videocall.v1.CallService".into() });
    check.set_timeout(Duration::from_secs(2));
    client.check(check).await.ok().map(|r| r.into_inner().status)
}

/// Polls every 100 ms until both `/readyz` and gRPC health say `ready`; returns how long it took.
async fn wait_readiness(ops: SocketAddr, channel: &Channel, ready: bool, within: Duration) -> Duration {
    let (want_http, want_grpc) =
        if ready { (200, ServingStatus::Serving as i32) } else { (503, ServingStatus::NotServing as i32) };
    let started = Instant::now();
    loop {
        let (http, grpc) = (readyz(ops).await, health(channel).await);
        if http == Some(want_http) && grpc == Some(want_grpc) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "readiness did not turn {} within {within:?}: /readyz {http:?}, health {grpc:?}",
            if ready { "ready" } else { "not ready" }
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_turns_the_gateway_not_ready_and_it_recovers_with_nothing_half_applied() {
    videocall_runtime::telemetry::init_for_tests();
    let database_url = fresh_database().await;
    let proxy = FaultProxy::start(POSTGRES.parse().expect("addr")).await;
    let exchange = unique_name("videocall.events.test.db-outage");
    let mut tap = EventTap::bind(&exchange).await;
    let mut cfg = config(proxy.rewrite_url(&database_url), &exchange);
    cfg.ops_listen_addr = Some("127.0.0.1:0".parse().expect("addr"));
    let shutdown = CancellationToken::new();
    let app = api_gateway::Application::build(cfg, &shutdown).await.expect("gateway builds through the proxy");
    let ops = app.ops_addr().expect("ops address");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", app.local_addr()))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let handle = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    wait_readiness(ops, &channel, true, NOTICE_WITHIN).await;

    // Light load in the background for the whole test.
    let keys = Arc::new(JwtKeys::new(Secret::new(JWT_SECRET)));
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicUsize::new(0));
    let mut loaders = Vec::new();
    for l in 0..LOADERS {
        let mut client = CallServiceClient::new(channel.clone());
        let (keys, outcomes, stop, completed) = (keys.clone(), outcomes.clone(), stop.clone(), completed.clone());
        loaders.push(tokio::spawn(async move {
            for n in 0..MAX_LIFECYCLES_PER_LOADER {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match lifecycle(&mut client, &keys, &format!("l{l}n{n}"), &outcomes).await {
                    Ok(()) => {
                        completed.fetch_add(1, Ordering::Relaxed);
                    }
                    // Refused: try again a little later rather than spin.
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while completed.load(Ordering::Relaxed) < 10 {
        assert!(Instant::now() < deadline, "10 lifecycles before the outage within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before_cut = outcomes.lock().await.len();
    assert!(outcomes.lock().await.iter().all(|o| o.code == Code::Ok), "all commands succeed before the outage");

    // Cut while a burst of commands is in flight (some mid-transaction), then readiness must
    // notice and commands must be refused promptly.
    let mut burst = Vec::new();
    for b in 0..BURST {
        let mut client = CallServiceClient::new(channel.clone());
        let (keys, outcomes) = (keys.clone(), outcomes.clone());
        burst.push(tokio::spawn(async move {
            let _ = lifecycle(&mut client, &keys, &format!("burst{b}"), &outcomes).await;
        }));
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    proxy.cut();
    let cut_at = Instant::now();
    let not_ready_after = wait_readiness(ops, &channel, false, NOTICE_WITHIN).await;
    let mut client = CallServiceClient::new(channel.clone());
    let probe = pb::InitiateCallRequest {
        callee_id: "probe-callee".into(),
        call_type: pb::CallType::Sales as i32,
        ..Default::default()
    };
    let started = Instant::now();
    let refused = client.initiate_call(request(&keys, "probe-caller", probe)).await;
    let refused_in = started.elapsed();
    let status = refused.expect_err("a command cannot succeed without the database");
    assert_eq!(status.code(), Code::Unavailable, "a clear UNAVAILABLE, not {status:?}");
    assert_eq!(status.message(), "database unavailable, retry");
    assert!(refused_in < RPC_DEADLINE, "refused before the deadline, took {refused_in:?}");
    let get = client
        .get_call(request(&keys, "probe-caller", pb::GetCallRequest { call_id: uuid::Uuid::now_v7().to_string() }))
        .await
        .expect_err("a read cannot succeed without the database either");
    assert_eq!(get.code(), Code::Unavailable, "{get:?}");
    for task in burst {
        tokio::time::timeout(RPC_DEADLINE * 4, task).await.expect("the burst ends").expect("burst task");
    }
    let remaining = CUT_FOR.saturating_sub(cut_at.elapsed());
    tokio::time::sleep(remaining).await;
    let cut_for = cut_at.elapsed();

    // Restore: the gateway is ready again by itself, and commands succeed.
    let completed_at_restore = completed.load(Ordering::Relaxed);
    proxy.restore();
    let ready_after = wait_readiness(ops, &channel, true, NOTICE_WITHIN + Duration::from_secs(5)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while completed.load(Ordering::Relaxed) < completed_at_restore + 10 {
        assert!(Instant::now() < deadline, "10 more lifecycles complete within 30 s of the restore");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for loader in loaders {
        tokio::time::timeout(RPC_DEADLINE * 5, loader).await.expect("loaders stop").expect("loader task");
    }

    // Every command answered in time, and a refused one said UNAVAILABLE.
    let outcomes = outcomes.lock().await.clone();
    let mut by_code: BTreeMap<String, usize> = BTreeMap::new();
    for o in &outcomes[before_cut..] {
        *by_code.entry(format!("{:?}", o.code)).or_default() += 1;
    }
    let slowest = outcomes.iter().map(|o| o.took).max().unwrap_or_default();
    assert!(slowest < RPC_DEADLINE, "no command hung until its deadline: slowest {slowest:?}");
    for o in &outcomes[before_cut..] {
        assert!(
            matches!(o.code, Code::Ok | Code::Unavailable),
            "commands during the outage end OK or UNAVAILABLE: {by_code:?}"
        );
    }
    assert!(by_code.get("Unavailable").copied().unwrap_or_default() > 0, "the load saw the outage: {by_code:?}");

    // No half-applied transition, read directly from PostgreSQL.
    let direct = Database::connect(database_url.as_str()).await.expect("direct connection");
    let all_calls = calls::Entity::find().all(&direct).await.expect("calls");
    let transitions = call_transitions::Entity::find().all(&direct).await.expect("transitions");
    let events = outbox::Entity::find().all(&direct).await.expect("outbox");
    let parties = live_call_parties::Entity::find().all(&direct).await.expect("live parties");
    let mut audit: HashMap<uuid::Uuid, Vec<&call_transitions::Model>> = HashMap::new();
    for t in &transitions {
        audit.entry(t.call_id).or_default().push(t);
    }
    let mut emitted: HashMap<uuid::Uuid, Vec<i64>> = HashMap::new();
    for e in &events {
        let body: serde_json::Value = serde_json::from_str(&e.payload).expect("event JSON");
        emitted.entry(e.aggregate_id).or_default().push(body["data"]["version"].as_i64().expect("data.version"));
    }
    let mut live = 0;
    for call in &all_calls {
        let mut trail = audit.remove(&call.id).unwrap_or_default();
        trail.sort_by_key(|t| t.version);
        let versions: Vec<i64> = trail.iter().map(|t| t.version).collect();
        assert_eq!(versions, (1..=call.version).collect::<Vec<_>>(), "call {}: one audit row per version", call.id);
        let last = trail.last().expect("an audit row");
        assert_eq!(last.to_status, call.status, "call {}: status agrees with its last audit row", call.id);
        let mut event_versions = emitted.remove(&call.id).unwrap_or_default();
        event_versions.sort_unstable();
        assert_eq!(event_versions, versions, "call {}: one event per transition", call.id);
        let held = parties.iter().filter(|p| p.call_id == call.id).count();
        let is_live = matches!(call.status.as_str(), "initiated" | "ringing" | "active");
        assert_eq!(held, if is_live { 2 } else { 0 }, "call {} ({}): live parties", call.id, call.status);
        live += usize::from(is_live);
    }
    assert!(audit.is_empty(), "audit rows of calls that do not exist: {:?}", audit.keys());
    assert!(emitted.is_empty(), "events of calls that do not exist: {:?}", emitted.keys());
    assert_eq!(parties.len(), 2 * live, "no live party row without its live call");

    // And the outbox drains: every event reaches the broker once the database is back.
    let ids: std::collections::HashSet<String> = events.iter().map(|e| e.id.to_string()).collect();
    let mut seen = std::collections::HashSet::new();
    let mut deliveries = 0;
    while seen.len() < ids.len() {
        let event = tap
            .next(Duration::from_secs(15))
            .await
            .unwrap_or_else(|| panic!("the tap saw {} of {} events", seen.len(), ids.len()));
        let id = event.message_id.expect("message id");
        assert!(ids.contains(&id), "an event that is not in the outbox: {id}");
        seen.insert(id);
        deliveries += 1;
        assert!(deliveries <= 2 * ids.len(), "more than two deliveries per event");
    }

    eprintln!(
        "database outage: cut {:.1} s; not ready {:.2} s after the cut, ready {:.2} s after the restore; \
         a command during the cut refused in {:.2} s; {} calls ({} lifecycles completed, {} left live); \
         commands after the first cut-time one: {by_code:?}; slowest command {:.2} s; proxy {:?}",
        cut_for.as_secs_f64(),
        not_ready_after.as_secs_f64(),
        ready_after.as_secs_f64(),
        refused_in.as_secs_f64(),
        all_calls.len(),
        completed.load(Ordering::Relaxed),
        live,
        slowest.as_secs_f64(),
        proxy.stats(),
    );
    shutdown.cancel();
    handle.await.expect("gateway joins").expect("gateway stops cleanly");
    tap.delete_exchange(&exchange).await;
}
