//! Every transition, every illegal one, idempotent repeats, and the ICE servers handed out.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use tonic::Code;
use videocall_entities::{call_transitions, calls};
use videocall_proto::v1::{self as pb, CallStatus, CallType, EndReason};

use crate::helpers::{TURN_SECRET, TestApp, spawn_app};

fn initiate(callee: &str, request_id: &str) -> pb::InitiateCallRequest {
    pb::InitiateCallRequest {
        request_id: request_id.into(),
        callee_id: callee.into(),
        call_type: CallType::Support as i32,
        metadata: [("ticket".to_owned(), "T-1".to_owned())].into(),
        ..Default::default()
    }
}

/// Starts a call alice -> bob and returns its id.
async fn start(app: &TestApp) -> String {
    let mut client = app.client().await;
    let reply = client.initiate_call(app.as_user("alice", initiate("bob", ""))).await.expect("initiate").into_inner();
    reply.call.expect("call").id
}

fn status_of(call: &pb::Call) -> CallStatus {
    CallStatus::try_from(call.status).expect("known status")
}

#[tokio::test]
async fn a_call_goes_initiated_ringing_active_ended_with_one_event_each() {
    let mut app = spawn_app().await;
    let mut client = app.client().await;

    let reply =
        client.initiate_call(app.as_user("alice", initiate("bob", "req-1"))).await.expect("initiate").into_inner();
    let call = reply.call.expect("call");
    assert_eq!(status_of(&call), CallStatus::Initiated);
    assert_eq!((call.caller_id.as_str(), call.callee_id.as_str()), ("alice", "bob"));
    assert_eq!(call.call_type, CallType::Support as i32);
    assert_eq!(call.ring_timeout_secs, 45);
    assert_eq!(call.metadata.get("ticket").map(String::as_str), Some("T-1"));
    assert_eq!(call.version, 1);

    let id = call.id.clone();
    let rung = client
        .ring_call(app.as_user("bob", pb::RingCallRequest { call_id: id.clone() }))
        .await
        .expect("ring")
        .into_inner();
    let rung = rung.call.expect("call");
    assert_eq!(status_of(&rung), CallStatus::Ringing);
    assert!(rung.ringing_at.is_some());

    let answered = client
        .answer_call(app.as_user("bob", pb::AnswerCallRequest { call_id: id.clone() }))
        .await
        .expect("answer")
        .into_inner();
    let answered = answered.call.expect("call");
    assert_eq!(status_of(&answered), CallStatus::Active);
    assert!(answered.answered_at.is_some());

    tokio::time::sleep(Duration::from_millis(20)).await;
    let ended = client
        .end_call(app.as_user("alice", pb::EndCallRequest { call_id: id.clone(), reason: 0 }))
        .await
        .expect("end")
        .into_inner()
        .call
        .expect("call");
    assert_eq!(status_of(&ended), CallStatus::Ended);
    assert_eq!(ended.end_reason, EndReason::Hangup as i32);
    assert_eq!(ended.ended_by, "alice");
    assert_eq!(ended.version, 4);
    assert!(ended.duration_ms >= 20, "duration {}", ended.duration_ms);

    let fetched = client
        .get_call(app.as_user("bob", pb::GetCallRequest { call_id: id.clone() }))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(fetched.call.as_ref(), Some(&ended));

    let events = app.events.take(4).await;
    let kinds: Vec<_> = events.iter().map(|e| (e.routing_key.as_str(), e.event_type())).collect();
    assert_eq!(
        kinds,
        [
            ("call.initiated", "CallInitiated"),
            ("call.ringing", "CallRinging"),
            ("call.answered", "CallAnswered"),
            ("call.ended", "CallEnded")
        ]
    );
    for (i, event) in events.iter().enumerate() {
        let body = &event.body;
        assert_eq!(body["specversion"], "1.0");
        assert_eq!(body["source"], "/videocall/test/api-gateway");
        assert_eq!(body["subject"], id.as_str());
        assert_eq!(body["datacontenttype"], "application/json");
        assert!(body["time"].as_str().is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok()));
        assert_eq!(event.message_id.as_deref(), body["id"].as_str(), "message_id is the event id");
        assert_eq!(event.content_type.as_deref(), Some("application/cloudevents+json"));
        assert!(event.persistent);
        assert_eq!(body["data"]["call_id"], id.as_str());
        assert_eq!(body["data"]["version"], i as i64 + 1);
    }
    assert_eq!(events[3].body["data"]["end_reason"], "hangup");
    assert_eq!(events[3].body["data"]["previous_status"], "active");

    assert_eq!(app.count(call_transitions::Entity).await, 4, "one audit row per change");
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn reject_cancel_and_callee_hangup_before_answer() {
    let mut app = spawn_app().await;
    let mut client = app.client().await;

    let id = start(&app).await;
    let rejected = client
        .reject_call(app.as_user("bob", pb::RejectCallRequest { call_id: id }))
        .await
        .expect("reject")
        .into_inner()
        .call
        .expect("call");
    assert_eq!(status_of(&rejected), CallStatus::Rejected);
    assert_eq!(rejected.end_reason, EndReason::Rejected as i32);

    let id = start(&app).await;
    let cancelled = client
        .end_call(app.as_user("alice", pb::EndCallRequest { call_id: id, reason: 0 }))
        .await
        .expect("cancel")
        .into_inner()
        .call
        .expect("call");
    assert_eq!(status_of(&cancelled), CallStatus::Ended);
    assert_eq!(cancelled.end_reason, EndReason::Cancelled as i32);
    assert_eq!(cancelled.duration_ms, 0);

    let id = start(&app).await;
    let declined = client
        .end_call(app.as_user("bob", pb::EndCallRequest { call_id: id, reason: 0 }))
        .await
        .expect("callee ends")
        .into_inner()
        .call
        .expect("call");
    assert_eq!(status_of(&declined), CallStatus::Rejected);

    let keys: Vec<_> = app.events.take(6).await.into_iter().map(|e| e.routing_key).collect();
    assert_eq!(
        keys,
        ["call.initiated", "call.rejected", "call.initiated", "call.ended", "call.initiated", "call.rejected"]
    );
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn illegal_transitions_fail_naming_the_state_and_change_nothing() {
    let mut app = spawn_app().await;
    let mut client = app.client().await;

    // ended call
    let id = start(&app).await;
    client.answer_call(app.as_user("bob", pb::AnswerCallRequest { call_id: id.clone() })).await.expect("answer");
    client.end_call(app.as_user("bob", pb::EndCallRequest { call_id: id.clone(), reason: 0 })).await.expect("end");
    // rejected call
    let rejected = start(&app).await;
    client.reject_call(app.as_user("bob", pb::RejectCallRequest { call_id: rejected.clone() })).await.expect("reject");
    // active call
    let active = start(&app).await;
    client.answer_call(app.as_user("bob", pb::AnswerCallRequest { call_id: active.clone() })).await.expect("answer");
    app.events.take(7).await;
    let rows_before = app.count(call_transitions::Entity).await;

    let cases: Vec<(&str, &str, Result<tonic::Response<_>, tonic::Status>)> = vec![
        (
            "ring an ended call",
            "ended",
            client
                .ring_call(app.as_user("bob", pb::RingCallRequest { call_id: id.clone() }))
                .await
                .map(|r| r.map(|_| ())),
        ),
        (
            "answer an ended call",
            "ended",
            client
                .answer_call(app.as_user("bob", pb::AnswerCallRequest { call_id: id.clone() }))
                .await
                .map(|r| r.map(|_| ())),
        ),
        (
            "reject an ended call",
            "ended",
            client
                .reject_call(app.as_user("bob", pb::RejectCallRequest { call_id: id.clone() }))
                .await
                .map(|r| r.map(|_| ())),
        ),
        (
            "answer a rejected call",
            "rejected",
            client
                .answer_call(app.as_user("bob", pb::AnswerCallRequest { call_id: rejected.clone() }))
                .await
                .map(|r| r.map(|_| ())),
        ),
        (
            "caller ends a rejected call",
            "rejected",
            client
                .end_call(app.as_user("alice", pb::EndCallRequest { call_id: rejected.clone(), reason: 0 }))
                .await
                .map(|r| r.map(|_| ())),
        ),
        (
            "ring an active call",
            "active",
            client
                .ring_call(app.as_user("bob", pb::RingCallRequest { call_id: active.clone() }))
                .await
                .map(|r| r.map(|_| ())),
        ),
        (
            "reject an active call",
            "active",
            client
                .reject_call(app.as_user("bob", pb::RejectCallRequest { call_id: active.clone() }))
                .await
                .map(|r| r.map(|_| ())),
        ),
    ];
    for (what, state, result) in cases {
        let status = result.expect_err(what);
        assert_eq!(status.code(), Code::FailedPrecondition, "{what}: {status:?}");
        assert_eq!(status.message(), format!("call is {state}"), "{what}");
    }

    assert_eq!(app.count(call_transitions::Entity).await, rows_before, "refusals wrote nothing");
    app.events.expect_none(Duration::from_millis(300)).await;

    // The caller may not answer, ring or reject their own call.
    client.end_call(app.as_user("alice", pb::EndCallRequest { call_id: active, reason: 0 })).await.expect("end");
    let fresh = start(&app).await;
    for status in [
        client
            .answer_call(app.as_user("alice", pb::AnswerCallRequest { call_id: fresh.clone() }))
            .await
            .expect_err("caller answers"),
        client
            .ring_call(app.as_user("alice", pb::RingCallRequest { call_id: fresh.clone() }))
            .await
            .expect_err("caller rings"),
        client
            .reject_call(app.as_user("alice", pb::RejectCallRequest { call_id: fresh.clone() }))
            .await
            .expect_err("caller rejects"),
    ] {
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    }
    let keys: Vec<_> = app.events.take(2).await.into_iter().map(|e| e.routing_key).collect();
    assert_eq!(keys, ["call.ended", "call.initiated"], "the refused commands emitted nothing");
    assert_eq!(app.count(call_transitions::Entity).await, rows_before + 2);
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn repeated_commands_return_the_call_and_emit_nothing() {
    let mut app = spawn_app().await;
    let mut client = app.client().await;

    let first = client
        .initiate_call(app.as_user("alice", initiate("bob", "same-id")))
        .await
        .expect("initiate")
        .into_inner()
        .call
        .expect("call");
    let again = client
        .initiate_call(app.as_user("alice", initiate("bob", "same-id")))
        .await
        .expect("repeat")
        .into_inner()
        .call
        .expect("call");
    assert_eq!(first, again, "same request id, same call");

    let id = first.id.clone();
    for _ in 0..2 {
        client.ring_call(app.as_user("bob", pb::RingCallRequest { call_id: id.clone() })).await.expect("ring");
    }
    let a1 = client
        .answer_call(app.as_user("bob", pb::AnswerCallRequest { call_id: id.clone() }))
        .await
        .expect("answer")
        .into_inner()
        .call;
    let a2 = client
        .answer_call(app.as_user("bob", pb::AnswerCallRequest { call_id: id.clone() }))
        .await
        .expect("answer again")
        .into_inner()
        .call;
    assert_eq!(a1, a2);
    for who in ["alice", "alice", "bob"] {
        let ended = client
            .end_call(app.as_user(who, pb::EndCallRequest { call_id: id.clone(), reason: 0 }))
            .await
            .expect("end")
            .into_inner()
            .call
            .expect("call");
        assert_eq!(ended.ended_by, "alice", "the first end wins");
    }
    // The same request id after the call ended still names that call, and creates nothing.
    let late = client
        .initiate_call(app.as_user("alice", initiate("bob", "same-id")))
        .await
        .expect("late repeat")
        .into_inner()
        .call
        .expect("call");
    assert_eq!(late.id, id);
    assert_eq!(status_of(&late), CallStatus::Ended);

    let keys: Vec<_> = app.events.take(4).await.into_iter().map(|e| e.routing_key).collect();
    assert_eq!(keys, ["call.initiated", "call.ringing", "call.answered", "call.ended"]);
    assert_eq!(app.count(calls::Entity).await, 1);
    assert_eq!(app.count(call_transitions::Entity).await, 4);
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn each_party_gets_stun_and_its_own_expiring_turn_credentials() {
    let app = spawn_app().await;
    let mut client = app.client().await;
    let before = chrono::Utc::now().timestamp();
    let reply = client.initiate_call(app.as_user("alice", initiate("bob", ""))).await.expect("initiate").into_inner();
    let id = reply.call.as_ref().expect("call").id.clone();
    let answer = client
        .answer_call(app.as_user("bob", pb::AnswerCallRequest { call_id: id }))
        .await
        .expect("answer")
        .into_inner();

    let mut handles = Vec::new();
    for (user, servers) in [("alice", &reply.ice_servers), ("bob", &answer.ice_servers)] {
        assert_eq!(servers.len(), 2, "{servers:?}");
        assert_eq!(servers[0].urls, ["stun:127.0.0.1:3478"]);
        assert!(servers[0].username.is_empty() && servers[0].credential.is_empty());
        let turn = &servers[1];
        assert_eq!(turn.urls, ["turn:127.0.0.1:3478?transport=udp"]);
        let (expiry, handle) = turn.username.split_once(':').expect("expiry:handle");
        // An opaque handle, not the user id (STUN carries usernames in cleartext).
        assert!(!handle.contains(user) && handle.len() == 22, "{handle}");
        assert!(handle.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{handle}");
        handles.push(handle.to_owned());
        let expiry: i64 = expiry.parse().expect("numeric expiry");
        assert!((before + 3600..=before + 3605).contains(&expiry), "expiry {expiry} vs now {before}");
        // coturn's check: base64(HMAC-SHA1(static-auth-secret, username)).
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(TURN_SECRET.as_bytes()).expect("hmac key");
        mac.update(turn.username.as_bytes());
        assert_eq!(turn.credential, STANDARD.encode(mac.finalize().into_bytes()));
        assert_eq!(STANDARD.decode(&turn.credential).expect("base64").len(), 20, "an HMAC-SHA1 digest");
    }
    assert_ne!(handles[0], handles[1], "each user has their own handle");
    // The same user gets the same handle again (coturn's quotas and logs see one user).
    let again = client.get_ice_servers(app.as_user("alice", pb::GetIceServersRequest {})).await.expect("ice");
    let username = &again.into_inner().ice_servers[1].username;
    assert_eq!(username.split_once(':').map(|(_, h)| h), Some(handles[0].as_str()));
    app.stop().await.expect("clean stop");
}
