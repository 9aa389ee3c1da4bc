//! Recording over the WebSocket protocol: each consent is shown to both parties, and the recording
//! leg's signals go between a party and the recorder (`@recorder` on the bus) — never to the other
//! party, and only while a recording starts or runs.

use std::time::Duration;

use serde_json::json;
use videocall_signaling::signal_bus::{Outgoing, SignalBus, SignalBusConfig};
use videocall_signaling::signals::SignalType;

use crate::helpers::{FleetOptions, redis_url, spawn_fleet};

const SDP: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n";

#[tokio::test]
async fn consents_are_shown_to_both_and_the_recording_leg_reaches_only_the_recorder() {
    let fleet = spawn_fleet(FleetOptions::default()).await;
    let mut alice = fleet.connect(0, "alice").await;
    let mut bob = fleet.connect(1, "bob").await;
    let ack = alice.request(json!({"type": "call.initiate", "callee_id": "bob", "call_type": "consult"})).await;
    let call_id = ack["call"]["id"].as_str().expect("call id").to_owned();
    assert_eq!(bob.request(json!({"type": "call.answer", "call_id": call_id})).await["call"]["status"], "active");

    // Before any consent, nothing goes to the recorder.
    let err = bob.request(json!({"type": "answer", "call_id": call_id, "sdp": SDP, "to": "@recorder"})).await;
    assert_eq!((err["type"].as_str(), err["code"].as_str()), (Some("error"), Some("failed_precondition")), "{err}");
    let err = bob.request(json!({"type": "answer", "call_id": call_id, "sdp": SDP, "to": "carol"})).await;
    assert_eq!(err["code"], "invalid_argument", "{err}");
    let err = bob.request(json!({"type": "recording.consent", "call_id": call_id})).await;
    assert_eq!(err["code"], "invalid_argument", "consent must be given as true or false: {err}");

    let ack = alice.request(json!({"type": "recording.consent", "call_id": call_id, "consent": true})).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(
        (&ack["call"]["recording"]["status"], &ack["call"]["recording"]["caller_consent"]),
        (&json!("requested"), &json!(true))
    );
    // bob is shown alice's consent (and so is alice's own page).
    let shown = bob.next_of("recording").await;
    assert_eq!(shown["call_id"], call_id.as_str());
    assert_eq!(
        (&shown["recording"]["status"], &shown["recording"]["caller_consent"], &shown["recording"]["callee_consent"]),
        (&json!("requested"), &json!(true), &json!(false))
    );
    assert_eq!(alice.next_of("recording").await["recording"]["caller_consent"], true);

    bob.request(json!({"type": "recording.consent", "call_id": call_id, "consent": true})).await;
    for client in [&mut alice, &mut bob] {
        let shown = client.next_of("recording").await;
        assert_eq!(
            (&shown["recording"]["status"], &shown["recording"]["callee_consent"]),
            (&json!("starting"), &json!(true))
        );
    }

    // Stand in for the recorder on the bus: offer bob a recording leg, read his answer.
    let bus = SignalBus::connect(SignalBusConfig {
        redis_url: redis_url(),
        cell_id: fleet.cell.clone(),
        log_capacity: 256,
        log_ttl: Duration::from_secs(600),
    })
    .await
    .expect("bus");
    let mut recorder = bus.subscriber().await.expect("subscriber");
    recorder.subscribe("@recorder").await.expect("subscribe");
    recorder.subscribe_call(&call_id).await.expect("watch the call (Redis Cluster)");
    let offer =
        Outgoing { call_id: &call_id, from: "@recorder", to: "bob", signal_type: SignalType::Offer, payload: SDP };
    bus.publish_signal(offer).await.expect("offer");
    let got = bob.next_of("offer").await;
    assert_eq!((got["from"].as_str(), got["sdp"].as_str()), (Some("@recorder"), Some(SDP)));
    let ack = bob.request(json!({"type": "answer", "call_id": call_id, "sdp": SDP, "to": "@recorder"})).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    // On a Redis Cluster the stand-in watches the call's channel, which carries every party's
    // signals (its own offer to bob too): it reads those addressed to it, as the recorder does.
    let to_recorder = async {
        loop {
            let (user, frame) = recorder.next().await.expect("frame");
            if user == "@recorder" {
                return (user, frame);
            }
        }
    };
    let (user, frame) = tokio::time::timeout(Duration::from_secs(5), to_recorder).await.expect("in time");
    let frame: serde_json::Value = serde_json::from_str(&frame).expect("json");
    assert_eq!(
        (user.as_str(), &frame["from"], &frame["type"], &frame["sdp"]),
        ("@recorder", &json!("bob"), &json!("answer"), &json!(SDP))
    );
    // alice never sees bob's recording leg.
    let leaked = alice.next_within(Duration::from_millis(500)).await;
    assert!(leaked.as_ref().is_none_or(|f| f["type"] != "answer"), "{leaked:?}");

    // bob takes his consent back: both are shown it.
    bob.request(json!({"type": "recording.consent", "call_id": call_id, "consent": false})).await;
    for client in [&mut alice, &mut bob] {
        let shown = client.next_of("recording").await;
        assert_eq!(shown["recording"]["callee_consent"], false, "{shown}");
    }
    fleet.stop().await;
}
