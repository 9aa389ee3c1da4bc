//! The client's frames: call control forwarded to the gateway, signals to the bus, resume, and
//! the ack or error frame each gets.

use std::time::Instant;

use videocall_proto::v1 as pb;
use videocall_signaling::{
    signal_bus::{BusError, Outgoing},
    signals::{RECORDER_PEER, SignalType, check_negotiation, validate_payload},
};

use super::{KnownCall, State};
use crate::metrics::TypeLabel;
use crate::protocol::{
    self, Availability, CallCommand, Consent, Envelope, Initiate, Quality, QueueGet, Resume, SignalIn, TransferRequest,
};

impl State {
    /// Handles one client frame; returns the frames to send back.
    pub(super) async fn handle(&mut self, text: &str) -> Vec<String> {
        let envelope: Envelope = match serde_json::from_str(text) {
            Ok(e) => e,
            Err(_) => {
                return vec![protocol::error(None, "malformed", "frames must be JSON objects with a string `type`")];
            }
        };
        // Signals (the hot path, never sent to the gateway) and pings are not traced; every other
        // frame is a span whose context goes to the gateway with the request (`traceparent`).
        if matches!(envelope.frame_type.as_str(), "ping" | "offer" | "answer" | "ice-candidate" | "hangup") {
            return self.dispatch(&envelope, text).await;
        }
        #[derive(serde::Deserialize)]
        struct Head {
            call_id: Option<String>,
        }
        let span = tracing::info_span!(
            "relay.frame",
            otel.name = %format!("relay {}", envelope.frame_type),
            frame = %envelope.frame_type,
            call_id = tracing::field::Empty,
        );
        if let Some(call_id) = serde_json::from_str::<Head>(text).ok().and_then(|h| h.call_id) {
            span.record("call_id", call_id.as_str());
        }
        let replies = tracing::Instrument::instrument(self.dispatch(&envelope, text), span.clone()).await;
        if envelope.frame_type == "call.initiate"
            && let Some(ack) = replies.first().and_then(|r| serde_json::from_str::<serde_json::Value>(r).ok())
            && let Some(call_id) = ack["call"]["id"].as_str()
        {
            span.record("call_id", call_id);
        }
        replies
    }

    async fn dispatch(&mut self, envelope: &Envelope, text: &str) -> Vec<String> {
        let id = envelope.id.as_ref();
        let result = match envelope.frame_type.as_str() {
            "ping" => return vec![serde_json::json!({"type": "pong", "id": id}).to_string()],
            "call.initiate" => self.initiate(text).await,
            "call.ring" | "call.answer" | "call.reject" | "call.end" => self.control(&envelope.frame_type, text).await,
            "call.quality" => self.quality(text).await,
            "call.history" => self.history().await,
            "ice.servers" => self.ice_servers().await,
            "recording.consent" => self.consent(text).await,
            "agent.availability" => self.availability(text).await,
            "queue.get" => self.queue(text).await,
            "call.transfer" => self.transfer(text).await,
            "resume" => return self.resume(text, id).await,
            signal @ ("offer" | "answer" | "ice-candidate" | "hangup") => {
                // The hot path: its ack is written straight, without building a JSON tree.
                return match self.signal(signal, text).await {
                    Ok((seq, None)) => vec![protocol::signal_ack(id, seq)],
                    Ok((seq, Some(notice))) => vec![protocol::signal_ack(id, seq), notice],
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
    pub(super) fn failed(&self, id: Option<&serde_json::Value>, f: &Failure) -> String {
        self.metrics.errors.get_or_create(&TypeLabel { r#type: f.code.clone() }).inc();
        protocol::error(id, &f.code, &f.message)
    }

    pub(super) async fn initiate(&mut self, text: &str) -> Result<serde_json::Value, Failure> {
        let frame: Initiate = parse(text)?;
        let call_type = call_type(&frame.call_type)?;
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

    pub(super) fn call_ack(&mut self, call: Option<pb::Call>, ice: &[pb::IceServer]) -> serde_json::Value {
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

    pub(super) async fn control(&mut self, kind: &str, text: &str) -> Result<serde_json::Value, Failure> {
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

    pub(super) async fn consent(&mut self, text: &str) -> Result<serde_json::Value, Failure> {
        let frame: Consent = parse(text)?;
        let request = self.request(pb::SetRecordingConsentRequest { call_id: frame.call_id, consent: frame.consent });
        let reply = self.gateway.clone().set_recording_consent(request).await.map_err(Failure::from)?.into_inner();
        Ok(self.call_ack(reply.call, &[]))
    }

    pub(super) async fn availability(&mut self, text: &str) -> Result<serde_json::Value, Failure> {
        let frame: Availability = parse(text)?;
        let mut call_types = Vec::with_capacity(frame.call_types.len());
        for t in &frame.call_types {
            match call_type(t)? {
                pb::CallType::Unspecified => {
                    return Err(Failure::new("invalid_argument", "call_types must name desks".into()));
                }
                t => call_types.push(t as i32),
            }
        }
        let request = self.request(pb::SetAgentAvailabilityRequest {
            available: frame.available,
            call_types,
            agent_id: String::new(),
        });
        let reply = self.gateway.clone().set_agent_availability(request).await.map_err(Failure::from)?.into_inner();
        let names: Vec<&str> = reply.call_types.iter().map(|t| call_type_name(*t)).collect();
        Ok(serde_json::json!({"agent": {
            "agent_id": reply.agent_id,
            "available": reply.available,
            "call_types": names,
            "idle_since": protocol::timestamp_json(&reply.idle_since),
        }}))
    }

    pub(super) async fn transfer(&mut self, text: &str) -> Result<serde_json::Value, Failure> {
        let frame: TransferRequest = parse(text)?;
        let request = self.request(pb::TransferCallRequest {
            call_id: frame.call_id,
            to_agent_id: frame.to_agent_id,
            to_call_type: call_type(&frame.to_call_type)? as i32,
        });
        let reply = self.gateway.clone().transfer_call(request).await.map_err(Failure::from)?.into_inner();
        let call_id = reply.call.as_ref().map(|c| c.id.clone()).unwrap_or_default();
        let mut ack = self.call_ack(reply.call, &[]);
        if let Some(t) = &reply.transfer {
            ack["transfer"] = protocol::transfer_json(&call_id, t);
        }
        Ok(ack)
    }

    pub(super) async fn queue(&mut self, text: &str) -> Result<serde_json::Value, Failure> {
        let frame: QueueGet = parse(text)?;
        let desk = call_type(&frame.call_type)?;
        if desk == pb::CallType::Unspecified {
            return Err(Failure::new("invalid_argument", "call_type is required".into()));
        }
        let request = self.request(pb::GetQueueRequest { call_type: desk as i32 });
        let reply = self.gateway.clone().get_queue(request).await.map_err(Failure::from)?.into_inner();
        let waiting: Vec<_> = reply
            .waiting
            .iter()
            .map(|w| {
                serde_json::json!({
                    "call_id": w.call_id,
                    "caller_id": w.caller_id,
                    "position": w.position,
                    "queued_at": protocol::timestamp_json(&w.queued_at),
                    "waited_ms": w.waited_ms,
                    "estimated_wait_secs": (w.estimated_wait_secs >= 0).then_some(w.estimated_wait_secs),
                })
            })
            .collect();
        Ok(serde_json::json!({"queue": {
            "call_type": frame.call_type,
            "waiting": waiting,
            "available_agents": reply.available_agents,
        }}))
    }

    pub(super) async fn ice_servers(&mut self) -> Result<serde_json::Value, Failure> {
        let request = self.request(pb::GetIceServersRequest {});
        let reply = self.gateway.clone().get_ice_servers(request).await.map_err(Failure::from)?.into_inner();
        Ok(serde_json::json!({"ice_servers": protocol::ice_json(&reply.ice_servers)}))
    }

    pub(super) async fn history(&mut self) -> Result<serde_json::Value, Failure> {
        let request = self.request(pb::GetUserCallsRequest { page_size: 20, ..Default::default() });
        let reply = self.gateway.clone().get_user_calls(request).await.map_err(Failure::from)?.into_inner();
        let calls: Vec<_> = reply.calls.iter().map(protocol::call_json).collect();
        Ok(serde_json::json!({"calls": calls}))
    }

    pub(super) async fn quality(&mut self, text: &str) -> Result<serde_json::Value, Failure> {
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

    pub(super) async fn resume(&mut self, text: &str, id: Option<&serde_json::Value>) -> Vec<String> {
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
    pub(super) async fn known_call(&mut self, call_id: &str) -> Result<KnownCall, Failure> {
        self.call_info(call_id, false).await
    }

    pub(super) async fn call_info(&mut self, call_id: &str, refresh: bool) -> Result<KnownCall, Failure> {
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

    /// Validates and publishes a signal; returns its sequence number, and the `signals_lost`
    /// notice to send after the ack when the bus turned out to have lost the call's newest signals.
    pub(super) async fn signal(&mut self, kind: &str, text: &str) -> Result<(u64, Option<String>), Failure> {
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
        // The highest number this connection saw in the call: a bus that lost the newest ones
        // (a failover) must not hand one out again.
        let floor = known.last_seq.max(known.last_sent_seq);
        let outgoing = Outgoing { call_id: &frame.call_id, from: &self.user_id, to, signal_type, payload };
        let (seq, lost) = self.bus.publish_signal_above(outgoing, floor).await.map_err(|e| match e {
            BusError::Signal(e) => Failure::new("invalid_argument", e.to_string()),
            e @ (BusError::Redis(_) | BusError::TimedOut) => {
                tracing::warn!(error = %e, "signal bus unavailable");
                Failure::new("unavailable", "signaling is unavailable, retry".into())
            }
        })?;
        if let Some(known) = self.calls.get_mut(&frame.call_id) {
            known.sent = true;
            known.last_sent_seq = seq;
        }
        self.metrics.signal_latency.observe(started.elapsed().as_secs_f64());
        self.metrics.count_signal(signal_type);
        if lost {
            tracing::warn!(call_id = %frame.call_id, seq, "the signal bus had lost this call's newest signals");
            self.metrics.signals_lost.inc();
            return Ok((seq, Some(signals_lost_notice(&frame.call_id))));
        }
        Ok((seq, None))
    }
}

/// Tells a party that signals of `call_id` may be gone for good; the caller renegotiates.
pub(super) fn signals_lost_notice(call_id: &str) -> String {
    serde_json::json!({
        "type": "signals_lost",
        "call_id": call_id,
        "reason": "the signal bus restarted and lost this call's signals; the caller renegotiates (ICE restart)",
    })
    .to_string()
}

/// A call type's wire name (`support`), empty for none.
fn call_type(name: &str) -> Result<pb::CallType, Failure> {
    match name {
        "" => Ok(pb::CallType::Unspecified),
        "support" => Ok(pb::CallType::Support),
        "sales" => Ok(pb::CallType::Sales),
        "consult" => Ok(pb::CallType::Consult),
        other => {
            let other: String = other.chars().take(32).collect();
            Err(Failure::new("invalid_argument", format!("unknown call_type `{other}`")))
        }
    }
}

fn call_type_name(t: i32) -> &'static str {
    match pb::CallType::try_from(t) {
        Ok(pb::CallType::Support) => "support",
        Ok(pb::CallType::Sales) => "sales",
        Ok(pb::CallType::Consult) => "consult",
        _ => "",
    }
}

fn parse<'a, T: serde::Deserialize<'a>>(text: &'a str) -> Result<T, Failure> {
    serde_json::from_str(text).map_err(|e| Failure::new("invalid_argument", format!("bad frame: {e}")))
}

/// An error frame to send.
pub(super) struct Failure {
    code: String,
    message: String,
}

impl Failure {
    pub(super) fn new(code: &str, message: String) -> Self {
        Self { code: code.to_owned(), message }
    }
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        Self { code: protocol::code_name(status.code()).to_owned(), message: status.message().to_owned() }
    }
}
