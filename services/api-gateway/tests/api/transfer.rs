//! Blind transfer through gRPC (docs/api.md "Transfer"): the call's agent hands an active call to
//! another agent or to a desk; the target rings, answers (the call is theirs, one history with
//! both legs) or declines / lets it ring out (the call stays with the first agent); bad requests
//! change nothing; a transfer racing the customer's hang-up has one winner. Events on RabbitMQ.

use std::time::Duration;

use tonic::Code;
use videocall_entities::{call_transfers, live_call_parties};
use videocall_proto::v1::{self as pb, CallStatus, CallType};

use crate::helpers::{TestApp, spawn_app, spawn_app_with};

/// carol calls `agent`, who answers: the active call's id (its three events taken).
async fn active_call(app: &mut TestApp, customer: &str, agent: &str) -> String {
    let mut client = app.client().await;
    let req =
        pb::InitiateCallRequest { callee_id: agent.into(), call_type: CallType::Support as i32, ..Default::default() };
    let id =
        client.initiate_call(app.as_user(customer, req)).await.expect("initiate").into_inner().call.expect("call").id;
    client.answer_call(app.as_agent(agent, pb::AnswerCallRequest { call_id: id.clone() })).await.expect("answer");
    let keys: Vec<String> = app.events.take(2).await.into_iter().map(|e| e.routing_key).collect();
    assert_eq!(keys, ["call.initiated", "call.answered"]);
    id
}

fn to_agent(call_id: &str, agent: &str) -> pb::TransferCallRequest {
    pb::TransferCallRequest { call_id: call_id.into(), to_agent_id: agent.into(), ..Default::default() }
}

async fn get(app: &TestApp, user: &str, call_id: &str) -> pb::Call {
    let mut client = app.client().await;
    let reply = client.get_call(app.as_user(user, pb::GetCallRequest { call_id: call_id.into() })).await;
    reply.expect("get call").into_inner().call.expect("call")
}

#[tokio::test]
async fn a_transfer_rings_the_target_and_on_answer_the_call_is_theirs_with_both_legs_in_one_history() {
    let mut app = spawn_app().await;
    let mut client = app.client().await;
    let id = active_call(&mut app, "carol", "agent-1").await;

    let reply =
        client.transfer_call(app.as_agent("agent-1", to_agent(&id, "agent-2"))).await.expect("transfer").into_inner();
    let t = reply.transfer.expect("transfer");
    assert_eq!(
        (t.status.as_str(), t.from_agent_id.as_str(), t.to_agent_id.as_str()),
        ("ringing", "agent-1", "agent-2")
    );
    assert_eq!((t.requested_by.as_str(), t.reason.as_str()), ("agent-1", ""));
    let call = reply.call.expect("call");
    assert_eq!(
        (call.status(), call.callee_id.as_str()),
        (CallStatus::Active, "agent-1"),
        "agent-1 stays until the answer"
    );
    let requested = app.events.take(1).await.remove(0);
    assert_eq!(
        (requested.routing_key.as_str(), requested.event_type()),
        ("call.transfer_requested", "CallTransferRequested")
    );
    assert_eq!(requested.subject(), id);
    let data = &requested.body["data"];
    assert_eq!((data["to_agent_id"].as_str(), data["status"].as_str()), (Some("agent-2"), Some("ringing")));
    assert_eq!((data["caller_id"].as_str(), data["callee_id"].as_str()), (Some("carol"), Some("agent-1")));
    assert_eq!(data["transfer_id"].as_str(), Some(t.transfer_id.as_str()));

    // The target answers: the call is theirs, version +1, agent-1's leg ended.
    let answered = client
        .answer_call(app.as_agent("agent-2", pb::AnswerCallRequest { call_id: id.clone() }))
        .await
        .expect("the target answers")
        .into_inner();
    let call = answered.call.expect("call");
    assert_eq!((call.status(), call.callee_id.as_str(), call.version), (CallStatus::Active, "agent-2", 3));
    let transferred = app.events.take(1).await.remove(0);
    assert_eq!(transferred.event_type(), "CallTransferred");
    let data = &transferred.body["data"];
    assert_eq!(
        (data["status"].as_str(), data["callee_id"].as_str(), data["version"].as_i64()),
        (Some("transferred"), Some("agent-2"), Some(3))
    );
    // agent-1 is no party any more; agent-2 is.
    let denied = client
        .end_call(app.as_agent("agent-1", pb::EndCallRequest { call_id: id.clone(), reason: 0 }))
        .await
        .expect_err("not agent-1's call now");
    assert_eq!(denied.code(), Code::PermissionDenied);
    client.end_call(app.as_agent("agent-2", pb::EndCallRequest { call_id: id.clone(), reason: 0 })).await.expect("end");
    assert_eq!(app.events.take(1).await[0].routing_key, "call.ended");

    // One history: both legs, the transfer, who ended it; agent-1 may still read it.
    let call = get(&app, "agent-1", &id).await;
    let legs: Vec<(&str, &str)> = call.legs.iter().map(|l| (l.agent_id.as_str(), l.end_reason.as_str())).collect();
    assert_eq!(legs, [("agent-1", "transferred"), ("agent-2", "hangup")]);
    assert_eq!(call.legs[0].ended_at, call.legs[1].started_at, "the second leg starts as the first ends");
    assert_eq!(call.legs[0].started_at, call.answered_at);
    assert_eq!(call.legs[1].ended_at, call.ended_at);
    assert_eq!((call.ended_by.as_str(), call.transfers.len()), ("agent-2", 1));
    assert_eq!(call.transfers[0].status, "transferred");
    assert!(call.duration_ms >= 0);
    let history = client
        .get_user_calls(app.as_user("carol", pb::GetUserCallsRequest::default()))
        .await
        .expect("history")
        .into_inner();
    assert_eq!(history.calls.len(), 1, "one call for the customer");
    assert_eq!(history.calls[0].legs.len(), 2);
    let agent_history = client
        .get_user_calls(app.as_agent("agent-1", pb::GetUserCallsRequest::default()))
        .await
        .expect("history")
        .into_inner();
    assert_eq!(agent_history.calls.len(), 1, "the first agent's history keeps the call they transferred");
    assert_eq!(app.count(live_call_parties::Entity).await, 0, "nobody is left busy");
    // Both agents are free for new calls.
    for agent in ["agent-1", "agent-2"] {
        let req = pb::InitiateCallRequest {
            callee_id: agent.into(),
            call_type: CallType::Sales as i32,
            ..Default::default()
        };
        client.initiate_call(app.as_user(&format!("dave-{agent}"), req)).await.expect("free again");
    }
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_declined_or_unanswered_transfer_leaves_the_call_with_the_first_agent() {
    let mut app = spawn_app_with(|c| c.desk.agent_ring = Duration::from_secs(2)).await;
    let mut client = app.client().await;
    let id = active_call(&mut app, "carol", "agent-1").await;

    client.transfer_call(app.as_agent("agent-1", to_agent(&id, "agent-2"))).await.expect("transfer");
    let declined = client
        .reject_call(app.as_agent("agent-2", pb::RejectCallRequest { call_id: id.clone() }))
        .await
        .expect("the target declines")
        .into_inner()
        .call
        .expect("call");
    assert_eq!((declined.status(), declined.callee_id.as_str()), (CallStatus::Active, "agent-1"));
    let events = app.events.take(2).await;
    assert_eq!(events[1].event_type(), "CallTransferFailed");
    assert_eq!(events[1].body["data"]["reason"], "rejected");
    // A second answer from agent-2 now: their transfer is over.
    let late = client
        .answer_call(app.as_agent("agent-2", pb::AnswerCallRequest { call_id: id.clone() }))
        .await
        .expect_err("over");
    assert_eq!((late.code(), late.message()), (Code::FailedPrecondition, "the transfer to you is over: rejected"));

    // agent-3 lets it ring past AGENT_RING_SECS: the router fails it; the call stays.
    client.transfer_call(app.as_agent("agent-1", to_agent(&id, "agent-3"))).await.expect("transfer again");
    assert_eq!(app.events.take(1).await[0].event_type(), "CallTransferRequested");
    let failed = app.events.next(Duration::from_secs(10)).await.expect("the ring runs out");
    assert_eq!(
        (failed.event_type(), failed.body["data"]["reason"].as_str()),
        ("CallTransferFailed", Some("no_answer"))
    );
    let call = get(&app, "carol", &id).await;
    assert_eq!((call.status(), call.callee_id.as_str()), (CallStatus::Active, "agent-1"));
    let outcomes: Vec<(&str, &str, &str)> =
        call.transfers.iter().map(|t| (t.to_agent_id.as_str(), t.status.as_str(), t.reason.as_str())).collect();
    assert_eq!(outcomes, [("agent-2", "failed", "rejected"), ("agent-3", "failed", "no_answer")]);
    assert_eq!(call.legs.len(), 1, "still agent-1's one leg");
    assert_eq!(app.count(live_call_parties::Entity).await, 2, "carol and agent-1 only");
    client.end_call(app.as_agent("agent-1", pb::EndCallRequest { call_id: id.clone(), reason: 0 })).await.expect("end");
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_transfer_to_a_desk_rings_its_longest_idle_free_agent() {
    let mut app = spawn_app().await;
    let mut client = app.client().await;
    for agent in ["agent-1", "agent-a", "agent-b"] {
        let req = pb::SetAgentAvailabilityRequest {
            available: true,
            call_types: vec![CallType::Sales as i32],
            agent_id: String::new(),
        };
        client.set_agent_availability(app.as_agent(agent, req)).await.expect("available");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let id = active_call(&mut app, "carol", "agent-1").await;
    let desk =
        pb::TransferCallRequest { call_id: id.clone(), to_call_type: CallType::Sales as i32, ..Default::default() };
    let t =
        client.transfer_call(app.as_agent("agent-1", desk)).await.expect("transfer").into_inner().transfer.expect("t");
    // agent-1 waited longest but is the one transferring: agent-a is next.
    assert_eq!((t.to_agent_id.as_str(), t.to_call_type()), ("agent-a", CallType::Sales));
    assert_eq!(app.events.take(1).await[0].body["data"]["to_call_type"], "sales");
    client.answer_call(app.as_agent("agent-a", pb::AnswerCallRequest { call_id: id.clone() })).await.expect("answer");
    // Nobody free on the consult desk.
    let none =
        pb::TransferCallRequest { call_id: id.clone(), to_call_type: CallType::Consult as i32, ..Default::default() };
    let refused = client.transfer_call(app.as_agent("agent-a", none)).await.expect_err("no agent");
    assert_eq!((refused.code(), refused.message()), (Code::FailedPrecondition, "no agent of the consult desk is free"));
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn bad_transfer_requests_are_refused_and_change_nothing() {
    let mut app = spawn_app().await;
    let mut client = app.client().await;
    let id = active_call(&mut app, "carol", "agent-1").await;
    // agent-9 is busy in a call of their own (ringing).
    let req = pb::InitiateCallRequest {
        callee_id: "agent-9".into(),
        call_type: CallType::Sales as i32,
        ..Default::default()
    };
    let ringing =
        client.initiate_call(app.as_user("erin", req)).await.expect("initiate").into_inner().call.expect("call").id;
    app.events.take(1).await;

    let both = pb::TransferCallRequest {
        call_id: id.clone(),
        to_agent_id: "agent-2".into(),
        to_call_type: CallType::Sales as i32,
    };
    let neither = pb::TransferCallRequest { call_id: id.clone(), ..Default::default() };
    let cases = [
        (
            app.as_user("carol", to_agent(&id, "agent-2")),
            Code::PermissionDenied,
            "only agents and services transfer calls",
        ),
        (app.as_agent("agent-7", to_agent(&id, "agent-2")), Code::PermissionDenied, "you are not a party of this call"),
        (app.as_agent("agent-1", both), Code::InvalidArgument, "give to_agent_id or to_call_type, not both"),
        (app.as_agent("agent-1", neither), Code::InvalidArgument, "to_agent_id or to_call_type is required"),
        (app.as_agent("agent-1", to_agent(&id, "carol")), Code::InvalidArgument, "carol is in this call already"),
        (app.as_agent("agent-1", to_agent(&id, "agent-1")), Code::InvalidArgument, "agent-1 is in this call already"),
        (app.as_agent("agent-1", to_agent("nope", "agent-2")), Code::InvalidArgument, "call_id `nope` is not a UUID"),
        (
            app.as_agent("agent-1", to_agent(&id, "agent-9")),
            Code::FailedPrecondition,
            "busy: user agent-9 is in another call",
        ),
        (app.as_agent("agent-9", to_agent(&ringing, "agent-2")), Code::FailedPrecondition, "call is initiated"),
    ];
    for (request, code, message) in cases {
        let status = client.transfer_call(request).await.expect_err(message);
        assert_eq!((status.code(), status.message()), (code, message));
    }
    assert_eq!(app.count(call_transfers::Entity).await, 0, "nothing was written");
    app.events.expect_none(Duration::from_millis(300)).await;

    // One ringing transfer at a time.
    client.transfer_call(app.as_agent("agent-1", to_agent(&id, "agent-2"))).await.expect("first");
    let second = client.transfer_call(app.as_agent("agent-1", to_agent(&id, "agent-3"))).await.expect_err("second");
    assert_eq!(
        (second.code(), second.message()),
        (Code::FailedPrecondition, "a transfer to agent-2 is ringing already")
    );
    assert_eq!(app.count(call_transfers::Entity).await, 1);
    assert_eq!(app.events.take(1).await[0].event_type(), "CallTransferRequested");
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn twenty_answers_racing_the_customers_hang_up_each_end_one_way_with_each_event_once() {
    let mut app = spawn_app().await;
    let client = app.client().await;
    const N: usize = 20;
    let mut ids = Vec::new();
    for i in 0..N {
        let (customer, agent) = (format!("customer-{i}"), format!("agent-{i}"));
        let id = active_call(&mut app, &customer, &agent).await;
        client
            .clone()
            .transfer_call(app.as_agent(&agent, to_agent(&id, &format!("target-{i}"))))
            .await
            .expect("transfer");
        app.events.take(1).await;
        ids.push(id);
    }
    let mut races = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let answer = app.as_agent(&format!("target-{i}"), pb::AnswerCallRequest { call_id: id.clone() });
        let hang_up = app.as_user(&format!("customer-{i}"), pb::EndCallRequest { call_id: id.clone(), reason: 0 });
        let (mut a, mut b) = (client.clone(), client.clone());
        races.push(tokio::spawn(async move {
            let (answered, ended) = tokio::join!(a.answer_call(answer), b.end_call(hang_up));
            (answered.map(|_| ()), ended.expect("the customer may always hang up").into_inner().call.expect("call"))
        }));
    }
    let mut transferred = 0;
    for (i, race) in races.into_iter().enumerate() {
        let (answered, ended) = race.await.expect("race");
        assert_eq!(ended.status(), CallStatus::Ended);
        let call = get(&app, &format!("customer-{i}"), &ids[i]).await;
        match answered {
            Ok(()) => {
                transferred += 1;
                assert_eq!(call.callee_id, format!("target-{i}"));
                assert_eq!(call.transfers[0].status, "transferred");
                assert_eq!(call.legs.len(), 2);
            }
            Err(lost) => {
                assert_eq!(lost.code(), Code::FailedPrecondition, "{lost:?}");
                assert_eq!(call.callee_id, format!("agent-{i}"));
                assert_eq!(
                    (call.transfers[0].status.as_str(), call.transfers[0].reason.as_str()),
                    ("failed", "call_ended")
                );
                assert_eq!(call.legs.len(), 1);
            }
        }
    }
    // Each call: one transfer outcome and one ending, nothing twice.
    let events = app.events.take(2 * N).await;
    for id in &ids {
        let mine: Vec<&str> = events.iter().filter(|e| e.subject() == id).map(|e| e.event_type()).collect();
        assert_eq!(mine.len(), 2, "{id}: {mine:?}");
        assert!(mine.contains(&"CallEnded"), "{id}: {mine:?}");
        assert!(mine.contains(&"CallTransferred") || mine.contains(&"CallTransferFailed"), "{id}: {mine:?}");
    }
    eprintln!("{transferred} of {N} transfers won against the hang-up");
    assert_eq!(app.count(live_call_parties::Entity).await, 0, "nobody is left busy");
    app.stop().await.expect("clean stop");
}
