//! What the fuzz targets exercise, compiled from the services' own source files (they are pure
//! serde and need none of the services' heavy dependencies): the relay's client frame shapes
//! (`services/signaling-relay/src/frames.rs`) and the signal rules
//! (`crates/signaling/src/signals.rs`).

#[path = "../../services/signaling-relay/src/frames.rs"]
pub mod frames;
#[path = "../../crates/signaling/src/signals.rs"]
pub mod signals;

use frames::{CallCommand, Envelope, Initiate, Quality, Resume, SignalIn};
use signals::{FrameHead, ParsedSignal, SignalType, frame_tail, validate_payload};

/// One WebSocket text frame through the relay's parsing, as `connection/commands.rs` does it: the
/// envelope, then the frame of its type; a signal's payload is validated and, when valid, becomes
/// the frame the other party would receive, which must parse back with the payload unchanged.
pub fn relay_frame(data: &[u8]) {
    // A text frame is UTF-8 (tungstenite refuses anything else before the relay sees it).
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(envelope) = serde_json::from_str::<Envelope>(text) else { return };
    match envelope.frame_type.as_str() {
        "call.initiate" => drop(serde_json::from_str::<Initiate>(text)),
        "call.ring" | "call.answer" | "call.reject" | "call.end" => drop(serde_json::from_str::<CallCommand>(text)),
        "call.quality" => drop(serde_json::from_str::<Quality>(text)),
        "resume" => drop(serde_json::from_str::<Resume>(text)),
        kind @ ("offer" | "answer" | "ice-candidate" | "hangup") => {
            let signal_type: SignalType = kind.parse().expect("the four signal names parse");
            let Ok(frame) = serde_json::from_str::<SignalIn<'_>>(text) else { return };
            let payload: &str = match signal_type {
                SignalType::Offer | SignalType::Answer => frame.sdp.as_deref().unwrap_or_default(),
                SignalType::IceCandidate => frame.candidate.map(|c| c.get()).unwrap_or_default(),
                SignalType::Hangup => frame.reason.as_deref().unwrap_or_default(),
            };
            round_trip(signal_type, &frame.call_id, payload);
        }
        _ => {}
    }
}

/// A signal type (first byte) and a payload (the rest): the validation must not panic, and a
/// payload it accepts must survive the frame round trip byte for byte.
pub fn signal_payload(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else { return };
    let Ok(payload) = std::str::from_utf8(rest) else { return };
    let _ = payload.parse::<SignalType>();
    let signal_type = SignalType::ALL[usize::from(selector) % SignalType::ALL.len()];
    round_trip(signal_type, "call-1", payload);
}

fn round_trip(signal_type: SignalType, call_id: &str, payload: &str) {
    if validate_payload(signal_type, payload).is_err() {
        return;
    }
    let tail =
        frame_tail(signal_type, call_id, "from-user", "to-user", payload).expect("a valid payload makes a frame");
    let frame = format!("{{\"seq\":7,{tail}");
    let parsed: ParsedSignal<'_> = serde_json::from_str(&frame).expect("the frame parses back");
    assert_eq!(parsed.payload(), payload, "payload kept byte for byte");
    assert_eq!((parsed.seq, parsed.call_id.as_str(), parsed.signal_type), (7, call_id, signal_type));
    let head: FrameHead = serde_json::from_str(&frame).expect("the replay head parses");
    assert_eq!(head.to, "to-user");
}
