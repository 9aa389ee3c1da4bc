//! SIGTERM under load: health turns NOT_SERVING first (Watch streams end after saying so, signal
//! streams end with UNAVAILABLE),
//! requests in flight finish successfully, new ones are refused, the process exits 0 within its
//! grace period.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement, TransactionTrait};
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
use videocall_proto::v1::{self as pb, call_service_client::CallServiceClient};
use videocall_testkit::{EventTap, fresh_database, unique_name};

use crate::gateway::{GatewaySettings, LoadCounts, as_user, lifecycle_load};

const GRACE_SECS: u64 = 10;

async fn waiting_on_locks(db: &DatabaseConnection) -> i64 {
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        ))
        .await
        .expect("pg_stat_activity")
        .expect("a row");
    row.try_get("", "n").expect("n")
}

/// Health.Check on a new connection: the status, or None when the gateway no longer accepts.
async fn fresh_check(url: &str) -> Option<ServingStatus> {
    let channel =
        Channel::from_shared(url.to_owned()).ok()?.connect_timeout(Duration::from_secs(1)).connect().await.ok()?;
    let reply = HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await.ok()?;
    ServingStatus::try_from(reply.into_inner().status).ok()
}

#[tokio::test]
async fn sigterm_reports_not_serving_lets_requests_in_flight_finish_and_exits_0() {
    videocall_runtime::telemetry::init_for_tests();
    let database_url = fresh_database().await;
    let exchange = unique_name("videocall.events.sigterm");
    let tap = EventTap::bind(&exchange).await;
    let settings = GatewaySettings::new(database_url.clone(), exchange.clone(), GRACE_SECS);
    let mut gateway = settings.start().await;
    let db = Database::connect(database_url.as_str()).await.expect("test's own pool");
    let mut client = CallServiceClient::connect(settings.url()).await.expect("connect");

    // Three rung calls whose rows the test locks: answering them blocks in the database, so these
    // requests are certainly in flight when SIGTERM arrives.
    let mut ids = Vec::new();
    for i in 0..3 {
        let (caller, callee) = (format!("held-caller-{i}"), format!("held-callee-{i}"));
        let initiate = pb::InitiateCallRequest {
            callee_id: callee.clone(),
            call_type: pb::CallType::Consult as i32,
            ..Default::default()
        };
        let call = client.initiate_call(as_user(&caller, initiate)).await.expect("initiate").into_inner();
        let id = call.call.expect("call").id;
        client.ring_call(as_user(&callee, pb::RingCallRequest { call_id: id.clone() })).await.expect("ring");
        ids.push((id, callee));
    }
    let lock = db.begin().await.expect("begin");
    let list = ids.iter().map(|(id, _)| format!("'{id}'")).collect::<Vec<_>>().join(",");
    lock.execute_unprepared(&format!("SELECT id FROM calls WHERE id IN ({list}) FOR UPDATE")).await.expect("lock rows");
    let held: Vec<_> = ids
        .iter()
        .map(|(id, callee)| {
            let mut client = client.clone();
            let mut request = as_user(callee, pb::AnswerCallRequest { call_id: id.clone() });
            // Held for seconds on a busy machine: more than the load's 10 s deadline.
            request.set_timeout(Duration::from_secs(60));
            tokio::spawn(async move { client.answer_call(request).await.map(|r| r.into_inner()) })
        })
        .collect();
    let waited = Instant::now();
    while waiting_on_locks(&db).await < 3 {
        assert!(waited.elapsed() < Duration::from_secs(10), "the answers never reached the database");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A health watcher and a continuous lifecycle load on connections of their own.
    let channel = Channel::from_shared(settings.url()).expect("url").connect().await.expect("health connect");
    let mut health = HealthClient::new(channel);
    let mut watch = health.watch(HealthCheckRequest { service: String::new() }).await.expect("watch").into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), watch.message()).await.expect("first status in 5 s");
    assert_eq!(first.expect("stream open").expect("a status").status, ServingStatus::Serving as i32);
    // And a signal subscription, another long-lived stream.
    let subscribe = pb::SubscribeToSignalsRequest { call_id: ids[0].0.clone(), after_seq: 0 };
    let mut signals = client.subscribe_to_signals(as_user(&ids[0].1, subscribe)).await.expect("subscribe").into_inner();
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(LoadCounts::default());
    let load = lifecycle_load(settings.url(), 4, stop.clone(), counts.clone());
    let started = Instant::now();
    while counts.ok.load(Ordering::Relaxed) < 100 {
        assert!(started.elapsed() < Duration::from_secs(30), "the load never got going:\n{}", gateway.output());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    gateway.signal("TERM");
    let term_at = Instant::now();
    let ok_at_term = counts.ok.load(Ordering::Relaxed);
    let next = tokio::time::timeout(Duration::from_secs(5), watch.message()).await.expect("a status within 5 s");
    assert_eq!(
        next.expect("stream open").expect("a status").status,
        ServingStatus::NotServing as i32,
        "the first thing a watcher hears after SIGTERM"
    );
    let not_serving_after = term_at.elapsed();
    // The Watch stream ends once it has said NOT_SERVING, so it does not hold the drain open.
    let end = tokio::time::timeout(Duration::from_secs(5), watch.message()).await.expect("watch ends within 5 s");
    assert!(matches!(end, Ok(None)), "the watch stream ends cleanly: {end:?}");
    // The signal stream ends too, telling the client to resubscribe (elsewhere).
    let ended = tokio::time::timeout(Duration::from_secs(5), signals.message()).await.expect("signals end in 5 s");
    let status = ended.expect_err("the signal stream ends with a status");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "server shutting down; resubscribe with after_seq");
    // From now on nobody new is told SERVING: a new connection is refused or hears NOT_SERVING.
    for _ in 0..5 {
        let status = fresh_check(&settings.url()).await;
        assert_ne!(status, Some(ServingStatus::Serving), "SERVING after shutdown began");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The held requests are still in flight and the process waits for them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(gateway.is_running(), "the gateway exited with requests in flight:\n{}", gateway.output());
    lock.commit().await.expect("release the rows");
    for task in held {
        let reply = task
            .await
            .expect("task")
            .unwrap_or_else(|status| panic!("a request in flight at SIGTERM succeeds: {status:?}"));
        assert_eq!(reply.call.expect("call").status, pb::CallStatus::Active as i32);
    }
    let status = gateway.wait_exit(Duration::from_secs(GRACE_SECS + 5)).await;
    let exited_after = term_at.elapsed();
    assert!(status.success(), "exit 0 after SIGTERM: {status}\n{}", gateway.output());
    assert!(exited_after < Duration::from_secs(GRACE_SECS), "exited within the grace period: {exited_after:?}");
    stop.store(true, Ordering::Relaxed);
    for worker in load {
        worker.await.expect("load worker");
    }
    assert!(fresh_check(&settings.url()).await.is_none(), "the listener is closed");
    println!(
        "SIGTERM under load: NOT_SERVING on the watch {not_serving_after:?} after SIGTERM; 3 requests held in \
         flight all succeeded; {} load requests answered before SIGTERM, {} after; {} refused; exit 0 after \
         {exited_after:?} (grace {GRACE_SECS} s)",
        ok_at_term,
        counts.ok.load(Ordering::Relaxed) - ok_at_term,
        counts.failed.load(Ordering::Relaxed),
    );
    tap.delete_exchange(&exchange).await;
}
