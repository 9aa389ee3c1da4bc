//! A Redis restart: relays resubscribe by themselves, sequence numbers keep growing although
//! Redis lost everything, and signals flow again between parties on different relays.

use std::time::{Duration, Instant};

use serde_json::json;

use videocall_testkit::redis::OwnRedis;

use crate::helpers::{FleetOptions, spawn_fleet};

const SDP: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n";

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port")
}

async fn ready(relay: std::net::SocketAddr) -> bool {
    let Ok(mut stream) = tokio::net::TcpStream::connect(relay).await else { return false };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!("GET /readyz HTTP/1.1\r\nHost: {relay}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response).await;
    response.starts_with("HTTP/1.1 200")
}

#[tokio::test]
async fn relays_resubscribe_after_a_redis_restart_and_signals_flow_again() {
    let port = free_tcp_port();
    let redis = OwnRedis::start(port);
    let fleet =
        spawn_fleet(FleetOptions { redis_url: format!("redis://127.0.0.1:{port}"), ..Default::default() }).await;
    let mut alice = fleet.connect(0, "alice").await;
    let mut bob = fleet.connect(1, "bob").await;
    let ack = alice.request(json!({"type": "call.initiate", "callee_id": "bob", "call_type": "support"})).await;
    let call_id = ack["call"]["id"].as_str().expect("call id").to_owned();
    let s1 =
        alice.request(json!({"type": "offer", "call_id": call_id, "sdp": SDP})).await["seq"].as_u64().expect("seq");
    assert_eq!(bob.next_of("offer").await["seq"], s1);

    let redis = redis.restart();
    let restarted = Instant::now();

    // Both relays report ready again once their Pub/Sub connection is back.
    let mut resubscribed = None;
    while restarted.elapsed() < Duration::from_secs(10) {
        if ready(fleet.relays[0]).await && ready(fleet.relays[1]).await {
            resubscribed = Some(restarted.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resubscribed = resubscribed.expect("relays resubscribed");
    eprintln!("relays resubscribed {resubscribed:?} after Redis came back");

    // Redis lost the counter and the log; the next signal still gets a larger seq, and bob
    // (whose relay has seen s1) receives it. A client retries while the bus says unavailable.
    let candidate = json!({"candidate": "candidate:1 1 udp 1 127.0.0.1 40000 typ host"});
    let mut seq = None;
    for _ in 0..50 {
        let reply = alice.request(json!({"type": "ice-candidate", "call_id": call_id, "candidate": candidate})).await;
        if reply["type"] == "ack" {
            seq = reply["seq"].as_u64();
            break;
        }
        assert_eq!(reply["code"], "unavailable", "{reply}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s2 = seq.expect("the bus accepts signals again");
    assert!(s2 > s1, "sequence numbers keep growing across the restart: {s1} then {s2}");
    let got = bob.next_of("ice-candidate").await;
    assert_eq!(got["seq"], s2);
    fleet.stop().await;
    drop(redis);
}

/// 200 calls mid-negotiation (offer sent, no answer yet) when Redis restarts and loses every
/// signal log: each of the 400 sockets is told `signals_lost` for its call, each caller
/// renegotiates, and every call completes offer → answer through the restarted bus.
#[tokio::test]
async fn negotiations_caught_by_a_redis_restart_are_told_and_renegotiate() {
    const PAIRS: usize = 200;
    let port = free_tcp_port();
    let redis = OwnRedis::start(port);
    let fleet =
        spawn_fleet(FleetOptions { redis_url: format!("redis://127.0.0.1:{port}"), ..Default::default() }).await;
    let mut pairs = Vec::with_capacity(PAIRS);
    for i in 0..PAIRS {
        let (caller, callee) = (format!("caller-{i}"), format!("callee-{i}"));
        let mut a = fleet.connect(0, &caller).await;
        let mut b = fleet.connect(1, &callee).await;
        let ack = a.request(json!({"type": "call.initiate", "callee_id": callee, "call_type": "support"})).await;
        let call_id = ack["call"]["id"].as_str().unwrap_or_else(|| panic!("call {i}: {ack}")).to_owned();
        let offer = a.request(json!({"type": "offer", "call_id": call_id, "sdp": SDP})).await;
        let seq = offer["seq"].as_u64().unwrap_or_else(|| panic!("offer {i}: {offer}"));
        if i % 2 == 0 {
            // Half the callees have read the offer; the others' copy waits in their socket.
            assert_eq!(b.next_of("offer").await["seq"], seq);
        }
        pairs.push((a, b, call_id, seq));
    }

    let redis = redis.restart();
    let restarted = Instant::now();

    let mut renegotiated = 0;
    for (i, (a, b, call_id, first_seq)) in pairs.iter_mut().enumerate() {
        for (who, socket) in [("caller", &mut *a), ("callee", &mut *b)] {
            let notice = socket.next_of("signals_lost").await;
            assert_eq!(notice["call_id"], call_id.as_str(), "{who} {i}: {notice}");
            assert!(notice["reason"].as_str().is_some_and(|r| r.contains("renegotiates")), "{notice}");
        }
        // The caller renegotiates; a signal refused while the bus is still coming back is retried.
        let mut seq = None;
        for _ in 0..100 {
            let reply = a.request(json!({"type": "offer", "call_id": call_id, "sdp": SDP})).await;
            if reply["type"] == "ack" {
                seq = reply["seq"].as_u64();
                break;
            }
            assert_eq!(reply["code"], "unavailable", "{reply}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let seq = seq.unwrap_or_else(|| panic!("call {i}: the bus took the new offer"));
        assert!(seq > *first_seq, "sequence numbers grow across the restart");
        let offer = loop {
            let offer = b.next_of("offer").await;
            if offer["seq"] == seq {
                break offer;
            }
            assert_eq!(offer["seq"], *first_seq, "only the unread first offer may come before: {offer}");
        };
        assert_eq!(offer["call_id"], call_id.as_str());
        let answered = b.request(json!({"type": "call.answer", "call_id": call_id})).await;
        assert_eq!(answered["call"]["status"], "active", "{answered}");
        let answer = b.request(json!({"type": "answer", "call_id": call_id, "sdp": SDP})).await;
        let answer_seq = answer["seq"].as_u64().unwrap_or_else(|| panic!("answer {i}: {answer}"));
        assert_eq!(a.next_of("answer").await["seq"], answer_seq);
        renegotiated += 1;
    }
    assert_eq!(renegotiated, PAIRS);
    eprintln!("{PAIRS} negotiations told and renegotiated {:?} after Redis came back", restarted.elapsed());
    drop(pairs);
    fleet.stop().await;
    drop(redis);
}
