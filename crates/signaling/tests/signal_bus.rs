//! The Redis signal bus's publish script against a real Redis: consecutive sequence numbers that
//! start at Redis' clock, a log capped at its capacity (oldest dropped), both keys expiring after
//! the log TTL, and a counter that keeps growing after its key is lost.

use std::time::Duration;

use redis::AsyncCommands;
use videocall_signaling::{
    redis_keys::call_log, redis_keys::call_seq, signal_bus::Outgoing, signal_bus::SignalBus,
    signal_bus::SignalBusConfig, signals::SignalType,
};
use videocall_testkit::{redis_url, unique_name};

const CAPACITY: usize = 4;

async fn bus(cell: &str) -> SignalBus {
    SignalBus::connect(SignalBusConfig {
        redis_url: redis_url(),
        cell_id: cell.to_owned(),
        log_capacity: CAPACITY,
        log_ttl: Duration::from_secs(90),
    })
    .await
    .expect("redis")
}

fn candidate(i: usize) -> String {
    format!(r#"{{"candidate":"candidate:{i} 1 udp 2130706431 127.0.0.1 5000 typ host","sdpMLineIndex":0}}"#)
}

async fn send(bus: &SignalBus, call: &str, i: usize) -> u64 {
    let payload = candidate(i);
    bus.publish_signal(Outgoing {
        call_id: call,
        from: "alice",
        to: "bob",
        signal_type: SignalType::IceCandidate,
        payload: &payload,
    })
    .await
    .expect("published")
}

#[tokio::test]
async fn sequences_cap_and_expire_the_call_log() {
    let cell = unique_name("bus").replace('.', "-");
    let bus = bus(&cell).await;
    let mut redis = redis::Client::open(redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let mut subscriber = bus.subscriber().await.unwrap();
    subscriber.subscribe("bob").await.unwrap();

    let (seconds, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut redis).await.unwrap();
    let clock_us = seconds * 1_000_000 + micros;
    let mut seqs = Vec::new();
    for i in 0..CAPACITY + 3 {
        seqs.push(send(&bus, "c1", i).await);
    }
    assert!(seqs[0] > clock_us - 1_000, "the first number comes from Redis' clock: {} vs {clock_us}", seqs[0]);
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "consecutive within a call: {seqs:?}");

    // Every signal was published, in order, as logged.
    for (i, seq) in seqs.iter().enumerate() {
        let (user, frame) = tokio::time::timeout(Duration::from_secs(5), subscriber.next()).await.unwrap().unwrap();
        assert_eq!(user, "bob");
        assert!(frame.starts_with(&format!("{{\"seq\":{seq},")), "{frame}");
        assert!(frame.contains(&format!("candidate:{i} 1 udp")), "{frame}");
    }

    // The log keeps the newest CAPACITY frames.
    let log: Vec<String> = redis.lrange(call_log(&cell, "c1"), 0, -1).await.unwrap();
    assert_eq!(log.len(), CAPACITY);
    let kept: Vec<u64> = bus.replay("c1", "bob", 0).await.unwrap().into_iter().map(|(seq, _)| seq).collect();
    assert_eq!(kept, seqs[seqs.len() - CAPACITY..].to_vec());
    assert!(bus.replay("c1", "alice", 0).await.unwrap().is_empty(), "replay is per receiver");

    // Both keys expire after the log TTL; another signal renews it.
    for key in [call_seq(&cell, "c1"), call_log(&cell, "c1")] {
        let ttl: i64 = redis.ttl(&key).await.unwrap();
        assert!((1..=90).contains(&ttl), "{key} expires: ttl {ttl}");
        let () = redis.expire(&key, 5).await.unwrap();
    }
    let last = send(&bus, "c1", 99).await;
    assert_eq!(last, seqs[seqs.len() - 1] + 1);
    for key in [call_seq(&cell, "c1"), call_log(&cell, "c1")] {
        let ttl: i64 = redis.ttl(&key).await.unwrap();
        assert!(ttl > 5, "{key} renewed: ttl {ttl}");
    }

    // The counter lost (as after a Redis restart) starts again from the clock: still larger.
    let () = redis.del(&[call_seq(&cell, "c1"), call_log(&cell, "c1")]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2)).await;
    let again = send(&bus, "c1", 100).await;
    assert!(again > last, "still growing after the counter was lost: {last} then {again}");
    let log: Vec<String> = redis.lrange(call_log(&cell, "c1"), 0, -1).await.unwrap();
    assert_eq!(log.len(), 1);

    // Another call has its own counter and log.
    let other = send(&bus, "c2", 0).await;
    assert!(other > clock_us - 1_000);
    let log: Vec<String> = redis.lrange(call_log(&cell, "c2"), 0, -1).await.unwrap();
    assert_eq!(log.len(), 1);
    let _: () = redis
        .del(&[call_seq(&cell, "c1"), call_log(&cell, "c1"), call_seq(&cell, "c2"), call_log(&cell, "c2")])
        .await
        .unwrap();
}
