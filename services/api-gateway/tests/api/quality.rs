//! UpdateCallQuality: a party's valid sample of an active call becomes exactly one `call.quality`
//! event; bad samples, strangers and calls that are not active are refused and emit nothing. And
//! GetCall / GetUserCalls show the summary rows the quality-aggregator keeps.

use std::time::Duration;

use chrono::Utc;
use sea_orm::{ActiveValue::Set, EntityTrait};
use tonic::Code;
use uuid::Uuid;
use videocall_entities::call_quality;
use videocall_proto::v1::{self as pb, CallType};

use crate::helpers::{TestApp, spawn_app};

/// alice calls bob; bob answers unless `answer` is false. Returns the call id, with the
/// lifecycle events already taken off the tap.
async fn call(app: &mut TestApp, answer: bool) -> String {
    let mut client = app.client().await;
    let req =
        pb::InitiateCallRequest { callee_id: "bob".into(), call_type: CallType::Support as i32, ..Default::default() };
    let id =
        client.initiate_call(app.as_user("alice", req)).await.expect("initiate").into_inner().call.expect("call").id;
    if answer {
        client.answer_call(app.as_user("bob", pb::AnswerCallRequest { call_id: id.clone() })).await.expect("answer");
    }
    app.events.take(if answer { 2 } else { 1 }).await;
    id
}

fn sample(call_id: &str) -> pb::UpdateCallQualityRequest {
    pb::UpdateCallQualityRequest {
        call_id: call_id.into(),
        rtt_ms: 48.0,
        jitter_ms: 3.1,
        packet_loss_percent: 0.4,
        bitrate_kbps: 1450.0,
        width: 1280,
        height: 720,
        fps: 30.0,
        direction: "inbound".into(),
    }
}

#[tokio::test]
async fn a_partys_sample_becomes_exactly_one_call_quality_event() {
    let mut app = spawn_app().await;
    let id = call(&mut app, true).await;
    let mut client = app.client().await;
    client.update_call_quality(app.as_user("bob", sample(&id))).await.expect("accepted");

    let events = app.events.take(1).await;
    let event = &events[0];
    assert_eq!(event.routing_key, "call.quality");
    assert_eq!(event.event_type(), "CallQualityReported");
    assert_eq!(event.subject(), id);
    assert!(event.persistent);
    assert_eq!(event.message_id.as_deref(), event.body["id"].as_str(), "message_id is the event id");
    let data = &event.body["data"];
    assert_eq!(data["call_id"], id.as_str());
    assert_eq!(data["reporter_id"], "bob");
    assert_eq!(data["direction"], "inbound");
    assert_eq!((data["rtt_ms"].as_f64(), data["jitter_ms"].as_f64()), (Some(48.0), Some(3.1)));
    assert_eq!((data["packet_loss_percent"].as_f64(), data["bitrate_kbps"].as_f64()), (Some(0.4), Some(1450.0)));
    assert_eq!(
        (data["width"].as_u64(), data["height"].as_u64(), data["fps"].as_f64()),
        (Some(1280), Some(720), Some(30.0))
    );
    assert!(data["reported_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{data}");
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn bad_samples_are_refused_naming_the_field_and_emit_nothing() {
    let mut app = spawn_app().await;
    let id = call(&mut app, true).await;
    let mut client = app.client().await;
    let s = || sample(&id);
    let cases = [
        (pb::UpdateCallQualityRequest { call_id: "nope".into(), ..s() }, "call_id `nope` is not a UUID"),
        (pb::UpdateCallQualityRequest { rtt_ms: -1.0, ..s() }, "rtt_ms must be between 0 and 60000, got -1"),
        (pb::UpdateCallQualityRequest { rtt_ms: f64::NAN, ..s() }, "rtt_ms must be a finite number"),
        (pb::UpdateCallQualityRequest { jitter_ms: 10_001.0, ..s() }, "jitter_ms must be between 0 and 10000"),
        (
            pb::UpdateCallQualityRequest { packet_loss_percent: 101.0, ..s() },
            "packet_loss_percent must be between 0 and 100",
        ),
        (pb::UpdateCallQualityRequest { bitrate_kbps: f64::INFINITY, ..s() }, "bitrate_kbps must be a finite number"),
        (pb::UpdateCallQualityRequest { width: 8000, ..s() }, "width must be between 0 and 7680, got 8000"),
        (pb::UpdateCallQualityRequest { height: 0, ..s() }, "width and height must both be 0"),
        (pb::UpdateCallQualityRequest { fps: 300.0, ..s() }, "fps must be between 0 and 240, got 300"),
        (
            pb::UpdateCallQualityRequest { direction: "sideways".into(), ..s() },
            "direction must be `inbound` or `outbound`",
        ),
        (pb::UpdateCallQualityRequest { direction: String::new(), ..s() }, "direction must be `inbound` or `outbound`"),
    ];
    for (request, message) in cases {
        let status = client.update_call_quality(app.as_user("alice", request)).await.expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().starts_with(message), "expected `{message}`, got `{}`", status.message());
    }
    app.events.expect_none(Duration::from_millis(800)).await;
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn strangers_services_and_calls_that_are_not_active_are_refused() {
    let mut app = spawn_app().await;
    let ringing = call(&mut app, false).await;
    let mut client = app.client().await;

    let status = client.update_call_quality(app.as_user("alice", sample(&ringing))).await.expect_err("not active");
    assert_eq!((status.code(), status.message()), (Code::FailedPrecondition, "call is initiated"));
    let status = client.update_call_quality(app.as_user("carol", sample(&ringing))).await.expect_err("stranger");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(status.message(), "only the call's two parties report its quality");
    let status = client.update_call_quality(app.as_service(sample(&ringing))).await.expect_err("service");
    assert_eq!(status.code(), Code::PermissionDenied, "a service measures no media");
    let unknown = Uuid::now_v7().to_string();
    let status = client.update_call_quality(app.as_user("alice", sample(&unknown))).await.expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound);
    let status = client.update_call_quality(tonic::Request::new(sample(&ringing))).await.expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated);

    client.answer_call(app.as_user("bob", pb::AnswerCallRequest { call_id: ringing.clone() })).await.expect("answer");
    client
        .end_call(app.as_user("alice", pb::EndCallRequest { call_id: ringing.clone(), reason: 0 }))
        .await
        .expect("end");
    app.events.take(2).await;
    let status = client.update_call_quality(app.as_user("bob", sample(&ringing))).await.expect_err("ended");
    assert_eq!((status.code(), status.message()), (Code::FailedPrecondition, "call is ended"));
    app.events.expect_none(Duration::from_millis(800)).await;
    app.stop().await.expect("clean stop");
}

fn row(call_id: Uuid, scope: &str, count: i64, mos: f64, finalized: bool) -> call_quality::ActiveModel {
    let now = Utc::now();
    call_quality::ActiveModel {
        call_id: Set(call_id),
        scope: Set(scope.to_owned()),
        sample_count: Set(count),
        sum_rtt_ms: Set(0.0),
        sum_jitter_ms: Set(0.0),
        sum_jitter_sq: Set(0.0),
        sum_packet_loss: Set(0.0),
        max_packet_loss: Set(7.5),
        sum_bitrate_kbps: Set(0.0),
        disconnects: Set(0),
        resolutions: Set(serde_json::json!({"1280x720": count})),
        avg_rtt_ms: Set(120.0),
        avg_jitter_ms: Set(9.0),
        avg_packet_loss: Set(2.5),
        avg_bitrate_kbps: Set(900.0),
        resolution: Set("1280x720".into()),
        stability: Set(0.75),
        mos: Set(mos),
        late_samples: Set(0),
        finalized_at: Set(finalized.then_some(now)),
        updated_at: Set(now),
    }
}

#[tokio::test]
async fn get_call_and_history_show_the_summary_rows() {
    let mut app = spawn_app().await;
    let first = call(&mut app, true).await;
    let mut client = app.client().await;
    client.end_call(app.as_user("alice", pb::EndCallRequest { call_id: first.clone(), reason: 0 })).await.expect("end");
    app.events.take(1).await;
    let second = call(&mut app, true).await;
    let id = Uuid::parse_str(&first).expect("uuid");
    // What the aggregator would have written: both directions of the first call.
    call_quality::Entity::insert_many([
        row(id, "all", 3, 4.1, true),
        row(id, "inbound", 2, 4.2, true),
        row(id, "outbound", 1, 3.9, true),
    ])
    .exec_without_returning(&app.db)
    .await
    .expect("insert summary");

    let got = client.get_call(app.as_user("bob", pb::GetCallRequest { call_id: first.clone() })).await.expect("get");
    let q = got.into_inner().call.expect("call").quality.expect("a summary");
    assert_eq!((q.sample_count, q.mos, q.finalized), (3, 4.1, true));
    assert_eq!((q.avg_rtt_ms, q.avg_jitter_ms, q.avg_packet_loss_percent), (120.0, 9.0, 2.5));
    assert_eq!((q.max_packet_loss_percent, q.avg_bitrate_kbps, q.stability), (7.5, 900.0, 0.75));
    assert_eq!(q.resolution, "1280x720");
    assert_eq!(q.inbound.as_ref().map(|d| (d.sample_count, d.mos)), Some((2, 4.2)));
    assert_eq!(q.outbound.as_ref().map(|d| (d.sample_count, d.mos)), Some((1, 3.9)));

    let got = client.get_call(app.as_user("alice", pb::GetCallRequest { call_id: second.clone() })).await.expect("get");
    assert_eq!(got.into_inner().call.expect("call").quality, None, "no summary yet");

    let page = client
        .get_user_calls(app.as_user("alice", pb::GetUserCallsRequest::default()))
        .await
        .expect("history")
        .into_inner();
    let summaries: Vec<_> =
        page.calls.iter().map(|c| (c.id.clone(), c.quality.as_ref().map(|q| q.sample_count))).collect();
    assert_eq!(summaries, [(second, None), (first, Some(3))], "newest first, each with its own summary");
    app.stop().await.expect("clean stop");
}
