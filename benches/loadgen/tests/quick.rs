//! Quick mode of every in-process scenario against the real services: asserts only that every
//! message, call, row and socket was accounted for — never on speed.

use std::path::Path;

use loadgen::{Scale, report::Report, run_scenario};

async fn quick(name: &str) -> Report {
    let report = run_scenario(name, &Scale::quick(), Path::new(env!("CARGO_BIN_EXE_loadgen")))
        .await
        .unwrap_or_else(|e| panic!("{name} failed: {e:#}"));
    report.print();
    assert!(report.problems.is_empty(), "{name}: {:?}", report.problems);
    assert!(!report.rows.is_empty(), "{name} reported no rows");
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_delivers_every_frame_through_the_relays_and_raw_redis() {
    let report = quick("signal").await;
    let s = Scale::quick();
    let all = format!("{0}/{0}", s.pairs * s.messages);
    assert!(report.rows.iter().all(|r| r[3] == all), "{:?}", report.rows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_completes_every_call_through_grpc_and_raw_sql() {
    let report = quick("lifecycle").await;
    let s = Scale::quick();
    let all = format!("{0}/{0}", s.pairs * s.lifecycles);
    assert!(report.rows.iter().all(|r| r[2] == all), "{:?}", report.rows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_publishes_every_row_into_the_queue() {
    let report = quick("outbox").await;
    let n = Scale::quick().rows.to_string();
    assert!(report.rows.iter().all(|r| r[3] == n), "{:?}", report.rows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_opens_every_socket_on_the_relay_child() {
    let report = quick("idle").await;
    assert_eq!(report.rows[0][1], Scale::quick().idle.to_string(), "{:?}", report.rows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_opens_a_data_channel_for_every_call() {
    let report = quick("setup").await;
    assert_eq!(report.rows[0][1], Scale::quick().calls.to_string(), "{:?}", report.rows);
}
