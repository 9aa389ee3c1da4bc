//! The relay binary (beside this test; scripts/test.sh builds it) stopped with SIGTERM while
//! WebSocket clients are connected, two of them in a call: every socket gets a Close frame with
//! 1001 (going away), new sockets are refused, the process exits 0 within its grace period.

use std::time::{Duration, Instant};

use serde_json::json;
use videocall_testkit::process::{Process, loopback, temp_dir, workspace_binary};

use crate::helpers::{FleetOptions, JWT_SECRET, redis_url, spawn_fleet};

const GRACE_SECS: u64 = 5;
const CLIENTS: usize = 12;

#[tokio::test]
async fn sigterm_closes_every_socket_with_1001_and_exits_0() {
    // The gateway in process; the relay as a real process in front of it.
    let fleet = spawn_fleet(FleetOptions { relays: 0, ..Default::default() }).await;
    let http = loopback();
    let mut command = workspace_binary("signaling-relay");
    command
        .env("HTTP_LISTEN_ADDR", http.to_string())
        .env("GATEWAY_URL", format!("http://{}", fleet.gateway))
        .env("REDIS_URL", redis_url())
        .env("CELL_ID", &fleet.cell)
        .env("JWT_SECRET", JWT_SECRET)
        .env("SHUTDOWN_GRACE_SECS", GRACE_SECS.to_string());
    let mut relay = Process::spawn("signaling-relay", command, &temp_dir("relay-sigterm"));
    relay.wait_ready(http, "/readyz").await;

    let url = |user: &str| format!("ws://{http}/ws?token={}", fleet.token(user));
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let user = format!("user-{i}");
        clients.push(videocall_testkit::ws::Client::connect(&url(&user)).await.expect("connects"));
    }
    // user-0 calls user-1, who answers: a live call on two of the sockets.
    let ack = clients[0].request(json!({"type": "call.initiate", "callee_id": "user-1", "call_type": "support"})).await;
    assert_eq!(ack["type"], "ack", "initiate: {ack}");
    let call_id = ack["call"]["id"].as_str().expect("call id").to_owned();
    let ack = clients[1].request(json!({"type": "call.answer", "call_id": call_id})).await;
    assert_eq!(ack["type"], "ack", "answer: {ack}");

    relay.signal("TERM");
    let term_at = Instant::now();
    let mut codes = Vec::new();
    for client in &mut clients {
        codes.push(client.close_code().await);
    }
    let all_closed_after = term_at.elapsed();
    assert_eq!(codes, vec![Some(1001); CLIENTS], "every socket is told `going away`");
    // No new sockets while draining or after.
    let late = videocall_testkit::ws::Client::connect(&url("late-user")).await;
    assert!(late.is_err(), "a socket opened after SIGTERM is refused");
    let status = relay.wait_exit(Duration::from_secs(GRACE_SECS + 5)).await;
    let exited_after = term_at.elapsed();
    assert!(status.success(), "exit 0 after SIGTERM: {status}\n{}", relay.output());
    assert!(exited_after < Duration::from_secs(GRACE_SECS), "exited within the grace period: {exited_after:?}");
    println!(
        "relay SIGTERM: {CLIENTS} sockets closed with 1001 within {all_closed_after:?}; exit 0 after \
         {exited_after:?} (grace {GRACE_SECS} s)"
    );
    fleet.stop().await;
}
