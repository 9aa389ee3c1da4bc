//! The WebSocket protocol end to end across two relays: call control, signals, replay, and every
//! kind of bad input.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{Client, FleetOptions, spawn_fleet};

const SDP: &str = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=extmap-allow-mixed\r\n";

#[tokio::test]
async fn a_call_across_two_relays_from_initiate_to_hangup() {
    let fleet = spawn_fleet(FleetOptions::default()).await;
    let mut alice = fleet.connect(0, "alice").await;
    let mut bob = fleet.connect(1, "bob").await;

    let ack = alice.request(json!({"type": "call.initiate", "callee_id": "bob", "call_type": "support"})).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["call"]["status"], "initiated");
    let call_id = ack["call"]["id"].as_str().expect("call id").to_owned();

    let pushed = bob.next_of("call_state").await;
    assert_eq!(
        (pushed["call"]["id"].as_str(), pushed["call"]["status"].as_str()),
        (Some(call_id.as_str()), Some("initiated"))
    );
    assert_eq!(bob.request(json!({"type": "call.ring", "call_id": call_id})).await["call"]["status"], "ringing");
    assert_eq!(alice.next_of("call_state").await["call"]["status"], "initiated"); // alice's own push
    assert_eq!(alice.next_of("call_state").await["call"]["status"], "ringing");

    // Signals: byte-identical SDP, sequence numbers, candidates as sent.
    let ack = alice.request(json!({"type": "offer", "call_id": call_id, "sdp": SDP})).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let s1 = ack["seq"].as_u64().expect("seq");
    assert_eq!(s1 % 1000, 1, "a call's first sequence number ends in 001");
    let offer = bob.next_of("offer").await;
    assert_eq!(
        (offer["seq"].as_u64(), offer["from"].as_str(), offer["sdp"].as_str()),
        (Some(s1), Some("alice"), Some(SDP))
    );

    assert_eq!(bob.request(json!({"type": "call.answer", "call_id": call_id})).await["call"]["status"], "active");
    let ack = bob.request(json!({"type": "answer", "call_id": call_id, "sdp": SDP})).await;
    assert_eq!(ack["seq"], s1 + 1);
    let candidate = json!({"candidate": "candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host", "sdpMid": "0", "sdpMLineIndex": 0});
    bob.request(json!({"type": "ice-candidate", "call_id": call_id, "candidate": candidate})).await;
    let answer = alice.next_of("answer").await;
    assert_eq!((answer["seq"].as_u64(), answer["sdp"].as_str()), (Some(s1 + 1), Some(SDP)));
    let got = alice.next_of("ice-candidate").await;
    assert_eq!((got["seq"].as_u64(), &got["candidate"]), (Some(s1 + 2), &candidate));

    alice.request(json!({"type": "hangup", "call_id": call_id, "reason": "bye"})).await;
    assert_eq!(bob.next_of("hangup").await["reason"], "bye");
    let ended = alice.request(json!({"type": "call.end", "call_id": call_id})).await;
    assert_eq!(
        (ended["call"]["status"].as_str(), ended["call"]["end_reason"].as_str()),
        (Some("ended"), Some("hangup"))
    );
    loop {
        let state = bob.next_of("call_state").await;
        if state["call"]["status"] == "ended" {
            assert!(state["call"]["duration_ms"].as_i64().is_some());
            break;
        }
    }
    let late = bob.request(json!({"type": "offer", "call_id": call_id, "sdp": SDP})).await;
    assert_eq!((late["type"].as_str(), late["code"].as_str()), (Some("error"), Some("failed_precondition")), "{late}");
    // Relay 0 holds alice's socket and relayed her offer.
    let (status, metrics) = videocall_testkit::http_get(fleet.relays[0], "/metrics").await.expect("metrics");
    assert_eq!(status, 200);
    assert!(metrics.contains("videocall_relay_signals_total{type=\"offer\"} 1"), "{metrics}");
    assert!(metrics.contains("videocall_relay_connections 1"), "{metrics}");
    fleet.stop().await;
}

#[tokio::test]
async fn a_callee_who_connects_late_gets_the_call_and_the_offer() {
    let fleet = spawn_fleet(FleetOptions::default()).await;
    let mut alice = fleet.connect(0, "alice").await;
    let ack = alice.request(json!({"type": "call.initiate", "callee_id": "bob", "call_type": "sales"})).await;
    let call_id = ack["call"]["id"].as_str().expect("call id").to_owned();
    let s1 =
        alice.request(json!({"type": "offer", "call_id": call_id, "sdp": SDP})).await["seq"].as_u64().expect("seq");
    let candidate = json!({"candidate": "candidate:2 1 udp 1 127.0.0.1 40000 typ host", "sdpMLineIndex": 0});
    alice.request(json!({"type": "ice-candidate", "call_id": call_id, "candidate": candidate})).await;

    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut bob = fleet.connect(1, "bob").await;
    let state = bob.next_of("call_state").await;
    assert_eq!(state["call"]["id"], call_id.as_str());
    let offer = bob.next_of("offer").await;
    assert_eq!((offer["seq"].as_u64(), offer["sdp"].as_str()), (Some(s1), Some(SDP)));
    assert_eq!(bob.next_of("ice-candidate").await["seq"], s1 + 1);

    // A reconnecting client asks for what follows its last seq; nothing is delivered twice.
    let resumed = bob.request(json!({"type": "resume", "call_id": call_id, "after_seq": s1})).await;
    assert_eq!((resumed["replayed"].as_u64(), resumed["last_seq"].as_u64()), (Some(1), Some(s1 + 1)), "{resumed}");
    alice.request(json!({"type": "hangup", "call_id": call_id})).await;
    let next = bob.next_of("hangup").await;
    assert_eq!(next["seq"], s1 + 2);
    fleet.stop().await;
}

#[tokio::test]
async fn a_third_user_cannot_send_into_or_read_a_call() {
    let fleet = spawn_fleet(FleetOptions::default()).await;
    let mut alice = fleet.connect(0, "alice").await;
    let ack = alice.request(json!({"type": "call.initiate", "callee_id": "bob", "call_type": "consult"})).await;
    let call_id = ack["call"]["id"].as_str().expect("call id").to_owned();
    let s1 =
        alice.request(json!({"type": "offer", "call_id": call_id, "sdp": SDP})).await["seq"].as_u64().expect("seq");

    let mut eve = fleet.connect(1, "eve").await;
    let sent = eve.request(json!({"type": "offer", "call_id": call_id, "sdp": SDP})).await;
    assert_eq!((sent["type"].as_str(), sent["code"].as_str()), (Some("error"), Some("permission_denied")), "{sent}");
    let read = eve.request(json!({"type": "resume", "call_id": call_id, "after_seq": 0})).await;
    assert_eq!(read["code"], "permission_denied", "{read}");
    let answer = eve.request(json!({"type": "call.answer", "call_id": call_id})).await;
    assert_eq!(answer["code"], "permission_denied");
    assert!(eve.next_within(Duration::from_millis(500)).await.is_none(), "eve received nothing of the call");

    // bob still gets exactly alice's one offer.
    let mut bob = fleet.connect(0, "bob").await;
    assert_eq!(bob.next_of("offer").await["seq"], s1);
    let next =
        alice.request(json!({"type": "ice-candidate", "call_id": call_id, "candidate": {"candidate": ""}})).await;
    assert_eq!(next["seq"], s1 + 1, "eve's refused signal took no sequence number");
    fleet.stop().await;
}

#[tokio::test]
async fn bad_frames_get_error_frames_and_change_nothing() {
    let fleet = spawn_fleet(FleetOptions::default()).await;
    let mut alice = fleet.connect(0, "alice").await;
    let ack = alice.request(json!({"type": "call.initiate", "callee_id": "bob", "call_type": "support"})).await;
    let call_id = ack["call"]["id"].as_str().expect("call id").to_owned();

    alice.send_raw("{not json".into()).await;
    let e = alice.next_of("error").await;
    assert_eq!(e["code"], "malformed");
    let cases = [
        (json!({"type": "dance", "call_id": call_id}), "unknown_type"),
        (json!({"type": "offer", "call_id": call_id, "sdp": "hello"}), "invalid_argument"),
        (json!({"type": "offer", "call_id": call_id}), "invalid_argument"),
        (json!({"type": "ice-candidate", "call_id": call_id, "candidate": [1]}), "invalid_argument"),
        (json!({"type": "offer", "call_id": "not-a-uuid", "sdp": SDP}), "invalid_argument"),
        (json!({"type": "offer", "call_id": uuid::Uuid::now_v7().to_string(), "sdp": SDP}), "not_found"),
        (json!({"type": "call.initiate", "callee_id": "bob", "call_type": "video"}), "invalid_argument"),
        (json!({"type": "call.initiate", "callee_id": "carol", "call_type": "support"}), "failed_precondition"),
        (json!({"type": "call.end", "call_id": call_id, "reason": "timeout"}), "invalid_argument"),
        (json!({"type": "call.end", "call_id": call_id, "reason": "bored"}), "invalid_argument"),
    ];
    for (frame, code) in cases {
        let reply = alice.request(frame.clone()).await;
        assert_eq!((reply["type"].as_str(), reply["code"].as_str()), (Some("error"), Some(code)), "{frame} -> {reply}");
        assert!(reply["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let first = alice.request(json!({"type": "offer", "call_id": call_id, "sdp": SDP})).await;
    assert_eq!(first["seq"].as_u64().map(|s| s % 1000), Some(1), "no refused frame took a sequence number");
    alice.send_raw(json!({"type": "ping", "id": 42}).to_string()).await;
    assert_eq!(alice.next_of("pong").await["id"], 42, "the application-level ping is answered with the id");
    fleet.stop().await;
}

#[tokio::test]
async fn oversize_messages_close_with_1009_and_floods_with_1008() {
    let fleet = spawn_fleet(FleetOptions { rate_limit_per_sec: 5, rate_limit_burst: 10, ..Default::default() }).await;
    let mut alice = fleet.connect(0, "alice").await;
    alice.send_raw(json!({"type": "ping", "pad": "x".repeat(70 * 1024)}).to_string()).await;
    assert_eq!(alice.close_code().await, Some(1009));

    let mut bob = fleet.connect(1, "bob").await;
    for _ in 0..30 {
        bob.send_raw(json!({"type": "ping"}).to_string()).await;
    }
    assert_eq!(bob.close_code().await, Some(1008));
    fleet.stop().await;
}

#[tokio::test]
async fn a_flood_gets_the_1008_close_handshake_not_a_reset() {
    let fleet = spawn_fleet(FleetOptions { relays: 1, ..Default::default() }).await;
    for round in 0..3 {
        let mut mallory = fleet.connect(0, &format!("mallory-{round}")).await;
        // 400 frames written without reading a reply, as a flooding client does: past the burst
        // of 200 the relay closes; the client must see the close frame, not a TCP reset.
        for _ in 0..400 {
            mallory.send_raw(json!({"type": "ping"}).to_string()).await;
        }
        assert_eq!(mallory.close_code().await, Some(1008), "round {round}");
    }
    fleet.stop().await;
}

#[tokio::test]
async fn the_upgrade_needs_a_valid_token_and_an_allowed_origin() {
    use tokio_tungstenite::tungstenite::{Error, client::IntoClientRequest, http::HeaderValue};
    let fleet = spawn_fleet(FleetOptions { relays: 1, ..Default::default() }).await;
    let base = format!("ws://{}/ws", fleet.relays[0]);
    let status_of = |e: Error| match e {
        Error::Http(response) => response.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {other}"),
    };
    assert_eq!(status_of(Client::connect(&base).await.err().expect("no token")), 401);
    assert_eq!(status_of(Client::connect(&format!("{base}?token=abc.def.ghi")).await.err().expect("bad token")), 401);

    let mut request = format!("{base}?token={}", fleet.token("alice")).into_client_request().expect("request");
    request.headers_mut().insert("origin", HeaderValue::from_static("https://evil.example.net"));
    let refused = tokio_tungstenite::connect_async(request).await.expect_err("bad origin");
    assert_eq!(status_of(refused), 403);

    let mut request = base.clone().into_client_request().expect("request");
    request.headers_mut().insert("origin", HeaderValue::from_static("https://agents.example.com"));
    let protocols = format!("videocall.v1, bearer.{}", fleet.token("alice"));
    request.headers_mut().insert("sec-websocket-protocol", protocols.parse().expect("header"));
    let (_ws, response) = tokio_tungstenite::connect_async(request).await.expect("allowed origin, subprotocol token");
    assert_eq!(response.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok()), Some("videocall.v1"));

    // At most 3 connections per user (this fleet's limit): the fourth is refused.
    let _a = fleet.connect(0, "bob").await;
    let _b = fleet.connect(0, "bob").await;
    let _c = fleet.connect(0, "bob").await;
    let url = format!("{base}?token={}", fleet.token("bob"));
    assert_eq!(status_of(Client::connect(&url).await.err().expect("fourth")), 429);
    fleet.stop().await;
}

/// A burst of trickled candidates sent without waiting for acks: the sender gets every ack with
/// consecutive sequence numbers, and the receiver on the other relay gets every candidate once,
/// in order (the relay writes frames that queued up for a socket with one flush).
#[tokio::test]
async fn a_burst_of_candidates_arrives_complete_and_in_order() {
    const BURST: usize = 150;
    let fleet = spawn_fleet(FleetOptions::default()).await;
    let mut alice = fleet.connect(0, "alice").await;
    let mut bob = fleet.connect(1, "bob").await;
    let ack = alice.request(json!({"type": "call.initiate", "callee_id": "bob", "call_type": "support"})).await;
    let call_id = ack["call"]["id"].as_str().expect("call id").to_owned();
    bob.next_of("call_state").await;

    let candidate = |i: usize| json!({"candidate": format!("candidate:{i} 1 udp 2130706431 127.0.0.1 {} typ host", 40000 + i), "sdpMLineIndex": 0});
    for i in 0..BURST {
        let frame =
            json!({"type": "ice-candidate", "id": format!("b{i}"), "call_id": call_id, "candidate": candidate(i)});
        alice.send_raw(frame.to_string()).await;
    }
    let mut acks = Vec::new();
    while acks.len() < BURST {
        let frame = alice.next().await.expect("an ack for every candidate");
        if frame["type"] == "call_state" {
            continue;
        }
        assert_eq!(frame["type"], "ack", "{frame}");
        assert_eq!(frame["id"], format!("b{}", acks.len()), "acks come in the order sent");
        acks.push(frame["seq"].as_u64().expect("seq"));
    }
    assert!(acks.windows(2).all(|w| w[1] == w[0] + 1), "consecutive: {acks:?}");

    let mut got = Vec::new();
    while got.len() < BURST {
        let frame = bob.next().await.expect("every candidate arrives");
        if frame["type"] != "ice-candidate" {
            continue;
        }
        assert_eq!(frame["candidate"], candidate(got.len()), "in the order sent");
        got.push(frame["seq"].as_u64().expect("seq"));
    }
    assert_eq!(got, acks, "each delivered once, with the sequence number its sender was told");
    assert!(bob.next_within(Duration::from_millis(300)).await.is_none(), "nothing more");
    fleet.stop().await;
}
