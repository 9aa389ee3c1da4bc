//! SendSignal and SubscribeToSignals: signals go through the signal bus (Redis in the fleet), so a party on the
//! WebSocket relay and a party on gRPC reach each other. Also pushes call state to both parties.

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use uuid::Uuid;
use videocall_calls::{Actor, CallRecord, CallStore, recordings::RecordingStore};
use videocall_domain::Party;
use videocall_proto::v1 as pb;
use videocall_signaling::{
    signal_bus::{
        BusError, Outgoing, SignalBus,
        hub::{Hub, Outbound},
    },
    signals::{ParsedSignal, RECORDER_PEER, SignalType, check_negotiation},
};

use crate::{convert, error::ApiError};

/// Frames buffered per gRPC subscriber before it counts as too slow.
const SUBSCRIBER_BUFFER: usize = 256;

fn bus_status(e: BusError) -> Status {
    match e {
        BusError::Signal(e) => Status::invalid_argument(e.to_string()),
        e @ (BusError::Redis(_) | BusError::TimedOut) => {
            tracing::warn!(error = %e, "signal bus unavailable");
            Status::unavailable("signaling is unavailable, retry")
        }
    }
}

/// The call, if `actor` is one of its two parties and it is still live; and the other party.
async fn live_call_for_party(store: &CallStore, raw_id: &str, actor: &Actor) -> Result<(CallRecord, String), Status> {
    let id: Uuid = convert::call_id(raw_id)?;
    let call = store.get(id).await.map_err(ApiError::from)?;
    let other = match call.party_of(&Actor { is_service: false, ..actor.clone() }) {
        Some(Party::Caller) => call.callee_id.clone(),
        Some(Party::Callee) => call.caller_id.clone(),
        _ => return Err(Status::permission_denied("only the call's two parties exchange signals")),
    };
    if call.status.is_terminal() {
        return Err(Status::failed_precondition(format!("call is {}", call.status)));
    }
    Ok((call, other))
}

pub async fn send(
    store: &CallStore,
    recordings: &RecordingStore,
    bus: &SignalBus,
    actor: &Actor,
    req: pb::SendSignalRequest,
) -> Result<pb::SendSignalResponse, Status> {
    let signal_type: SignalType = req
        .signal_type
        .parse()
        .map_err(|e: videocall_signaling::signals::SignalError| Status::invalid_argument(e.to_string()))?;
    if !req.to.is_empty() && req.to != RECORDER_PEER {
        return Err(Status::invalid_argument(format!("`to` must be empty (the other party) or `{RECORDER_PEER}`")));
    }
    let (call, mut to) = live_call_for_party(store, &req.call_id, actor).await?;
    if req.to.is_empty() {
        let from_caller = call.caller_id == actor.id;
        check_negotiation(call.status, from_caller, signal_type).map_err(Status::failed_precondition)?;
    } else {
        let running = recordings.get(call.id).await.map_err(ApiError::from)?.is_some_and(|r| r.status.is_running());
        if !running {
            return Err(Status::failed_precondition("no recording is starting or active in this call"));
        }
        to = RECORDER_PEER.to_owned();
    }
    let call_id = call.id.to_string();
    let seq = bus
        .publish_signal(Outgoing { call_id: &call_id, from: &actor.id, to: &to, signal_type, payload: &req.payload })
        .await
        .map_err(bus_status)?;
    if call.status == videocall_domain::CallStatus::Active
        && let Err(error) = store.touch_activity(call.id).await
    {
        tracing::warn!(%error, call_id = %call.id, "could not record call activity");
    }
    Ok(pb::SendSignalResponse { seq })
}

fn to_pb(frame: &str) -> Option<pb::Signal> {
    let s: ParsedSignal<'_> = serde_json::from_str(frame).ok()?;
    let sent_at = chrono::DateTime::parse_from_rfc3339(&s.sent_at).ok().map(|t| convert::timestamp(t.to_utc()));
    Some(pb::Signal {
        call_id: s.call_id.clone(),
        seq: s.seq,
        from_user_id: s.from.clone(),
        signal_type: s.signal_type.as_str().to_owned(),
        payload: s.payload(),
        sent_at,
    })
}

/// Is `frame` a call_state frame saying this call is over?
fn ends_call(frame: &str, call_id: &str) -> bool {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(frame) else { return false };
    v["type"] == "call_state"
        && v["call"]["id"] == call_id
        && matches!(v["call"]["status"].as_str(), Some("ended" | "rejected" | "missed"))
}

/// Streams the signals addressed to `actor` in a call: first what the log holds after
/// `after_seq`, then live ones, without gaps or repeats (register with the gateway's hub first,
/// replay second, skip sequence numbers already sent; what may have been lost while the hub's bus
/// subscriber was replaced is replayed from the log). Every stream of this gateway shares the
/// hub's one bus subscriber. Ends when the call ends or the client
/// leaves, and with UNAVAILABLE when the server stops (`stopping`) or the log cannot fill a gap:
/// resubscribe with `after_seq`.
pub async fn subscribe(
    store: &CallStore,
    bus: &SignalBus,
    hub: &Hub,
    actor: &Actor,
    req: pb::SubscribeToSignalsRequest,
    stopping: tokio_util::sync::CancellationToken,
    permit: crate::policy::StreamPermit,
) -> Result<ReceiverStream<Result<pb::Signal, Status>>, Status> {
    let (call, _) = live_call_for_party(store, &req.call_id, actor).await?;
    let call_id = call.id.to_string();
    let unavailable = |error: videocall_signaling::signal_bus::hub::RegisterError| {
        tracing::warn!(%error, "signal hub not subscribed");
        Status::unavailable("signaling is unavailable, retry")
    };
    let mut registration = hub.register(&actor.id, usize::MAX).await.map_err(unavailable)?;
    // On Redis Cluster the call's signals come on its own channel: watched before the replay.
    registration.watcher().watch_call(&call_id).await.map_err(unavailable)?;
    let backlog = bus.replay(&call_id, &actor.id, req.after_seq).await.map_err(bus_status)?;

    let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
    let (bus, user) = (bus.clone(), actor.id.clone());
    tokio::spawn(async move {
        let _permit = permit; // the user's place, given back when the stream ends
        let mut last = req.after_seq;
        if !forward(&tx, backlog, &mut last).await {
            return;
        }
        loop {
            let outbound = tokio::select! {
                _ = tx.closed() => return,
                _ = stopping.cancelled() => {
                    let status = Status::unavailable("server shutting down; resubscribe with after_seq");
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                outbound = registration.rx.recv() => outbound,
            };
            let gap = match outbound {
                None => true,
                Some(Outbound::Resync { .. }) => true,
                Some(Outbound::Frame(frame)) => {
                    if ends_call(&frame, &call_id) {
                        return;
                    }
                    let Some(signal) = to_pb(&frame) else { continue };
                    if signal.call_id != call_id || signal.seq <= last {
                        continue;
                    }
                    last = signal.seq;
                    if tx.send(Ok(signal)).await.is_err() {
                        return;
                    }
                    false
                }
            };
            if gap {
                // Something may be missing: what the log holds after `last`, in order.
                match bus.replay(&call_id, &user, last).await {
                    Ok(frames) => {
                        if !forward(&tx, frames, &mut last).await {
                            return;
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "replay for a signal stream failed");
                        let status = Status::unavailable("signal bus connection lost; resubscribe with after_seq");
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                }
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}

/// Sends the logged `frames` above `last` in order, advancing `last`; false when the client left.
async fn forward(tx: &mpsc::Sender<Result<pb::Signal, Status>>, frames: Vec<(u64, String)>, last: &mut u64) -> bool {
    for (seq, frame) in frames {
        if seq <= *last {
            continue;
        }
        if let Some(signal) = to_pb(&frame) {
            if tx.send(Ok(signal)).await.is_err() {
                return false;
            }
            *last = seq;
        }
    }
    true
}
