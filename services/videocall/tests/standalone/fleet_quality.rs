//! Live quality alerts (issue 20) in headless Chromium against the distributed fleet: the
//! customer's page loses 30 % of its WebRTC packets (DevTools' WebRTC network emulation, which
//! Chromium applies to the sockets a page opens after it is set: so it is set before the call,
//! and a clean path afterwards is a new one, as when a user moves to a better network and the
//! page restarts ICE). Both pages show the alert in words, the customer switches to audio only,
//! CallQualityDegraded is on RabbitMQ; on the clean path the alert ends on both pages, the
//! customer's camera comes back and CallQualityRecovered follows, for the same episode.

use std::time::{Duration, Instant};

use serde_json::json;
use videocall_testkit::{Event, EventTap, browser::Tab};

use crate::{
    fleet::Fleet,
    pages::{ONE_AT_A_TIME, Pages},
};

const ALERT_SHOWN: &str = "!document.getElementById('quality-alert').hidden";
const ALERT_TEXT: &str = "document.getElementById('quality-alert-text').textContent";

/// WebRTC packet loss of `tab`'s network, in percent (0 ends it).
async fn packet_loss(pages: &mut Pages, tab: &Tab, percent: f64) {
    let session = Some(tab.session.as_str());
    pages.cdp.call(session, "Network.enable", json!({})).await;
    // The rule form (an empty pattern matches everything); Chromium 156 ignores the older
    // `emulateNetworkConditions` for WebRTC.
    let rule = json!({
        "offline": false,
        "matchedNetworkConditions": [{
            "urlPattern": "", "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1, "packetLoss": percent,
        }],
    });
    pages.cdp.call(session, "Network.emulateNetworkConditionsByRule", rule).await;
}

/// The alert events of the call in `tap` until `done` says so (at most 30 s), then 2 s more to
/// catch any that should not come.
async fn alert_events(tap: &mut EventTap, call_id: &str, done: impl Fn(&[Event]) -> bool) -> Vec<Event> {
    let mut found = Vec::new();
    let mut deadline = Instant::now() + Duration::from_secs(30);
    let mut settled = false;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Some(event) = tap.next(left).await else { break };
        if event.routing_key.starts_with("call.quality_") && event.body["data"]["call_id"] == call_id {
            found.push(event);
        }
        if !settled && done(&found) {
            settled = true;
            deadline = Instant::now() + Duration::from_secs(2);
        }
    }
    found
}

#[tokio::test]
async fn a_lossy_customer_uplink_alerts_both_pages_offers_audio_only_and_recovers() {
    let _one = ONE_AT_A_TIME.lock().await;
    let fleet = Fleet::start(&[]).await;
    let mut pages = Pages::open(&fleet.base(), &fleet.agent_token(), &fleet.customer_token()).await;
    let mut tap = EventTap::bind(&fleet.events_exchange).await;
    let (agent, customer) = (pages.agent.clone(), pages.customer.clone());
    packet_loss(&mut pages, &customer, 30.0).await;
    pages.customer_calls().await;
    pages.agent_accepts(30).await;
    let lossy = Instant::now();
    let id = pages.eval(&customer, "window.vc.call.id").await.as_str().expect("a call id").to_owned();
    let me = fleet.customer_id.clone();
    // The emulation drops packets both ways, so both paths go poor: each page says the
    // connection between the two is poor and offers audio only.
    let poor = format!("{ALERT_SHOWN} && {ALERT_TEXT}.includes('The connection between you and agent-1 is poor')");
    pages.wait(&customer, &poor, 40).await;
    let theirs = format!("{ALERT_SHOWN} && {ALERT_TEXT}.includes('The connection between you and {me} is poor')");
    pages.wait(&agent, &theirs, 20).await;
    eprintln!("the alert was on both pages {:?} after video played both ways", lossy.elapsed());
    let mine = |e: &Event| e.body["data"]["sender_id"] == me.as_str();
    let degraded = alert_events(&mut tap, &id, |found| found.iter().any(mine)).await;
    let down = degraded.iter().find(|e| mine(e)).expect("degraded, customer's uplink");
    assert_eq!(down.event_type(), "CallQualityDegraded");
    assert_eq!(down.body["data"]["likely_cause_id"], me.as_str());
    assert_eq!(down.body["data"]["receiver_id"], "agent-1");
    let alert_id = down.body["data"]["alert_id"].as_str().expect("alert id").to_owned();

    // The customer takes the offer: audio only, and the agent's page says the camera is off.
    pages.wait(&customer, "!document.getElementById('audio-only').hidden", 5).await;
    pages.eval(&customer, "document.getElementById('audio-only').click(); true").await;
    pages
        .wait(&customer, &format!("window.vc.cameraOn === false && window.vc.audioOnlyFor === '{alert_id}'"), 10)
        .await;
    pages.wait(&agent, "document.getElementById('peer-media').dataset.video === 'false'", 15).await;
    // Still lossy on audio alone: the alert stays (the loss is measured on every inbound stream).
    pages.eval(&customer, "new Promise((r) => setTimeout(() => r(true), 4000))").await;
    assert_eq!(pages.eval(&customer, ALERT_SHOWN).await, true, "the alert lasts while the loss does");

    // A clean path: no more loss, and the customer's page (the caller) restarts ICE onto new sockets.
    packet_loss(&mut pages, &customer, 0.0).await;
    pages.eval(&customer, "window.vc.enqueue(() => window.vc.negotiate({ iceRestart: true })).then(() => true)").await;
    let clean = Instant::now();
    pages.wait(&customer, &format!("!({ALERT_SHOWN}) && window.vc.cameraOn === true"), 40).await;
    pages.wait(&agent, &format!("!({ALERT_SHOWN})"), 20).await;
    eprintln!("the alert ended on both pages {:?} after the loss stopped", clean.elapsed());
    pages.wait(&agent, "document.getElementById('peer-media').dataset.video !== 'false'", 15).await;
    pages.video_advances(&agent, 1.0, 15).await;

    let mut events = degraded;
    let recovered =
        |e: &Event| e.body["data"]["alert_id"] == alert_id.as_str() && e.body["data"]["state"] == "recovered";
    events.extend(alert_events(&mut tap, &id, |found| found.iter().any(recovered)).await);
    let episode: Vec<&str> = events
        .iter()
        .filter(|e| e.body["data"]["alert_id"] == alert_id.as_str())
        .map(|e| e.body["data"]["state"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(episode, ["degraded", "recovered"], "once each: {events:#?}");

    pages.customer_hangs_up().await;
    drop(pages);
    let exchange = fleet.events_exchange.clone();
    fleet.stop().await;
    tap.delete_exchange(&exchange).await;
}
