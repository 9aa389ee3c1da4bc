//! Racing commands: exactly one winner, decided by the database.

use std::collections::HashMap;

use tonic::Code;
use videocall_entities::calls;
use videocall_proto::v1::{self as pb, CallType};

use crate::helpers::spawn_app;

#[tokio::test]
async fn fifty_answer_versus_reject_races_each_have_one_winner() {
    let mut app = spawn_app().await;
    let client = app.client().await;
    const N: usize = 50;

    let mut ids = Vec::new();
    for i in 0..N {
        let req = pb::InitiateCallRequest {
            callee_id: format!("agent-{i}"),
            call_type: CallType::Sales as i32,
            ..Default::default()
        };
        let call = client.clone().initiate_call(app.as_user(&format!("customer-{i}"), req)).await.expect("initiate");
        ids.push(call.into_inner().call.expect("call").id);
    }
    app.events.take(N).await;

    let mut races = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let callee = format!("agent-{i}");
        let (mut answer_client, mut reject_client) = (client.clone(), client.clone());
        let answer_req = app.as_user(&callee, pb::AnswerCallRequest { call_id: id.clone() });
        let reject_req = app.as_user(&callee, pb::RejectCallRequest { call_id: id.clone() });
        races.push(tokio::spawn(async move {
            let (a, r) = tokio::join!(answer_client.answer_call(answer_req), reject_client.reject_call(reject_req));
            (a.map(|_| ()), r.map(|_| ()))
        }));
    }
    let mut answered = 0;
    for race in races {
        let (a, r) = race.await.expect("race task");
        match (a, r) {
            (Ok(()), Err(loser)) => {
                answered += 1;
                assert_eq!((loser.code(), loser.message()), (Code::FailedPrecondition, "call is active"));
            }
            (Err(loser), Ok(())) => {
                assert_eq!((loser.code(), loser.message()), (Code::FailedPrecondition, "call is rejected"));
            }
            other => panic!("expected exactly one winner, got {other:?}"),
        }
    }
    let events = app.events.take(N).await;
    let mut per_call: HashMap<String, Vec<String>> = HashMap::new();
    for e in &events {
        per_call.entry(e.subject().to_owned()).or_default().push(e.routing_key.clone());
    }
    assert_eq!(per_call.len(), N, "one outcome event per call");
    let answered_events = events.iter().filter(|e| e.routing_key == "call.answered").count();
    assert_eq!(answered_events, answered, "events agree with the RPC results");
    assert!(per_call.values().all(|keys| keys.len() == 1));
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn concurrent_calls_to_one_callee_let_exactly_one_through() {
    let mut app = spawn_app().await;
    let client = app.client().await;
    const CALLERS: usize = 20;

    let mut attempts = Vec::new();
    for i in 0..CALLERS {
        let mut c = client.clone();
        let req = app.as_user(
            &format!("caller-{i}"),
            pb::InitiateCallRequest {
                callee_id: "popular-agent".into(),
                call_type: CallType::Support as i32,
                ..Default::default()
            },
        );
        attempts.push(tokio::spawn(async move { c.initiate_call(req).await }));
    }
    let mut winners = 0;
    for attempt in attempts {
        match attempt.await.expect("task") {
            Ok(_) => winners += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::FailedPrecondition);
                assert_eq!(status.message(), "busy: user popular-agent is in another call");
            }
        }
    }
    assert_eq!(winners, 1);
    assert_eq!(app.count(calls::Entity).await, 1, "losers left no call behind");
    assert_eq!(app.events.take(1).await[0].routing_key, "call.initiated");

    // Once that call ends, the callee is free again; a busy caller cannot start a second call.
    let live = client
        .clone()
        .get_user_calls(app.as_user("popular-agent", pb::GetUserCallsRequest::default()))
        .await
        .expect("history")
        .into_inner()
        .calls
        .remove(0);
    let busy_caller = client
        .clone()
        .initiate_call(app.as_user(
            &live.caller_id,
            pb::InitiateCallRequest { callee_id: "someone-else".into(), call_type: 1, ..Default::default() },
        ))
        .await
        .expect_err("caller already in a call");
    assert_eq!(busy_caller.message(), format!("busy: user {} is in another call", live.caller_id));
    client
        .clone()
        .end_call(app.as_user(&live.caller_id, pb::EndCallRequest { call_id: live.id, reason: 0 }))
        .await
        .expect("end");
    client
        .clone()
        .initiate_call(app.as_user(
            "caller-x",
            pb::InitiateCallRequest { callee_id: "popular-agent".into(), call_type: 1, ..Default::default() },
        ))
        .await
        .expect("callee free again");
    app.stop().await.expect("clean stop");
}
