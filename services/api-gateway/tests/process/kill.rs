//! SIGKILL between commit and publish: the outbox survives the process, the next process publishes
//! what the dead one committed, and RabbitMQ sees every event at least once.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use sea_orm::{Database, EntityTrait, PaginatorTrait};
use videocall_entities::{call_transitions, outbox};
use videocall_testkit::{EventTap, fresh_database, unique_name};

use crate::gateway::{GatewaySettings, LoadCounts, lifecycle_load, unpublished};

#[tokio::test]
async fn a_gateway_killed_under_load_loses_no_event() {
    videocall_runtime::telemetry::init_for_tests();
    let database_url = fresh_database().await;
    let exchange = unique_name("videocall.events.kill");
    let mut tap = EventTap::bind(&exchange).await;
    let settings = GatewaySettings::new(database_url.clone(), exchange.clone(), 5);
    let db = Database::connect(database_url.as_str()).await.expect("test's own pool");

    // First a gateway whose broker is unreachable: whatever it commits is certainly unpublished
    // when it is killed, and only a later process can publish it.
    let cut_off = GatewaySettings {
        amqp_url: format!("amqp://guest:guest@127.0.0.1:{}/%2f", videocall_testkit::free_port()),
        ..settings.clone()
    };
    let stranded = cut_off.start().await;
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(LoadCounts::default());
    let load = lifecycle_load(settings.url(), 2, stop.clone(), counts.clone());
    let started = Instant::now();
    while counts.ok.load(Ordering::Relaxed) < 40 {
        assert!(started.elapsed() < Duration::from_secs(30), "no load:\n{}", stranded.output());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for worker in load {
        worker.await.expect("load worker");
    }
    stranded.kill_9().await;
    let stranded_rows = unpublished(&db).await;
    assert!(stranded_rows >= 40, "the cut-off gateway published nothing: {stranded_rows} rows wait");
    assert_eq!(stranded_rows, outbox::Entity::find().count(&db).await.expect("count"));

    // Then a gateway with its broker, killed in the middle of a load.
    let first = settings.start().await;

    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(LoadCounts::default());
    let load = lifecycle_load(settings.url(), 4, stop.clone(), counts.clone());

    // Kill once the load is well under way (at least 200 requests answered, at most 30 s).
    let started = Instant::now();
    while counts.ok.load(Ordering::Relaxed) < 200 {
        assert!(started.elapsed() < Duration::from_secs(30), "the load never got going:\n{}", first.output());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.kill_9().await;
    let ok_at_kill = counts.ok.load(Ordering::Relaxed);
    let rows_at_kill = outbox::Entity::find().count(&db).await.expect("count");
    let unpublished_at_kill = unpublished(&db).await;

    // The load keeps knocking while nothing listens; then the same settings start it again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = settings.start().await;
    let restarted = Instant::now();
    while counts.ok.load(Ordering::Relaxed) < ok_at_kill + 200 {
        assert!(restarted.elapsed() < Duration::from_secs(30), "the load did not resume:\n{}", second.output());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for worker in load {
        worker.await.expect("load worker");
    }

    // Every committed row ends published.
    let drain = Instant::now();
    while unpublished(&db).await > 0 {
        assert!(drain.elapsed() < Duration::from_secs(30), "outbox not drained in 30 s:\n{}", second.output());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drained_in = drain.elapsed();
    let ids: HashSet<String> =
        outbox::Entity::find().all(&db).await.expect("outbox rows").into_iter().map(|row| row.id.to_string()).collect();
    // One outbox row per committed transition, no more, no less (the effect and its event are one
    // transaction).
    let transitions = call_transitions::Entity::find().count(&db).await.expect("count");
    assert_eq!(ids.len() as u64, transitions, "one outbox row per call transition");

    // The broker saw each of them at least once; count the duplicates.
    let mut seen: HashMap<String, u32> = HashMap::new();
    let mut missing: HashSet<&String> = ids.iter().collect();
    let collect = Instant::now();
    while !missing.is_empty() {
        let Some(event) = tap.next(Duration::from_secs(15)).await else {
            panic!(
                "{} of {} events never reached RabbitMQ, e.g. {:?}",
                missing.len(),
                ids.len(),
                missing.iter().next()
            );
        };
        let id = event.message_id.clone().expect("every event has a message id");
        assert_eq!(event.body["id"].as_str(), Some(id.as_str()), "message id is the CloudEvents id");
        missing.remove(&id);
        *seen.entry(id).or_default() += 1;
    }
    while let Some(event) = tap.next(Duration::from_millis(500)).await {
        *seen.entry(event.message_id.expect("message id")).or_default() += 1;
    }
    let phantom: Vec<_> = seen.keys().filter(|id| !ids.contains(*id)).collect();
    assert!(phantom.is_empty(), "events without an outbox row: {phantom:?}");
    let duplicates: u32 = seen.values().map(|n| n - 1).sum();
    println!(
        "kill -9: {stranded_rows} rows committed by a gateway cut off from its broker, then killed; \
         under load: {ok_at_kill} requests answered before the kill, {rows_at_kill} outbox rows at the \
         kill of which {unpublished_at_kill} unpublished; {} rows in all, {} requests failed around the kill; \
         backlog drained {drained_in:?} after the load stopped; every event seen in {:?}, {duplicates} duplicates",
        ids.len(),
        counts.failed.load(Ordering::Relaxed),
        collect.elapsed(),
    );

    let status = second.terminate(Duration::from_secs(15)).await;
    assert!(status.success(), "the restarted gateway stops cleanly: {status}");
    tap.delete_exchange(&exchange).await;
}
