//! Blind transfer over WebSocket across two relays (docs/protocol.md `call.transfer`, `transfer`):
//! the agent hands an active call to another agent on the other relay; the customer and both
//! agents get each `transfer` frame; the target answers with `call.answer` and the signals then
//! flow between the customer and the new agent; bad frames get a clear error and change nothing.

use serde_json::json;

use crate::helpers::{FleetOptions, spawn_fleet};

const SDP: &str = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=extmap-allow-mixed\r\n";

#[tokio::test]
async fn an_agent_transfers_a_call_to_an_agent_on_another_relay_and_the_signals_follow() {
    let fleet = spawn_fleet(FleetOptions::default()).await;
    let mut customer = fleet.connect(0, "cust-t").await;
    let mut first = fleet.connect_agent(0, "agent-t1").await;
    let mut target = fleet.connect_agent(1, "agent-t2").await;
    let ack = customer.request(json!({"type": "call.initiate", "callee_id": "agent-t1", "call_type": "support"})).await;
    let call_id = ack["call"]["id"].as_str().expect("id").to_owned();
    let ack = first.request(json!({"type": "call.answer", "call_id": call_id})).await;
    assert_eq!(ack["call"]["status"], "active", "{ack}");

    // Bad frames: a clear error each, nothing changes.
    for (frame, code, message) in [
        (
            json!({"type": "call.transfer", "call_id": call_id}),
            "invalid_argument",
            "to_agent_id or to_call_type is required",
        ),
        (
            json!({"type": "call.transfer", "call_id": call_id, "to_call_type": "video"}),
            "invalid_argument",
            "unknown call_type `video`",
        ),
        (
            json!({"type": "call.transfer", "call_id": call_id, "to_agent_id": "agent-t2", "to_call_type": "sales"}),
            "invalid_argument",
            "give to_agent_id or to_call_type, not both",
        ),
        (json!({"type": "call.transfer", "to_agent_id": "agent-t2"}), "invalid_argument", ""),
    ] {
        let refused = first.request(frame).await;
        assert_eq!((refused["type"].as_str(), refused["code"].as_str()), (Some("error"), Some(code)), "{refused}");
        if !message.is_empty() {
            assert_eq!(refused["message"], message);
        }
    }
    let refused =
        customer.request(json!({"type": "call.transfer", "call_id": call_id, "to_agent_id": "agent-t2"})).await;
    assert_eq!(
        (refused["code"].as_str(), refused["message"].as_str()),
        (Some("permission_denied"), Some("only agents and services transfer calls"))
    );

    let ack = first.request(json!({"type": "call.transfer", "call_id": call_id, "to_agent_id": "agent-t2"})).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(
        (ack["transfer"]["status"].as_str(), ack["transfer"]["to_agent_id"].as_str()),
        (Some("ringing"), Some("agent-t2"))
    );
    assert_eq!(ack["transfer"]["call_id"], call_id.as_str());
    assert_eq!(ack["call"]["callee_id"], "agent-t1");
    for (who, socket) in [("customer", &mut customer), ("first", &mut first), ("target", &mut target)] {
        let frame = socket.next_of("transfer").await;
        assert_eq!(frame["transfer"]["status"], "ringing", "{who}: {frame}");
        assert_eq!(frame["call"]["id"], call_id.as_str(), "{who}: {frame}");
    }
    // The target may not signal before answering.
    let refused = target.request(json!({"type": "offer", "call_id": call_id, "sdp": SDP})).await;
    assert_eq!(refused["type"], "error", "{refused}");

    let ack = target.request(json!({"type": "call.answer", "call_id": call_id})).await;
    assert_eq!((ack["call"]["status"].as_str(), ack["call"]["callee_id"].as_str()), (Some("active"), Some("agent-t2")));
    for (who, socket) in [("customer", &mut customer), ("first", &mut first)] {
        let frame = socket.next_of("transfer").await;
        assert_eq!(frame["transfer"]["status"], "transferred", "{who}: {frame}");
        let state = socket.next_of("call_state").await;
        assert_eq!(state["call"]["callee_id"], "agent-t2", "{who}: {state}");
    }
    // The customer's offer now reaches agent-t2; agent-t1 is no party any more.
    let sent = customer.request(json!({"type": "offer", "call_id": call_id, "sdp": SDP})).await;
    assert_eq!(sent["type"], "ack", "{sent}");
    let offer = target.next_of("offer").await;
    assert_eq!((offer["from"].as_str(), offer["to"].as_str()), (Some("cust-t"), Some("agent-t2")));
    let refused = first.request(json!({"type": "offer", "call_id": call_id, "sdp": SDP})).await;
    assert_eq!(refused["type"], "error", "{refused}");

    let history = customer.request(json!({"type": "call.history"})).await;
    let call = &history["calls"][0];
    assert_eq!(call["legs"][0]["agent_id"], "agent-t1", "{call}");
    assert_eq!(call["legs"][0]["end_reason"], "transferred");
    assert_eq!(call["legs"][1]["agent_id"], "agent-t2");
    assert_eq!(call["transfers"][0]["status"], "transferred");
    assert_eq!(call["transfers"][0]["call_id"], call_id.as_str());
    fleet.stop().await;
}
