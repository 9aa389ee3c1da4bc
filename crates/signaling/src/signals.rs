//! WebRTC signals relayed between the two parties of a call: their types, payload rules and the
//! JSON frame a party receives. Shared by the gateway (SendSignal) and the relay (WebSocket).

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use videocall_domain::CallStatus;

/// Largest SDP accepted in an offer or answer.
pub const MAX_SDP_BYTES: usize = 48 * 1024;
/// Largest ICE candidate object.
pub const MAX_CANDIDATE_BYTES: usize = 4 * 1024;
/// Largest hangup reason.
pub const MAX_REASON_BYTES: usize = 256;

/// The signal-bus identity of the recorder: parties send their recording leg's signals to it
/// (`"to":"@recorder"`), and its signals reach them `from` it. No user id can take this name.
pub const RECORDER_PEER: &str = "@recorder";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SignalType {
    Offer,
    Answer,
    IceCandidate,
    Hangup,
}

impl SignalType {
    pub const ALL: [SignalType; 4] =
        [SignalType::Offer, SignalType::Answer, SignalType::IceCandidate, SignalType::Hangup];

    pub fn as_str(self) -> &'static str {
        match self {
            SignalType::Offer => "offer",
            SignalType::Answer => "answer",
            SignalType::IceCandidate => "ice-candidate",
            SignalType::Hangup => "hangup",
        }
    }
}

impl fmt::Display for SignalType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SignalType {
    type Err = SignalError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|t| t.as_str() == s).ok_or_else(|| SignalError::UnknownType(truncate(s)))
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(32).collect()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignalError {
    #[error("unknown signal type `{0}`, expected offer, answer, ice-candidate or hangup")]
    UnknownType(String),
    #[error("{0} must carry an SDP starting with `v=0`")]
    NotSdp(SignalType),
    #[error("SDP is larger than {MAX_SDP_BYTES} bytes")]
    SdpTooLarge,
    #[error("ice-candidate must carry a JSON object of at most {MAX_CANDIDATE_BYTES} bytes")]
    BadCandidate,
    #[error("hangup reason is longer than {MAX_REASON_BYTES} bytes")]
    ReasonTooLong,
}

/// No media before the callee accepts: until a call is `active`, only the caller negotiates (its
/// `offer` and `ice-candidate`s are relayed and kept for the callee's replay) and either party may
/// send `hangup`; an `answer`, and the callee's `offer` or `ice-candidate`s, are refused. Once
/// active, either party may (re)negotiate. Terminal calls are refused before this is asked.
pub fn check_negotiation(status: CallStatus, from_caller: bool, signal_type: SignalType) -> Result<(), String> {
    if status == CallStatus::Queued {
        return Err("call is queued: no agent has it yet; signals flow once an agent rings (offer) and answers".into());
    }
    let allowed = status == CallStatus::Active
        || signal_type == SignalType::Hangup
        || (from_caller && matches!(signal_type, SignalType::Offer | SignalType::IceCandidate));
    if allowed {
        Ok(())
    } else if from_caller {
        Err(format!("call is {status}: the caller sends no {signal_type} before the callee answers"))
    } else {
        Err(format!("call is {status}: answer it (call.answer / AnswerCall) before sending {signal_type}"))
    }
}

/// Checks a signal's payload: SDP for offer/answer, a JSON object for ice-candidate, a short
/// reason (possibly empty) for hangup.
pub fn validate_payload(signal_type: SignalType, payload: &str) -> Result<(), SignalError> {
    match signal_type {
        SignalType::Offer | SignalType::Answer => {
            if payload.len() > MAX_SDP_BYTES {
                Err(SignalError::SdpTooLarge)
            } else if !payload.starts_with("v=0") {
                Err(SignalError::NotSdp(signal_type))
            } else {
                Ok(())
            }
        }
        SignalType::IceCandidate => {
            // From `{` to `}` exactly: the frame carries it as raw JSON, which cannot keep
            // whitespace around the object, so anything else would not arrive byte for byte.
            // Valid JSON from `{` to `}` is an object; RawValue checks it without building a tree.
            let ok = payload.len() <= MAX_CANDIDATE_BYTES
                && payload.starts_with('{')
                && payload.ends_with('}')
                && serde_json::from_str::<&RawValue>(payload).is_ok();
            if ok { Ok(()) } else { Err(SignalError::BadCandidate) }
        }
        SignalType::Hangup => {
            if payload.len() > MAX_REASON_BYTES {
                Err(SignalError::ReasonTooLong)
            } else {
                Ok(())
            }
        }
    }
}

/// The frame a party receives, minus its leading `{"seq":N,` (the bus inserts the sequence number
/// atomically). Offer/answer carry `sdp` byte for byte; ice-candidate carries `candidate` as the
/// sender's JSON, byte for byte.
#[derive(Serialize)]
struct FrameBody<'a> {
    #[serde(rename = "type")]
    signal_type: SignalType,
    call_id: &'a str,
    from: &'a str,
    to: &'a str,
    sent_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    sdp: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    candidate: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

/// Everything of the frame after `{"seq":N,` — validate the payload first.
pub fn frame_tail(
    signal_type: SignalType,
    call_id: &str,
    from: &str,
    to: &str,
    payload: &str,
) -> Result<String, SignalError> {
    validate_payload(signal_type, payload)?;
    let candidate = match signal_type {
        SignalType::IceCandidate => {
            Some(serde_json::from_str::<&RawValue>(payload).map_err(|_| SignalError::BadCandidate)?)
        }
        _ => None,
    };
    let body = FrameBody {
        signal_type,
        call_id,
        from,
        to,
        sent_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        sdp: matches!(signal_type, SignalType::Offer | SignalType::Answer).then_some(payload),
        candidate,
        reason: (signal_type == SignalType::Hangup && !payload.is_empty()).then_some(payload),
    };
    let json = serde_json::to_string(&body).map_err(|_| SignalError::BadCandidate)?;
    Ok(json[1..].to_owned())
}

/// The parts of a stored frame that replay needs.
#[derive(Debug, Deserialize)]
pub struct FrameHead {
    pub seq: u64,
    pub to: String,
    pub call_id: String,
}

/// A signal frame as a gRPC subscriber sees it.
#[derive(Debug, Deserialize)]
pub struct ParsedSignal<'a> {
    pub seq: u64,
    #[serde(rename = "type")]
    pub signal_type: SignalType,
    pub call_id: String,
    pub from: String,
    pub to: String,
    pub sent_at: String,
    #[serde(borrow)]
    pub sdp: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    pub candidate: Option<&'a RawValue>,
    pub reason: Option<String>,
}

impl ParsedSignal<'_> {
    /// The payload as the sender gave it.
    pub fn payload(&self) -> String {
        match self.signal_type {
            SignalType::Offer | SignalType::Answer => self.sdp.as_deref().unwrap_or_default().to_owned(),
            SignalType::IceCandidate => self.candidate.map(|c| c.get().to_owned()).unwrap_or_default(),
            SignalType::Hangup => self.reason.clone().unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn before_the_call_is_active_only_the_caller_negotiates() {
        use CallStatus::*;
        use SignalType::*;
        for status in [Initiated, Ringing] {
            assert!(check_negotiation(status, true, Offer).is_ok());
            assert!(check_negotiation(status, true, IceCandidate).is_ok());
            assert!(check_negotiation(status, true, Hangup).is_ok());
            assert!(check_negotiation(status, false, Hangup).is_ok());
            assert!(check_negotiation(status, true, Answer).is_err());
            for refused in [Offer, Answer, IceCandidate] {
                let message = check_negotiation(status, false, refused).unwrap_err();
                assert!(message.contains(status.as_str()) && message.contains("answer it"), "{message}");
            }
        }
        for signal in SignalType::ALL {
            assert!(check_negotiation(Active, true, signal).is_ok());
            assert!(check_negotiation(Active, false, signal).is_ok());
        }
    }

    #[test]
    fn payload_rules() {
        assert_eq!(validate_payload(SignalType::Offer, "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"), Ok(()));
        assert_eq!(validate_payload(SignalType::Answer, "hello"), Err(SignalError::NotSdp(SignalType::Answer)));
        assert_eq!(
            validate_payload(SignalType::Offer, &format!("v=0{}", "a".repeat(MAX_SDP_BYTES))),
            Err(SignalError::SdpTooLarge)
        );
        assert_eq!(
            validate_payload(
                SignalType::IceCandidate,
                r#"{"candidate":"candidate:1 1 udp 1 127.0.0.1 5000 typ host"}"#
            ),
            Ok(())
        );
        assert_eq!(validate_payload(SignalType::IceCandidate, "[1]"), Err(SignalError::BadCandidate));
        assert_eq!(validate_payload(SignalType::IceCandidate, "{"), Err(SignalError::BadCandidate));
        for not_one_object in ["{\"a\":1} {\"b\":2}", "{\"a\":}", "{} []"] {
            assert_eq!(validate_payload(SignalType::IceCandidate, not_one_object), Err(SignalError::BadCandidate));
        }
        assert_eq!(validate_payload(SignalType::Hangup, ""), Ok(()));
        assert_eq!("bye".parse::<SignalType>(), Err(SignalError::UnknownType("bye".into())));
    }

    /// Found by `scripts/fuzz.sh` (signal_payload): a candidate with whitespace around the object
    /// was accepted, and the frame's raw JSON dropped the whitespace, so the other party did not
    /// get the payload byte for byte.
    #[test]
    fn candidates_with_whitespace_around_the_object_are_refused() {
        for payload in [" {\"a\":1}", "{\"a\":1} ", "\n{\"a\":[1,2,{\"b\":null}]}\t"] {
            assert_eq!(
                validate_payload(SignalType::IceCandidate, payload),
                Err(SignalError::BadCandidate),
                "{payload:?}"
            );
            assert!(frame_tail(SignalType::IceCandidate, "c1", "a", "b", payload).is_err());
        }
        let inner = "{ \"candidate\" : \"x\" }";
        let frame =
            format!("{{\"seq\":1,{}", frame_tail(SignalType::IceCandidate, "c1", "a", "b", inner).expect("valid"));
        let parsed: ParsedSignal<'_> = serde_json::from_str(&frame).expect("json");
        assert_eq!(parsed.payload(), inner, "whitespace inside the object is kept");
    }

    #[test]
    fn frames_keep_sdp_and_candidates_byte_for_byte() {
        let sdp = "v=0\r\no=- 46117 2 IN IP4 127.0.0.1\r\ns=-\r\na=\"quoted\"\r\n";
        let frame = format!("{{\"seq\":7,{}", frame_tail(SignalType::Offer, "c1", "alice", "bob", sdp).expect("valid"));
        let parsed: ParsedSignal<'_> = serde_json::from_str(&frame).expect("json");
        assert_eq!((parsed.seq, parsed.payload()), (7, sdp.to_owned()));

        let candidate =
            r#"{ "candidate": "candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host", "sdpMLineIndex": 0 }"#;
        let frame = format!(
            "{{\"seq\":8,{}",
            frame_tail(SignalType::IceCandidate, "c1", "bob", "alice", candidate).expect("valid")
        );
        assert!(frame.contains(candidate), "raw candidate JSON is kept: {frame}");
        let parsed: ParsedSignal<'_> = serde_json::from_str(&frame).expect("json");
        assert_eq!(parsed.payload(), candidate);
        let head: FrameHead = serde_json::from_str(&frame).expect("head");
        assert_eq!((head.seq, head.to.as_str(), head.call_id.as_str()), (8, "alice", "c1"));
    }
}
