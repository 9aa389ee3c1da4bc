//! Relays and gateways on a Redis Cluster of the test's own (3 masters + 3 replicas): the master
//! owning a live call's slot is SIGKILLed; its replica takes over, both relays and both gateways
//! carry on, and the call keeps signalling both ways with increasing sequence numbers.

use std::time::{Duration, Instant};

use serde_json::json;
use videocall_signaling::redis_keys;
use videocall_testkit::redis_cluster::RedisCluster;

use crate::helpers::{FleetOptions, spawn_fleet};

const SDP: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n";

fn candidate(i: u32) -> serde_json::Value {
    json!({"candidate": format!("candidate:{i} 1 udp 2130706431 127.0.0.1 5000 typ host"), "sdpMid": "0", "sdpMLineIndex": 0})
}

/// Sends a candidate until the relay acks it (during the failover it answers `unavailable`);
/// returns its `seq`.
async fn send_until_acked(client: &mut crate::helpers::Client, call_id: &str, i: u32, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    loop {
        let reply =
            client.request(json!({"type": "ice-candidate", "call_id": call_id, "candidate": candidate(i)})).await;
        if let Some(seq) = reply["seq"].as_u64() {
            return seq;
        }
        assert_eq!(reply["code"], "unavailable", "only `unavailable` while the replica takes over: {reply}");
        assert!(Instant::now() < deadline, "signalling did not come back: {reply}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The candidate `i` as the other party receives it: its `seq`.
async fn received(client: &mut crate::helpers::Client, i: u32) -> u64 {
    loop {
        let frame = client.next_of("ice-candidate").await;
        if frame["candidate"] == candidate(i) {
            return frame["seq"].as_u64().expect("seq");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_keeps_signalling_when_the_master_of_its_slot_dies() {
    let mut cluster = tokio::task::block_in_place(RedisCluster::start);
    let fleet = spawn_fleet(FleetOptions { redis_url: cluster.url(), ..Default::default() }).await;
    let mut alice = fleet.connect(0, "alice").await;
    let mut bob = fleet.connect(1, "bob").await;
    let ack = alice.request(json!({"type": "call.initiate", "callee_id": "bob", "call_type": "support"})).await;
    let call_id = ack["call"]["id"].as_str().expect("call id").to_owned();
    bob.request(json!({"type": "call.ring", "call_id": call_id})).await;
    let offer = alice.request(json!({"type": "offer", "call_id": call_id, "sdp": SDP})).await;
    let s1 = offer["seq"].as_u64().expect("seq");
    assert_eq!(bob.next_of("offer").await["seq"].as_u64(), Some(s1));
    assert_eq!(bob.request(json!({"type": "call.answer", "call_id": call_id})).await["call"]["status"], "active");
    let answer = bob.request(json!({"type": "answer", "call_id": call_id, "sdp": SDP})).await;
    let s2 = answer["seq"].as_u64().expect("seq");
    assert_eq!(alice.next_of("answer").await["seq"].as_u64(), Some(s2));

    let slot = cluster.slot_of(&redis_keys::cluster::call_seq(&fleet.cell, &call_id));
    let master = cluster.master_of_slot(slot).expect("owner");
    let killed = Instant::now();
    tokio::task::block_in_place(|| cluster.kill(master.port));

    // Both directions signal again, numbers still increasing.
    let s3 = send_until_acked(&mut alice, &call_id, 1, Duration::from_secs(30)).await;
    assert!(s3 > s2, "{s3} after {s2}");
    assert_eq!(received(&mut bob, 1).await, s3);
    let s4 = send_until_acked(&mut bob, &call_id, 2, Duration::from_secs(30)).await;
    assert!(s4 > s3, "{s4} after {s3}");
    assert_eq!(received(&mut alice, 2).await, s4);
    println!("the call signalled both ways again {:?} after its master's SIGKILL", killed.elapsed());
    tokio::task::block_in_place(|| cluster.wait_healthy(Duration::from_secs(10)));
    assert_ne!(cluster.master_of_slot(slot).map(|m| m.port), Some(master.port), "the replica took over");

    // And the call ends as usual, on the promoted master.
    let ended = alice.request(json!({"type": "call.end", "call_id": call_id})).await;
    assert_eq!(ended["call"]["status"], "ended", "{ended}");
    loop {
        if bob.next_of("call_state").await["call"]["status"] == "ended" {
            break;
        }
    }
}
