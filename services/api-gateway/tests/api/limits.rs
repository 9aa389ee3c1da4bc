//! gRPC limits: the 256 KiB message limit, the 16 KiB of request headers, and deadlines. An oversized request is refused before
//! any handler runs and changes nothing; a request whose deadline runs out gets DEADLINE_EXCEEDED
//! instead of hanging.

use std::time::Duration;

use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, TransactionTrait};
use tonic::Code;
use videocall_entities::{call_transitions, calls, outbox};
use videocall_proto::v1::{self as pb, CallType};

use crate::helpers::{TestApp, spawn_app};

async fn snapshot(app: &TestApp) -> (u64, u64, u64) {
    (app.count(calls::Entity).await, app.count(call_transitions::Entity).await, app.count(outbox::Entity).await)
}

fn with_note(bytes: usize) -> pb::InitiateCallRequest {
    pb::InitiateCallRequest {
        callee_id: "bob".into(),
        call_type: CallType::Consult as i32,
        metadata: [("note".to_owned(), "x".repeat(bytes))].into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn an_oversized_request_is_refused_with_out_of_range_and_changes_nothing() {
    let mut app = spawn_app().await;
    let mut client = app.client().await;
    let before = snapshot(&app).await;

    let status = client.initiate_call(app.as_user("alice", with_note(300 * 1024))).await.expect_err("too big");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(
        status.message().contains("the limit is: 262144 bytes"),
        "the message names the limit: {}",
        status.message()
    );
    // Just under the limit it is decoded and the handler's own rule answers.
    let status = client.initiate_call(app.as_user("alice", with_note(200 * 1024))).await.expect_err("too long");
    assert_eq!(
        (status.code(), status.message()),
        (Code::InvalidArgument, "metadata value of `note` is longer than 512 bytes")
    );
    assert_eq!(snapshot(&app).await, before, "nothing was written");
    app.events.expect_none(Duration::from_millis(300)).await;

    // The connection is still good.
    let reply = client.initiate_call(app.as_user("alice", with_note(10))).await.expect("a normal request");
    assert_eq!(reply.into_inner().call.expect("call").status, pb::CallStatus::Initiated as i32);
    app.events.take(1).await;
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_request_past_its_deadline_gets_deadline_exceeded_not_a_hang() {
    let mut app = spawn_app().await;
    let mut client = app.client().await;
    let call = client
        .initiate_call(app.as_user("alice", with_note(1)))
        .await
        .expect("initiate")
        .into_inner()
        .call
        .expect("call");
    client.ring_call(app.as_user("bob", pb::RingCallRequest { call_id: call.id.clone() })).await.expect("ring");
    app.events.take(2).await;

    // The call's row is locked by the test, so answering it waits in the database.
    let lock = app.db.begin().await.expect("begin");
    lock.execute_unprepared(&format!("SELECT id FROM calls WHERE id = '{}' FOR UPDATE", call.id))
        .await
        .expect("lock the row");
    // A tonic client times the deadline itself and gives up first (tonic calls that CANCELLED
    // "Timeout expired"); either way the caller is not left hanging.
    let mut request = app.as_user("bob", pb::AnswerCallRequest { call_id: call.id.clone() });
    request.set_timeout(Duration::from_millis(300));
    let answered = tokio::time::timeout(Duration::from_secs(10), client.answer_call(request))
        .await
        .expect("the call returns within 10 s: a deadline of 300 ms must not hang");
    let status = answered.expect_err("the row stays locked past the deadline");
    assert!(matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled), "{status:?}");
    // What the server itself answers, to a client with no timer of its own: DEADLINE_EXCEEDED.
    let token = app.token("bob", videocall_runtime::auth::Role::User);
    let (code, message) = tokio::time::timeout(Duration::from_secs(10), raw_answer(app.addr, &token, &call.id, "300m"))
        .await
        .expect("the server answers within 10 s: a deadline of 300 ms must not hang");
    assert_eq!(code, Code::DeadlineExceeded as i32, "grpc-status from the server ({message})");
    assert!(message.contains("deadline"), "{message}");
    lock.rollback().await.expect("release the row");

    // Whatever the abandoned handler managed, the call and its events agree, and a retry gets a
    // definite answer.
    let retried = client
        .answer_call(app.as_user("bob", pb::AnswerCallRequest { call_id: call.id.clone() }))
        .await
        .expect("the retry succeeds (applied now, or an idempotent repeat)");
    assert_eq!(retried.into_inner().call.expect("call").status, pb::CallStatus::Active as i32);
    let of_call = |id: &str| id.parse::<uuid::Uuid>().expect("uuid");
    let transitions = call_transitions::Entity::find()
        .filter(call_transitions::Column::CallId.eq(of_call(&call.id)))
        .count(&app.db)
        .await
        .expect("count");
    assert_eq!(transitions, 3, "initiated, ringing, active: the answer applied once");
    let answered_events = app.events.take(1).await;
    assert_eq!(answered_events[0].event_type(), "CallAnswered");

    // A deadline the server can meet is no problem.
    let mut request = app.as_user("bob", pb::GetCallRequest { call_id: call.id.clone() });
    request.set_timeout(Duration::from_secs(5));
    client.get_call(request).await.expect("within its deadline");
    app.stop().await.expect("clean stop");
}

/// AnswerCall over a bare HTTP/2 connection carrying a `grpc-timeout` header, with no timer on
/// this side: the grpc-status and grpc-message the server sends.
async fn raw_answer(addr: std::net::SocketAddr, token: &str, call_id: &str, timeout: &str) -> (i32, String) {
    use prost::Message;
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = tonic::codegen::http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/videocall.v1.CallService/AnswerCall"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {token}"))
        .header("grpc-timeout", timeout)
        .body(())
        .expect("request");
    let mut client = client.ready().await.expect("ready");
    let (response, mut stream) = client.send_request(request, false).expect("send headers");
    let message = pb::AnswerCallRequest { call_id: call_id.to_owned() }.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend(u32::try_from(message.len()).expect("small").to_be_bytes());
    frame.extend(message);
    stream.send_data(bytes::Bytes::from(frame), true).expect("send body");
    let response = response.await.expect("response");
    let status_of = |headers: &tonic::codegen::http::HeaderMap| {
        let code = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
        let message = headers.get("grpc-message").and_then(|m| m.to_str().ok()).unwrap_or_default().to_owned();
        Some((code, message))
    };
    if let Some(status) = status_of(response.headers()) {
        return status; // a trailers-only response
    }
    let mut body = response.into_body();
    for _ in 0..1000 {
        match body.data().await {
            Some(chunk) => {
                let chunk = chunk.expect("data");
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            None => break,
        }
    }
    let trailers = body.trailers().await.expect("trailers").expect("the server sends trailers");
    status_of(&trailers).expect("grpc-status in the trailers")
}

/// A GetIceServers request of `user` carrying a `x-pad` header of `bytes` bytes.
fn padded(app: &TestApp, user: &str, bytes: usize) -> tonic::Request<pb::GetIceServersRequest> {
    let mut request = app.as_user(user, pb::GetIceServersRequest {});
    request.metadata_mut().insert("x-pad", "p".repeat(bytes).parse().expect("ascii"));
    request
}

#[tokio::test]
async fn oversize_request_headers_fail_that_request_and_huge_ones_the_connection() {
    let app = spawn_app().await;
    let mut client = app.client().await;
    let call = client.initiate_call(app.as_user("alice", with_note(10))).await.expect("call").into_inner();
    let id = call.call.expect("call").id;
    let subscribe = pb::SubscribeToSignalsRequest { call_id: id.clone(), after_seq: 0 };
    let mut stream = client.subscribe_to_signals(app.as_user("alice", subscribe)).await.expect("stream").into_inner();

    // Up to the announced 16 KiB of headers: served.
    client.get_ice_servers(padded(&app, "alice", 12 * 1024)).await.expect("12 KiB of headers");
    // Past it: that request alone is refused; the connection and its stream go on.
    let status = client.get_ice_servers(padded(&app, "alice", 20 * 1024)).await.expect_err("20 KiB of headers");
    assert_eq!(status.code(), Code::Unknown, "{status:?}");
    assert!(status.message().contains("431"), "HTTP 431 Request Header Fields Too Large: {status:?}");
    client.get_ice_servers(app.as_user("alice", pb::GetIceServersRequest {})).await.expect("the same connection");
    let quiet = tokio::time::timeout(Duration::from_millis(300), stream.message()).await;
    assert!(quiet.is_err(), "the stream is still open and quiet: {quiet:?}");

    // A header block of more CONTINUATION frames than 16 KiB needs: h2 closes the connection
    // (GOAWAY, its CONTINUATION-flood guard), taking the other streams on it along.
    let status = client.get_ice_servers(padded(&app, "alice", 160 * 1024)).await.expect_err("160 KiB of headers");
    assert!(format!("{status:?}").contains("too_many_continuations"), "GOAWAY ENHANCE_YOUR_CALM: {status:?}");
    let ended = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.expect("the stream ends");
    assert!(ended.is_err(), "the other stream on that connection ended with an error: {ended:?}");
    // A new connection is served as usual.
    let mut fresh = app.client().await;
    fresh.get_ice_servers(app.as_user("alice", pb::GetIceServersRequest {})).await.expect("a new connection");
    app.stop().await.expect("clean stop");
}
