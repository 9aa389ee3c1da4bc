//! GetUserCalls: newest first, cursor pages, filters, and privacy.

use tonic::Code;
use videocall_proto::v1::{self as pb, CallStatus, CallType};

use crate::helpers::{TestApp, spawn_app};

/// Makes a finished call from `caller` to "agent"; `answer` decides ended vs rejected.
async fn finished_call(app: &TestApp, caller: &str, call_type: CallType, answer: bool) -> pb::Call {
    let mut client = app.client().await;
    let req = pb::InitiateCallRequest { callee_id: "agent".into(), call_type: call_type as i32, ..Default::default() };
    let id =
        client.initiate_call(app.as_user(caller, req)).await.expect("initiate").into_inner().call.expect("call").id;
    let done = if answer {
        client.answer_call(app.as_user("agent", pb::AnswerCallRequest { call_id: id.clone() })).await.expect("answer");
        client.end_call(app.as_user("agent", pb::EndCallRequest { call_id: id, reason: 0 })).await.expect("end")
    } else {
        client.reject_call(app.as_user("agent", pb::RejectCallRequest { call_id: id })).await.expect("reject")
    };
    done.into_inner().call.expect("call")
}

#[tokio::test]
async fn history_pages_newest_first_and_filters() {
    let app = spawn_app().await;
    let mut made = Vec::new();
    for (i, (t, answer)) in [
        (CallType::Support, true),
        (CallType::Sales, false),
        (CallType::Support, false),
        (CallType::Consult, true),
        (CallType::Support, true),
    ]
    .into_iter()
    .enumerate()
    {
        made.push(finished_call(&app, &format!("customer-{i}"), t, answer).await);
    }
    let mut client = app.client().await;

    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let req = pb::GetUserCallsRequest { page_size: 2, page_token: token.clone(), ..Default::default() };
        let page = client.get_user_calls(app.as_user("agent", req)).await.expect("page").into_inner();
        assert!(page.calls.len() <= 2);
        seen.extend(page.calls.into_iter().map(|c| c.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let newest_first: Vec<_> = made.iter().rev().map(|c| c.id.clone()).collect();
    assert_eq!(seen, newest_first);

    let req = pb::GetUserCallsRequest {
        call_type: CallType::Support as i32,
        status: CallStatus::Ended as i32,
        ..Default::default()
    };
    let ended_support = client.get_user_calls(app.as_user("agent", req)).await.expect("filtered").into_inner().calls;
    assert_eq!(
        ended_support.iter().map(|c| c.id.clone()).collect::<Vec<_>>(),
        [made[4].id.clone(), made[0].id.clone()]
    );
    assert!(ended_support.iter().all(|c| c.duration_ms >= 0 && c.answered_at.is_some()));

    let since = made[3].created_at;
    let req = pb::GetUserCallsRequest { since, ..Default::default() };
    let recent = client.get_user_calls(app.as_user("agent", req)).await.expect("since").into_inner().calls;
    assert_eq!(recent.len(), 2);
    let req = pb::GetUserCallsRequest { until: since, ..Default::default() };
    assert_eq!(client.get_user_calls(app.as_user("agent", req)).await.expect("until").into_inner().calls.len(), 3);

    // A caller sees only their own calls.
    let mine = client
        .get_user_calls(app.as_user("customer-1", pb::GetUserCallsRequest::default()))
        .await
        .expect("own")
        .into_inner()
        .calls;
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].status, CallStatus::Rejected as i32);
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn history_refuses_strangers_and_bad_cursors() {
    let app = spawn_app().await;
    let mut client = app.client().await;
    let status = client
        .get_user_calls(app.as_user("eve", pb::GetUserCallsRequest { user_id: "agent".into(), ..Default::default() }))
        .await
        .expect_err("someone else's history");
    assert_eq!(
        (status.code(), status.message()),
        (Code::PermissionDenied, "only a service may read another user's calls")
    );
    let allowed = client
        .get_user_calls(app.as_service(pb::GetUserCallsRequest { user_id: "agent".into(), ..Default::default() }))
        .await;
    assert!(allowed.is_ok(), "a service may read any history");

    for (req, message) in [
        (
            pb::GetUserCallsRequest { page_token: "xyz".into(), ..Default::default() },
            "page_token is not one this server issued",
        ),
        (pb::GetUserCallsRequest { page_size: -1, ..Default::default() }, "page_size must not be negative"),
        (pb::GetUserCallsRequest { status: 77, ..Default::default() }, "unknown status 77"),
        (
            pb::GetUserCallsRequest {
                since: Some(prost_types::Timestamp { seconds: 100, nanos: 0 }),
                until: Some(prost_types::Timestamp { seconds: 50, nanos: 0 }),
                ..Default::default()
            },
            "since must be before until",
        ),
    ] {
        let status = client.get_user_calls(app.as_user("agent", req)).await.expect_err(message);
        assert_eq!((status.code(), status.message()), (Code::InvalidArgument, message));
    }
    app.stop().await.expect("clean stop");
}
