//! One WebSocket connection: the socket loop (frames in and out, heartbeats, token expiry, close)
//! here; the command handlers (`commands`), the outbound filter (`outbound`), the resync after a
//! late join or a Redis restart (`sync`) and the rate limit (`rate_limit`) beside it.

mod commands;
mod outbound;
mod rate_limit;
mod sync;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::SinkExt;
use tonic::{Request, transport::Channel};
use videocall_domain::CallStatus;
use videocall_proto::v1::{self as pb, call_service_client::CallServiceClient};
use videocall_signaling::signal_bus::{
    SignalBus,
    hub::{Outbound, Registration, Watcher},
};

use crate::{
    metrics::{RelayMetrics, TypeLabel},
    protocol::{self},
};

use self::rate_limit::Bucket;

pub const CLOSE_POLICY: u16 = 1008;
pub const CLOSE_TOO_BIG: u16 = 1009;
pub const CLOSE_GOING_AWAY: u16 = 1001;
pub const CLOSE_INTERNAL: u16 = 1011;
/// The token that opened the socket expired: connect again with a fresh one.
pub const CLOSE_TOKEN_EXPIRED: u16 = 4001;

/// Queued outbound frames written with one flush.
const OUTBOUND_BATCH: usize = 32;

/// Per-connection limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub rate_per_sec: u32,
    pub burst: u32,
    pub heartbeat: Duration,
}

/// What this connection knows of a call it takes part in.
#[derive(Debug, Clone)]
struct KnownCall {
    other: String,
    live: bool,
    /// The status as last seen (before `active`, only the caller negotiates).
    status: CallStatus,
    /// This connection's user is the caller.
    caller: bool,
    /// Highest signal sequence number delivered to this connection.
    last_seq: u64,
    /// This connection sent a signal of this call.
    sent: bool,
    /// Sequence number of the last signal this connection sent in this call.
    last_sent_seq: u64,
    /// The call's recording is starting or active: the recording leg's signals may go to the
    /// recorder.
    recording: bool,
}

impl KnownCall {
    /// A call first seen in `status`, nothing delivered or sent yet.
    fn new(other: &str, status: CallStatus, caller: bool, recording: bool) -> Self {
        let live = !status.is_terminal();
        Self { other: other.to_owned(), live, status, caller, last_seq: 0, sent: false, last_sent_seq: 0, recording }
    }
}

pub struct Connection {
    pub socket: WebSocket,
    pub registration: Registration,
    pub token: String,
    /// The token's `exp` (unix seconds): the socket is closed then.
    pub token_expires_at: i64,
    pub gateway: CallServiceClient<Channel>,
    pub bus: SignalBus,
    pub limits: Limits,
    pub metrics: RelayMetrics,
}

struct State {
    user_id: String,
    token: String,
    gateway: CallServiceClient<Channel>,
    bus: SignalBus,
    calls: HashMap<String, KnownCall>,
    /// On Redis Cluster (signals on per-call channels): the calls this connection watches.
    watcher: Watcher,
    watched: std::collections::HashSet<String>,
    metrics: RelayMetrics,
}

impl Connection {
    pub async fn run(self, shutdown: tokio_util::sync::CancellationToken) {
        let Connection { mut socket, mut registration, token, token_expires_at, gateway, bus, limits, metrics } = self;
        let token_left = u64::try_from(token_expires_at.saturating_sub(chrono::Utc::now().timestamp())).unwrap_or(0);
        let token_expiry = tokio::time::sleep(Duration::from_secs(token_left));
        tokio::pin!(token_expiry);
        let mut state = State {
            user_id: registration.user_id.clone(),
            token,
            gateway,
            bus,
            calls: HashMap::new(),
            watcher: registration.watcher(),
            watched: Default::default(),
            metrics: metrics.clone(),
        };
        // The user's calls are read before `hello` goes out: once a client sees `hello`, the
        // gateway has met this user (an agent is callable from then on, docs/api.md).
        let hello = serde_json::json!({"type": "hello", "user_id": state.user_id, "connection_id": registration.id});
        // Boxed, as are the other rarely run futures below: the task of an idle socket holds only
        // what waits in the `select!`, not the largest future a command could need
        // (docs/benchmarks.md, scenario 4).
        if Box::pin(state.sync_after(&mut socket, false, Some(hello.to_string()))).await.is_err() {
            return;
        }
        let mut bucket = Bucket::new(limits.rate_per_sec, limits.burst);
        let mut heartbeat = tokio::time::interval(limits.heartbeat);
        heartbeat.tick().await;
        let mut last_heard = Instant::now();
        let flow = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break (CLOSE_GOING_AWAY, "server shutting down"),
                () = &mut token_expiry => break (CLOSE_TOKEN_EXPIRED, "token expired"),
                _ = heartbeat.tick() => {
                    if last_heard.elapsed() > limits.heartbeat * 3 {
                        break (CLOSE_GOING_AWAY, "heartbeat timeout");
                    }
                    if socket.send(Message::Ping(Default::default())).await.is_err() { return; }
                }
                outbound = registration.rx.recv() => match outbound {
                    None => break (CLOSE_INTERNAL, "relay lost this connection"),
                    Some(Outbound::Frame(frame)) => {
                        // Frames that queued up meanwhile (a burst of ICE candidates) go out in
                        // one write: buffered with `feed`, flushed once.
                        let (mut next, mut resync, mut batched) = (Some(frame), None, 0);
                        while let Some(frame) = next.take() {
                            if let Some(text) = state.filter_outbound(&frame)
                                && socket.feed(Message::Text(Utf8Bytes::from(text))).await.is_err()
                            {
                                return;
                            }
                            batched += 1;
                            if batched == OUTBOUND_BATCH {
                                break;
                            }
                            match registration.rx.try_recv() {
                                Ok(Outbound::Frame(frame)) => next = Some(frame),
                                Ok(Outbound::Resync { lost }) => resync = Some(lost),
                                Err(_) => {}
                            }
                        }
                        if socket.flush().await.is_err() {
                            return;
                        }
                        for frame in state.watch_new_calls().await {
                            if send(&mut socket, frame).await.is_err() { return; }
                        }
                        if let Some(lost) = resync
                            && state.sync(&mut socket, lost).await.is_err()
                        {
                            return;
                        }
                    }
                    Some(Outbound::Resync { lost }) => {
                        if state.sync(&mut socket, lost).await.is_err() { return; }
                    }
                },
                incoming = socket.recv() => {
                    last_heard = Instant::now();
                    match incoming {
                        None => return,
                        Some(Err(error)) => {
                            let too_big = is_too_big(&error);
                            tracing::debug!(%error, "websocket read failed");
                            if too_big { break (CLOSE_TOO_BIG, "message too big"); }
                            return;
                        }
                        Some(Ok(Message::Text(text))) => {
                            if !bucket.take() {
                                break (CLOSE_POLICY, "rate limit exceeded");
                            }
                            let mut reply = Box::pin(state.handle(text.as_str())).await;
                            reply.extend(state.watch_new_calls().await);
                            for frame in reply {
                                if send(&mut socket, frame).await.is_err() { return; }
                            }
                        }
                        Some(Ok(Message::Binary(_))) => {
                            let frame = protocol::error(None, "unsupported", "binary frames are not supported; send JSON text");
                            if send(&mut socket, frame).await.is_err() { return; }
                        }
                        Some(Ok(Message::Close(_))) => return,
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    }
                }
            }
        };
        let (code, reason): (u16, &'static str) = flow;
        metrics.closes.get_or_create(&TypeLabel { r#type: code.to_string() }).inc();
        let frame = CloseFrame { code, reason: Utf8Bytes::from_static(reason) };
        if socket.send(Message::Close(Some(frame))).await.is_ok() {
            Box::pin(finish_close(&mut socket)).await;
        }
    }
}

/// After our close frame: read (and drop) what the client still sends until its close frame, for
/// at most `CLOSE_WAIT`. Dropping a socket with unread bytes makes the kernel answer with a TCP
/// reset, and the client would lose the close frame (and the pongs before it) to it.
async fn finish_close(socket: &mut WebSocket) {
    let drained = async {
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_WAIT, drained).await;
}

/// How long a closing socket waits for the client's close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

fn is_too_big(error: &axum::Error) -> bool {
    let text = error.to_string();
    text.contains("Space limit exceeded")
        || text.contains("too long")
        || text.contains("too big")
        || text.contains("Capacity")
}

async fn send(socket: &mut WebSocket, text: String) -> Result<(), axum::Error> {
    socket.send(Message::Text(Utf8Bytes::from(text))).await
}

impl State {
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Ok(value) = format!("Bearer {}", self.token).parse() {
            request.metadata_mut().insert("authorization", value);
        }
        // The frame's span goes on in the gateway (W3C trace context).
        if let Some(value) = videocall_runtime::telemetry::trace_context::current().and_then(|t| t.parse().ok()) {
            request.metadata_mut().insert("traceparent", value);
        }
        request.set_timeout(Duration::from_secs(10));
        request
    }

    fn remember(&mut self, call: &pb::Call) {
        let other = if call.caller_id == self.user_id { call.callee_id.clone() } else { call.caller_id.clone() };
        let status = pb::CallStatus::try_from(call.status).map_or(CallStatus::Ended, protocol::domain_status);
        let caller = call.caller_id == self.user_id;
        // An agent a desk call was taken back from (it went back to the queue) is no party of it.
        let live = !status.is_terminal() && (caller || call.callee_id == self.user_id);
        let recording = call.recording.as_ref().is_some_and(|r| {
            matches!(
                pb::RecordingStatus::try_from(r.status),
                Ok(pb::RecordingStatus::Starting | pb::RecordingStatus::Active)
            )
        });
        let entry =
            self.calls.entry(call.id.clone()).or_insert_with(|| KnownCall::new(&other, status, caller, recording));
        entry.other = other;
        entry.live = live;
        entry.status = status;
        entry.caller = caller;
        // Only the replies that load the recording (GetCall, history, consent) carry it.
        if call.recording.is_some() {
            entry.recording = recording;
        }
    }
}
