//! A call a person can trust, on the relay: no media before the callee answers (the caller's
//! offer waits for the callee, nothing of the callee's that could start media goes out), fresh
//! ICE servers on request, and a socket that ends with its token.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::{Client, FleetOptions, spawn_fleet};

const SDP: &str = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n";

fn candidate() -> serde_json::Value {
    json!({"candidate": "candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host", "sdpMid": "0", "sdpMLineIndex": 0})
}

#[tokio::test]
async fn nothing_of_the_callees_goes_out_before_the_call_is_answered() {
    let fleet = spawn_fleet(FleetOptions::default()).await;
    let mut alice = fleet.connect(0, "alice").await;
    let mut bob = fleet.connect(1, "bob").await;
    // bob's second tab, on the other relay: it answers the call below, so this socket's view of
    // the call is stale until the call_state push reaches it.
    let mut bob_tab = fleet.connect(0, "bob").await;

    let ack = alice.request(json!({"type": "call.initiate", "callee_id": "bob", "call_type": "support"})).await;
    let call_id = ack["call"]["id"].as_str().expect("call id").to_owned();
    assert_eq!(bob.request(json!({"type": "call.ring", "call_id": call_id})).await["call"]["status"], "ringing");
    let offer = alice.request(json!({"type": "offer", "call_id": call_id, "sdp": SDP})).await;
    let s1 = offer["seq"].as_u64().expect("offer seq");
    assert_eq!(bob.next_of("offer").await["seq"], s1, "the caller's offer reaches the ringing callee");

    let refused = [
        (false, json!({"type": "answer", "call_id": call_id, "sdp": SDP})),
        (false, json!({"type": "ice-candidate", "call_id": call_id, "candidate": candidate()})),
        (false, json!({"type": "offer", "call_id": call_id, "sdp": SDP})),
        (true, json!({"type": "answer", "call_id": call_id, "sdp": SDP})),
    ];
    for (from_caller, frame) in refused {
        let socket = if from_caller { &mut alice } else { &mut bob };
        let reply = socket.request(frame.clone()).await;
        assert_eq!((reply["type"].as_str(), reply["code"].as_str()), (Some("error"), Some("failed_precondition")));
        let message = reply["message"].as_str().unwrap_or_default();
        assert!(message.starts_with("call is ringing:"), "{frame}: {reply}");
    }
    // Nothing was published or sequenced: the caller's next candidate takes the next number, and
    // alice reads no signal but her own call's states.
    let c = alice.request(json!({"type": "ice-candidate", "call_id": call_id, "candidate": candidate()})).await;
    assert_eq!(c["seq"].as_u64(), Some(s1 + 1), "{c}");
    while let Some(frame) = alice.next_within(Duration::from_millis(300)).await {
        assert_eq!(frame["type"], "call_state", "nothing else reaches the caller: {frame}");
    }

    // The callee answers from one tab; the other tab's answer SDP then goes through (its relay
    // checks the call again rather than trusting what it last saw).
    let answered = bob.request(json!({"type": "call.answer", "call_id": call_id})).await;
    assert_eq!(answered["call"]["status"], "active", "{answered}");
    let answer = bob_tab.request(json!({"type": "answer", "call_id": call_id, "sdp": SDP})).await;
    assert_eq!(answer["seq"].as_u64(), Some(s1 + 2), "{answer}");
    let c = bob.request(json!({"type": "ice-candidate", "call_id": call_id, "candidate": candidate()})).await;
    assert_eq!(c["seq"].as_u64(), Some(s1 + 3), "{c}");
    let got = alice.next_of("answer").await;
    assert_eq!((got["seq"].as_u64(), got["from"].as_str()), (Some(s1 + 2), Some("bob")));
    assert_eq!(alice.next_of("ice-candidate").await["seq"].as_u64(), Some(s1 + 3));
    fleet.stop().await;
}

#[tokio::test]
async fn ice_servers_on_request_and_sockets_end_with_their_token() {
    let turn = videocall_runtime::ice::IceConfig {
        stun_urls: vec!["stun:stun.example.com:3478".into()],
        turn_urls: vec!["turn:turn.example.com:3478?transport=udp".into()],
        turn_secret: Some(videocall_runtime::config::Secret::new("turn-secret-for-tests")),
        turn_ttl: Duration::from_secs(600),
    };
    let fleet = spawn_fleet(FleetOptions { ice: turn, ..FleetOptions::default() }).await;
    let mut alice = fleet.connect(0, "alice").await;
    let ack = alice.request(json!({"type": "ice.servers"})).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let servers = ack["ice_servers"].as_array().expect("ice_servers");
    assert_eq!(servers[0]["urls"], json!(["stun:stun.example.com:3478"]));
    let username = servers[1]["username"].as_str().expect("TURN username");
    let (expiry, handle) = username.split_once(':').expect("expiry:handle");
    assert!(!handle.contains("alice"), "an opaque handle, not the user id: {handle}");
    let left = expiry.parse::<i64>().expect("unix expiry") - chrono::Utc::now().timestamp();
    assert!((590..=600).contains(&left), "fresh credentials for the TTL: {left}");
    assert!(!servers[1]["credential"].as_str().unwrap_or_default().is_empty());

    // A token that runs out in 2 s: the socket works until then, then closes with 4001.
    let url = format!("ws://{}/ws?token={}", fleet.relays[1], fleet.token_for("bob", 2));
    let mut bob = Client::connect(&url).await.expect("connects");
    let opened = Instant::now();
    bob.send_raw(json!({"type": "ping", "id": "p1"}).to_string()).await;
    assert_eq!(bob.next_of("pong").await["id"], "p1");
    assert_eq!(bob.close_code().await, Some(4001), "closed as `token expired`");
    assert!(opened.elapsed() >= Duration::from_millis(900), "not before the token expired");
    fleet.stop().await;
}

/// The users whose presence lease on the fleet's bus has run out.
async fn away(bus: &videocall_signaling::signal_bus::SignalBus) -> Vec<String> {
    let away = bus.away_longer_than(Duration::ZERO, Duration::from_secs(600)).await.expect("presence readable");
    away.into_iter().map(|(user, _)| user).collect()
}

#[tokio::test]
async fn relays_keep_presence_a_user_away_from_every_relay_is_away() {
    let fleet = spawn_fleet(FleetOptions::default()).await;
    let bus = videocall_signaling::signal_bus::SignalBus::connect(videocall_signaling::signal_bus::SignalBusConfig {
        redis_url: crate::helpers::redis_url(),
        cell_id: fleet.cell.clone(),
        log_capacity: 1,
        log_ttl: Duration::from_secs(1),
    })
    .await
    .expect("redis");
    let bob = fleet.connect(0, "bob").await;
    let carol_tab_1 = fleet.connect(0, "carol").await;
    let _carol_tab_2 = fleet.connect(1, "carol").await;
    assert!(away(&bus).await.is_empty(), "connected users hold a lease");

    // bob's only socket closes: his lease ends at once. carol closes one of two tabs: still here.
    drop(bob);
    drop(carol_tab_1);
    let deadline = Instant::now() + Duration::from_secs(5);
    while away(&bus).await != ["bob"] {
        assert!(Instant::now() < deadline, "bob is away, carol is not: {:?}", away(&bus).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // bob comes back on the other relay: present again.
    let _bob = fleet.connect(1, "bob").await;
    while !away(&bus).await.is_empty() {
        assert!(Instant::now() < deadline + Duration::from_secs(5), "bob is back: {:?}", away(&bus).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fleet.stop().await;
}

#[tokio::test]
async fn the_pages_forbid_framing_inline_script_and_sniffing() {
    let fleet = spawn_fleet(FleetOptions { relays: 1, ..FleetOptions::default() }).await;
    for page in ["/", "/agent.html", "/customer.html"] {
        let (status, head, body) =
            videocall_testkit::http_get_with_headers(fleet.relays[0], page).await.expect("the page answers");
        assert_eq!(status, 200, "{page}");
        assert!(head.contains("x-content-type-options: nosniff"), "{page}: {head}");
        assert!(head.contains("referrer-policy: no-referrer"), "{page}: {head}");
        let csp = head.lines().find_map(|l| l.strip_prefix("content-security-policy: ")).expect("a CSP");
        for rule in ["frame-ancestors 'none'", "script-src 'self'", "object-src 'none'", "connect-src 'self'"] {
            assert!(csp.contains(rule), "{page}: {rule} in {csp}");
        }
        assert!(!csp.contains("unsafe-inline") && !body.contains("<script>"), "{page}: no inline script");
        // Every script the page loads is served, under the same policy.
        for src in body.split("<script src=\"").skip(1).filter_map(|rest| rest.split('"').next()) {
            let (status, head, _) = videocall_testkit::http_get_with_headers(fleet.relays[0], src).await.expect(src);
            assert_eq!(status, 200, "{page} loads {src}");
            assert!(head.contains("content-type: text/javascript"), "{src}: {head}");
        }
    }
    fleet.stop().await;
}

#[tokio::test]
async fn with_an_ops_address_metrics_leave_the_public_port() {
    let fleet = spawn_fleet(FleetOptions { relays: 1, relay_ops: true, ..FleetOptions::default() }).await;
    let (public, ops) = (fleet.relays[0], fleet.relay_ops[0].expect("an ops address"));
    let (status, _) = videocall_testkit::http_get(public, "/metrics").await.expect("answers");
    assert_eq!(status, 404, "no metrics on the public port");
    let (status, metrics) = videocall_testkit::http_get(ops, "/metrics").await.expect("answers");
    assert_eq!(status, 200);
    assert!(metrics.contains("videocall_relay_connections"), "{metrics}");
    for (addr, path) in [(public, "/healthz"), (ops, "/healthz")] {
        assert_eq!(videocall_testkit::http_get(addr, path).await.expect("answers").0, 200, "{addr}{path}");
    }
    // Readiness follows the bus subscriber, which may still be connecting: both ports say so.
    let deadline = Instant::now() + Duration::from_secs(10);
    for addr in [public, ops] {
        while videocall_testkit::http_get(addr, "/readyz").await.expect("answers").0 != 200 {
            assert!(Instant::now() < deadline, "{addr}/readyz turns ready with the bus subscriber");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    fleet.stop().await;
}
