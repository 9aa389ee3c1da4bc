//! The sweeper against real PostgreSQL: due calls become missed once, early ones are left alone,
//! and replicas racing each other and concurrent answers give every call exactly one outcome.

use std::{collections::HashMap, sync::Arc, time::Duration};

use missed_call_sweeper::Sweeper;
use sea_orm::{ColumnTrait, Database, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder};
use tokio::sync::Notify;
use uuid::Uuid;
use videocall_calls::{Actor, CallStore, NewCall, StoreError};
use videocall_domain::{CallStatus, CallType, Command, EndReason};
use videocall_entities::outbox;
use videocall_runtime::db;
use videocall_signaling::signal_bus::{SignalBus, SignalBusConfig};

async fn setup() -> (DatabaseConnection, CallStore) {
    let url = videocall_testkit::fresh_database().await;
    let db = db::connect_and_migrate(&url, &Default::default()).await.expect("database");
    let store = CallStore::new(db.clone(), "/videocall/test/api-gateway".into(), Arc::new(Notify::new()));
    (db, store)
}

async fn call(store: &CallStore, i: usize, ring_timeout_secs: i32) -> Uuid {
    let new = NewCall {
        request_id: format!("r{i}"),
        caller_id: format!("customer-{i}"),
        callee_id: format!("agent-{i}"),
        call_type: CallType::Support,
        metadata: Default::default(),
        ring_timeout_secs,
    };
    store.initiate(new, &format!("customer-{i}")).await.expect("initiate").call.id
}

fn callee(i: usize) -> Actor {
    Actor { id: format!("agent-{i}"), is_service: false }
}

/// Outbox routing keys per call.
async fn events_by_call(db: &DatabaseConnection) -> HashMap<Uuid, Vec<String>> {
    let mut map: HashMap<Uuid, Vec<String>> = HashMap::new();
    for row in outbox::Entity::find().order_by_asc(outbox::Column::Id).all(db).await.expect("outbox") {
        map.entry(row.aggregate_id).or_default().push(row.routing_key);
    }
    map
}

#[tokio::test]
async fn overdue_calls_become_missed_once_and_early_ones_stay() {
    let (db, store) = setup().await;
    let due_initiated = call(&store, 0, 1).await;
    let due_ringing = call(&store, 1, 1).await;
    store.apply(due_ringing, Command::Ring, &callee(1)).await.expect("ring");
    let early = call(&store, 2, 30).await;
    let answered = call(&store, 3, 1).await;
    store.apply(answered, Command::Answer, &callee(3)).await.expect("answer");

    // The caller's connections hear of the miss through the signal bus (Redis).
    let cell = videocall_testkit::unique_name("sweeptest").replace('.', "-");
    let bus = SignalBus::connect(SignalBusConfig {
        redis_url: std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
        cell_id: cell.clone(),
        log_capacity: 16,
        log_ttl: Duration::from_secs(60),
    })
    .await
    .expect("Redis reachable");
    let mut caller = bus.subscriber().await.expect("subscriber");
    caller.subscribe("customer-0").await.expect("subscribe");

    let sweeper = Sweeper::new(db.clone(), &cell, "missed-call-sweeper", 100).with_bus(Some(bus));
    let report = sweeper.sweep_once().await.expect("sweep");
    assert_eq!(report.missed, 0, "nothing is due before the deadline");

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let report = sweeper.sweep_once().await.expect("sweep");
    assert_eq!(report.missed, 2);
    for id in [due_initiated, due_ringing] {
        let c = store.get(id).await.expect("call");
        assert_eq!(c.status, CallStatus::Missed);
        assert_eq!(c.end_reason, Some(EndReason::Timeout));
        assert_eq!(c.ended_by.as_deref(), Some("missed-call-sweeper"));
    }
    let (user, frame) = tokio::time::timeout(Duration::from_secs(5), caller.next())
        .await
        .expect("pushed within 5 s")
        .expect("subscriber open");
    let frame: serde_json::Value = serde_json::from_str(&frame).expect("JSON frame");
    assert_eq!(user, "customer-0");
    assert_eq!((frame["type"].as_str(), frame["call"]["status"].as_str()), (Some("call_state"), Some("missed")));
    assert_eq!(frame["call"]["id"], due_initiated.to_string());
    assert_eq!(store.get(early).await.expect("call").status, CallStatus::Initiated, "never early");
    assert_eq!(store.get(answered).await.expect("call").status, CallStatus::Active, "answered calls are not missed");

    // A second sweep finds nothing; the missed call is final and its parties are free.
    assert_eq!(sweeper.sweep_once().await.expect("sweep").missed, 0);
    let late = store.apply(due_ringing, Command::Answer, &callee(1)).await.expect_err("too late");
    assert!(matches!(late, StoreError::WrongState(CallStatus::Missed)), "{late:?}");
    let again = NewCall {
        request_id: "again".into(),
        caller_id: "customer-0".into(),
        callee_id: "agent-0".into(),
        call_type: CallType::Sales,
        metadata: Default::default(),
        ring_timeout_secs: 30,
    };
    store.initiate(again, "customer-0").await.expect("the parties of a missed call are free again");

    let events = events_by_call(&db).await;
    assert_eq!(events[&due_initiated], ["call.initiated", "call.missed"]);
    assert_eq!(events[&due_ringing], ["call.initiated", "call.ringing", "call.missed"]);
    let missed =
        outbox::Entity::find().filter(outbox::Column::RoutingKey.eq("call.missed")).all(&db).await.expect("outbox");
    let body: serde_json::Value = serde_json::from_str(&missed[0].payload).expect("json");
    assert_eq!(body["type"], "CallMissed");
    assert_eq!(body["data"]["end_reason"], "timeout");
}

#[tokio::test]
async fn three_replicas_and_concurrent_answers_give_each_call_one_outcome() {
    const CALLS: usize = 5000;
    let (db, store) = setup().await;
    let started = std::time::Instant::now();
    let mut ids = vec![Uuid::nil(); CALLS];
    let mut creators = tokio::task::JoinSet::new();
    for worker in 0..16 {
        let store = store.clone();
        creators.spawn(async move {
            let mut made = Vec::new();
            for i in (worker..CALLS).step_by(16) {
                made.push((i, call(&store, i, 1).await));
            }
            made
        });
    }
    while let Some(made) = creators.join_next().await {
        for (i, id) in made.expect("creator") {
            ids[i] = id;
        }
    }
    eprintln!("created {CALLS} calls in {:?}", started.elapsed());
    tokio::time::sleep(Duration::from_millis(1100)).await; // every call is now overdue

    let mut work = tokio::task::JoinSet::new();
    for replica in 0..3 {
        // Each replica has its own connection pool, as separate processes would.
        let url = videocall_testkit::database_url_of(&db).await;
        work.spawn(async move {
            let db = Database::connect(url.as_str()).await.expect("replica connects");
            let sweeper = Sweeper::new(db, "test", &format!("sweeper-{replica}"), 200);
            let mut total = 0;
            loop {
                let report = sweeper.sweep_once().await.expect("sweep");
                total += report.missed;
                if report.missed == 0 {
                    break;
                }
            }
            Outcome::Swept(total)
        });
    }
    for worker in 0..4 {
        let (store, ids) = (store.clone(), ids.clone());
        work.spawn(async move {
            let mut answered = Vec::new();
            // From the newest down, while the sweepers go from the oldest up: they meet mid-way.
            for i in (worker * 2..CALLS).step_by(8).rev() {
                match store.apply(ids[i], Command::Answer, &callee(i)).await {
                    Ok(c) if c.status == CallStatus::Active => answered.push(ids[i]),
                    Ok(c) => panic!("answer returned {:?}", c.status),
                    Err(StoreError::WrongState(CallStatus::Missed)) => {}
                    Err(e) => panic!("answer failed: {e}"),
                }
            }
            Outcome::Answered(answered)
        });
    }
    let (mut swept, mut answered) = (0, Vec::new());
    while let Some(outcome) = work.join_next().await {
        match outcome.expect("task") {
            Outcome::Swept(n) => swept += n,
            Outcome::Answered(a) => answered.extend(a),
        }
    }
    eprintln!("swept {swept}, answered {} in {:?}", answered.len(), started.elapsed());
    assert_eq!(swept as usize + answered.len(), CALLS, "every call has exactly one outcome");

    let events = events_by_call(&db).await;
    let answered: std::collections::HashSet<_> = answered.into_iter().collect();
    for id in &ids {
        let keys = &events[id];
        let expected = if answered.contains(id) { "call.answered" } else { "call.missed" };
        assert_eq!(keys, &["call.initiated", expected], "call {id}");
        let status = store.get(*id).await.expect("call").status;
        assert_eq!(status, if answered.contains(id) { CallStatus::Active } else { CallStatus::Missed });
    }
}

enum Outcome {
    Swept(u64),
    Answered(Vec<Uuid>),
}

/// Moves a call's last activity `secs` into the past, as if nothing happened since.
async fn age(db: &DatabaseConnection, id: Uuid, secs: i64) {
    use sea_orm::ConnectionTrait;
    let sql = format!("UPDATE calls SET updated_at = now() - interval '{secs} seconds' WHERE id = '{id}'");
    db.execute_unprepared(&sql).await.expect("age the call");
}

#[tokio::test]
async fn silent_active_calls_end_as_connection_lost_and_activity_keeps_them() {
    let (db, store) = setup().await;
    let silent = call(&store, 0, 30).await;
    let talking = call(&store, 1, 30).await;
    let ringing = call(&store, 2, 30).await;
    for (i, id) in [(0, silent), (1, talking)] {
        store.apply(id, Command::Answer, &callee(i)).await.expect("answer");
    }
    age(&db, silent, 700).await;
    age(&db, talking, 700).await;
    age(&db, ringing, 700).await;
    store.touch_activity(talking).await.expect("a quality report or signal arrives");

    let sweeper = Sweeper::new(db.clone(), "test", "missed-call-sweeper", 100)
        .with_zombie_timeout(Some(Duration::from_secs(600)));
    let report = sweeper.sweep_once().await.expect("sweep");
    assert_eq!((report.zombies, report.missed), (1, 0));
    let ended = store.get(silent).await.expect("call");
    assert_eq!((ended.status, ended.end_reason), (CallStatus::Ended, Some(EndReason::ConnectionLost)));
    assert_eq!(store.get(talking).await.expect("call").status, CallStatus::Active, "recent activity keeps a call");
    assert_eq!(store.get(ringing).await.expect("call").status, CallStatus::Initiated, "only active calls are zombies");
    assert_eq!(events_by_call(&db).await[&silent], ["call.initiated", "call.answered", "call.ended"]);

    // Without a zombie timeout the sweeper leaves active calls alone.
    age(&db, talking, 700).await;
    let plain = Sweeper::new(db.clone(), "test", "missed-call-sweeper", 100);
    assert_eq!(plain.sweep_once().await.expect("sweep").zombies, 0);
    assert_eq!(store.get(talking).await.expect("call").status, CallStatus::Active);
}

#[tokio::test]
async fn parties_gone_past_the_grace_lose_their_calls_and_no_one_else_does() {
    let (db, store) = setup().await;
    let cell = videocall_testkit::unique_name("gracetest").replace('.', "-");
    let bus = SignalBus::connect(SignalBusConfig {
        redis_url: videocall_testkit::redis_url(),
        cell_id: cell.clone(),
        log_capacity: 16,
        log_ttl: Duration::from_secs(60),
    })
    .await
    .expect("Redis reachable");
    // 0: active, the caller left.  1: active, the callee left.  2: active, the caller left and
    // came back.  3: ringing, the callee left (not answering: it will be missed, not lost).
    // 4: ringing, the caller left (gave up).  5: active, its parties never used a relay.
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(call(&store, i, 45).await);
    }
    for i in [0, 1, 2, 5] {
        store.apply(ids[i], Command::Answer, &callee(i)).await.expect("answer");
    }
    for i in [3, 4] {
        store.apply(ids[i], Command::Ring, &callee(i)).await.expect("ring");
    }
    let users = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
    let lease = Duration::from_secs(60);
    bus.mark_present(&users(&["agent-0", "customer-1", "agent-2", "customer-3", "agent-4"]), lease)
        .await
        .expect("here");
    bus.mark_present(&users(&["customer-0", "agent-1", "customer-2", "agent-3", "customer-4"]), Duration::ZERO)
        .await
        .expect("left");

    // Two agents who take desk calls: the one whose sockets are gone past the grace stops.
    for agent in ["agent-0", "agent-1"] {
        store.set_availability(agent, true, &[CallType::Support]).await.expect("available");
    }
    let mut caller = bus.subscriber().await.expect("subscriber");
    caller.subscribe("agent-0").await.expect("subscribe");
    let sweeper = Sweeper::new(db.clone(), &cell, "missed-call-sweeper", 100)
        .with_bus(Some(bus.clone()))
        .with_party_grace(Some(Duration::from_secs(1)));
    assert_eq!(sweeper.sweep_once().await.expect("sweep").lost, 0, "within the grace nothing ends");
    bus.mark_present(&users(&["customer-2"]), lease).await.expect("customer-2 is back");

    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(sweeper.sweep_once().await.expect("sweep").lost, 3);
    assert_eq!(sweeper.sweep_once().await.expect("sweep").lost, 0, "each call ends once");

    let mut outcomes = Vec::new();
    for id in &ids {
        let call = store.get(*id).await.expect("call");
        outcomes.push((call.status, call.end_reason));
    }
    let lost = (CallStatus::Ended, Some(EndReason::ConnectionLost));
    assert_eq!(
        outcomes,
        [lost, lost, (CallStatus::Active, None), (CallStatus::Ringing, None), lost, (CallStatus::Active, None)]
    );
    let available = |agent: &'static str| {
        let store = store.clone();
        async move { store.agent(agent).await.expect("read").expect("agent").available }
    };
    assert_eq!((available("agent-0").await, available("agent-1").await), (true, false));
    let events = events_by_call(&db).await;
    for i in [0, 1, 4] {
        let ended = events[&ids[i]].iter().filter(|k| *k == "call.ended").count();
        assert_eq!(ended, 1, "call {i}: one CallEnded");
    }
    // The party still there is told at once.
    let (_, frame) = tokio::time::timeout(Duration::from_secs(5), caller.next()).await.expect("pushed").expect("frame");
    let frame: serde_json::Value = serde_json::from_str(&frame).expect("json");
    assert_eq!(frame["call"]["end_reason"], "connection_lost", "{frame}");
}

#[tokio::test]
async fn a_desk_call_unanswered_past_the_queue_timeout_is_missed_for_want_of_an_agent() {
    let (db, store) = setup().await;
    let new = NewCall {
        request_id: "desk".into(),
        caller_id: "customer-q".into(),
        callee_id: String::new(),
        call_type: CallType::Sales,
        metadata: Default::default(),
        ring_timeout_secs: 1,
    };
    let call = store.initiate(new, "customer-q").await.expect("queued").call;
    assert_eq!(call.status, CallStatus::Queued);
    let sweeper = Sweeper::new(db.clone(), "test", "missed-call-sweeper", 100);
    assert_eq!(sweeper.sweep_once().await.expect("sweep").missed, 0, "within the queue timeout");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(sweeper.sweep_once().await.expect("sweep").missed, 1);
    let call = store.get(call.id).await.expect("call");
    assert_eq!((call.status, call.end_reason), (CallStatus::Missed, Some(EndReason::NoAgent)));
    assert_eq!(events_by_call(&db).await[&call.id], ["call.queued", "call.missed"]);
}
