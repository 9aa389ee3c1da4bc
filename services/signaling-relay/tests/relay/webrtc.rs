//! Real WebRTC: two webrtc-rs peers negotiate only through the relays and open a data channel —
//! over host candidates, and relay-only through a real coturn with the ICE servers the gateway
//! minted. coturn also proves that an expired credential is refused.

use std::{sync::Arc, time::Duration};

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use videocall_runtime::{
    config::Secret,
    ice::{IceConfig, turn_password},
};
use webrtc::{
    api::{APIBuilder, setting_engine::SettingEngine},
    data_channel::{RTCDataChannel, data_channel_message::DataChannelMessage},
    ice::mdns::MulticastDnsMode,
    ice_transport::{
        ice_candidate::RTCIceCandidateInit, ice_candidate_type::RTCIceCandidateType, ice_server::RTCIceServer,
    },
    peer_connection::{
        RTCPeerConnection, configuration::RTCConfiguration, policy::ice_transport_policy::RTCIceTransportPolicy,
        sdp::session_description::RTCSessionDescription,
    },
};

use videocall_testkit::coturn::Coturn;

use crate::helpers::{Client, FleetOptions, spawn_fleet};

fn ice_servers(json: &Value) -> Vec<RTCIceServer> {
    json.as_array()
        .into_iter()
        .flatten()
        .map(|s| RTCIceServer {
            urls: s["urls"].as_array().into_iter().flatten().filter_map(|u| u.as_str().map(str::to_owned)).collect(),
            username: s["username"].as_str().unwrap_or_default().to_owned(),
            credential: s["credential"].as_str().unwrap_or_default().to_owned(),
        })
        .collect()
}

/// A webrtc-rs peer on loopback (no mDNS, loopback candidates on, short relay wait).
async fn peer(
    ice: Vec<RTCIceServer>,
    relay_only: bool,
) -> (Arc<RTCPeerConnection>, mpsc::UnboundedReceiver<RTCIceCandidateInit>) {
    let mut settings = SettingEngine::default();
    settings.set_include_loopback_candidate(true);
    settings.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
    settings.set_ip_filter(Box::new(|ip| ip.is_loopback()));
    settings.set_relay_acceptance_min_wait(Some(Duration::from_millis(50)));
    let api = APIBuilder::new().with_setting_engine(settings).build();
    let config = RTCConfiguration {
        ice_servers: ice,
        ice_transport_policy: if relay_only { RTCIceTransportPolicy::Relay } else { RTCIceTransportPolicy::All },
        ..Default::default()
    };
    let pc = Arc::new(api.new_peer_connection(config).await.expect("peer connection"));
    let (tx, rx) = mpsc::unbounded_channel();
    pc.on_ice_candidate(Box::new(move |candidate| {
        let tx = tx.clone();
        Box::pin(async move {
            if let Some(init) = candidate.and_then(|c| c.to_json().ok()) {
                let _ = tx.send(init);
            }
        })
    }));
    (pc, rx)
}

/// Drives one party's signaling: sends its candidates, applies the other's offer, answer and
/// candidates (buffering candidates that come before the remote description).
fn drive(
    mut client: Client,
    pc: Arc<RTCPeerConnection>,
    mut local: mpsc::UnboundedReceiver<RTCIceCandidateInit>,
    call_id: String,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut pending: Vec<RTCIceCandidateInit> = Vec::new();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                Some(candidate) = local.recv() => {
                    let frame = json!({"type": "ice-candidate", "call_id": call_id, "candidate": candidate});
                    client.send_raw(frame.to_string()).await;
                }
                frame = client.next_within(Duration::from_millis(200)) => {
                    let Some(frame) = frame else { continue };
                    match frame["type"].as_str() {
                        Some("offer") => {
                            let sdp = frame["sdp"].as_str().unwrap_or_default().to_owned();
                            pc.set_remote_description(RTCSessionDescription::offer(sdp).expect("offer sdp")).await.expect("remote offer");
                            for c in pending.drain(..) { pc.add_ice_candidate(c).await.expect("candidate"); }
                            let answer = pc.create_answer(None).await.expect("answer");
                            pc.set_local_description(answer.clone()).await.expect("local answer");
                            let frame = json!({"type": "answer", "call_id": call_id, "sdp": answer.sdp});
                            client.send_raw(frame.to_string()).await;
                        }
                        Some("answer") => {
                            let sdp = frame["sdp"].as_str().unwrap_or_default().to_owned();
                            pc.set_remote_description(RTCSessionDescription::answer(sdp).expect("answer sdp")).await.expect("remote answer");
                            for c in pending.drain(..) { pc.add_ice_candidate(c).await.expect("candidate"); }
                        }
                        Some("ice-candidate") => {
                            let init: RTCIceCandidateInit = serde_json::from_value(frame["candidate"].clone()).expect("candidate json");
                            if pc.remote_description().await.is_some() {
                                pc.add_ice_candidate(init).await.expect("candidate");
                            } else {
                                pending.push(init);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    })
}

/// Negotiates alice → bob through the fleet; returns what bob's data channel received and both
/// peers. `bob_delay` lets bob connect after alice's offer was sent.
async fn call_with_data_channel(
    options: FleetOptions,
    relay_only: bool,
    bob_delay: Duration,
) -> (String, Arc<RTCPeerConnection>, Arc<RTCPeerConnection>) {
    let fleet = spawn_fleet(options).await;
    let stop = CancellationToken::new();
    let mut alice = fleet.connect(0, "alice").await;
    let ack = alice.request(json!({"type": "call.initiate", "callee_id": "bob", "call_type": "support"})).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let call_id = ack["call"]["id"].as_str().expect("call id").to_owned();
    let (alice_pc, alice_candidates) = peer(ice_servers(&ack["ice_servers"]), relay_only).await;
    let channel = alice_pc.create_data_channel("chat", None).await.expect("data channel");
    let opened = Arc::new(tokio::sync::Notify::new());
    {
        let (channel2, opened) = (channel.clone(), opened.clone());
        channel.on_open(Box::new(move || {
            Box::pin(async move {
                let _ = channel2.send_text("hello from alice".to_owned()).await;
                opened.notify_one();
            })
        }));
    }
    let offer = alice_pc.create_offer(None).await.expect("offer");
    alice_pc.set_local_description(offer.clone()).await.expect("local offer");
    let sent = alice.request(json!({"type": "offer", "call_id": call_id, "sdp": offer.sdp})).await;
    assert_eq!(sent["type"], "ack", "{sent}");
    let alice_task = drive(alice, alice_pc.clone(), alice_candidates, call_id.clone(), stop.clone());

    tokio::time::sleep(bob_delay).await;
    let mut bob = fleet.connect(1, "bob").await;
    let answered = bob.request(json!({"type": "call.answer", "call_id": call_id})).await;
    assert_eq!(answered["call"]["status"], "active", "{answered}");
    let (bob_pc, bob_candidates) = peer(ice_servers(&answered["ice_servers"]), relay_only).await;
    let (got_tx, mut got_rx) = mpsc::unbounded_channel::<String>();
    bob_pc.on_data_channel(Box::new(move |dc: Arc<RTCDataChannel>| {
        let got_tx = got_tx.clone();
        Box::pin(async move {
            dc.on_message(Box::new(move |m: DataChannelMessage| {
                let _ = got_tx.send(String::from_utf8_lossy(&m.data).into_owned());
                Box::pin(async {})
            }));
        })
    }));
    // bob joined after the offer: the relay replays it (with alice's candidates) on connect.
    let bob_task = drive(bob, bob_pc.clone(), bob_candidates, call_id.clone(), stop.clone());

    let received = tokio::time::timeout(Duration::from_secs(30), got_rx.recv())
        .await
        .expect("data channel message in time")
        .expect("message");
    stop.cancel();
    let _ = tokio::join!(alice_task, bob_task);
    fleet.stop().await;
    (received, alice_pc, bob_pc)
}

async fn selected_local_type(pc: &RTCPeerConnection) -> Option<RTCIceCandidateType> {
    let pair = pc.sctp().transport().ice_transport().get_selected_candidate_pair().await?;
    Some(pair.local.typ)
}

#[tokio::test]
async fn peers_connect_through_two_relays_even_when_the_callee_joins_late() {
    let (received, alice, bob) = call_with_data_channel(FleetOptions::default(), false, Duration::from_secs(2)).await;
    assert_eq!(received, "hello from alice");
    assert_eq!(selected_local_type(&alice).await, Some(RTCIceCandidateType::Host));
    alice.close().await.ok();
    bob.close().await.ok();
}

#[tokio::test]
async fn relay_only_peers_connect_through_coturn_with_the_minted_credentials() {
    let turn = Coturn::start();
    let ice = IceConfig {
        stun_urls: vec![],
        turn_urls: vec![turn.url()],
        turn_secret: Some(Secret::new(turn.secret.clone())),
        turn_ttl: Duration::from_secs(600),
    };
    let (received, alice, bob) =
        call_with_data_channel(FleetOptions { ice, ..Default::default() }, true, Duration::ZERO).await;
    assert_eq!(received, "hello from alice");
    assert_eq!(selected_local_type(&alice).await, Some(RTCIceCandidateType::Relay), "the relay pair was selected");
    assert_eq!(selected_local_type(&bob).await, Some(RTCIceCandidateType::Relay));
    alice.close().await.ok();
    bob.close().await.ok();
}

/// Gathers candidates with relay-only policy and returns their types.
async fn gathered_types(server: RTCIceServer) -> Vec<String> {
    let (pc, mut rx) = peer(vec![server], true).await;
    let _dc = pc.create_data_channel("probe", None).await.expect("dc");
    let offer = pc.create_offer(None).await.expect("offer");
    let mut complete = pc.gathering_complete_promise().await;
    pc.set_local_description(offer).await.expect("local");
    let _ = tokio::time::timeout(Duration::from_secs(10), complete.recv()).await;
    let mut types = Vec::new();
    while let Ok(c) = rx.try_recv() {
        types.push(c.candidate.split_whitespace().nth(7).unwrap_or_default().to_owned());
    }
    pc.close().await.ok();
    types
}

#[tokio::test]
async fn coturn_refuses_an_expired_credential() {
    let turn = Coturn::start();
    let secret = Secret::new(turn.secret.clone());
    let now = chrono::Utc::now().timestamp();
    let credential = |username: String| RTCIceServer {
        urls: vec![turn.url()],
        credential: turn_password(&secret, &username),
        username,
    };
    let fresh = gathered_types(credential(format!("{}:alice", now + 600))).await;
    assert!(fresh.iter().any(|t| t == "relay"), "a fresh credential allocates a relay: {fresh:?}");
    let expired = gathered_types(credential(format!("{}:alice", now - 60))).await;
    assert!(expired.is_empty(), "an expired credential allocates nothing: {expired:?}");
    let forged = gathered_types(RTCIceServer {
        urls: vec![turn.url()],
        username: format!("{}:alice", now + 600),
        credential: "bm90LXRoZS1obWFj".into(),
    })
    .await;
    assert!(forged.is_empty(), "a wrong HMAC allocates nothing: {forged:?}");
}
