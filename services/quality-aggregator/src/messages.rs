//! What arrives on the queue: CloudEvents 1.0 JSON from the gateway's outbox — CallQualityReported
//! (a sample) or CallEnded / CallMissed / CallRejected (the call is over) — parsed and checked.
//! Anything else is [`Malformed`] and goes to the dead-letter queue with the reason.

use serde_json::Value;
use uuid::Uuid;
use videocall_calls::quality_sample::{CALL_QUALITY_REPORTED, QualityReported};
pub use videocall_messaging::inbound::Malformed;
use videocall_messaging::inbound::{Bodies, parse_envelope};

pub const MAX_USER_ID_BYTES: usize = 128;
/// Event types that end a call, hence finalize its summary.
pub const ENDINGS: [&str; 3] = ["CallEnded", "CallMissed", "CallRejected"];

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Sample(QualityReported),
    /// The call ended (or was missed or rejected): its summary is final.
    Finalize {
        call_id: Uuid,
    },
}

/// A checked message: its dedupe id and what it says.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    pub message_id: String,
    pub event: Event,
}

/// Parses `body`. The dedupe id is the AMQP `message_id` property, else the CloudEvents `id`.
pub fn parse(message_id_property: Option<&str>, body: &[u8]) -> Result<Incoming, Malformed> {
    let envelope = parse_envelope(message_id_property, body, Bodies::CloudEvents)?;
    let (message_id, event_type, data) = (envelope.message_id, envelope.event_type.unwrap_or_default(), envelope.data);
    let event = if event_type == CALL_QUALITY_REPORTED.0 {
        let sample: QualityReported = serde_json::from_value(data).map_err(|e| Malformed(format!("data: {e}")))?;
        sample.sample().validate().map_err(|e| Malformed(format!("data.{e}")))?;
        let reporter = &sample.reporter_id;
        if reporter.is_empty() || reporter.len() > MAX_USER_ID_BYTES || reporter.chars().any(char::is_control) {
            return Err(Malformed(format!("data.reporter_id must be 1-{MAX_USER_ID_BYTES} bytes of printable text")));
        }
        Event::Sample(sample)
    } else if ENDINGS.contains(&event_type.as_str()) {
        let call_id = data
            .get("call_id")
            .and_then(Value::as_str)
            .and_then(|id| Uuid::parse_str(id).ok())
            .ok_or_else(|| Malformed("data.call_id is missing or not a UUID".into()))?;
        Event::Finalize { call_id }
    } else {
        return Err(Malformed(format!("event type `{event_type}` is not consumed here")));
    };
    Ok(Incoming { message_id, event })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample_event(data: Value) -> Vec<u8> {
        json!({"specversion":"1.0","id":"e-1","type":"CallQualityReported","source":"/t","data":data})
            .to_string()
            .into_bytes()
    }

    fn good_data() -> Value {
        json!({"call_id":"019abf6e-4f00-7000-8000-000000000001","reporter_id":"alice","direction":"inbound",
               "rtt_ms":48,"jitter_ms":3.1,"packet_loss_percent":0.4,"bitrate_kbps":1450,"width":1280,
               "height":720,"fps":30,"reported_at":"2026-11-25T09:00:00Z"})
    }

    fn reason(id: Option<&str>, body: &[u8]) -> String {
        parse(id, body).expect_err("malformed").0
    }

    #[test]
    fn samples_and_endings_parse() {
        let parsed = parse(None, &sample_event(good_data())).expect("valid");
        assert_eq!(parsed.message_id, "e-1");
        let Event::Sample(s) = parsed.event else { panic!("a sample") };
        assert_eq!((s.reporter_id.as_str(), s.width, s.rtt_ms), ("alice", 1280, 48.0));
        let ended = json!({"specversion":"1.0","id":"e-2","type":"CallEnded",
                           "data":{"call_id":"019abf6e-4f00-7000-8000-000000000001","status":"ended"}});
        let parsed = parse(Some("m-2"), ended.to_string().as_bytes()).expect("valid");
        assert_eq!(parsed.message_id, "m-2", "the AMQP property wins");
        assert!(matches!(parsed.event, Event::Finalize { .. }));
    }

    #[test]
    fn bad_messages_say_why() {
        assert!(reason(Some("m"), b"{nope").starts_with("body is not JSON"));
        assert!(reason(Some("m"), br#"{"rtt_ms":1}"#).starts_with("not a CloudEvents 1.0 envelope"));
        let mut data = good_data();
        data["rtt_ms"] = json!(-5);
        assert_eq!(reason(None, &sample_event(data)), "data.rtt_ms must be between 0 and 60000, got -5");
        let mut data = good_data();
        data["rtt_ms"] = Value::Null; // how serde_json writes NaN
        assert!(reason(None, &sample_event(data)).starts_with("data: invalid type: null"));
        let mut data = good_data();
        data["direction"] = json!("up");
        assert!(reason(None, &sample_event(data)).contains("unknown variant `up`"));
        let mut data = good_data();
        data["reporter_id"] = json!("");
        assert!(reason(None, &sample_event(data)).starts_with("data.reporter_id must be"));
        let other = json!({"specversion":"1.0","id":"e","type":"CallRinging","data":{}});
        assert_eq!(reason(None, other.to_string().as_bytes()), "event type `CallRinging` is not consumed here");
        let ended = json!({"specversion":"1.0","id":"e","type":"CallEnded","data":{"call_id":"x"}});
        assert_eq!(reason(None, ended.to_string().as_bytes()), "data.call_id is missing or not a UUID");
        let no_id = json!({"specversion":"1.0","type":"CallEnded","data":{}});
        assert!(reason(None, no_id.to_string().as_bytes()).starts_with("no message id"));
    }
}
