//! The `missed-call-sweeper` binary as an operator runs it: ready on /readyz, misses an overdue
//! call on its schedule, counts it on /metrics, and stops cleanly on SIGTERM.

use std::{sync::Arc, time::Duration};

use tokio::sync::Notify;
use videocall_calls::{CallStore, NewCall};
use videocall_domain::{CallStatus, CallType};
use videocall_runtime::db;
use videocall_testkit::{free_port, fresh_database, http_get};

#[tokio::test]
async fn the_binary_sweeps_reports_metrics_and_stops_on_sigterm() {
    let url = fresh_database().await;
    let db = db::connect_and_migrate(&url, &Default::default()).await.expect("database");
    let store = CallStore::new(db.clone(), "/videocall/test/api-gateway".into(), Arc::new(Notify::new()));
    let new = NewCall {
        request_id: "r1".into(),
        caller_id: "customer".into(),
        callee_id: "agent".into(),
        call_type: CallType::Sales,
        metadata: Default::default(),
        ring_timeout_secs: 1,
    };
    let id = store.initiate(new, "customer").await.expect("initiate").call.id;

    let port = free_port();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_missed-call-sweeper"))
        .env("DATABASE_URL", &url)
        .env("SWEEP_SCHEDULE", "* * * * * *")
        .env("OPS_LISTEN_ADDR", addr.to_string())
        .env("CELL_ID", "test")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("start the sweeper");

    let mut missed = false;
    for _ in 0..100 {
        if let Some((200, body)) = http_get(addr, "/metrics").await
            && body.lines().any(|l| l.starts_with("videocall_calls_missed_total 1"))
        {
            missed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(missed, "the overdue call was counted on /metrics");
    assert_eq!(store.get(id).await.expect("call").status, CallStatus::Missed);
    assert_eq!(http_get(addr, "/readyz").await.map(|r| r.0), Some(200));
    assert_eq!(http_get(addr, "/healthz").await.map(|r| r.0), Some(200));
    let (_, metrics) = http_get(addr, "/metrics").await.expect("metrics");
    assert!(metrics.contains("videocall_sweeps_total{result=\"ok\"}"), "{metrics}");

    let pid = child.id().expect("pid").to_string();
    let killed = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
    assert!(killed.success());
    let status =
        tokio::time::timeout(Duration::from_secs(10), child.wait()).await.expect("exits in time").expect("status");
    assert!(status.success(), "clean exit on SIGTERM: {status}");
}
