//! Bad input gets a clear code and message, and changes nothing: no row, no event.

use std::time::Duration;

use tonic::Code;
use videocall_entities::{call_transitions, calls, outbox};
use videocall_proto::v1::{self as pb, CallType};
use videocall_runtime::auth::{JwtKeys, Role};
use videocall_runtime::config::Secret;

use crate::helpers::{TestApp, spawn_app, with_token};

async fn snapshot(app: &TestApp) -> (u64, u64, u64) {
    (app.count(calls::Entity).await, app.count(call_transitions::Entity).await, app.count(outbox::Entity).await)
}

fn good() -> pb::InitiateCallRequest {
    pb::InitiateCallRequest { callee_id: "bob".into(), call_type: CallType::Consult as i32, ..Default::default() }
}

#[tokio::test]
async fn bad_initiate_requests_are_refused_with_clear_errors() {
    let mut app = spawn_app().await;
    let mut client = app.client().await;
    let before = snapshot(&app).await;

    let big_value = pb::InitiateCallRequest { metadata: [("note".to_owned(), "x".repeat(513))].into(), ..good() };
    let many =
        pb::InitiateCallRequest { metadata: (0..17).map(|i| (format!("k{i}"), "v".to_owned())).collect(), ..good() };
    let cases = [
        (pb::InitiateCallRequest { call_type: 99, ..good() }, Code::InvalidArgument, "unknown call_type 99"),
        (pb::InitiateCallRequest { call_type: 0, ..good() }, Code::InvalidArgument, "call_type is required"),
        (
            pb::InitiateCallRequest { callee_id: "   ".into(), ..good() },
            Code::InvalidArgument,
            "callee_id must be 1-128 bytes of printable text",
        ),
        (
            pb::InitiateCallRequest { callee_id: "b".repeat(129), ..good() },
            Code::InvalidArgument,
            "callee_id must be 1-128 bytes of printable text",
        ),
        (
            pb::InitiateCallRequest { callee_id: "alice".into(), ..good() },
            Code::InvalidArgument,
            "a user cannot call themselves",
        ),
        (big_value, Code::InvalidArgument, "metadata value of `note` is longer than 512 bytes"),
        (many, Code::InvalidArgument, "metadata has 17 entries, at most 16 are allowed"),
        (
            pb::InitiateCallRequest { metadata: [("ticket_id".to_owned(), "T-9".to_owned())].into(), ..good() },
            Code::InvalidArgument,
            "metadata key `ticket_id` is reserved: it is set from a support offer (support_offer_id)",
        ),
        (
            pb::InitiateCallRequest {
                metadata: [("support_offer_id".to_owned(), "019abf70-0000-7000-8000-0000000000aa".to_owned())].into(),
                ..good()
            },
            Code::InvalidArgument,
            "metadata key `support_offer_id` is reserved: it is set from a support offer (support_offer_id)",
        ),
        (
            pb::InitiateCallRequest { request_id: "r".repeat(129), ..good() },
            Code::InvalidArgument,
            "request_id is longer than 128 bytes",
        ),
        (
            pb::InitiateCallRequest { caller_id: "mallory".into(), ..good() },
            Code::PermissionDenied,
            "only a service may start a call for another user",
        ),
    ];
    for (request, code, message) in cases {
        let status = client.initiate_call(app.as_user("alice", request)).await.expect_err(message);
        assert_eq!((status.code(), status.message()), (code, message));
    }
    assert_eq!(snapshot(&app).await, before, "nothing was written");
    app.events.expect_none(Duration::from_millis(300)).await;
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn missing_bad_and_expired_tokens_are_unauthenticated() {
    let app = spawn_app().await;
    let mut client = app.client().await;

    let status = client.initiate_call(tonic::Request::new(good())).await.expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(status.message(), "missing authorization: Bearer <token>");

    let foreign = JwtKeys::new(Secret::new("some-other-secret-entirely")).mint(
        "alice",
        Role::User,
        chrono::Utc::now().timestamp() + 60,
    );
    let expired = JwtKeys::new(Secret::new(crate::helpers::JWT_SECRET)).mint(
        "alice",
        Role::User,
        chrono::Utc::now().timestamp() - 3600,
    );
    for (token, message) in
        [(foreign.as_str(), "bad token signature"), (expired.as_str(), "token expired"), ("garbage", "malformed token")]
    {
        let status = client.initiate_call(with_token(token, good())).await.expect_err(message);
        assert_eq!((status.code(), status.message()), (Code::Unauthenticated, message));
    }
    let mut basic = tonic::Request::new(good());
    basic.metadata_mut().insert("authorization", "Basic YWxpY2U6cHc=".parse().expect("header"));
    assert_eq!(client.initiate_call(basic).await.expect_err("basic auth").code(), Code::Unauthenticated);
    assert_eq!(app.count(calls::Entity).await, 0);
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn unknown_calls_bad_ids_and_strangers_are_refused() {
    let mut app = spawn_app().await;
    let mut client = app.client().await;
    let id =
        client.initiate_call(app.as_user("alice", good())).await.expect("initiate").into_inner().call.expect("call").id;
    app.events.take(1).await;
    let before = snapshot(&app).await;

    let unknown = uuid::Uuid::now_v7().to_string();
    let status = client
        .answer_call(app.as_user("bob", pb::AnswerCallRequest { call_id: unknown.clone() }))
        .await
        .expect_err("unknown");
    assert_eq!((status.code(), status.message().to_owned()), (Code::NotFound, format!("call {unknown} not found")));

    let status = client
        .get_call(app.as_user("bob", pb::GetCallRequest { call_id: "not-a-uuid".into() }))
        .await
        .expect_err("bad id");
    assert_eq!((status.code(), status.message()), (Code::InvalidArgument, "call_id `not-a-uuid` is not a UUID"));

    for status in [
        client
            .answer_call(app.as_user("eve", pb::AnswerCallRequest { call_id: id.clone() }))
            .await
            .expect_err("stranger answers"),
        client
            .end_call(app.as_user("eve", pb::EndCallRequest { call_id: id.clone(), reason: 0 }))
            .await
            .expect_err("stranger ends"),
        client
            .get_call(app.as_user("eve", pb::GetCallRequest { call_id: id.clone() }))
            .await
            .expect_err("stranger reads"),
    ] {
        assert_eq!((status.code(), status.message()), (Code::PermissionDenied, "you are not a party of this call"));
    }

    let status = client
        .end_call(app.as_user("alice", pb::EndCallRequest { call_id: id.clone(), reason: 42 }))
        .await
        .expect_err("bad enum");
    assert_eq!((status.code(), status.message()), (Code::InvalidArgument, "unknown end reason 42"));
    let status = client
        .end_call(
            app.as_user("alice", pb::EndCallRequest { call_id: id.clone(), reason: pb::EndReason::Timeout as i32 }),
        )
        .await
        .expect_err("system reason");
    assert_eq!((status.code(), status.message()), (Code::InvalidArgument, "end reason `timeout` cannot be given here"));

    assert_eq!(snapshot(&app).await, before, "nothing was written");
    app.events.expect_none(Duration::from_millis(300)).await;

    // A service principal may act for anyone.
    let ended = client
        .end_call(app.as_service(pb::EndCallRequest { call_id: id, reason: pb::EndReason::UserOffline as i32 }))
        .await
        .expect("service ends");
    let ended = ended.into_inner().call.expect("call");
    assert_eq!((ended.end_reason, ended.ended_by.as_str()), (pb::EndReason::UserOffline as i32, "sweeper-test"));
    app.stop().await.expect("clean stop");
}
