//! The `call-recorder` binary as an operator runs it: every bad setting named at once (exit 2,
//! nothing created), ready on /readyz with its metrics, a recording whose call ended before it
//! began failed with the reason, and a clean stop on SIGTERM.

use std::{sync::Arc, time::Duration};

use tokio::sync::Notify;
use videocall_calls::{
    Actor, CallStore, NewCall,
    recordings::{RecordingStatus, RecordingStore},
};
use videocall_domain::{CallType, Command, Party};
use videocall_runtime::db;
use videocall_testkit::{free_port, fresh_database, http_get, unique_name};

#[tokio::test]
async fn bad_settings_are_all_named_and_nothing_is_created() {
    let dir = std::env::temp_dir().join(unique_name("recordings-bad"));
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_call-recorder"))
        .env_clear()
        .env("RECORDINGS_DIR", &dir)
        .env("RECORDER_UDP_PORTS", "9000")
        .env("RECORDER_LEASE_SECS", "1")
        .output()
        .await
        .expect("runs");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    for line in [
        "DATABASE_URL: is required",
        "REDIS_URL: is required",
        "RECORDER_LEASE_SECS: must be between 3 and 600",
        "RECORDER_UDP_PORTS: `9000` is not a port range MIN-MAX",
    ] {
        assert!(stderr.contains(line), "missing `{line}` in {stderr}");
    }
    assert!(!dir.exists(), "no recordings directory for a refused configuration");
}

#[tokio::test]
async fn the_binary_fails_a_recording_of_a_call_that_ended_first_and_stops_on_sigterm() {
    let url = fresh_database().await;
    let db = db::connect_and_migrate(&url, &Default::default()).await.expect("database");
    let calls = CallStore::new(db.clone(), "/videocall/test/api-gateway".into(), Arc::new(Notify::new()));
    let recordings = RecordingStore::new(db.clone(), "/videocall/test/api-gateway".into());
    let new = NewCall {
        request_id: "r1".into(),
        caller_id: "customer".into(),
        callee_id: "agent".into(),
        call_type: CallType::Support,
        metadata: Default::default(),
        ring_timeout_secs: 30,
    };
    let call = calls.initiate(new, "customer").await.expect("initiate").call;
    recordings.set_consent(&call, Party::Caller, "customer", true).await.expect("caller consents");
    let (started, _) = recordings.set_consent(&call, Party::Callee, "agent", true).await.expect("callee consents");
    assert_eq!(started.map(|r| r.status), Some(RecordingStatus::Starting));

    // A recorder that died while recording stops renewing its lease: its recording fails.
    let new = NewCall {
        request_id: "r2".into(),
        caller_id: "customer2".into(),
        callee_id: "agent2".into(),
        call_type: CallType::Sales,
        metadata: Default::default(),
        ring_timeout_secs: 30,
    };
    let call2 = calls.initiate(new, "customer2").await.expect("initiate").call;
    let agent2 = Actor { id: "agent2".into(), is_service: false };
    let call2 = calls.apply(call2.id, Command::Answer, &agent2).await.expect("answer");
    recordings.set_consent(&call2, Party::Caller, "customer2", true).await.expect("consent");
    recordings.set_consent(&call2, Party::Callee, "agent2", true).await.expect("consent");
    let taken = recordings.claim("dead-recorder", Duration::ZERO, 10).await.expect("claim");
    assert_eq!(taken.len(), 1, "only the answered call's recording can be taken (the other still rings)");
    assert!(recordings.activate(&call2, "dead-recorder").await.expect("activate").is_some());

    // The first call's recording waited for an answer that never came (the binary fails it).
    let agent = Actor { id: "agent".into(), is_service: false };
    calls.apply(call.id, Command::Reject, &agent).await.expect("reject");
    let dir = std::env::temp_dir().join(unique_name("recordings-bin"));
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_call-recorder"))
        .env("DATABASE_URL", &url)
        .env("REDIS_URL", "redis://127.0.0.1:6379")
        .env("CELL_ID", unique_name("recbin").replace('.', "-"))
        .env("RECORDINGS_DIR", &dir)
        .env("RECORDER_POLL_MS", "100")
        .env("OPS_LISTEN_ADDR", addr.to_string())
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("start the recorder");

    let mut failed = None;
    for _ in 0..100 {
        if let Some(r) = recordings.get(call.id).await.expect("read").filter(|r| r.status == RecordingStatus::Failed) {
            failed = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let failed = failed.expect("the recording failed");
    assert_eq!(failed.error.as_deref(), Some("the call was rejected before the recording began"));

    let mut abandoned = None;
    for _ in 0..100 {
        if let Some(r) = recordings.get(call2.id).await.expect("read").filter(|r| r.status == RecordingStatus::Failed) {
            abandoned = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let abandoned = abandoned.expect("the abandoned recording failed");
    assert_eq!(abandoned.error.as_deref(), Some("recorder dead-recorder stopped while recording"));
    assert_eq!(http_get(addr, "/readyz").await.map(|r| r.0), Some(200));
    assert_eq!(http_get(addr, "/healthz").await.map(|r| r.0), Some(200));
    let (_, metrics) = http_get(addr, "/metrics").await.expect("metrics");
    assert!(metrics.contains("videocall_recordings_running 0"), "{metrics}");
    assert!(metrics.contains("videocall_recordings_abandoned_total 1"), "{metrics}");
    assert!(dir.is_dir(), "RECORDINGS_DIR is created");

    let pid = child.id().expect("pid").to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    let status =
        tokio::time::timeout(Duration::from_secs(10), child.wait()).await.expect("exits in time").expect("status");
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    let _ = std::fs::remove_dir_all(&dir);
}
