//! The client frames' shapes: what the relay deserializes from a WebSocket text frame. Pure
//! serde, no I/O, so the fuzz crate (`fuzz/`) compiles this file as it is.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::value::RawValue;

/// Every client frame has a `type`; `id` (optional) comes back in the ack or error.
#[derive(Debug, Deserialize)]
pub struct Envelope {
    #[serde(rename = "type")]
    pub frame_type: String,
    #[serde(default)]
    pub id: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
pub struct Initiate {
    #[serde(default)]
    pub callee_id: String,
    #[serde(default)]
    pub call_type: String,
    #[serde(default)]
    pub request_id: Option<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Takes up a video support offer (see `video_support_offered`).
    #[serde(default)]
    pub support_offer_id: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct CallCommand {
    pub call_id: String,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Quality {
    pub call_id: String,
    #[serde(default)]
    pub rtt_ms: f64,
    #[serde(default)]
    pub jitter_ms: f64,
    #[serde(default)]
    pub packet_loss_percent: f64,
    #[serde(default)]
    pub bitrate_kbps: f64,
    #[serde(default)]
    pub width: u32,
    #[serde(default)]
    pub height: u32,
    #[serde(default)]
    pub fps: f64,
    #[serde(default)]
    pub direction: String,
}

/// A signal from the client. SDP and candidates are kept as sent.
#[derive(Debug, Deserialize)]
pub struct SignalIn<'a> {
    pub call_id: String,
    #[serde(default, borrow)]
    pub sdp: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    pub candidate: Option<&'a RawValue>,
    #[serde(default)]
    pub reason: Option<String>,
    /// Absent: the other party. `@recorder`: the call's recorder (the recording leg).
    #[serde(default)]
    pub to: Option<String>,
}

/// `recording.consent`: a party gives (`true`) or withdraws (`false`) its consent to record.
#[derive(Debug, Deserialize)]
pub struct Consent {
    pub call_id: String,
    pub consent: bool,
}

/// `agent.availability`: an agent takes desk calls of `call_types` now (`available`), or not.
#[derive(Debug, Deserialize)]
pub struct Availability {
    pub available: bool,
    #[serde(default)]
    pub call_types: Vec<String>,
}

/// `call.transfer`: the call's agent hands it to another agent or to a desk (one of the two).
#[derive(Debug, Deserialize)]
pub struct TransferRequest {
    pub call_id: String,
    #[serde(default)]
    pub to_agent_id: String,
    #[serde(default)]
    pub to_call_type: String,
}

/// `queue.get`: a desk's queue (agents only).
#[derive(Debug, Deserialize)]
pub struct QueueGet {
    pub call_type: String,
}

#[derive(Debug, Deserialize)]
pub struct Resume {
    pub call_id: String,
    #[serde(default)]
    pub after_seq: u64,
}
