//! The web client in headless Chromium (fake camera and microphone), media relay-only through a
//! real coturn on loopback: a customer calls agent-1, the agent answers, both see the other's
//! video, live quality numbers show, both consent to a server-side recording and see it record
//! and finish when the agent withdraws, the customer hangs up, and the call appears in both
//! histories with its duration and quality summary; then a second call, of another type, is
//! declined. Once against the standalone binary, once against the distributed fleet (the five
//! services and the call-recorder as separate processes on PostgreSQL, Redis and RabbitMQ), where
//! the fleet's Redis is also restarted mid-call and the pages renegotiate.

use videocall_testkit::{
    browser::{Cdp, Chromium},
    coturn::Coturn,
};

use crate::{
    fleet::Fleet,
    pages::{ONE_AT_A_TIME, VIDEO_PLAYS},
    process::{Standalone, temp_dir},
};

/// The newest history row shows the ended call with a duration and a quality score (MOS).
const HISTORY_COMPLETE: &str = "(() => { const r = document.querySelector('#history tr'); \
    if (!r || r.children[4].textContent === '–') { document.getElementById('refresh').click(); return false; } \
    return r.children[2].textContent === 'ended' && /^[0-9]+ s$/.test(r.children[3].textContent) \
      && Number(r.children[4].textContent) > 1; })()";

/// The whole scenario against the relay at `base`; with the `fleet`, its Redis is also restarted
/// mid-call.
async fn customer_calls_agent(base: &str, agent_token: &str, customer_token: &str, fleet: Option<&mut Fleet>) {
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

    if let Some(fleet) = fleet {
        // The fleet's Redis restarts and loses the call's signal log: both pages are told, the
        // customer (the caller) renegotiates with an ICE restart, and the video goes on.
        let ufrag = "(() => { const d = window.vc.pc.remoteDescription; \
            return d ? (d.sdp.match(/a=ice-ufrag:(\\S+)/) || [])[1] : null; })()";
        let before = cdp.eval(&customer, ufrag).await;
        fleet.restart_redis();
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
    let _one = ONE_AT_A_TIME.lock().await;
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
    let _one = ONE_AT_A_TIME.lock().await;
    // The fleet has a Redis of its own, restarted mid-call.
    let mut fleet = Fleet::start(&[]).await;
    let (agent, customer) = (fleet.agent_token(), fleet.customer_token());
    customer_calls_agent(&fleet.base(), &agent, &customer, Some(&mut fleet)).await;
    // Every process stops cleanly on SIGTERM.
    fleet.stop().await;
}
