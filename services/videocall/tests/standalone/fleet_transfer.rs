//! Blind transfer (issue 20) in headless Chromium against the distributed fleet, media
//! relay-only through coturn: agent-1 answers the customer and transfers the call to agent-2,
//! whose page rings (the customer's says "Transferring you…"); agent-2 declines first and the
//! call stays with agent-1, media still flowing; the second transfer is accepted: the customer's
//! page offers to agent-2, video plays both ways between them, agent-1's page shows the call
//! transferred, and CallTransferRequested / CallTransferFailed / CallTransferred are on RabbitMQ.

use std::time::{Duration, Instant};

use videocall_runtime::auth::Role;
use videocall_testkit::{Event, EventTap};

use crate::{
    fleet::Fleet,
    pages::{CALLSTATE, ONE_AT_A_TIME, Pages, STATUS, VIDEO_PLAYS},
};

const TRANSFER_STATE: &str = "document.getElementById('transfer-state').textContent";
const INCOMING: &str = "!document.getElementById('incoming').hidden";

/// Transfer events of the call, until `n` came (at most 20 s).
async fn transfer_events(tap: &mut EventTap, call_id: &str, n: usize) -> Vec<Event> {
    let mut found = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while found.len() < n {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else { break };
        let Some(event) = tap.next(left).await else { break };
        if event.routing_key.starts_with("call.transfer") && event.subject() == call_id {
            found.push(event);
        }
    }
    found
}

#[tokio::test]
async fn an_agent_transfers_a_live_call_and_the_customer_sees_and_hears_the_new_agent() {
    let _one = ONE_AT_A_TIME.lock().await;
    let fleet = Fleet::start(&[]).await;
    let mut pages = Pages::open(&fleet.base(), &fleet.agent_token(), &fleet.customer_token()).await;
    let mut tap = EventTap::bind(&fleet.events_exchange).await;
    let agent_2_url = format!("{}/agent.html?relay=1&token={}", fleet.base(), fleet.token("agent-2", Role::Agent));
    let agent_2 = pages.cdp.open_tab(&agent_2_url).await;
    pages.wait(&agent_2, &format!("{STATUS}.startsWith('connected as agent-2')"), 20).await;
    pages.customer_calls().await;
    pages.agent_accepts(20).await;
    let (agent_1, customer) = (pages.agent.clone(), pages.customer.clone());
    let id = pages.eval(&customer, "window.vc.call.id").await.as_str().expect("call id").to_owned();

    // First try: agent-2 rings, and declines. The call stays with agent-1.
    let transfer = "document.getElementById('transfer-to').value = 'agent-2'; \
                    document.getElementById('transfer').click(); true";
    pages.eval(&agent_1, transfer).await;
    pages.wait(&agent_1, &format!("{TRANSFER_STATE} === 'Transferring to agent-2…'"), 10).await;
    pages.wait(&customer, &format!("{TRANSFER_STATE} === 'Transferring you to agent-2…'"), 10).await;
    pages
        .wait(
            &agent_2,
            &format!("{INCOMING} && document.getElementById('caller').textContent.includes('transferred by agent-1')"),
            10,
        )
        .await;
    assert_eq!(
        pages.eval(&agent_2, "window.vc.pc === null && window.vc.localStream === null").await,
        true,
        "no media while it rings"
    );
    pages.eval(&agent_2, "document.getElementById('decline').click(); true").await;
    let stays = "agent-2 declined: the call stays with you";
    pages.wait(&agent_1, &format!("{TRANSFER_STATE} === '{stays}'"), 10).await;
    pages.wait(&customer, &format!("{TRANSFER_STATE} === 'You stay with agent-1'"), 10).await;
    pages.video_advances(&customer, 1.0, 10).await;
    assert_eq!(pages.eval(&customer, "window.vc.call.callee_id").await, "agent-1");

    // Second try: agent-2 accepts. The customer's page offers to agent-2, media flows between them.
    pages.eval(&agent_1, transfer).await;
    pages.wait(&agent_2, INCOMING, 10).await;
    let accepted = Instant::now();
    pages.eval(&agent_2, "document.getElementById('accept').click(); true").await;
    pages.wait(&customer, &format!("{TRANSFER_STATE} === 'You are now talking to agent-2'"), 10).await;
    pages
        .wait(&agent_1, &format!("{TRANSFER_STATE} === 'Transferred to agent-2' && {CALLSTATE} === 'transferred'"), 10)
        .await;
    pages.wait(&agent_1, "window.vc.pc === null", 10).await;
    for tab in [&agent_2, &customer] {
        pages.wait(tab, VIDEO_PLAYS, 20).await;
        pages.wait(tab, "window.vc.pc && window.vc.pc.connectionState === 'connected'", 20).await;
    }
    eprintln!("video both ways between the customer and agent-2 {:?} after the accept", accepted.elapsed());
    pages.video_advances(&agent_2, 1.0, 10).await;
    pages.video_advances(&customer, 1.0, 10).await;
    assert_eq!(pages.eval(&agent_2, CALLSTATE).await, "active");
    assert_eq!(pages.eval(&customer, "window.vc.call.callee_id").await, "agent-2");

    // The customer hangs up: both are told; one history, both legs.
    pages.eval(&customer, "document.getElementById('end').click(); true").await;
    for tab in [&agent_2, &customer] {
        pages.wait(tab, &format!("{CALLSTATE}.startsWith('ended')"), 20).await;
    }
    let history = pages
        .eval(
            &customer,
            "window.vc.history().then((calls) => calls[0].legs.map((l) => l.agent_id + ':' + l.end_reason).join(' '))",
        )
        .await;
    assert_eq!(history, "agent-1:transferred agent-2:hangup");

    let events = transfer_events(&mut tap, &id, 4).await;
    let seen: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e.event_type(),
                e.body["data"]["reason"].as_str().unwrap_or(e.body["data"]["status"].as_str().unwrap_or_default()),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("CallTransferRequested", "ringing"),
            ("CallTransferFailed", "rejected"),
            ("CallTransferRequested", "ringing"),
            ("CallTransferred", "transferred"),
        ]
    );

    drop(pages);
    let exchange = fleet.events_exchange.clone();
    fleet.stop().await;
    tap.delete_exchange(&exchange).await;
}
