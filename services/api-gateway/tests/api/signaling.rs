//! SendSignal and SubscribeToSignals over gRPC, through the real Redis signal bus.

use std::time::Duration;

use tonic::Code;
use videocall_proto::v1::{self as pb, CallType};

use crate::helpers::{TestApp, spawn_app};

async fn live_call(app: &TestApp) -> String {
    let mut client = app.client().await;
    let req =
        pb::InitiateCallRequest { callee_id: "bob".into(), call_type: CallType::Consult as i32, ..Default::default() };
    client.initiate_call(app.as_user("alice", req)).await.expect("initiate").into_inner().call.expect("call").id
}

fn signal(call_id: &str, signal_type: &str, payload: &str) -> pb::SendSignalRequest {
    pb::SendSignalRequest {
        call_id: call_id.into(),
        signal_type: signal_type.into(),
        payload: payload.into(),
        to: String::new(),
    }
}

const SDP: &str = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n";
const CANDIDATE: &str =
    r#"{"candidate":"candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host","sdpMid":"0","sdpMLineIndex":0}"#;

#[tokio::test]
async fn signals_reach_the_other_party_in_order_byte_for_byte_and_replay() {
    let app = spawn_app().await;
    let id = live_call(&app).await;
    let mut client = app.client().await;

    // bob subscribes before anything is sent; alice sends an offer and a candidate.
    let sub = pb::SubscribeToSignalsRequest { call_id: id.clone(), after_seq: 0 };
    let mut stream = client.subscribe_to_signals(app.as_user("bob", sub)).await.expect("subscribe").into_inner();
    let s1 = client.send_signal(app.as_user("alice", signal(&id, "offer", SDP))).await.expect("offer").into_inner().seq;
    let s2 = client
        .send_signal(app.as_user("alice", signal(&id, "ice-candidate", CANDIDATE)))
        .await
        .expect("cand")
        .into_inner()
        .seq;
    assert_eq!(s1 % 1000, 1, "a call's first sequence number ends in 001");
    assert_eq!(s2, s1 + 1, "consecutive within a call");

    let first = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("in time")
        .expect("ok")
        .expect("signal");
    assert_eq!((first.seq, first.signal_type.as_str(), first.from_user_id.as_str()), (s1, "offer", "alice"));
    assert_eq!(first.payload, SDP, "SDP is relayed byte for byte");
    let second = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("in time")
        .expect("ok")
        .expect("signal");
    assert_eq!((second.seq, second.payload.as_str()), (s2, CANDIDATE));

    // A late subscriber (or a reconnect) replays what it missed after its last seq.
    let sub = pb::SubscribeToSignalsRequest { call_id: id.clone(), after_seq: s1 };
    let mut late = client.subscribe_to_signals(app.as_user("bob", sub)).await.expect("subscribe").into_inner();
    let replayed = tokio::time::timeout(Duration::from_secs(5), late.message())
        .await
        .expect("in time")
        .expect("ok")
        .expect("signal");
    assert_eq!((replayed.seq, replayed.signal_type.as_str()), (s2, "ice-candidate"));

    // bob answers (the call, then the SDP): alice gets it; signals bob sent are not echoed to bob.
    client.answer_call(app.as_user("bob", pb::AnswerCallRequest { call_id: id.clone() })).await.expect("answer call");
    let sub = pb::SubscribeToSignalsRequest { call_id: id.clone(), after_seq: 0 };
    let mut alice = client.subscribe_to_signals(app.as_user("alice", sub)).await.expect("subscribe").into_inner();
    let s3 = client.send_signal(app.as_user("bob", signal(&id, "answer", SDP))).await.expect("answer").into_inner().seq;
    assert_eq!(s3, s1 + 2);
    let got = tokio::time::timeout(Duration::from_secs(5), alice.message())
        .await
        .expect("in time")
        .expect("ok")
        .expect("signal");
    assert_eq!((got.seq, got.signal_type.as_str(), got.from_user_id.as_str()), (s3, "answer", "bob"));

    // Ending the call ends the streams.
    client.end_call(app.as_user("alice", pb::EndCallRequest { call_id: id.clone(), reason: 0 })).await.expect("end");
    let mut ended = false;
    for _ in 0..5 {
        match tokio::time::timeout(Duration::from_secs(5), stream.message()).await.expect("stream ends in time") {
            Ok(None) => {
                ended = true;
                break;
            }
            Ok(Some(_)) => continue,
            Err(status) => panic!("stream failed: {status:?}"),
        }
    }
    assert!(ended, "the subscription closes when the call ends");
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn no_media_before_the_callee_answers() {
    let app = spawn_app().await;
    let id = live_call(&app).await;
    let mut client = app.client().await;
    let sub = pb::SubscribeToSignalsRequest { call_id: id.clone(), after_seq: 0 };
    let mut alice = client.subscribe_to_signals(app.as_user("alice", sub)).await.expect("subscribe").into_inner();

    // The caller's offer and candidates go through while the call rings; nothing of the callee's
    // that could start media does, and the caller cannot answer its own offer.
    let offer = client.send_signal(app.as_user("alice", signal(&id, "offer", SDP))).await.expect("offer").into_inner();
    client.ring_call(app.as_user("bob", pb::RingCallRequest { call_id: id.clone() })).await.expect("ring");
    for (user, kind, payload) in
        [("bob", "answer", SDP), ("bob", "ice-candidate", CANDIDATE), ("bob", "offer", SDP), ("alice", "answer", SDP)]
    {
        let status = client.send_signal(app.as_user(user, signal(&id, kind, payload))).await.expect_err(kind);
        assert_eq!(status.code(), Code::FailedPrecondition, "{user} {kind}: {status:?}");
        assert!(status.message().starts_with("call is ringing:"), "{}", status.message());
    }
    // Nothing was published: alice's stream is silent and no sequence number was taken.
    let silent = tokio::time::timeout(Duration::from_millis(500), alice.message()).await;
    assert!(silent.is_err(), "nothing reaches the caller before the answer: {silent:?}");
    let candidate =
        client.send_signal(app.as_user("alice", signal(&id, "ice-candidate", CANDIDATE))).await.expect("candidate");
    assert_eq!(candidate.into_inner().seq, offer.seq + 1);

    // Once the callee answers the call, its answer and candidates go through.
    client.answer_call(app.as_user("bob", pb::AnswerCallRequest { call_id: id.clone() })).await.expect("answer call");
    let answer = client.send_signal(app.as_user("bob", signal(&id, "answer", SDP))).await.expect("answer").into_inner();
    assert_eq!(answer.seq, offer.seq + 2);
    client.send_signal(app.as_user("bob", signal(&id, "ice-candidate", CANDIDATE))).await.expect("bob's candidate");
    let got = tokio::time::timeout(Duration::from_secs(5), alice.message()).await.expect("in time").expect("ok");
    let got = got.expect("signal");
    assert_eq!((got.seq, got.signal_type.as_str(), got.from_user_id.as_str()), (answer.seq, "answer", "bob"));
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn strangers_bad_signals_and_ended_calls_are_refused() {
    let app = spawn_app().await;
    let id = live_call(&app).await;
    let mut client = app.client().await;

    let status = client.send_signal(app.as_user("eve", signal(&id, "offer", SDP))).await.expect_err("stranger sends");
    assert_eq!(
        (status.code(), status.message()),
        (Code::PermissionDenied, "only the call's two parties exchange signals")
    );
    let Err(status) = client
        .subscribe_to_signals(app.as_user("eve", pb::SubscribeToSignalsRequest { call_id: id.clone(), after_seq: 0 }))
        .await
    else {
        panic!("a stranger subscribed");
    };
    assert_eq!(status.code(), Code::PermissionDenied);

    for (req, message) in [
        (signal(&id, "bye", ""), "unknown signal type `bye`, expected offer, answer, ice-candidate or hangup"),
        (signal(&id, "offer", "not sdp"), "offer must carry an SDP starting with `v=0`"),
        (signal(&id, "ice-candidate", "[1,2]"), "ice-candidate must carry a JSON object of at most 4096 bytes"),
        (signal(&id, "offer", &format!("v=0{}", "x".repeat(49 * 1024))), "SDP is larger than 49152 bytes"),
    ] {
        let status = client.send_signal(app.as_user("alice", req)).await.expect_err(message);
        assert_eq!((status.code(), status.message()), (Code::InvalidArgument, message));
    }
    // Nothing was sequenced by the refused signals: the first accepted one opens the sequence.
    let seq =
        client.send_signal(app.as_user("alice", signal(&id, "hangup", ""))).await.expect("hangup").into_inner().seq;
    assert_eq!(seq % 1000, 1);

    client.end_call(app.as_user("bob", pb::EndCallRequest { call_id: id.clone(), reason: 0 })).await.expect("end");
    let status = client.send_signal(app.as_user("alice", signal(&id, "offer", SDP))).await.expect_err("ended");
    assert_eq!((status.code(), status.message()), (Code::FailedPrecondition, "call is rejected"));
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn every_signal_stream_of_a_gateway_shares_one_bus_subscriber() {
    let app = spawn_app().await;
    let id = live_call(&app).await;
    let mut client = app.client().await;
    let mut streams = Vec::new();
    for _ in 0..4 {
        let sub = pb::SubscribeToSignalsRequest { call_id: id.clone(), after_seq: 0 };
        streams.push(client.subscribe_to_signals(app.as_user("bob", sub)).await.expect("subscribe").into_inner());
    }
    // One Pub/Sub subscription of bob's channel for the four streams (there was one each).
    let redis = redis::Client::open(videocall_testkit::redis_url()).expect("url");
    let mut conn = redis.get_multiplexed_async_connection().await.expect("redis");
    let channel = format!("{}:vc:user:bob", app.cell);
    let (_, subscribers): (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(&channel)
        .query_async::<Vec<(String, i64)>>(&mut conn)
        .await
        .expect("numsub")
        .into_iter()
        .next()
        .expect("one channel");
    assert_eq!(subscribers, 1, "one subscriber for every stream of this gateway");
    // Each stream still gets every signal once.
    let seq =
        client.send_signal(app.as_user("alice", signal(&id, "offer", SDP))).await.expect("offer").into_inner().seq;
    for stream in &mut streams {
        let got = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.expect("in time");
        assert_eq!(got.expect("ok").expect("signal").seq, seq);
    }
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_signal_stream_goes_on_across_a_redis_restart() {
    let redis = videocall_testkit::redis::OwnRedis::start(videocall_testkit::free_port());
    let url = redis.url();
    let app = crate::helpers::spawn_app_with(|c| c.signal_bus.redis_url = url).await;
    let id = live_call(&app).await;
    let mut client = app.client().await;
    let sub = pb::SubscribeToSignalsRequest { call_id: id.clone(), after_seq: 0 };
    let mut bob = client.subscribe_to_signals(app.as_user("bob", sub)).await.expect("subscribe").into_inner();
    let first = client.send_signal(app.as_user("alice", signal(&id, "offer", SDP))).await.expect("offer");
    let got = tokio::time::timeout(Duration::from_secs(5), bob.message()).await.expect("in time");
    assert_eq!(got.expect("ok").expect("signal").seq, first.into_inner().seq);

    // Redis restarts (and forgets everything): the gateway's hub subscribes again, the stream
    // stays open, and the caller's next offer (sent once the bus is back) reaches bob on it.
    let _redis = redis.restart();
    let mut sent = None;
    for _ in 0..100 {
        match client.send_signal(app.as_user("alice", signal(&id, "offer", SDP))).await {
            Ok(reply) => {
                sent = Some(reply.into_inner().seq);
                break;
            }
            Err(status) => assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sent = sent.expect("the bus came back");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = tokio::time::timeout_at(deadline, bob.message()).await.expect("the offer arrives on the same stream");
        let signal = got.expect("the stream goes on").expect("a signal");
        if signal.seq == sent {
            break;
        }
    }
    app.stop().await.expect("clean stop");
}
