//! One WebSocket connection: frames in (call control to the gateway, signals to the bus), frames
//! out (the user's channel), heartbeats, limits, and resync after a late join or a Redis restart.

use std::{
    borrow::Cow,
    collections::HashMap,
    time::{Duration, Instant},
};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::SinkExt;
use tonic::{Request, transport::Channel};
use videocall_domain::CallStatus;
use videocall_proto::v1::{self as pb, call_service_client::CallServiceClient};
use videocall_signaling::{
    signal_bus::{
        BusError, Outgoing, SignalBus,
        hub::{Outbound, Registration},
    },
    signals::{RECORDER_PEER, SignalType, check_negotiation, validate_payload},
};

use crate::{
    metrics::{RelayMetrics, TypeLabel},
    protocol::{self, CallCommand, Consent, Envelope, Initiate, Quality, Resume, SignalIn},
};

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
    /// The call's recording is starting or active: the recording leg's signals may go to the
    /// recorder.
    recording: bool,
}

/// Token bucket: `rate` per second, at most `burst` saved up.
struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: u32, burst: u32) -> Self {
        Self { tokens: f64::from(burst), rate: f64::from(rate), burst: f64::from(burst), at: Instant::now() }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
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
            metrics: metrics.clone(),
        };
        // The user's calls are read before `hello` goes out: once a client sees `hello`, the
        // gateway has met this user (an agent is callable from then on, docs/api.md).
        let hello = serde_json::json!({"type": "hello", "user_id": state.user_id, "connection_id": registration.id});
        if state.sync_after(&mut socket, false, Some(hello.to_string())).await.is_err() {
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
                            let reply = state.handle(text.as_str()).await;
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
            finish_close(&mut socket).await;
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
        request.set_timeout(Duration::from_secs(10));
        request
    }

    fn remember(&mut self, call: &pb::Call) {
        let other = if call.caller_id == self.user_id { call.callee_id.clone() } else { call.caller_id.clone() };
        let status = pb::CallStatus::try_from(call.status).map_or(CallStatus::Ended, protocol::domain_status);
        let live = !status.is_terminal();
        let caller = call.caller_id == self.user_id;
        let recording = call.recording.as_ref().is_some_and(|r| {
            matches!(
                pb::RecordingStatus::try_from(r.status),
                Ok(pb::RecordingStatus::Starting | pb::RecordingStatus::Active)
            )
        });
        let entry = self.calls.entry(call.id.clone()).or_insert(KnownCall {
            other: other.clone(),
            live,
            status,
            caller,
            last_seq: 0,
            sent: false,
            recording,
        });
        entry.other = other;
        entry.live = live;
        entry.status = status;
        entry.caller = caller;
        // Only the replies that load the recording (GetCall, history, consent) carry it.
        if call.recording.is_some() {
            entry.recording = recording;
        }
    }

    /// Sends the state of every live call of this user and replays the signals this connection
    /// has not seen: on connect, and after the bus subscriber comes back. If the bus lost its
    /// data meanwhile (`bus_lost`: Redis restarted without persistence), signals of the calls this
    /// connection was negotiating may be gone for good: it is told so (`signals_lost`), and the
    /// caller renegotiates (docs/protocol.md).
    async fn sync(&mut self, socket: &mut WebSocket, bus_lost: bool) -> Result<(), axum::Error> {
        self.sync_after(socket, bus_lost, None).await
    }

    /// [`Self::sync`], sending `first` (the `hello`) once the calls are read and before them.
    async fn sync_after(
        &mut self,
        socket: &mut WebSocket,
        bus_lost: bool,
        first: Option<String>,
    ) -> Result<(), axum::Error> {
        let request = self.request(pb::GetUserCallsRequest { page_size: 20, ..Default::default() });
        let reply = self.gateway.clone().get_user_calls(request).await;
        if let Some(first) = first {
            send(socket, first).await?;
        }
        let calls = match reply {
            Ok(reply) => reply.into_inner().calls,
            Err(status) => {
                let frame = protocol::error(None, protocol::code_name(status.code()), status.message());
                return send(socket, frame).await;
            }
        };
        for call in calls.iter().filter(|c| {
            matches!(
                pb::CallStatus::try_from(c.status),
                Ok(pb::CallStatus::Initiated | pb::CallStatus::Ringing | pb::CallStatus::Active)
            )
        }) {
            self.remember(call);
            let frame = serde_json::json!({"type": "call_state", "call": protocol::call_json(call)});
            send(socket, frame.to_string()).await?;
            let (after, sent) = self.calls.get(&call.id).map_or((0, false), |c| (c.last_seq, c.sent));
            if bus_lost && (after > 0 || sent) {
                self.metrics.signals_lost.inc();
                let notice = serde_json::json!({
                    "type": "signals_lost",
                    "call_id": call.id,
                    "reason": "the signal bus restarted and lost this call's signals; the caller renegotiates (ICE restart)",
                });
                send(socket, notice.to_string()).await?;
            }
            match self.bus.replay(&call.id, &self.user_id, after).await {
                Ok(frames) => {
                    for (seq, frame) in frames {
                        if let Some(known) = self.calls.get_mut(&call.id) {
                            known.last_seq = known.last_seq.max(seq);
                        }
                        send(socket, frame).await?;
                    }
                }
                Err(error) => tracing::warn!(%error, call_id = %call.id, "replay failed"),
            }
        }
        Ok(())
    }

    /// Decides whether a frame from the user's channel goes out: drops signals already delivered
    /// (by seq) and keeps the call cache current from call_state frames.
    fn filter_outbound(&mut self, frame: &str) -> Option<String> {
        // Borrowed where the JSON string has no escapes (ids and types never do).
        #[derive(serde::Deserialize)]
        struct Head<'a> {
            #[serde(rename = "type", borrow)]
            frame_type: Cow<'a, str>,
            seq: Option<u64>,
            #[serde(borrow)]
            call_id: Option<Cow<'a, str>>,
            #[serde(borrow)]
            from: Option<Cow<'a, str>>,
            call: Option<CallHead>,
            recording: Option<RecordingHead>,
        }
        #[derive(serde::Deserialize)]
        struct RecordingHead {
            status: String,
        }
        #[derive(serde::Deserialize)]
        struct CallHead {
            id: String,
            caller_id: String,
            callee_id: String,
            status: String,
        }
        let head: Head = serde_json::from_str(frame).ok()?;
        if head.frame_type == "recording"
            && let (Some(call_id), Some(recording)) = (head.call_id.as_deref(), head.recording.as_ref())
        {
            if let Some(known) = self.calls.get_mut(call_id) {
                known.recording = matches!(recording.status.as_str(), "starting" | "active");
            }
        } else if let (Some(seq), Some(call_id)) = (head.seq, head.call_id.as_deref()) {
            if !self.calls.contains_key(call_id) {
                let from = head.from.as_deref().unwrap_or_default();
                let known = KnownCall {
                    // The recorder is never the other party; the call's details come with GetCall.
                    other: if from == RECORDER_PEER { String::new() } else { from.to_owned() },
                    live: true,
                    status: CallStatus::Initiated,
                    caller: false,
                    last_seq: 0,
                    sent: false,
                    recording: false,
                };
                self.calls.insert(call_id.to_owned(), known);
            }
            let known = self.calls.get_mut(call_id)?;
            if seq <= known.last_seq {
                return None;
            }
            known.last_seq = seq;
        } else if head.frame_type == "call_state"
            && let Some(call) = head.call
        {
            let caller = call.caller_id == self.user_id;
            let other = if caller { call.callee_id } else { call.caller_id };
            let status: CallStatus = call.status.parse().unwrap_or(CallStatus::Ended);
            let live = !status.is_terminal();
            let known = self.calls.entry(call.id).or_insert(KnownCall {
                other: other.clone(),
                live,
                status,
                caller,
                last_seq: 0,
                sent: false,
                recording: false,
            });
            known.other = other;
            known.live = live;
            known.status = status;
            known.caller = caller;
        }
        Some(frame.to_owned())
    }

    /// Handles one client frame; returns the frames to send back.
    async fn handle(&mut self, text: &str) -> Vec<String> {
        let envelope: Envelope = match serde_json::from_str(text) {
            Ok(e) => e,
            Err(_) => {
                return vec![protocol::error(None, "malformed", "frames must be JSON objects with a string `type`")];
            }
        };
        let id = envelope.id.as_ref();
        let result = match envelope.frame_type.as_str() {
            "ping" => return vec![serde_json::json!({"type": "pong", "id": id}).to_string()],
            "call.initiate" => self.initiate(text).await,
            "call.ring" | "call.answer" | "call.reject" | "call.end" => self.control(&envelope.frame_type, text).await,
            "call.quality" => self.quality(text).await,
            "call.history" => self.history().await,
            "ice.servers" => self.ice_servers().await,
            "recording.consent" => self.consent(text).await,
            "resume" => return self.resume(text, id).await,
            signal @ ("offer" | "answer" | "ice-candidate" | "hangup") => {
                // The hot path: its ack is written straight, without building a JSON tree.
                return match self.signal(signal, text).await {
                    Ok(seq) => vec![protocol::signal_ack(id, seq)],
                    Err(f) => vec![self.failed(id, &f)],
                };
            }
            other => Err(Failure::new(
                "unknown_type",
                format!("unknown frame type `{}`", other.chars().take(32).collect::<String>()),
            )),
        };
        match result {
            Ok(mut ack) => {
                ack["type"] = "ack".into();
                if let Some(id) = id {
                    ack["id"] = id.clone();
                }
                vec![ack.to_string()]
            }
            Err(f) => vec![self.failed(id, &f)],
        }
    }

    /// The error frame for `f`, counted.
    fn failed(&self, id: Option<&serde_json::Value>, f: &Failure) -> String {
        self.metrics.errors.get_or_create(&TypeLabel { r#type: f.code.clone() }).inc();
        protocol::error(id, &f.code, &f.message)
    }

    async fn initiate(&mut self, text: &str) -> Result<serde_json::Value, Failure> {
        let frame: Initiate = parse(text)?;
        let call_type = match frame.call_type.as_str() {
            "" => pb::CallType::Unspecified,
            "support" => pb::CallType::Support,
            "sales" => pb::CallType::Sales,
            "consult" => pb::CallType::Consult,
            other => return Err(Failure::new("invalid_argument", format!("unknown call_type `{other}`"))),
        };
        if call_type == pb::CallType::Unspecified && frame.support_offer_id.is_none() {
            return Err(Failure::new("invalid_argument", "call_type is required".into()));
        }
        let request = self.request(pb::InitiateCallRequest {
            request_id: frame.request_id.unwrap_or_default(),
            caller_id: String::new(),
            callee_id: frame.callee_id,
            call_type: call_type as i32,
            metadata: frame.metadata.into_iter().collect(),
            support_offer_id: frame.support_offer_id.unwrap_or_default(),
        });
        let reply = self.gateway.clone().initiate_call(request).await.map_err(Failure::from)?.into_inner();
        Ok(self.call_ack(reply.call, &reply.ice_servers))
    }

    fn call_ack(&mut self, call: Option<pb::Call>, ice: &[pb::IceServer]) -> serde_json::Value {
        let mut ack = serde_json::json!({});
        if let Some(call) = call {
            self.remember(&call);
            ack["call"] = protocol::call_json(&call);
        }
        if !ice.is_empty() {
            ack["ice_servers"] = protocol::ice_json(ice);
        }
        ack
    }

    async fn control(&mut self, kind: &str, text: &str) -> Result<serde_json::Value, Failure> {
        let frame: CallCommand = parse(text)?;
        let mut gateway = self.gateway.clone();
        let call_id = frame.call_id;
        let (call, ice) = match kind {
            "call.ring" => {
                let r =
                    gateway.ring_call(self.request(pb::RingCallRequest { call_id })).await.map_err(Failure::from)?;
                let r = r.into_inner();
                (r.call, r.ice_servers)
            }
            "call.answer" => {
                let r = gateway
                    .answer_call(self.request(pb::AnswerCallRequest { call_id }))
                    .await
                    .map_err(Failure::from)?;
                let r = r.into_inner();
                (r.call, r.ice_servers)
            }
            "call.reject" => {
                let r = gateway
                    .reject_call(self.request(pb::RejectCallRequest { call_id }))
                    .await
                    .map_err(Failure::from)?;
                (r.into_inner().call, Vec::new())
            }
            _ => {
                let reason = match frame.reason.as_deref() {
                    None | Some("") => pb::EndReason::Unspecified,
                    Some(r) => pb::EndReason::from_str_name(&format!("END_REASON_{}", r.to_ascii_uppercase()))
                        .ok_or_else(|| Failure::new("invalid_argument", format!("unknown end reason `{r}`")))?,
                };
                let request = self.request(pb::EndCallRequest { call_id, reason: reason as i32 });
                let r = gateway.end_call(request).await.map_err(Failure::from)?;
                (r.into_inner().call, Vec::new())
            }
        };
        Ok(self.call_ack(call, &ice))
    }

    async fn consent(&mut self, text: &str) -> Result<serde_json::Value, Failure> {
        let frame: Consent = parse(text)?;
        let request = self.request(pb::SetRecordingConsentRequest { call_id: frame.call_id, consent: frame.consent });
        let reply = self.gateway.clone().set_recording_consent(request).await.map_err(Failure::from)?.into_inner();
        Ok(self.call_ack(reply.call, &[]))
    }

    async fn ice_servers(&mut self) -> Result<serde_json::Value, Failure> {
        let request = self.request(pb::GetIceServersRequest {});
        let reply = self.gateway.clone().get_ice_servers(request).await.map_err(Failure::from)?.into_inner();
        Ok(serde_json::json!({"ice_servers": protocol::ice_json(&reply.ice_servers)}))
    }

    async fn history(&mut self) -> Result<serde_json::Value, Failure> {
        let request = self.request(pb::GetUserCallsRequest { page_size: 20, ..Default::default() });
        let reply = self.gateway.clone().get_user_calls(request).await.map_err(Failure::from)?.into_inner();
        let calls: Vec<_> = reply.calls.iter().map(protocol::call_json).collect();
        Ok(serde_json::json!({"calls": calls}))
    }

    async fn quality(&mut self, text: &str) -> Result<serde_json::Value, Failure> {
        let q: Quality = parse(text)?;
        let request = self.request(pb::UpdateCallQualityRequest {
            call_id: q.call_id,
            rtt_ms: q.rtt_ms,
            jitter_ms: q.jitter_ms,
            packet_loss_percent: q.packet_loss_percent,
            bitrate_kbps: q.bitrate_kbps,
            width: q.width,
            height: q.height,
            fps: q.fps,
            direction: q.direction,
        });
        self.gateway.clone().update_call_quality(request).await.map_err(Failure::from)?;
        Ok(serde_json::json!({}))
    }

    async fn resume(&mut self, text: &str, id: Option<&serde_json::Value>) -> Vec<String> {
        let frame: Resume = match parse(text) {
            Ok(f) => f,
            Err(f) => return vec![protocol::error(id, &f.code, &f.message)],
        };
        if let Err(f) = self.known_call(&frame.call_id).await {
            return vec![protocol::error(id, &f.code, &f.message)];
        }
        match self.bus.replay(&frame.call_id, &self.user_id, frame.after_seq).await {
            Ok(frames) => {
                let mut out: Vec<String> = Vec::with_capacity(frames.len() + 1);
                let mut last = frame.after_seq;
                for (seq, f) in frames {
                    last = seq;
                    out.push(f);
                }
                if let Some(known) = self.calls.get_mut(&frame.call_id) {
                    known.last_seq = known.last_seq.max(last);
                }
                let mut ack = serde_json::json!({"type": "ack", "replayed": out.len(), "last_seq": last});
                if let Some(id) = id {
                    ack["id"] = id.clone();
                }
                out.push(ack.to_string());
                out
            }
            Err(e) => vec![protocol::error(id, "unavailable", &e.to_string())],
        }
    }

    /// The call's other party, asking the gateway (which authorises) the first time, or again when
    /// `refresh`.
    async fn known_call(&mut self, call_id: &str) -> Result<KnownCall, Failure> {
        self.call_info(call_id, false).await
    }

    async fn call_info(&mut self, call_id: &str, refresh: bool) -> Result<KnownCall, Failure> {
        if let Some(known) = self.calls.get(call_id)
            && !known.other.is_empty()
            && !refresh
        {
            return Ok(known.clone());
        }
        let request = self.request(pb::GetCallRequest { call_id: call_id.to_owned() });
        let reply = self.gateway.clone().get_call(request).await.map_err(Failure::from)?.into_inner();
        let call = reply.call.ok_or_else(|| Failure::new("internal", "gateway returned no call".into()))?;
        self.remember(&call);
        self.calls.get(call_id).cloned().ok_or_else(|| Failure::new("internal", "call not cached".into()))
    }

    /// Validates and publishes a signal; returns its sequence number.
    async fn signal(&mut self, kind: &str, text: &str) -> Result<u64, Failure> {
        let signal_type: SignalType = kind
            .parse()
            .map_err(|e: videocall_signaling::signals::SignalError| Failure::new("invalid_argument", e.to_string()))?;
        let frame: SignalIn<'_> = parse(text)?;
        let payload: &str = match signal_type {
            SignalType::Offer | SignalType::Answer => frame.sdp.as_deref().unwrap_or_default(),
            SignalType::IceCandidate => frame.candidate.map(|c| c.get()).unwrap_or_default(),
            SignalType::Hangup => frame.reason.as_deref().unwrap_or_default(),
        };
        validate_payload(signal_type, payload).map_err(|e| Failure::new("invalid_argument", e.to_string()))?;
        let mut known = self.known_call(&frame.call_id).await?;
        if !known.live {
            return Err(Failure::new("failed_precondition", "call is over".into()));
        }
        let to: &str = match frame.to.as_deref() {
            None | Some("") => {
                if check_negotiation(known.status, known.caller, signal_type).is_err() {
                    // The call_state that says it was answered (elsewhere) may not have reached us.
                    known = self.call_info(&frame.call_id, true).await?;
                    if !known.live {
                        return Err(Failure::new("failed_precondition", format!("call is {}", known.status)));
                    }
                    check_negotiation(known.status, known.caller, signal_type)
                        .map_err(|m| Failure::new("failed_precondition", m))?;
                }
                &known.other
            }
            Some(RECORDER_PEER) => {
                if !known.recording {
                    // The `recording` frame that said it started may not have reached us yet.
                    known = self.call_info(&frame.call_id, true).await?;
                }
                if !known.recording {
                    return Err(Failure::new(
                        "failed_precondition",
                        "no recording is starting or active in this call".into(),
                    ));
                }
                RECORDER_PEER
            }
            Some(other) => {
                let other: String = other.chars().take(32).collect();
                return Err(Failure::new(
                    "invalid_argument",
                    format!("`to` must be absent (the other party) or `{RECORDER_PEER}`, not `{other}`"),
                ));
            }
        };
        let started = Instant::now();
        let seq = self
            .bus
            .publish_signal(Outgoing { call_id: &frame.call_id, from: &self.user_id, to, signal_type, payload })
            .await
            .map_err(|e| match e {
                BusError::Signal(e) => Failure::new("invalid_argument", e.to_string()),
                e @ (BusError::Redis(_) | BusError::TimedOut) => {
                    tracing::warn!(error = %e, "signal bus unavailable");
                    Failure::new("unavailable", "signaling is unavailable, retry".into())
                }
            })?;
        if let Some(known) = self.calls.get_mut(&frame.call_id) {
            known.sent = true;
        }
        self.metrics.signal_latency.observe(started.elapsed().as_secs_f64());
        self.metrics.count_signal(signal_type);
        Ok(seq)
    }
}

fn parse<'a, T: serde::Deserialize<'a>>(text: &'a str) -> Result<T, Failure> {
    serde_json::from_str(text).map_err(|e| Failure::new("invalid_argument", format!("bad frame: {e}")))
}

/// An error frame to send.
struct Failure {
    code: String,
    message: String,
}

impl Failure {
    fn new(code: &str, message: String) -> Self {
        Self { code: code.to_owned(), message }
    }
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        Self { code: protocol::code_name(status.code()).to_owned(), message: status.message().to_owned() }
    }
}
