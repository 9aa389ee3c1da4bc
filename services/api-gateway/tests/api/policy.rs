//! The call policy with its shipped defaults: users call agents (not other users), agents and
//! services call anyone, and each caller starts a bounded number of calls a minute.

use tonic::Code;
use videocall_entities::{call_transitions, calls, outbox};
use videocall_proto::v1::{self as pb, CallType};

use crate::helpers::{TestApp, spawn_app_with};

async fn snapshot(app: &TestApp) -> (u64, u64, u64) {
    (app.count(calls::Entity).await, app.count(call_transitions::Entity).await, app.count(outbox::Entity).await)
}

fn call(callee: &str) -> pb::InitiateCallRequest {
    pb::InitiateCallRequest { callee_id: callee.into(), call_type: CallType::Support as i32, ..Default::default() }
}

#[tokio::test]
async fn users_call_agents_and_agents_and_services_call_anyone() {
    let app = spawn_app_with(|c| c.call_policy = api_gateway::CallPolicy::default()).await;
    let mut client = app.client().await;

    // bob is a user, and agent-7 has not connected yet: neither is a known agent.
    for callee in ["bob", "agent-7"] {
        let before = snapshot(&app).await;
        let status = client.initiate_call(app.as_user("alice", call(callee))).await.expect_err(callee);
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert_eq!(status.message(), format!("users may call agents only, and `{callee}` is not a known agent"));
        assert_eq!(snapshot(&app).await, before, "nothing written");
    }
    // Any request of agent-7 (a relay reads its calls when it connects) makes it known.
    let history = pb::GetUserCallsRequest::default();
    client.get_user_calls(app.as_agent("agent-7", history)).await.expect("agent reads its calls");
    let reply = client.initiate_call(app.as_user("alice", call("agent-7"))).await.expect("user calls agent");
    assert_eq!(reply.into_inner().call.expect("call").callee_id, "agent-7");

    // Agents call users; a service starts a call between two users.
    client.initiate_call(app.as_agent("agent-8", call("carol"))).await.expect("agent calls user");
    let for_users = pb::InitiateCallRequest { caller_id: "dave".into(), ..call("erin") };
    client.initiate_call(app.as_service(for_users)).await.expect("service calls for a user");
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn each_caller_starts_a_bounded_number_of_calls_a_minute() {
    let app = spawn_app_with(|c| {
        c.call_policy = api_gateway::CallPolicy { initiate_per_minute: 3, ..api_gateway::CallPolicy::default() };
    })
    .await;
    let mut client = app.client().await;
    client.get_user_calls(app.as_agent("agent-1", pb::GetUserCallsRequest::default())).await.expect("agent known");
    for i in 0..3 {
        let reply = client.initiate_call(app.as_user("mallory", call("agent-1"))).await;
        let id = reply.unwrap_or_else(|s| panic!("call {i}: {s:?}")).into_inner().call.expect("call").id;
        // The caller gives up at once, so the agent is free for the next ring.
        client.end_call(app.as_user("mallory", pb::EndCallRequest { call_id: id, reason: 0 })).await.expect("cancel");
    }
    let before = snapshot(&app).await;
    let status = client.initiate_call(app.as_user("mallory", call("agent-1"))).await.expect_err("fourth call");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().starts_with("too many calls started: at most 3 a minute; retry in "), "{status:?}");
    let retry: u64 = status.metadata().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok()).expect("hint");
    assert!((1..=20).contains(&retry), "one call's worth of allowance comes back in 20 s: {retry}");
    assert_eq!(snapshot(&app).await, before, "nothing written");
    // Another caller has an allowance of its own.
    client.initiate_call(app.as_user("olivia", call("agent-1"))).await.expect("another caller");
    app.stop().await.expect("clean stop");
}
