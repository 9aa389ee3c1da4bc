//! `loadgen smoke`: checks a deployed fleet from outside, as a user and an operator see it. Every
//! `/readyz` answers ready; a call is initiated, rung, answered and ended over gRPC while its
//! `offer` and `answer` cross between two relays over WebSocket (caller on one, callee on the
//! other); CallInitiated, CallAnswered and CallEnded arrive on RabbitMQ. Then a command restarts a
//! relay (e.g. `podman restart …`), and the same again through the restarted relay.
//! scripts/check-docker.sh runs it against the compose fleet in containers.

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};
use uuid::Uuid;
use videocall_proto::v1::{self as pb, call_service_client::CallServiceClient};
use videocall_testkit::{EventTap, ws};

use crate::lifecycle::authed;

/// What to check, and where.
#[derive(Debug, Clone)]
pub struct Smoke {
    /// The gateway's gRPC address, `http://host:port`.
    pub grpc: String,
    /// The relays' base URLs, `ws://host:port` (at least two: caller on the first, callee on the second).
    pub relays: Vec<String>,
    /// Ops addresses (`host:port`) whose `/readyz` must answer 200.
    pub ready: Vec<std::net::SocketAddr>,
    /// The broker, to read the events.
    pub amqp: String,
    /// The topic exchange the gateway publishes on.
    pub exchange: String,
    /// A token of a user (the caller) and of an agent (the callee, `callee_id`).
    pub caller_token: String,
    pub callee_token: String,
    pub callee_id: String,
    /// Shell command run between the two rounds; it restarts the first relay.
    pub restart_relay: Option<String>,
    /// How long the fleet may take to become ready.
    pub ready_within: Duration,
    /// The gateway's ops address: its outbox metrics go into the error when an event is missing.
    pub gateway_ops: Option<std::net::SocketAddr>,
}

/// Runs the check; an error names the step that failed.
pub async fn run(smoke: &Smoke) -> anyhow::Result<()> {
    ensure!(smoke.relays.len() >= 2, "give two relays (--relay twice): the signals must cross between them");
    wait_ready(&smoke.ready, smoke.ready_within).await?;
    round(smoke, 1).await?;
    if let Some(command) = &smoke.restart_relay {
        say(&format!("restarting a relay: {command}"));
        let status = tokio::process::Command::new("sh").arg("-c").arg(command).status().await?;
        ensure!(status.success(), "`{command}` failed ({status})");
        wait_ready(&smoke.ready, smoke.ready_within).await?;
        round(smoke, 2).await?;
    }
    say("the fleet passed");
    Ok(())
}

fn say(line: &str) {
    eprintln!("[smoke] {line}");
}

async fn wait_ready(addrs: &[std::net::SocketAddr], within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    for addr in addrs {
        loop {
            match tokio::time::timeout(Duration::from_secs(3), videocall_testkit::http_get(*addr, "/readyz"))
                .await
                .ok()
                .flatten()
            {
                Some((200, _)) => break,
                outcome if Instant::now() > deadline => {
                    bail!("http://{addr}/readyz is not ready after {within:?}: {outcome:?}")
                }
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }
    say(&format!("{} /readyz endpoints answer ready", addrs.len()));
    Ok(())
}

/// One call: caller on `relays[0]`, callee on `relays[1]`.
async fn round(smoke: &Smoke, n: u32) -> anyhow::Result<()> {
    // A connection per round: the host's connections into the container network do not all
    // survive podman restarting a container on it (seen: the broker connection went quiet).
    let mut events = EventTap::bind_at(&smoke.amqp, &smoke.exchange).await;
    let ws_url = |base: &str, token: &str| format!("{base}/ws?token={token}");
    let mut callee = ws::Client::connect(&ws_url(&smoke.relays[1], &smoke.callee_token))
        .await
        .with_context(|| format!("connecting the callee to {}", smoke.relays[1]))?;
    let mut caller = ws::Client::connect(&ws_url(&smoke.relays[0], &smoke.caller_token))
        .await
        .with_context(|| format!("connecting the caller to {}", smoke.relays[0]))?;
    let mut grpc = CallServiceClient::connect(smoke.grpc.clone()).await.context("connecting to the gateway")?;

    let call = grpc
        .initiate_call(authed(
            &smoke.caller_token,
            pb::InitiateCallRequest {
                request_id: Uuid::now_v7().to_string(),
                callee_id: smoke.callee_id.clone(),
                call_type: pb::CallType::Support as i32,
                ..Default::default()
            },
        ))
        .await
        .context("InitiateCall")?
        .into_inner();
    let urls: Vec<&str> = call.ice_servers.iter().flat_map(|s| s.urls.iter().map(String::as_str)).collect();
    let call_id = call.call.context("InitiateCall returned no call")?.id;
    say(&format!("round {n}: call {call_id} initiated over gRPC; ICE servers {urls:?}"));
    grpc.ring_call(authed(&smoke.callee_token, pb::RingCallRequest { call_id: call_id.clone() }))
        .await
        .context("RingCall")?;

    let sdp = format!("v=0\r\no=- {n} 1 IN IP4 127.0.0.1\r\ns=smoke\r\n");
    relay_signal(&mut caller, &mut callee, json!({"type": "offer", "call_id": call_id, "sdp": sdp})).await?;
    grpc.answer_call(authed(&smoke.callee_token, pb::AnswerCallRequest { call_id: call_id.clone() }))
        .await
        .context("AnswerCall")?;
    relay_signal(&mut callee, &mut caller, json!({"type": "answer", "call_id": call_id, "sdp": sdp})).await?;
    say(&format!("round {n}: offer and answer crossed between {} and {}", smoke.relays[0], smoke.relays[1]));

    let ended = grpc
        .end_call(authed(&smoke.caller_token, pb::EndCallRequest { call_id: call_id.clone(), reason: 0 }))
        .await
        .context("EndCall")?
        .into_inner()
        .call
        .context("EndCall returned no call")?;
    ensure!(ended.status == pb::CallStatus::Ended as i32, "EndCall left the call in status {}", ended.status);
    for event in ["CallInitiated", "CallAnswered", "CallEnded"] {
        match expect_event(&mut events, event, &call_id).await {
            Ok(body) => say(&format!("round {n}: {event} from RabbitMQ: {body}")),
            Err(error) => bail!("{error:#}; the gateway's outbox: {}", outbox_metrics(smoke.gateway_ops).await),
        }
    }
    Ok(())
}

/// The gateway's `videocall_outbox_*` series, to tell "not published" from "not delivered".
async fn outbox_metrics(ops: Option<std::net::SocketAddr>) -> String {
    let Some(addr) = ops else { return "(no --gateway-ops given)".into() };
    match tokio::time::timeout(Duration::from_secs(3), videocall_testkit::http_get(addr, "/metrics")).await {
        Ok(Some((_, body))) => {
            body.lines().filter(|l| l.starts_with("videocall_outbox")).collect::<Vec<_>>().join("; ")
        }
        _ => format!("http://{addr}/metrics did not answer"),
    }
}

/// Sends `frame` from one socket and waits until the other receives it.
async fn relay_signal(from: &mut ws::Client, to: &mut ws::Client, frame: Value) -> anyhow::Result<()> {
    let kind = frame["type"].as_str().unwrap_or_default().to_owned();
    let ack = from.request(frame).await;
    ensure!(ack["type"] == "ack", "{kind} was refused: {ack}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match to.next().await {
            Some(got) if got["type"] == kind.as_str() => return Ok(()),
            Some(_) => continue,
            None => break,
        }
    }
    bail!("the {kind} did not reach the other party")
}

/// Waits for the event of type `event_type` about `call_id` and returns its body.
async fn expect_event(tap: &mut EventTap, event_type: &str, call_id: &str) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Some(event) = tap.next(deadline.saturating_duration_since(Instant::now())).await {
        if event.event_type() == event_type && event.subject() == call_id {
            return Ok(event.body.to_string());
        }
    }
    bail!("no {event_type} for call {call_id} arrived on RabbitMQ within 30 s")
}
