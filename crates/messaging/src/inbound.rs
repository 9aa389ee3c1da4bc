//! What a consumer reads off a queue: the CloudEvents 1.0 envelope (or, where a consumer accepts
//! them, a plain JSON object) and the id it dedupes on, checked the same way for every consumer.
//! What can never be read is [`Malformed`] and goes to the dead-letter queue with the reason; what
//! was read is recorded in the inbox ([`record_message`]) with its effect.

use chrono::Utc;
use sea_orm::{ActiveValue::Set, ConnectionTrait, DbErr, EntityTrait, TryInsertResult};
use serde_json::Value;
use videocall_entities::processed_messages;

use crate::inbox_worker::Verdict;

/// `processed_messages.message_id` holds at most this many bytes.
pub const MAX_MESSAGE_ID_BYTES: usize = 256;

/// Why a message can never be applied; it goes to the dead-letter queue with this text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub String);

/// Why a message was not applied, and so what becomes of it ([`Verdict`]).
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The message can never be applied: dead-letter it.
    #[error("malformed: {0}")]
    Malformed(#[from] Malformed),
    /// It could be applied later (the database failed): retry, boundedly.
    #[error("transient: {0}")]
    Transient(String),
    /// Retrying will not help (e.g. stored data is unreadable): dead-letter it.
    #[error("cannot apply: {0}")]
    Permanent(String),
}

impl From<DbErr> for Failure {
    fn from(e: DbErr) -> Self {
        Failure::Transient(format!("database: {e}"))
    }
}

impl From<Failure> for Verdict {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Transient(reason) => Verdict::Retry(reason),
            failure @ (Failure::Malformed(_) | Failure::Permanent(_)) => Verdict::DeadLetter(failure.to_string()),
        }
    }
}

/// Which bodies a consumer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bodies {
    /// CloudEvents 1.0 only (events of our own outbox).
    CloudEvents,
    /// CloudEvents 1.0, or a plain JSON object that is the event's data (upstream producers).
    CloudEventsOrPlain,
}

/// A readable message: its dedupe id, its CloudEvents `type` (none for a plain body) and its data.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub message_id: String,
    pub event_type: Option<String>,
    /// The envelope's `data`, or the whole plain body: always a JSON object.
    pub data: Value,
}

/// Reads `body`. The dedupe id is the AMQP `message_id` property, else the CloudEvents `id`; a
/// message with neither is malformed, since it could not be recognised when redelivered.
pub fn parse_envelope(message_id_property: Option<&str>, body: &[u8], bodies: Bodies) -> Result<Envelope, Malformed> {
    let value: Value = serde_json::from_slice(body).map_err(|e| Malformed(format!("body is not JSON: {e}")))?;
    let Value::Object(mut object) = value else {
        return Err(Malformed("body is not a JSON object".into()));
    };
    let (event_type, event_id, data) = match object.get("specversion") {
        None if bodies == Bodies::CloudEventsOrPlain => (None, None, Value::Object(object)),
        None => return Err(Malformed("not a CloudEvents 1.0 envelope (specversion `1.0` missing)".into())),
        Some(version) if version.as_str() != Some("1.0") => {
            return Err(Malformed(format!("unsupported CloudEvents specversion {version}")));
        }
        Some(_) => {
            let Some(event_type) = object.get("type").and_then(Value::as_str).map(str::to_owned) else {
                return Err(Malformed("CloudEvents `type` is missing".into()));
            };
            let id = match object.get("id") {
                None => None,
                Some(Value::String(id)) => Some(id.clone()),
                Some(_) => return Err(Malformed("CloudEvents `id` is not a string".into())),
            };
            match object.remove("data") {
                Some(data @ Value::Object(_)) => (Some(event_type), id, data),
                Some(_) => return Err(Malformed("CloudEvents `data` is not a JSON object".into())),
                None => return Err(Malformed("CloudEvents `data` is missing".into())),
            }
        }
    };
    let message_id = message_id_property
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
        .or(event_id.filter(|id| !id.trim().is_empty()))
        .ok_or_else(|| {
            Malformed("no message id: the message_id property is unset and there is no CloudEvents id".into())
        })?;
    if message_id.len() > MAX_MESSAGE_ID_BYTES {
        return Err(Malformed(format!("message id has {} bytes, at most {MAX_MESSAGE_ID_BYTES}", message_id.len())));
    }
    Ok(Envelope { message_id, event_type, data })
}

/// Inserts the inbox row of `message_id` for `consumer`, in the transaction of the message's
/// effect; false when this consumer has processed it already. A replica racing on the same id
/// waits here on the primary key until the first commits or rolls back.
pub async fn record_message<C: ConnectionTrait>(txn: &C, consumer: &str, message_id: &str) -> Result<bool, DbErr> {
    let inserted = processed_messages::Entity::insert(processed_messages::ActiveModel {
        consumer: Set(consumer.to_owned()),
        message_id: Set(message_id.to_owned()),
        processed_at: Set(Utc::now()),
    })
    .on_conflict_do_nothing()
    .exec_without_returning(txn)
    .await?;
    Ok(matches!(inserted, TryInsertResult::Inserted(n) if n > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(bodies: Bodies, body: &str) -> String {
        parse_envelope(None, body.as_bytes(), bodies).expect_err("malformed").0
    }

    #[test]
    fn plain_bodies_only_where_accepted() {
        let plain = r#"{"id":"x","user_id":"a"}"#;
        assert!(reason(Bodies::CloudEvents, plain).starts_with("not a CloudEvents 1.0 envelope"));
        let read = parse_envelope(Some("m"), plain.as_bytes(), Bodies::CloudEventsOrPlain).expect("plain");
        assert_eq!((read.message_id.as_str(), read.event_type), ("m", None));
        assert_eq!(read.data["user_id"], "a");
    }

    #[test]
    fn envelope_fields_are_checked_for_every_consumer() {
        for bodies in [Bodies::CloudEvents, Bodies::CloudEventsOrPlain] {
            let old = r#"{"specversion":"0.3","id":"e","type":"T","data":{}}"#;
            assert_eq!(reason(bodies, old), r#"unsupported CloudEvents specversion "0.3""#);
            let numeric_id = r#"{"specversion":"1.0","id":7,"type":"T","data":{}}"#;
            assert_eq!(reason(bodies, numeric_id), "CloudEvents `id` is not a string");
            let no_type = r#"{"specversion":"1.0","id":"e","data":{}}"#;
            assert_eq!(reason(bodies, no_type), "CloudEvents `type` is missing");
            let list = r#"{"specversion":"1.0","id":"e","type":"T","data":[]}"#;
            assert_eq!(reason(bodies, list), "CloudEvents `data` is not a JSON object");
        }
    }
}
