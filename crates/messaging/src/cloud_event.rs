//! The CloudEvents 1.0 envelope (structured JSON mode) every domain event travels in.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use uuid::Uuid;

/// A CloudEvents 1.0 envelope in structured JSON mode.
#[derive(Debug, Clone, Serialize)]
pub struct CloudEvent<T: Serialize> {
    pub specversion: &'static str,
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub time: String,
    pub subject: String,
    pub datacontenttype: &'static str,
    /// Distributed-tracing extension: the W3C trace context the event continues.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    pub data: T,
}

impl<T: Serialize> CloudEvent<T> {
    pub fn new(id: Uuid, source: &str, event_type: &str, subject: &str, time: DateTime<Utc>, data: T) -> Self {
        Self {
            specversion: "1.0",
            id: id.to_string(),
            source: source.to_owned(),
            event_type: event_type.to_owned(),
            time: time.to_rfc3339_opts(SecondsFormat::Millis, true),
            subject: subject.to_owned(),
            datacontenttype: "application/json",
            traceparent: None,
            data,
        }
    }
}

/// `source` of events from `service` in `cell`.
pub fn event_source(cell_id: &str, service: &str) -> String {
    format!("/videocall/{cell_id}/{service}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_has_the_cloudevents_fields() {
        let id = Uuid::now_v7();
        let event = CloudEvent::new(
            id,
            "/videocall/local/api-gateway",
            "CallEnded",
            "call-1",
            Utc::now(),
            serde_json::json!({"a": 1}),
        );
        let json = serde_json::to_value(&event).expect("serializable");
        for field in ["specversion", "id", "source", "type", "time", "subject", "datacontenttype", "data"] {
            assert!(json.get(field).is_some(), "missing {field}");
        }
        assert_eq!(json["specversion"], "1.0");
        assert_eq!(json["id"], id.to_string());
        assert!(json["time"].as_str().is_some_and(|t| t.ends_with('Z')));
    }
}
