//! The web client in headless Chromium (fake camera and microphone), media relay-only through a
//! real coturn on loopback: a customer calls agent-1, the agent answers, both see the other's
//! video, live quality numbers show, both consent to a server-side recording and see it record
//! and finish when the agent withdraws, the customer hangs up, and the call appears in both
//! histories with its duration and quality summary; then a second call, of another type, is
//! declined. Once against the standalone binary, once against the distributed fleet (the five
//! services and the call-recorder as separate processes on PostgreSQL, Redis and RabbitMQ), where
//! the fleet's Redis is also restarted mid-call and the pages renegotiate.

use std::net::SocketAddr;

use videocall_platform::auth::{JwtKeys, Role};
use videocall_testkit::{
    browser::{Cdp, Chromium},
    coturn::Coturn,
    free_port,
};

use videocall_testkit::redis::OwnRedis;

use crate::process::{Process, Standalone, temp_dir, workspace_binary};

const VIDEO_PLAYS: &str = "(() => { const v = document.getElementById('remote'); \
    return v.videoWidth > 0 && v.currentTime > 1; })()";

/// The newest history row shows the ended call with a duration and a quality score (MOS).
const HISTORY_COMPLETE: &str = "(() => { const r = document.querySelector('#history tr'); \
    if (!r || r.children[4].textContent === '–') { document.getElementById('refresh').click(); return false; } \
    return r.children[2].textContent === 'ended' && /^[0-9]+ s$/.test(r.children[3].textContent) \
      && Number(r.children[4].textContent) > 1; })()";

/// The whole scenario against the relay at `base`.
async fn customer_calls_agent(base: &str, agent_token: &str, customer_token: &str, redis: Option<OwnRedis>) {
    let (_chromium, devtools) = Chromium::launch().await;
    let mut cdp = Cdp::connect(&devtools).await;
    let agent = cdp.open(&format!("{base}/agent.html?relay=1&token={agent_token}")).await;
    let customer = cdp.open(&format!("{base}/customer.html?relay=1&token={customer_token}")).await;
    for page in [&agent, &customer] {
        cdp.wait_for(page, "document.getElementById('status').textContent.startsWith('connected as')", 20).await;
    }
    cdp.eval(
        &customer,
        "document.getElementById('agent').value = 'agent-1'; document.getElementById('call').click(); true",
    )
    .await;
    cdp.wait_for(&agent, "!document.getElementById('incoming').hidden", 20).await;
    cdp.eval(&agent, "document.getElementById('accept').click(); true").await;

    cdp.wait_for(&agent, VIDEO_PLAYS, 45).await;
    cdp.wait_for(&customer, VIDEO_PLAYS, 45).await;
    for page in [&agent, &customer] {
        cdp.wait_for(page, "document.getElementById('q-bitrate').textContent.endsWith('kbit/s')", 20).await;
    }
    // A few reports reach the aggregator while the call runs.
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;

    // Recording: the customer asks; the agent is shown that and consents; both pages are shown it
    // recording (the server's recorder joined each as a peer), then the agent withdraws and both
    // are shown the finished recording with a file of frames for each party's audio and video.
    cdp.eval(&customer, "document.getElementById('record').click(); true").await;
    cdp.wait_for(&agent, "document.getElementById('recording').textContent.includes('the other party consents')", 20)
        .await;
    cdp.eval(&agent, "document.getElementById('record').click(); true").await;
    for page in [&agent, &customer] {
        cdp.wait_for(page, "document.getElementById('recording').dataset.status === 'active'", 40).await;
    }
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    cdp.eval(&agent, "document.getElementById('record').click(); true").await;
    for page in [&agent, &customer] {
        cdp.wait_for(page, "document.getElementById('recording').dataset.status === 'complete'", 30).await;
        let text = cdp.eval(page, "document.getElementById('recording').textContent").await;
        assert!(text.as_str().is_some_and(|t| t.contains("consent withdrawn")), "{text}");
    }
    let files = "JSON.stringify(window.vc.recording.files.map(f => [f.name, f.frames > 0, f.bytes > 0]).sort())";
    assert_eq!(
        cdp.eval(&customer, files).await,
        r#"[["callee-audio.ogg",true,true],["callee-video.ivf",true,true],["caller-audio.ogg",true,true],["caller-video.ivf",true,true]]"#
    );

    let mut _restarted = None; // kept running until the scenario ends
    if let Some(redis) = redis {
        // The fleet's Redis restarts and loses the call's signal log: both pages are told, the
        // customer (the caller) renegotiates with an ICE restart, and the video goes on.
        let ufrag = "(() => { const d = window.vc.pc.remoteDescription; \
            return d ? (d.sdp.match(/a=ice-ufrag:(\\S+)/) || [])[1] : null; })()";
        let before = cdp.eval(&customer, ufrag).await;
        _restarted = Some(redis.restart());
        for page in [&agent, &customer] {
            cdp.wait_for(page, "window.vc.signalsLost === 1", 20).await;
        }
        cdp.wait_for(&customer, &format!("{ufrag} !== {before}"), 30).await;
        let played = cdp.eval(&agent, "document.getElementById('remote').currentTime").await;
        cdp.wait_for(&agent, &format!("document.getElementById('remote').currentTime > {played} + 1"), 20).await;
        cdp.wait_for(&agent, "window.vc.pc.connectionState === 'connected'", 20).await;
    }
    assert_eq!(cdp.eval(&customer, "document.getElementById('callstate').textContent").await, "active");

    cdp.eval(&customer, "document.getElementById('end').click(); true").await;
    cdp.wait_for(&agent, "document.getElementById('callstate').textContent.startsWith('ended')", 20).await;
    for page in [&agent, &customer] {
        cdp.wait_for(page, HISTORY_COMPLETE, 30).await;
    }
    let duration = cdp.eval(&customer, "document.querySelector('#history tr').children[3].textContent").await;
    assert_ne!(duration, "0 s", "the call lasted while video played");
    let other = cdp.eval(&agent, "document.querySelector('#history tr').children[0].textContent").await;
    let customer_id = cdp.eval(&customer, "window.vc.userId").await;
    assert_eq!(other, customer_id, "the agent's history names the customer");

    // A second call, of another type, which the agent declines.
    cdp.eval(
        &customer,
        "document.getElementById('type').value = 'sales'; document.getElementById('call').click(); true",
    )
    .await;
    cdp.wait_for(&agent, "!document.getElementById('incoming').hidden", 20).await;
    assert_eq!(cdp.eval(&agent, "document.getElementById('calltype').textContent").await, "sales");
    cdp.eval(&agent, "document.getElementById('decline').click(); true").await;
    cdp.wait_for(&customer, "document.getElementById('callstate').textContent.startsWith('rejected')", 20).await;
    cdp.wait_for(&agent, "document.getElementById('incoming').hidden", 20).await;
    let declined = "(() => { const r = document.querySelector('#history tr'); \
        if (!r || r.children[2].textContent !== 'rejected') { document.getElementById('refresh').click(); return false; } \
        return r.children[1].textContent === 'sales' && r.children[3].textContent === '–'; })()";
    for page in [&agent, &customer] {
        cdp.wait_for(page, declined, 20).await;
    }
}

#[tokio::test]
async fn a_customer_and_an_agent_talk_through_the_standalone_binary() {
    let turn = Coturn::start();
    let dir = temp_dir("vc-standalone-browser");
    let turn_server = format!("--turn-server={}", turn.url());
    let turn_secret = format!("--turn-secret={}", turn.secret);
    let app = Standalone::start(&dir.join("data"), &[&turn_server, &turn_secret]).await;
    let base = format!("http://{}", app.http);
    let agent = Standalone::token("agent-1", "agent").await;
    let customer = Standalone::token("customer-1", "user").await;
    customer_calls_agent(&base, &agent, &customer, None).await;
    app.stop().await;
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn a_customer_and_an_agent_talk_through_the_distributed_fleet() {
    let turn = Coturn::start();
    let dir = temp_dir("vc-fleet-browser");
    let database_url = videocall_testkit::fresh_database().await;
    // Its own Redis, restarted mid-call below.
    let redis = OwnRedis::start(free_port());
    let redis_url = redis.url();
    let run = videocall_testkit::unique_name("browserfleet").replace('.', "-");
    let secret = format!("fleet-secret-{run}");
    let addr = || SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (grpc, http) = (addr(), addr());
    let ops: Vec<SocketAddr> = (0..5).map(|_| addr()).collect();
    let shared = |name: &str, ops: SocketAddr| {
        let mut command = workspace_binary(name);
        command
            .env("DATABASE_URL", &database_url)
            .env("AMQP_URL", videocall_testkit::amqp_url())
            .env("REDIS_URL", &redis_url)
            .env("CELL_ID", &run)
            .env("EVENTS_EXCHANGE", format!("{run}.events"))
            .env("DLX_EXCHANGE", format!("{run}.dlx"))
            .env("OPS_LISTEN_ADDR", ops.to_string());
        command
    };

    let mut gateway = shared("api-gateway", ops[0]);
    gateway
        .env("GRPC_LISTEN_ADDR", grpc.to_string())
        .env("JWT_SECRET", &secret)
        .env("TURN_SERVER", turn.url())
        .env("TURN_SECRET", &turn.secret);
    let mut gateway = Process::spawn("api-gateway", gateway, &dir);
    gateway.wait_ready(ops[0], "/readyz").await;

    let mut aggregator = shared("quality-aggregator", ops[1]);
    aggregator.env("QUALITY_QUEUE", format!("{run}.quality"));
    let mut consumer = shared("event-consumer", ops[2]);
    consumer
        .env("USER_OFFLINE_QUEUE", format!("{run}.user-offline"))
        .env("TICKET_CREATED_QUEUE", format!("{run}.ticket-created"));
    let sweeper = shared("missed-call-sweeper", ops[3]);
    let mut recorder = shared("call-recorder", ops[4]);
    recorder.env("RECORDINGS_DIR", dir.join("recordings")).env("RECORDER_CANDIDATE_NETWORKS", "127.0.0.1");
    let mut workers = vec![
        Process::spawn("quality-aggregator", aggregator, &dir),
        Process::spawn("event-consumer", consumer, &dir),
        Process::spawn("missed-call-sweeper", sweeper, &dir),
        Process::spawn("call-recorder", recorder, &dir),
    ];
    for (process, ops) in workers.iter_mut().zip(&ops[1..]) {
        process.wait_ready(*ops, "/readyz").await;
    }

    let mut relay = workspace_binary("signaling-relay");
    relay
        .env("HTTP_LISTEN_ADDR", http.to_string())
        .env("GATEWAY_URL", format!("http://{grpc}"))
        .env("REDIS_URL", &redis_url)
        .env("CELL_ID", &run)
        .env("JWT_SECRET", &secret);
    let mut relay = Process::spawn("signaling-relay", relay, &dir);
    relay.wait_ready(http, "/readyz").await;

    let keys = JwtKeys::new(videocall_platform::config::Secret::new(secret.clone()));
    let exp = chrono::Utc::now().timestamp() + 600;
    let agent = keys.mint("agent-1", Role::Agent, exp);
    let customer = keys.mint(&format!("customer-{run}"), Role::User, exp);
    customer_calls_agent(&format!("http://{http}"), &agent, &customer, Some(redis)).await;

    // Every process stops cleanly on SIGTERM.
    workers.insert(0, relay);
    workers.push(gateway);
    for process in workers {
        let name = process.name.clone();
        let output_hint = process.output().lines().rev().take(5).collect::<Vec<_>>().join("\n");
        let status = process.terminate(std::time::Duration::from_secs(20)).await;
        assert!(status.success(), "{name} stopped with {status}: {output_hint}");
    }
    std::fs::remove_dir_all(dir).ok();
}
