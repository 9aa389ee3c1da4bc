//! SetRecordingConsent: both parties' consent starts a recording, every refusal changes nothing,
//! and GetCall, history and SendSignal(`@recorder`) follow the recording's status.

use std::time::Duration;

use tonic::Code;
use videocall_entities::{outbox, recordings};
use videocall_proto::v1 as pb;

use crate::helpers::{TestApp, spawn_app};

async fn active_call(app: &TestApp, caller: &str, callee: &str) -> String {
    let mut client = app.client().await;
    let req = pb::InitiateCallRequest {
        callee_id: callee.into(),
        call_type: pb::CallType::Consult as i32,
        ..Default::default()
    };
    let call = client.initiate_call(app.as_user(caller, req)).await.expect("initiate").into_inner().call.expect("call");
    client.answer_call(app.as_user(callee, pb::AnswerCallRequest { call_id: call.id.clone() })).await.expect("answer");
    call.id
}

fn consent(call_id: &str, consent: bool) -> pb::SetRecordingConsentRequest {
    pb::SetRecordingConsentRequest { call_id: call_id.into(), consent }
}

fn recording_of(reply: tonic::Response<pb::CallResponse>) -> Option<pb::Recording> {
    reply.into_inner().call.expect("call").recording
}

#[tokio::test]
async fn both_consents_start_a_recording_and_both_parties_see_each_consent() {
    let app = spawn_app().await;
    let mut client = app.client().await;
    let id = active_call(&app, "alice", "bob").await;

    let first =
        recording_of(client.set_recording_consent(app.as_user("alice", consent(&id, true))).await.expect("alice"))
            .expect("a recording is requested");
    assert_eq!(first.status, pb::RecordingStatus::Requested as i32);
    assert_eq!((first.caller_consent, first.callee_consent, first.requested_by.as_str()), (true, false, "alice"));

    // bob sees alice's consent on the call before giving his.
    let seen = client.get_call(app.as_user("bob", pb::GetCallRequest { call_id: id.clone() })).await.expect("get");
    let seen = recording_of(seen).expect("recording shown to bob");
    assert_eq!((seen.caller_consent, seen.callee_consent), (true, false));

    // A repeat changes nothing.
    let again =
        recording_of(client.set_recording_consent(app.as_user("alice", consent(&id, true))).await.expect("again"))
            .expect("recording");
    assert_eq!(again.version, first.version, "a repeated consent is not a change");

    let started =
        recording_of(client.set_recording_consent(app.as_user("bob", consent(&id, true))).await.expect("bob"))
            .expect("recording");
    assert_eq!(started.status, pb::RecordingStatus::Starting as i32);
    assert_eq!((started.caller_consent, started.callee_consent), (true, true));
    assert_eq!(started.version, first.version + 1);

    let history =
        client.get_user_calls(app.as_user("alice", pb::GetUserCallsRequest::default())).await.expect("history");
    let listed = history.into_inner().calls[0].recording.clone().expect("history carries the recording");
    assert_eq!(listed.status, pb::RecordingStatus::Starting as i32);

    // Withdrawing while it starts asks the recorder to stop; the row says so.
    let withdrawn =
        recording_of(client.set_recording_consent(app.as_user("bob", consent(&id, false))).await.expect("withdraw"))
            .expect("recording");
    assert!(!withdrawn.callee_consent);
    let row = recordings::Entity::find_by_id(uuid::Uuid::parse_str(&id).expect("uuid"))
        .one(&app.db)
        .await
        .expect("read")
        .expect("row");
    assert!(row.stop_requested, "the recorder is told to stop");
    // Only statuses the world cares about (active, complete, failed) become events.
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    let recording_events = outbox::Entity::find()
        .filter(outbox::Column::RoutingKey.starts_with("recording."))
        .all(&app.db)
        .await
        .expect("outbox");
    assert!(recording_events.is_empty(), "{recording_events:?}");
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn refused_consents_change_nothing() {
    let app = spawn_app().await;
    let mut client = app.client().await;
    let id = active_call(&app, "carol", "dave").await;

    let err = client.set_recording_consent(app.as_user("mallory", consent(&id, true))).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = client.set_recording_consent(app.as_service(consent(&id, true))).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "a service cannot consent for a party: {err:?}");
    let err = client.set_recording_consent(app.as_user("carol", consent("not-a-uuid", true))).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let unknown = uuid::Uuid::now_v7().to_string();
    let err = client.set_recording_consent(app.as_user("carol", consent(&unknown, true))).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    // Withdrawing what was never given is not an error, and records nothing.
    let none = recording_of(client.set_recording_consent(app.as_user("carol", consent(&id, false))).await.expect("ok"));
    assert_eq!(none, None);
    assert_eq!(app.count(recordings::Entity).await, 0, "no refused or empty request wrote a recording");

    // After the call ended, no recording can be asked for.
    client.end_call(app.as_user("dave", pb::EndCallRequest { call_id: id.clone(), reason: 0 })).await.expect("end");
    let err = client.set_recording_consent(app.as_user("carol", consent(&id, true))).await.unwrap_err();
    assert_eq!((err.code(), err.message()), (Code::FailedPrecondition, "call is ended"));
    assert_eq!(app.count(recordings::Entity).await, 0);
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn signals_reach_the_recorder_only_while_a_recording_runs() {
    let app = spawn_app().await;
    let mut client = app.client().await;
    let id = active_call(&app, "erin", "frank").await;
    let to_recorder = |to: &str| pb::SendSignalRequest {
        call_id: id.clone(),
        signal_type: "answer".into(),
        payload: "v=0\r\n".into(),
        to: to.into(),
    };
    let err = client.send_signal(app.as_user("erin", to_recorder("@recorder"))).await.unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::FailedPrecondition, "no recording is starting or active in this call")
    );
    let err = client.send_signal(app.as_user("erin", to_recorder("frank"))).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "`to` names only the recorder: {err:?}");

    client.set_recording_consent(app.as_user("erin", consent(&id, true))).await.expect("erin");
    client.set_recording_consent(app.as_user("frank", consent(&id, true))).await.expect("frank");
    let sub = pb::SubscribeToSignalsRequest { call_id: id.clone(), after_seq: 0 };
    let mut frank = client.subscribe_to_signals(app.as_user("frank", sub)).await.expect("subscribe").into_inner();
    let seq =
        client.send_signal(app.as_user("erin", to_recorder("@recorder"))).await.expect("to recorder").into_inner().seq;
    assert!(seq > 0);
    // The other party does not see the recording leg's signals.
    let leaked = tokio::time::timeout(Duration::from_millis(500), frank.message()).await;
    assert!(leaked.is_err(), "frank got erin's recorder signal: {leaked:?}");

    // `@…` names are the services' own: no user or token can take one.
    let req = pb::InitiateCallRequest {
        callee_id: "@recorder".into(),
        call_type: pb::CallType::Sales as i32,
        ..Default::default()
    };
    let err = client.initiate_call(app.as_user("erin", req)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = client.get_call(app.as_user("@recorder", pb::GetCallRequest { call_id: id.clone() })).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    app.stop().await.expect("clean stop");
}
