//! Support desks through gRPC: a customer calls a desk (InitiateCall without a callee), the
//! router offers the call to the longest-idle available agent of that desk, a reject or no answer
//! passes it on, and the queue timeout, the customer hanging up and bad requests behave as
//! docs/api.md says. Every event is checked on RabbitMQ.

use std::time::Duration;

use tonic::Code;
use videocall_proto::v1::{self as pb, CallStatus, CallType, EndReason};

use crate::helpers::{TestApp, spawn_app_with};

fn desk_call(request_id: &str, call_type: CallType) -> pb::InitiateCallRequest {
    pb::InitiateCallRequest { request_id: request_id.into(), call_type: call_type as i32, ..Default::default() }
}

fn available(desks: &[CallType]) -> pb::SetAgentAvailabilityRequest {
    pb::SetAgentAvailabilityRequest {
        available: true,
        call_types: desks.iter().map(|d| *d as i32).collect(),
        agent_id: String::new(),
    }
}

async fn get(app: &TestApp, user: &str, call_id: &str) -> pb::Call {
    let mut client = app.client().await;
    client
        .get_call(app.as_user(user, pb::GetCallRequest { call_id: call_id.into() }))
        .await
        .expect("get call")
        .into_inner()
        .call
        .expect("call")
}

/// Polls the call (as the customer) until `done` says yes, at most 10 s.
async fn until(app: &TestApp, customer: &str, call_id: &str, what: &str, done: impl Fn(&pb::Call) -> bool) -> pb::Call {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let call = get(app, customer, call_id).await;
        if done(&call) {
            return call;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}: {call:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn routing_keys(events: &[videocall_testkit::Event]) -> Vec<&str> {
    events.iter().map(|e| e.routing_key.as_str()).collect()
}

#[tokio::test]
async fn a_desk_call_goes_to_the_longest_idle_agent_and_each_step_is_one_event() {
    let mut app = spawn_app_with(|_| {}).await;
    let mut client = app.client().await;
    // agent-a waits longest; agent-s serves sales only; agent-b became available after agent-a.
    for (agent, desks) in [
        ("agent-a", vec![CallType::Support]),
        ("agent-s", vec![CallType::Sales]),
        ("agent-b", vec![CallType::Support, CallType::Sales]),
    ] {
        let reply = client.set_agent_availability(app.as_agent(agent, available(&desks))).await.expect("available");
        let reply = reply.into_inner();
        assert_eq!((reply.agent_id.as_str(), reply.available), (agent, true));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reply = client.initiate_call(app.as_user("carol", desk_call("d-1", CallType::Support))).await.expect("queued");
    let queued = reply.into_inner().call.expect("call");
    assert_eq!(queued.status(), CallStatus::Queued);
    assert_eq!(queued.callee_id, "", "no agent yet");
    assert!(queued.queued_at.is_some());

    let offered = until(&app, "carol", &queued.id, "the offer", |c| c.status() == CallStatus::Initiated).await;
    assert_eq!(offered.callee_id, "agent-a", "the longest-idle agent of the desk");
    assert_eq!(offered.routing_attempts.len(), 1);
    assert_eq!((offered.routing_attempts[0].attempt, offered.routing_attempts[0].agent_id.as_str()), (1, "agent-a"));

    client.ring_call(app.as_agent("agent-a", pb::RingCallRequest { call_id: queued.id.clone() })).await.expect("ring");
    let active = client
        .answer_call(app.as_agent("agent-a", pb::AnswerCallRequest { call_id: queued.id.clone() }))
        .await
        .expect("answer")
        .into_inner()
        .call
        .expect("call");
    assert_eq!(active.status(), CallStatus::Active);
    let call = get(&app, "carol", &queued.id).await;
    assert_eq!(call.routing_attempts[0].outcome, "answered");
    assert!(call.routing_attempts[0].ended_at.is_some());
    client
        .end_call(app.as_user("carol", pb::EndCallRequest { call_id: queued.id.clone(), reason: 0 }))
        .await
        .expect("end");

    let events = app.events.take(5).await;
    assert_eq!(routing_keys(&events), ["call.queued", "call.routed", "call.ringing", "call.answered", "call.ended"]);
    assert_eq!(events[0].body["type"], "CallQueued");
    assert_eq!(events[0].body["data"]["callee_id"], "");
    assert!(events[0].body["data"]["queued_at"].is_string());
    assert_eq!(events[1].body["type"], "CallRouted");
    assert_eq!(events[1].body["data"]["callee_id"], "agent-a");
    assert_eq!(events[1].body["data"]["previous_status"], "queued");

    // agent-a waits again from the end of that call: agent-b is now the longest idle.
    client.initiate_call(app.as_user("dave", desk_call("d-2", CallType::Support))).await.expect("queued");
    let next = client
        .get_user_calls(app.as_user("dave", pb::GetUserCallsRequest::default()))
        .await
        .expect("history")
        .into_inner()
        .calls
        .remove(0);
    let next = until(&app, "dave", &next.id, "the second offer", |c| c.status() == CallStatus::Initiated).await;
    assert_eq!(next.callee_id, "agent-b");
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_reject_or_no_answer_passes_the_call_on_and_the_queue_timeout_misses_it() {
    // An offer rings 3 s: long enough that a loaded machine still sees each one while it rings
    // and agent-1 rejects in time; what rang when is then read from the recorded offers, never
    // from a state that lasts only one ring.
    let mut app = spawn_app_with(|c| {
        c.desk.agent_ring = Duration::from_secs(3);
        c.desk.queue_timeout = Duration::from_secs(10);
    })
    .await;
    let mut client = app.client().await;
    for agent in ["agent-1", "agent-2"] {
        client.set_agent_availability(app.as_agent(agent, available(&[CallType::Consult]))).await.expect("available");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let call = client
        .initiate_call(app.as_user("erin", desk_call("c-1", CallType::Consult)))
        .await
        .expect("queued")
        .into_inner()
        .call
        .expect("call");
    let first = until(&app, "erin", &call.id, "the first offer", |c| !c.routing_attempts.is_empty()).await;
    assert_eq!(first.routing_attempts[0].agent_id, "agent-1", "the longest idle first");
    // The agent declines: back in the queue, same call, and the other agent rings.
    let back = client
        .reject_call(app.as_agent("agent-1", pb::RejectCallRequest { call_id: call.id.clone() }))
        .await
        .expect("reject")
        .into_inner()
        .call
        .expect("call");
    assert_eq!((back.status(), back.callee_id.as_str()), (CallStatus::Queued, ""));
    let second = until(&app, "erin", &call.id, "the second offer", |c| c.routing_attempts.len() >= 2).await;
    assert_eq!(second.id, call.id, "the same call throughout");
    assert_eq!(second.routing_attempts[1].agent_id, "agent-2");
    // agent-1 may not act on the call any more.
    let denied = client
        .answer_call(app.as_agent("agent-1", pb::AnswerCallRequest { call_id: call.id.clone() }))
        .await
        .expect_err("not theirs");
    assert_eq!(denied.code(), Code::PermissionDenied);
    // agent-2 does not answer within AGENT_RING_SECS: agent-1 (tried already, but the only free
    // agent left besides the one who just let it ring) gets it again.
    let third = until(&app, "erin", &call.id, "the third offer", |c| c.routing_attempts.len() >= 3).await;
    assert_eq!(third.routing_attempts[2].agent_id, "agent-1");
    let outcomes: Vec<&str> = third.routing_attempts.iter().take(2).map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["rejected", "no_answer"]);
    // Nobody answers: after QUEUE_TIMEOUT_SECS the call is missed, for want of an agent.
    let missed = until(&app, "erin", &call.id, "the miss", |c| c.status() == CallStatus::Missed).await;
    assert_eq!(missed.end_reason(), EndReason::NoAgent);
    let keys: Vec<String> = {
        let mut keys = Vec::new();
        while let Some(e) = app.events.next(Duration::from_millis(500)).await {
            keys.push(e.routing_key);
        }
        keys
    };
    let routed = keys.iter().filter(|k| *k == "call.routed").count();
    let queued = keys.iter().filter(|k| *k == "call.queued").count();
    assert_eq!(keys.first().map(String::as_str), Some("call.queued"));
    assert_eq!(keys.last().map(String::as_str), Some("call.missed"));
    assert_eq!(routed, missed.routing_attempts.len(), "one CallRouted per attempt: {keys:?}");
    assert_eq!(queued, routed + 1, "CallQueued at the start and after each unanswered offer: {keys:?}");
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_customer_hanging_up_while_queued_abandons_the_call_and_get_queue_shows_the_line() {
    let mut app = spawn_app_with(|c| c.ops_listen_addr = Some("127.0.0.1:0".parse().expect("addr"))).await;
    let mut client = app.client().await;
    let mut ids = Vec::new();
    for customer in ["c1", "c2", "c3"] {
        let call = client
            .initiate_call(app.as_user(customer, desk_call("s", CallType::Sales)))
            .await
            .expect("queued")
            .into_inner()
            .call
            .expect("call");
        ids.push(call.id);
    }
    let queue = client
        .get_queue(app.as_agent("agent-q", pb::GetQueueRequest { call_type: CallType::Sales as i32 }))
        .await
        .expect("queue")
        .into_inner();
    let line: Vec<(&str, u32)> = queue.waiting.iter().map(|w| (w.caller_id.as_str(), w.position)).collect();
    assert_eq!(line, [("c1", 1), ("c2", 2), ("c3", 3)]);
    assert!(queue.available_agents.is_empty());
    assert!(queue.waiting.iter().all(|w| w.estimated_wait_secs == -1), "no answers yet to estimate from");

    let ended = client
        .end_call(app.as_user("c1", pb::EndCallRequest { call_id: ids[0].clone(), reason: 0 }))
        .await
        .expect("hang up")
        .into_inner()
        .call
        .expect("call");
    assert_eq!((ended.status(), ended.end_reason()), (CallStatus::Ended, EndReason::Abandoned));
    let queue = client
        .get_queue(app.as_service(pb::GetQueueRequest { call_type: CallType::Sales as i32 }))
        .await
        .expect("queue")
        .into_inner();
    let line: Vec<(&str, u32)> = queue.waiting.iter().map(|w| (w.caller_id.as_str(), w.position)).collect();
    assert_eq!(line, [("c2", 1), ("c3", 2)]);
    // A customer in a queue is busy for other calls.
    let busy = client.initiate_call(app.as_user("c2", desk_call("again", CallType::Support))).await.expect_err("busy");
    assert_eq!(busy.code(), Code::FailedPrecondition);
    let events = app.events.take(4).await;
    assert_eq!(routing_keys(&events), ["call.queued", "call.queued", "call.queued", "call.ended"]);
    assert_eq!(events[3].body["data"]["end_reason"], "abandoned");
    // The desk's metrics, from the router's look at the database (every second).
    let ops = app.ops.expect("ops endpoint");
    let expected = [
        "videocall_desk_waiting_calls{desk=\"sales\"} 2",
        "videocall_desk_available_agents{desk=\"sales\"} 0",
        "videocall_desk_calls_last_hour{desk=\"sales\",outcome=\"abandoned\"} 1",
        "videocall_desk_calls_last_hour{desk=\"sales\",outcome=\"answered\"} 0",
        "videocall_desk_service_level{desk=\"sales\"} 0.0",
        "videocall_desk_waiting_calls{desk=\"support\"} 0",
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, metrics) = videocall_testkit::http_get(ops, "/metrics").await.expect("metrics");
        if expected.iter().all(|line| metrics.contains(line)) {
            assert!(metrics.contains("videocall_desk_longest_wait_seconds{desk=\"sales\"} "), "{metrics}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "desk metrics {expected:?} not in:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn bad_availability_and_queue_requests_are_refused_and_change_nothing() {
    let mut app = spawn_app_with(|_| {}).await;
    let mut client = app.client().await;
    let cases = [
        (
            app.as_user("carol", available(&[CallType::Support])),
            Code::PermissionDenied,
            "only agents set their availability",
        ),
        (
            app.as_agent("agent-1", available(&[])),
            Code::InvalidArgument,
            "call_types must name at least one desk when available",
        ),
        (
            app.as_agent(
                "agent-1",
                pb::SetAgentAvailabilityRequest { available: true, call_types: vec![0], agent_id: String::new() },
            ),
            Code::InvalidArgument,
            "call_types must not hold CALL_TYPE_UNSPECIFIED",
        ),
        (
            app.as_agent(
                "agent-1",
                pb::SetAgentAvailabilityRequest { available: true, call_types: vec![42], agent_id: String::new() },
            ),
            Code::InvalidArgument,
            "unknown call_type 42",
        ),
        (
            app.as_agent(
                "agent-1",
                pb::SetAgentAvailabilityRequest {
                    available: true,
                    call_types: vec![CallType::Support as i32],
                    agent_id: "agent-2".into(),
                },
            ),
            Code::PermissionDenied,
            "only a service may set another agent's availability",
        ),
        (
            app.as_service(pb::SetAgentAvailabilityRequest {
                available: true,
                call_types: vec![CallType::Support as i32],
                agent_id: String::new(),
            }),
            Code::InvalidArgument,
            "agent_id is required for a service",
        ),
    ];
    for (request, code, message) in cases {
        let status = client.set_agent_availability(request).await.expect_err(message);
        assert_eq!((status.code(), status.message()), (code, message));
    }
    let status = client
        .get_queue(app.as_user("carol", pb::GetQueueRequest { call_type: CallType::Support as i32 }))
        .await
        .expect_err("users do not read queues");
    assert_eq!(status.code(), Code::PermissionDenied);
    let status =
        client.get_queue(app.as_agent("agent-1", pb::GetQueueRequest { call_type: 0 })).await.expect_err("no desk");
    assert_eq!((status.code(), status.message()), (Code::InvalidArgument, "call_type is required"));
    let rows =
        app.count(videocall_entities::agents::Entity).await + app.count(videocall_entities::agent_desks::Entity).await;
    assert_eq!(rows, 0, "nothing was written");

    // A service may set an agent's availability; going unavailable keeps the desks.
    let set = client
        .set_agent_availability(app.as_service(pb::SetAgentAvailabilityRequest {
            available: true,
            call_types: vec![CallType::Support as i32, CallType::Consult as i32],
            agent_id: "agent-9".into(),
        }))
        .await
        .expect("set")
        .into_inner();
    assert_eq!(set.call_types, [CallType::Consult as i32, CallType::Support as i32], "in name order");
    let off = client
        .set_agent_availability(app.as_agent(
            "agent-9",
            pb::SetAgentAvailabilityRequest { available: false, call_types: vec![], agent_id: String::new() },
        ))
        .await
        .expect("off")
        .into_inner();
    assert_eq!((off.available, off.call_types.len()), (false, 2));
    app.events.expect_none(Duration::from_millis(300)).await;
    app.stop().await.expect("clean stop");
}
