//! A call a person can trust (issue 14), in headless Chromium against the distributed fleet (the
//! services as separate processes on PostgreSQL, Redis and RabbitMQ; media relay-only through a
//! real coturn on loopback):
//! - the relay both pages use is SIGKILLed mid-call and a new relay process starts on the same
//!   address: both pages reconnect within 5 s of it being ready, the video never stops, and after
//!   the hang-up the history holds the one call with its full duration;
//! - the customer's page is closed mid-call: the sweeper ends the call as `connection_lost` after
//!   the grace period, the agent's page shows it, and CallEnded is on RabbitMQ exactly once;
//! - no media before the agent accepts: the agent's page opens no camera and builds no peer
//!   connection while it rings, and nothing arrives on the customer's; Accept → video both ways.

use std::time::{Duration, Instant};

use videocall_testkit::{Event, EventTap};

use crate::{
    fleet::{Fleet, RELAY, SWEEPER},
    pages::{BYTES_RECEIVED, CALLSTATE, ONE_AT_A_TIME, Pages, STATUS, WATCH_STALLS, WORST_STALL_MS},
};

/// The longest the remote video may stand still while the relay is gone and back (a stopped
/// media path stands still for good; a busy two-core machine skips a frame or two).
const MAX_STALL_MS: f64 = 2000.0;

/// The fleet and both pages connected to its relay.
async fn start(extra: &[(&str, &str, &str)]) -> (Fleet, Pages) {
    let fleet = Fleet::start(extra).await;
    let pages = Pages::open(&fleet.base(), &fleet.agent_token(), &fleet.customer_token()).await;
    (fleet, pages)
}

/// The id of the page's current call.
async fn call_id(pages: &mut Pages, tab: &videocall_testkit::browser::Tab) -> String {
    let id = pages.eval(tab, "window.vc.call && window.vc.call.id").await;
    id.as_str().unwrap_or_else(|| panic!("the page has a call: {id}")).to_owned()
}

#[tokio::test]
async fn both_pages_reconnect_to_a_new_relay_after_theirs_is_killed_and_media_never_stops() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (mut fleet, mut pages) = start(&[]).await;
    pages.customer_calls().await;
    pages.agent_accepts(20).await;
    let (agent, customer) = (pages.agent.clone(), pages.customer.clone());
    let id = call_id(&mut pages, &customer).await;
    assert_eq!(call_id(&mut pages, &agent).await, id);
    for tab in [&agent, &customer] {
        assert_eq!(pages.eval(tab, WATCH_STALLS).await, true);
    }

    fleet.kill_relay().await;
    for tab in [&agent, &customer] {
        pages.wait(tab, &format!("{STATUS}.startsWith('reconnecting')"), 10).await;
    }
    // Media goes on peer to peer (through coturn) while no relay is there.
    pages.video_advances(&agent, 1.0, 10).await;
    pages.video_advances(&customer, 1.0, 10).await;

    fleet.start_relay_again().await;
    let ready = Instant::now();
    for tab in [&agent, &customer] {
        pages.wait_until(tab, &format!("{STATUS}.startsWith('connected as')"), ready + Duration::from_secs(5)).await;
    }
    eprintln!("both pages connected again {:?} after the new relay was ready", ready.elapsed());
    for tab in [&agent, &customer] {
        assert_eq!(pages.eval(tab, "window.vc.reconnects").await, 1);
        assert_eq!(pages.eval(tab, "window.vc.pc.connectionState").await, "connected");
        assert_eq!(pages.eval(tab, CALLSTATE).await, "active");
    }
    pages.video_advances(&agent, 1.0, 10).await;
    pages.video_advances(&customer, 1.0, 10).await;
    // The video never stood still, on either page, from before the kill until now.
    for tab in [&agent, &customer] {
        let watched = pages.eval(tab, WORST_STALL_MS).await;
        let [worst, gap] = [0, 1].map(|i| watched[i].as_f64().expect("numbers"));
        eprintln!("longest stall of the remote video: {worst:.0} ms (looked at least every {gap:.0} ms)");
        assert!(gap < MAX_STALL_MS / 2.0, "the page looked at its video only every {gap:.0} ms");
        assert!(worst < MAX_STALL_MS, "the remote video stood still for {worst:.0} ms");
    }

    let mut played = 0.0f64;
    for tab in [&agent, &customer] {
        played = played.max(pages.remote_time(tab).await);
    }
    pages.customer_hangs_up().await;

    // One call in each history, the one above: ended, lasting at least as long as the video played.
    let history =
        "(async () => JSON.stringify((await window.vc.history()).map((c) => [c.id, c.status, c.duration_ms || 0])))()";
    for tab in [&agent, &customer] {
        let ended =
            format!("(async () => (await window.vc.history()).some((c) => c.id === '{id}' && c.status === 'ended'))()");
        pages.wait(tab, &ended, 10).await;
        let rows = pages.eval(tab, history).await;
        let rows: Vec<(String, String, u64)> =
            serde_json::from_str(rows.as_str().expect("json")).expect("[id, status, duration_ms] rows");
        assert_eq!(rows.len(), 1, "one call in the history: {rows:?}");
        let (row_id, status, duration_ms) = &rows[0];
        assert_eq!((row_id.as_str(), status.as_str()), (id.as_str(), "ended"), "{rows:?}");
        assert!(
            *duration_ms as f64 >= played * 1000.0,
            "the call lasted {duration_ms} ms, the video played {played:.1} s"
        );
        eprintln!("history: {rows:?}, video played {played:.1} s");
    }
    drop(pages);
    fleet.stop().await;
}

#[tokio::test]
async fn a_closed_customer_page_ends_the_call_once_across_the_fleet_after_the_grace_period() {
    let _one = ONE_AT_A_TIME.lock().await;
    let grace = 3;
    let grace_secs = grace.to_string();
    let (fleet, mut pages) = start(&[(SWEEPER, "PARTY_GRACE_SECS", &grace_secs), (RELAY, "PRESENCE_SECS", "1")]).await;
    let mut tap = EventTap::bind(&fleet.events_exchange).await;
    pages.customer_calls().await;
    pages.agent_accepts(20).await;
    let agent = pages.agent.clone();
    let id = call_id(&mut pages, &agent).await;

    let customer = pages.customer.clone();
    pages.cdp.close_tab(&customer).await;
    let closed = Instant::now();
    let ended = format!("{CALLSTATE} === 'ended (connection_lost)'");
    pages.wait_until(&agent, &ended, closed + Duration::from_secs(grace + 5)).await;
    eprintln!("the agent's page showed the call ended {:?} after the customer's page closed", closed.elapsed());
    pages.wait(&agent, "window.vc.pc === null && window.vc.localStream === null", 5).await;

    // CallEnded for the call is on the exchange, and no second one comes in the 5 s after it.
    let mut endings: Vec<Event> = Vec::new();
    let mut deadline = Instant::now() + Duration::from_secs(15);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Some(event) = tap.next(left).await else { break };
        if event.routing_key == "call.ended" && event.body["data"]["call_id"] == id.as_str() {
            if endings.is_empty() {
                deadline = Instant::now() + Duration::from_secs(5);
            }
            endings.push(event);
        }
    }
    assert_eq!(endings.len(), 1, "CallEnded once for {id}: {endings:#?}");
    let ended = &endings[0];
    assert_eq!(ended.event_type(), "CallEnded");
    assert_eq!(ended.subject(), id);
    assert_eq!(ended.body["data"]["end_reason"], "connection_lost", "{ended:#?}");
    assert_eq!(ended.body["data"]["previous_status"], "active", "{ended:#?}");

    drop(pages);
    let exchange = fleet.events_exchange.clone();
    fleet.stop().await;
    tap.delete_exchange(&exchange).await;
}

#[tokio::test]
async fn no_media_flows_across_the_fleet_before_the_agent_accepts() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (fleet, mut pages) = start(&[]).await;
    pages.customer_calls().await;
    let (agent, customer) = (pages.agent.clone(), pages.customer.clone());

    // The agent does nothing for 5 s: its camera stays closed, it has no peer connection, and no
    // media arrives on either page.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(pages.eval(&agent, "window.vc.localStream === null && window.vc.pc === null").await, true);
    assert_eq!(pages.eval(&agent, "document.getElementById('local').srcObject === null").await, true);
    assert_eq!(pages.eval(&agent, BYTES_RECEIVED).await, 0);
    assert_eq!(pages.eval(&customer, "window.vc.pc !== null").await, true, "the caller offered");
    assert_eq!(pages.eval(&customer, BYTES_RECEIVED).await, 0);
    assert_eq!(pages.eval(&customer, "document.getElementById('remote').videoWidth").await, 0);
    assert_eq!(pages.eval(&customer, CALLSTATE).await, "ringing");
    assert_eq!(pages.eval(&agent, "!document.getElementById('incoming').hidden").await, true);

    // Accept → video both ways.
    let accepted = Instant::now();
    pages.agent_accepts(10).await;
    eprintln!("video both ways {:?} after Accept", accepted.elapsed());
    assert_eq!(pages.eval(&agent, CALLSTATE).await, "active");
    for tab in [&agent, &customer] {
        let bytes = pages.eval(tab, BYTES_RECEIVED).await.as_u64().expect("bytes");
        assert!(bytes > 0, "media arrives after Accept");
    }
    pages.customer_hangs_up().await;
    // The camera is closed again once the call is over.
    pages.wait(&agent, "window.vc.localStream === null && window.vc.pc === null", 10).await;
    drop(pages);
    fleet.stop().await;
}
