//! The call policy with its shipped defaults: users call agents (not other users), agents and
//! services call anyone, and each caller starts a bounded number of calls a minute.

use tonic::Code;
use videocall_entities::{call_transitions, calls, outbox};
use videocall_proto::v1::{self as pb, CallType};

use tonic::transport::Channel;
use videocall_proto::v1::call_service_client::CallServiceClient;

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

fn sample(call_id: &str, rtt_ms: f64) -> pb::UpdateCallQualityRequest {
    pb::UpdateCallQualityRequest {
        call_id: call_id.into(),
        rtt_ms,
        jitter_ms: 2.0,
        packet_loss_percent: 0.5,
        bitrate_kbps: 900.0,
        width: 640,
        height: 480,
        fps: 25.0,
        direction: "inbound".into(),
    }
}

/// A gateway with the shipped policy, and a call from `user` to `agent` (known as one): its id.
async fn policy_app_with_call(user: &str, agent: &str) -> (TestApp, CallServiceClient<Channel>, String) {
    let app = spawn_app_with(|c| c.call_policy = api_gateway::CallPolicy::default()).await;
    let mut client = app.client().await;
    client.get_user_calls(app.as_agent(agent, pb::GetUserCallsRequest::default())).await.expect("agent known");
    let call = client.initiate_call(app.as_user(user, call(agent))).await.expect("call").into_inner();
    let id = call.call.expect("call").id;
    (app, client, id)
}

#[tokio::test]
async fn each_reporter_sends_at_most_one_quality_sample_a_second_per_call() {
    let (app, mut client, id) = policy_app_with_call("zoe", "agent-3").await;
    client.answer_call(app.as_agent("agent-3", pb::AnswerCallRequest { call_id: id.clone() })).await.expect("answer");

    client.update_call_quality(app.as_user("zoe", sample(&id, 40.0))).await.expect("first sample");
    let status = client.update_call_quality(app.as_user("zoe", sample(&id, 41.0))).await.expect_err("too soon");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().starts_with("quality samples come at most one per 1000 ms"), "{status:?}");
    assert_eq!(status.metadata().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    // The other party has its own pace; a refused (bad) sample does not use one up.
    client.update_call_quality(app.as_agent("agent-3", sample(&id, 40.0))).await.expect("the agent's sample");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let bad = client.update_call_quality(app.as_user("zoe", sample(&id, -1.0))).await.expect_err("negative rtt");
    assert_eq!(bad.code(), Code::InvalidArgument);
    client.update_call_quality(app.as_user("zoe", sample(&id, 42.0))).await.expect("a second later");
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_user_holds_a_bounded_number_of_signal_streams() {
    let (app, mut client, id) = policy_app_with_call("yuri", "agent-4").await;
    let subscribe = || pb::SubscribeToSignalsRequest { call_id: id.clone(), after_seq: 0 };
    let mut open = Vec::new();
    for i in 0..5 {
        let stream = client.subscribe_to_signals(app.as_user("yuri", subscribe())).await;
        open.push(stream.unwrap_or_else(|s| panic!("stream {i}: {s:?}")).into_inner());
    }
    let status = client.subscribe_to_signals(app.as_user("yuri", subscribe())).await.expect_err("a sixth stream");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(status.message(), "at most 5 signal streams per user are open at once; close one first");
    // The other party has places of its own; a closed stream gives its place back.
    client.subscribe_to_signals(app.as_agent("agent-4", subscribe())).await.expect("the agent's stream");
    drop(open.pop());
    let mut reopened = false;
    for _ in 0..50 {
        if client.subscribe_to_signals(app.as_user("yuri", subscribe())).await.is_ok() {
            reopened = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(reopened, "the place of the closed stream came back");
    app.stop().await.expect("clean stop");
}
