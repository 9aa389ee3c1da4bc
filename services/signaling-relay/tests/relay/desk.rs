//! A support desk over WebSocket across two relays: a customer calls a desk (`call.initiate`
//! without `callee_id`), hears where it stands (`queue.position`), an agent says they are
//! available (`agent.availability`), gets the call pushed, rings, answers, and the signals flow.

use serde_json::json;

use crate::helpers::{FleetOptions, spawn_fleet};

const SDP: &str = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=extmap-allow-mixed\r\n";

#[tokio::test]
async fn a_customer_waits_in_a_desk_queue_and_the_agent_who_becomes_available_answers() {
    let fleet = spawn_fleet(FleetOptions::default()).await;
    let mut customer = fleet.connect(0, "cust-1").await;
    let mut agent = fleet.connect_agent(1, "agent-d").await;

    // Users neither set availability nor read queues.
    let refused =
        customer.request(json!({"type": "agent.availability", "available": true, "call_types": ["support"]})).await;
    assert_eq!((refused["type"].as_str(), refused["code"].as_str()), (Some("error"), Some("permission_denied")));
    let refused = customer.request(json!({"type": "queue.get", "call_type": "support"})).await;
    assert_eq!(refused["code"], "permission_denied", "{refused}");
    let refused =
        agent.request(json!({"type": "agent.availability", "available": true, "call_types": ["video"]})).await;
    assert_eq!(
        (refused["code"].as_str(), refused["message"].as_str()),
        (Some("invalid_argument"), Some("unknown call_type `video`"))
    );

    let ack = customer.request(json!({"type": "call.initiate", "call_type": "support", "request_id": "d1"})).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!((ack["call"]["status"].as_str(), ack["call"]["callee_id"].as_str()), (Some("queued"), Some("")));
    assert!(ack["call"]["queued_at"].is_string(), "{ack}");
    let call_id = ack["call"]["id"].as_str().expect("id").to_owned();
    let position = customer.next_of("queue.position").await;
    assert_eq!(position["call_id"], call_id.as_str());
    assert_eq!((position["position"].as_u64(), position["waiting"].as_u64()), (Some(1), Some(1)));
    assert_eq!(position["call_type"], "support");
    // No agent yet: no signals either.
    let refused = customer.request(json!({"type": "offer", "call_id": call_id, "sdp": SDP})).await;
    assert_eq!(refused["code"], "failed_precondition", "{refused}");
    // A second socket of the customer (a reload) is told of the waiting call when it connects.
    let mut again = fleet.connect(1, "cust-1").await;
    let synced = again.next_of("call_state").await;
    assert_eq!(
        (synced["call"]["id"].as_str(), synced["call"]["status"].as_str()),
        (Some(call_id.as_str()), Some("queued"))
    );
    let queue = agent.request(json!({"type": "queue.get", "call_type": "support"})).await;
    assert_eq!(queue["queue"]["waiting"][0]["call_id"], call_id.as_str(), "{queue}");
    assert_eq!(queue["queue"]["waiting"][0]["position"], 1);

    let ack = agent
        .request(json!({"type": "agent.availability", "available": true, "call_types": ["support", "sales"]}))
        .await;
    assert_eq!(ack["agent"]["available"], true, "{ack}");
    assert_eq!(ack["agent"]["call_types"], json!(["sales", "support"]));
    let offered = agent.next_of("call_state").await;
    assert_eq!(
        (offered["call"]["id"].as_str(), offered["call"]["status"].as_str(), offered["call"]["callee_id"].as_str()),
        (Some(call_id.as_str()), Some("initiated"), Some("agent-d"))
    );
    assert_eq!(agent.request(json!({"type": "call.ring", "call_id": call_id})).await["call"]["status"], "ringing");
    let seen = loop {
        let state = customer.next_of("call_state").await;
        if state["call"]["status"] == "ringing" {
            break state;
        }
    };
    assert_eq!(seen["call"]["callee_id"], "agent-d");
    let ack = customer.request(json!({"type": "offer", "call_id": call_id, "sdp": SDP})).await;
    assert_eq!(ack["type"], "ack", "the offer goes to the agent now: {ack}");
    assert_eq!(agent.next_of("offer").await["sdp"], SDP);
    assert_eq!(agent.request(json!({"type": "call.answer", "call_id": call_id})).await["call"]["status"], "active");
    agent.request(json!({"type": "answer", "call_id": call_id, "sdp": SDP})).await;
    assert_eq!(customer.next_of("answer").await["from"], "agent-d");
    let history = customer.request(json!({"type": "call.history"})).await;
    let attempts = &history["calls"][0]["routing_attempts"];
    assert_eq!(
        (attempts[0]["agent_id"].as_str(), attempts[0]["outcome"].as_str()),
        (Some("agent-d"), Some("answered"))
    );
    let ended = customer.request(json!({"type": "call.end", "call_id": call_id})).await;
    assert_eq!(ended["call"]["end_reason"], "hangup");
    fleet.stop().await;
}
