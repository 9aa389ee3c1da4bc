//! The binary as a user runs it: bad settings are refused up front; a good start serves calls
//! over the WebSocket, feeds the quality aggregator and event consumer in process, takes upstream
//! events over HTTP, keeps everything in its SQLite file across restarts, and stops on SIGTERM.

use std::time::Duration;

use serde_json::{Value, json};
use videocall_testkit::{http_get, http_post, ws::Client};

use crate::process::{Standalone, temp_dir, videocall};

async fn refused(args: &[&str]) -> String {
    let output = videocall().args(args).output().await.expect("runs");
    assert_eq!(output.status.code(), Some(2), "refused with exit code 2: {args:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn bad_settings_are_refused_before_anything_starts() {
    let dir = temp_dir("vc-standalone-bad");
    let data = dir.join("data");
    let data_arg = format!("--data-dir={}", data.display());

    let stderr = refused(&[&data_arg, "--http=0.0.0.0:18080"]).await;
    assert!(stderr.contains("HTTP_LISTEN_ADDR: 0.0.0.0:18080 is not a loopback address"), "{stderr}");
    assert!(stderr.contains("set JWT_SECRET"), "{stderr}");
    let stderr = refused(&[&data_arg, "--ring-timeout-secs=1", "--turn-server=stun:x", "--log-format=xml"]).await;
    for problem in ["RING_TIMEOUT_SECS", "TURN_SERVER: every entry must be a turn: or turns: URL", "LOG_FORMAT"] {
        assert!(stderr.contains(problem), "names {problem}: {stderr}");
    }
    let stderr = refused(&[&data_arg, "--turn-server=turn:127.0.0.1:3478"]).await;
    assert!(stderr.contains("TURN_SECRET: is required when TURN_SERVER is set"), "{stderr}");
    let stderr = refused(&["--token", "alice", "--role", "admin"]).await;
    assert!(stderr.contains("role `admin` is not one of user, agent, service"), "{stderr}");
    // With a real secret, any address is allowed; a short one is not.
    let stderr = refused(&[&data_arg, "--jwt-secret=short"]).await;
    assert!(stderr.contains("JWT_SECRET: must be at least 32 bytes"), "{stderr}");

    assert!(!data.exists(), "nothing was created for a refused start");
    std::fs::remove_dir_all(dir).ok();
}

/// `/metrics` on `addr` contains each of `lines`.
async fn assert_metrics(addr: std::net::SocketAddr, lines: &[&str]) {
    let (_, metrics) = http_get(addr, "/metrics").await.expect("metrics endpoint answers");
    for line in lines {
        assert!(metrics.contains(line), "{addr} metrics have {line}:\n{metrics}");
    }
}

/// Initiates, rings, answers (and, with `quality`, reports a sample): an active call.
async fn active_call(customer: &mut Client, agent: &mut Client, call_type: &str) -> String {
    let ack = customer
        .request(json!({"type":"call.initiate","callee_id":"agent-1","call_type":call_type,"request_id":uuid::Uuid::now_v7().to_string()}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let call_id = ack["call"]["id"].as_str().expect("call id").to_owned();
    // The agent hears of it (after any state of earlier calls still queued).
    while agent.next_of("call_state").await["call"]["id"] != call_id.as_str() {}
    for step in ["call.ring", "call.answer"] {
        let ack = agent.request(json!({"type":step,"call_id":call_id})).await;
        assert_eq!(ack["type"], "ack", "{step}: {ack}");
    }
    call_id
}

/// The newest entry of `client`'s history once `ready` holds for it (polled for 15 s).
async fn history_entry(client: &mut Client, call_id: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..75 {
        let ack = client.request(json!({"type":"call.history"})).await;
        if let Some(entry) = ack["calls"].as_array().into_iter().flatten().find(|c| c["id"] == call_id) {
            if ready(entry) {
                return entry.clone();
            }
            last = entry.clone();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("history entry of {call_id} never got there; last seen: {last}");
}

#[tokio::test]
async fn the_binary_runs_calls_quality_and_events_on_sqlite() {
    let dir = temp_dir("vc-standalone");
    let data = dir.join("data");
    let app = Standalone::start(&data, &["--ring-timeout-secs=5"]).await;
    assert!(data.join("videocall.sqlite3").exists(), "the SQLite file is in the data directory");
    let welcome = app.process.output();
    assert!(welcome.contains(&format!("http://{}/agent.html?token=", app.http)), "prints the agent link:\n{welcome}");
    assert!(welcome.contains(&format!("http://{}/customer.html?token=", app.http)), "{welcome}");
    let (status, page) = http_get(app.http, "/agent.html").await.expect("relay answers");
    assert_eq!(status, 200);
    assert!(page.contains("<video"), "the agent page is served");

    let ws = |token: String| format!("ws://{}/ws?token={token}", app.http);
    let mut customer = Client::connect(&ws(Standalone::token("customer-1", "user").await)).await.expect("customer");
    let mut agent = Client::connect(&ws(Standalone::token("agent-1", "agent").await)).await.expect("agent");
    assert_eq!((customer.user_id.as_str(), agent.user_id.as_str()), ("customer-1", "agent-1"));
    let bad = Client::connect(&ws("not-a-token".into())).await;
    assert!(bad.is_err(), "a bad token is refused");

    // A call with a quality sample: the in-process aggregator summarises it.
    let call = active_call(&mut customer, &mut agent, "support").await;
    let sample = json!({"type":"call.quality","call_id":call,"rtt_ms":40,"jitter_ms":2.5,"packet_loss_percent":0.5,
        "bitrate_kbps":1200,"width":640,"height":480,"fps":30,"direction":"inbound"});
    assert_eq!(customer.request(sample.clone()).await["type"], "ack");
    let mut bad_sample = sample.clone();
    bad_sample["packet_loss_percent"] = json!(140);
    let refused = customer.request(bad_sample).await;
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("invalid_argument")),
        "{refused}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await; // a call of a measurable duration
    let ack = customer.request(json!({"type":"call.end","call_id":call,"reason":"hangup"})).await;
    assert_eq!(ack["call"]["status"], "ended", "{ack}");
    let entry = history_entry(&mut agent, &call, |c| c["quality"]["sample_count"] == 1).await;
    assert_eq!(entry["status"], "ended");
    assert!(entry["duration_ms"].as_i64().is_some_and(|ms| ms >= 300), "{entry}");
    assert_eq!(entry["quality"]["avg_rtt_ms"], 40.0, "{entry}");
    assert_eq!(entry["quality"]["resolution"], "640x480", "{entry}");

    // Upstream events over HTTP, from a service principal only, JSON only: a page the developer
    // opens (no token, or a simple text/plain POST) and a user's token are refused, and change
    // nothing.
    let ticket = json!({"specversion":"1.0","id":"ticket-evt-1","source":"/support","type":"SupportTicketCreated",
        "data":{"ticket_id":"T-42","customer_id":"customer-1","agent_id":"agent-1","subject":"camera"}});
    let body = ticket.to_string();
    let service = format!("Bearer {}", Standalone::token("upstream", "service").await);
    let user = format!("Bearer {}", Standalone::token("customer-1", "user").await);
    let cloudevent = ("content-type", "application/cloudevents+json");
    for (headers, expected) in [
        (vec![], 401),
        (vec![("content-type", "text/plain")], 401),
        (vec![("authorization", "Bearer not-a-token")], 401),
        (vec![("authorization", user.as_str())], 403),
        (vec![("authorization", service.as_str()), ("content-type", "text/plain")], 415),
        (vec![("authorization", service.as_str()), ("content-type", "application/x-www-form-urlencoded")], 415),
    ] {
        let (status, reply) =
            http_post(app.workers, "/events/support.events/ticket.created", &headers, body.as_bytes())
                .await
                .expect("answers");
        assert_eq!(status, expected, "{headers:?}: {reply}");
        assert!(reply.contains("error"), "{reply}");
    }
    let authorized = [("authorization", service.as_str()), cloudevent];
    let (status, reply) = http_post(app.workers, "/events/support.events/ticket.created", &authorized, body.as_bytes())
        .await
        .expect("answers");
    assert_eq!(status, 202, "{reply}");
    let notice = customer.next_of("video_support_offered").await;
    assert_eq!(notice["ticket_id"], "T-42");
    let (status, _) = http_post(app.workers, "/events/support.events/ticket.created", &authorized, body.as_bytes())
        .await
        .expect("answers");
    assert_eq!(status, 202, "a redelivery is accepted (and ignored)");
    while let Some(frame) = customer.next_within(Duration::from_millis(500)).await {
        assert_ne!(frame["type"], "video_support_offered", "no second offer for the same ticket event");
    }

    // Bad upstream input: a clear error and nothing changed.
    let (status, reply) = http_post(
        app.workers,
        "/events/support.events/ticket.created",
        &[("message-id", "m-bad"), authorized[0]],
        b"{not json",
    )
    .await
    .expect("answers");
    assert_eq!(status, 422, "{reply}");
    assert!(reply.contains("event-consumer"), "names the consumer that refused it: {reply}");
    let (status, reply) =
        http_post(app.workers, "/events/nowhere/nothing", &[("message-id", "m-x"), authorized[0]], b"{}")
            .await
            .expect("answers");
    assert_eq!(status, 404, "{reply}");
    assert!(reply.contains("no consumer is bound to `nothing` on `nowhere`"), "{reply}");

    // UserOffline ends the agent's active call.
    let call2 = active_call(&mut customer, &mut agent, "sales").await;
    let offline = json!({"user_id":"agent-1"}).to_string();
    let (status, reply) = http_post(
        app.workers,
        "/events/presence.events/user.offline",
        &[("message-id", "offline-1"), authorized[0]],
        offline.as_bytes(),
    )
    .await
    .expect("answers");
    assert_eq!(status, 202, "{reply}");
    let ended = loop {
        let frame = customer.next_of("call_state").await;
        if frame["call"]["id"] == call2.as_str() && frame["call"]["status"] == "ended" {
            break frame;
        }
    };
    assert_eq!(ended["call"]["end_reason"], "user_offline", "{ended}");

    // Unanswered, the call is missed by the sweeper, and the caller is told at once.
    let ack = customer
        .request(json!({"type":"call.initiate","callee_id":"agent-1","call_type":"consult","request_id":"r-missed"}))
        .await;
    let call3 = ack["call"]["id"].as_str().expect("call id").to_owned();
    let missed = loop {
        let frame = customer.next_of("call_state").await;
        if frame["call"]["id"] == call3.as_str() && frame["call"]["status"] != "initiated" {
            break frame;
        }
    };
    assert_eq!(missed["call"]["status"], "missed", "{missed}");

    // Calls by state and type, from the process that made each change.
    assert_metrics(
        app.ops,
        &[
            "videocall_outbox_published_total",
            "videocall_call_transitions_total{status=\"initiated\",call_type=\"consult\"} 1",
            "videocall_call_transitions_total{status=\"active\",call_type=\"sales\"} 1",
            "videocall_call_transitions_total{status=\"ended\",call_type=\"support\"} 1",
        ],
    )
    .await;
    assert_metrics(
        app.workers,
        &[
            "videocall_local_event_messages_total{consumer=\"quality-aggregator\"",
            "videocall_local_event_messages_total{consumer=\"event-consumer\"",
            "videocall_sweeps_total{result=\"ok\"}",
            "videocall_call_transitions_total{status=\"ended\",call_type=\"sales\"} 1",
            "videocall_call_transitions_total{status=\"missed\",call_type=\"consult\"} 1",
            "videocall_call_mos_count 1",
            "videocall_call_packet_loss_percent_sum 0.5",
        ],
    )
    .await;
    drop((customer, agent));

    // SIGTERM stops it cleanly; started again on the same data, the history is still there.
    let output = app.stop().await;
    assert!(output.contains("videocall stopped"), "{output}");
    let app = Standalone::start(&data, &[]).await;
    let mut customer =
        Client::connect(&format!("ws://{}/ws?token={}", app.http, Standalone::token("customer-1", "user").await))
            .await
            .expect("customer");
    let ack = customer.request(json!({"type":"call.history"})).await;
    let ids: Vec<&str> = ack["calls"].as_array().expect("calls").iter().filter_map(|c| c["id"].as_str()).collect();
    assert!(ids.contains(&call.as_str()) && ids.contains(&call2.as_str()), "both calls kept: {ack}");
    drop(customer);
    app.stop().await;
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn labelled_metric_families_show_zero_series_from_the_start() {
    let dir = temp_dir("vc-standalone-metrics");
    let app = Standalone::start(&dir.join("data"), &[]).await;
    assert_metrics(
        app.http,
        &[
            "videocall_relay_errors_total{type=\"failed_precondition\"} 0",
            "videocall_relay_closes_total{type=\"1008\"} 0",
            "videocall_relay_closes_total{type=\"4001\"} 0",
            "videocall_relay_signals_total{type=\"offer\"} 0",
        ],
    )
    .await;
    assert_metrics(app.ops, &["videocall_call_transitions_total{status=\"missed\",call_type=\"sales\"} 0"]).await;
    assert_metrics(
        app.workers,
        &[
            "videocall_call_transitions_total{status=\"ended\",call_type=\"consult\"} 0",
            "videocall_recordings_finished_total{status=\"failed\"} 0",
            "videocall_sweeps_total{result=\"error\"} 0",
        ],
    )
    .await;
    app.stop().await;
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn an_agent_is_callable_as_soon_as_its_socket_says_hello() {
    let dir = temp_dir("vc-standalone-hello");
    let app = Standalone::start(&dir.join("data"), &[]).await;
    let ws = |token: String| format!("ws://{}/ws?token={token}", app.http);
    let mut customer = Client::connect(&ws(Standalone::token("customer-9", "user").await)).await.expect("customer");
    for i in 0..8 {
        let agent = format!("agent-hello-{i}");
        let token = Standalone::token(&agent, "agent").await;
        let _agent = Client::connect(&ws(token)).await.expect("agent");
        // No other request of the agent's: its hello alone says the gateway knows it.
        let ack = customer
            .request(json!({"type":"call.initiate","callee_id":agent,"call_type":"support","request_id":format!("r-hello-{i}")}))
            .await;
        assert_eq!(ack["type"], "ack", "agent {i}: {ack}");
        let call_id = ack["call"]["id"].as_str().expect("call").to_owned();
        let ended = customer.request(json!({"type":"call.end","call_id":call_id})).await;
        assert_eq!(ended["type"], "ack", "{ended}");
    }
    app.stop().await;
    std::fs::remove_dir_all(dir).ok();
}

/// The support desk on the standalone binary (SQLite, everything in one process): a customer calls
/// the sales desk, hears its place, the agent who becomes available gets the call, declines it
/// once — back to the queue, the next round offers it again as the only agent — and answers.
#[tokio::test]
async fn the_binary_routes_desk_calls_on_sqlite() {
    let dir = temp_dir("vc-standalone-desk");
    let data = dir.join("data");
    let app = Standalone::start(&data, &[]).await;
    let ws = |token: String| format!("ws://{}/ws?token={token}", app.http);
    let mut customer = Client::connect(&ws(Standalone::token("customer-7", "user").await)).await.expect("customer");
    let mut agent = Client::connect(&ws(Standalone::token("agent-7", "agent").await)).await.expect("agent");

    let ack = customer.request(json!({"type":"call.initiate","call_type":"sales","request_id":"desk-1"})).await;
    assert_eq!(ack["call"]["status"], "queued", "{ack}");
    let call_id = ack["call"]["id"].as_str().expect("id").to_owned();
    let position = customer.next_of("queue.position").await;
    assert_eq!((position["call_id"].as_str(), position["position"].as_u64()), (Some(call_id.as_str()), Some(1)));

    let ack = agent.request(json!({"type":"agent.availability","available":true,"call_types":["sales"]})).await;
    assert_eq!(ack["agent"]["available"], true, "{ack}");
    let offered = agent.next_of("call_state").await;
    assert_eq!(
        (offered["call"]["id"].as_str(), offered["call"]["status"].as_str()),
        (Some(call_id.as_str()), Some("initiated"))
    );
    let back = agent.request(json!({"type":"call.reject","call_id":call_id})).await;
    assert_eq!((back["call"]["status"].as_str(), back["call"]["callee_id"].as_str()), (Some("queued"), Some("")));
    // Offered again (the only agent of the desk), answered this time.
    loop {
        let state = agent.next_of("call_state").await;
        if state["call"]["status"] == "initiated" && state["call"]["callee_id"] == "agent-7" {
            break;
        }
    }
    assert_eq!(agent.request(json!({"type":"call.answer","call_id":call_id})).await["call"]["status"], "active");
    let entry = history_entry(&mut customer, &call_id, |c| c["status"] == "active").await;
    let outcomes: Vec<&str> =
        entry["routing_attempts"].as_array().expect("attempts").iter().filter_map(|a| a["outcome"].as_str()).collect();
    assert_eq!(outcomes, ["rejected", "answered"], "{entry}");
    assert_eq!(customer.request(json!({"type":"call.end","call_id":call_id})).await["call"]["status"], "ended");
    app.stop().await;
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn the_binary_transfers_calls_on_sqlite() {
    let dir = temp_dir("vc-standalone-transfer");
    let data = dir.join("data");
    let app = Standalone::start(&data, &[]).await;
    let ws = |token: String| format!("ws://{}/ws?token={token}", app.http);
    let mut first = Client::connect(&ws(Standalone::token("agent-t1", "agent").await)).await.expect("agent");
    let mut target = Client::connect(&ws(Standalone::token("agent-t2", "agent").await)).await.expect("agent");
    assert_eq!(first.request(json!({"type":"call.history"})).await["type"], "ack", "the agent is known");
    let mut customer = Client::connect(&ws(Standalone::token("customer-t", "user").await)).await.expect("customer");
    let ack = customer.request(json!({"type":"call.initiate","callee_id":"agent-t1","call_type":"support"})).await;
    let call_id = ack["call"]["id"].as_str().unwrap_or_else(|| panic!("a call: {ack}")).to_owned();
    assert_eq!(first.request(json!({"type":"call.answer","call_id":call_id})).await["call"]["status"], "active");

    // Declined, then accepted: the same rules as on PostgreSQL.
    let ack = first.request(json!({"type":"call.transfer","call_id":call_id,"to_agent_id":"agent-t2"})).await;
    assert_eq!(ack["transfer"]["status"], "ringing", "{ack}");
    let again = first.request(json!({"type":"call.transfer","call_id":call_id,"to_agent_id":"agent-t3"})).await;
    assert_eq!(again["message"], "a transfer to agent-t2 is ringing already", "{again}");
    assert_eq!(target.next_of("transfer").await["transfer"]["status"], "ringing");
    assert_eq!(target.request(json!({"type":"call.reject","call_id":call_id})).await["call"]["callee_id"], "agent-t1");
    first.request(json!({"type":"call.transfer","call_id":call_id,"to_agent_id":"agent-t2"})).await;
    let ack = target.request(json!({"type":"call.answer","call_id":call_id})).await;
    assert_eq!((ack["call"]["status"].as_str(), ack["call"]["callee_id"].as_str()), (Some("active"), Some("agent-t2")));
    assert_eq!(customer.request(json!({"type":"call.end","call_id":call_id})).await["call"]["status"], "ended");
    let entry = history_entry(&mut customer, &call_id, |c| c["status"] == "ended").await;
    let legs: Vec<String> = entry["legs"]
        .as_array()
        .expect("legs")
        .iter()
        .map(|l| {
            format!("{}:{}", l["agent_id"].as_str().unwrap_or_default(), l["end_reason"].as_str().unwrap_or_default())
        })
        .collect();
    assert_eq!(legs, ["agent-t1:transferred", "agent-t2:hangup"], "{entry}");
    let outcomes: Vec<&str> =
        entry["transfers"].as_array().expect("transfers").iter().filter_map(|t| t["status"].as_str()).collect();
    assert_eq!(outcomes, ["failed", "transferred"]);
    app.stop().await;
    std::fs::remove_dir_all(dir).ok();
}
