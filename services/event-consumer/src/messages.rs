//! What arrives on the consumed queues: CloudEvents 1.0 JSON or a plain JSON object, parsed and
//! validated into [`UserOffline`] or [`SupportTicketCreated`]. Anything else is [`Malformed`].

use serde::{Deserialize, de::DeserializeOwned};
pub use videocall_messaging::inbound::Malformed;
use videocall_messaging::inbound::{Bodies, parse_envelope};

/// Ids (user, customer, agent, ticket) are 1-128 bytes, as everywhere in Videocall.
pub const MAX_ID_BYTES: usize = 128;
/// A ticket's subject is shown to the customer; longer ones are refused, not cut.
pub const MAX_SUBJECT_BYTES: usize = 512;

/// A validated message: its dedupe id and its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming<T> {
    pub message_id: String,
    pub data: T,
}

/// The `data` of an upstream event, with the CloudEvents `type` it travels under.
pub trait EventData: DeserializeOwned {
    const EVENT_TYPE: &'static str;
    fn validate(&self) -> Result<(), Malformed>;
}

/// `UserOffline`: the presence service lost every connection of this user.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct UserOffline {
    pub user_id: String,
}

impl EventData for UserOffline {
    const EVENT_TYPE: &'static str = "UserOffline";

    fn validate(&self) -> Result<(), Malformed> {
        check_id("user_id", &self.user_id)
    }
}

/// `SupportTicketCreated`: a customer opened a ticket; we offer them a video call.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SupportTicketCreated {
    pub ticket_id: String,
    pub customer_id: String,
    #[serde(default)]
    pub agent_id: Option<String>,
    #[serde(default)]
    pub subject: Option<String>,
}

impl EventData for SupportTicketCreated {
    const EVENT_TYPE: &'static str = "SupportTicketCreated";

    fn validate(&self) -> Result<(), Malformed> {
        check_id("ticket_id", &self.ticket_id)?;
        check_id("customer_id", &self.customer_id)?;
        if let Some(agent) = &self.agent_id {
            check_id("agent_id", agent)?;
        }
        if let Some(subject) = &self.subject
            && subject.len() > MAX_SUBJECT_BYTES
        {
            return Err(Malformed(format!("data.subject has {} bytes, at most {MAX_SUBJECT_BYTES}", subject.len())));
        }
        Ok(())
    }
}

fn check_id(field: &str, value: &str) -> Result<(), Malformed> {
    if value.is_empty() || value.len() > MAX_ID_BYTES {
        return Err(Malformed(format!("data.{field} must be 1-{MAX_ID_BYTES} bytes, got {}", value.len())));
    }
    if value.chars().any(char::is_control) {
        return Err(Malformed(format!("data.{field} contains control characters")));
    }
    Ok(())
}

/// Parses `body`: a CloudEvents envelope of type `T::EVENT_TYPE` (or `<namespace>.<type>`), or
/// a plain JSON object that is the data itself; then the data's own checks.
pub fn parse<T: EventData>(message_id_property: Option<&str>, body: &[u8]) -> Result<Incoming<T>, Malformed> {
    let envelope = parse_envelope(message_id_property, body, Bodies::CloudEventsOrPlain)?;
    if let Some(t) = &envelope.event_type
        && t != T::EVENT_TYPE
        && !t.ends_with(&format!(".{}", T::EVENT_TYPE))
    {
        return Err(Malformed(format!("event type `{t}` is not {}", T::EVENT_TYPE)));
    }
    let data: T = serde_json::from_value(envelope.data).map_err(|e| Malformed(format!("data: {e}")))?;
    data.validate()?;
    Ok(Incoming { message_id: envelope.message_id, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason<T: EventData + std::fmt::Debug>(id: Option<&str>, body: &str) -> String {
        parse::<T>(id, body.as_bytes()).expect_err("malformed").0
    }

    #[test]
    fn cloudevents_and_plain_bodies_parse() {
        let ce =
            r#"{"specversion":"1.0","id":"e-1","type":"UserOffline","source":"/presence","data":{"user_id":"alice"}}"#;
        let parsed = parse::<UserOffline>(None, ce.as_bytes()).expect("valid");
        assert_eq!(parsed, Incoming { message_id: "e-1".into(), data: UserOffline { user_id: "alice".into() } });
        let with_property = parse::<UserOffline>(Some("m-9"), ce.as_bytes()).expect("valid");
        assert_eq!(with_property.message_id, "m-9", "the AMQP property wins");

        let plain = r#"{"ticket_id":"T-42","customer_id":"carol","subject":"printer on fire"}"#;
        let parsed = parse::<SupportTicketCreated>(Some("m-1"), plain.as_bytes()).expect("valid");
        assert_eq!(parsed.data.ticket_id, "T-42");
        assert_eq!(parsed.data.agent_id, None);
        assert_eq!(parsed.data.subject.as_deref(), Some("printer on fire"));
    }

    #[test]
    fn bad_bodies_say_why() {
        assert!(reason::<UserOffline>(Some("m"), "{not json").starts_with("body is not JSON"));
        assert_eq!(reason::<UserOffline>(Some("m"), "[1]"), "body is not a JSON object");
        assert!(reason::<UserOffline>(None, r#"{"user_id":"alice"}"#).starts_with("no message id"));
        assert!(reason::<UserOffline>(Some("m"), r#"{"user":"alice"}"#).contains("missing field `user_id`"));
        assert!(reason::<UserOffline>(Some("m"), r#"{"user_id":""}"#).starts_with("data.user_id must be 1-128"));
        let long = format!(r#"{{"user_id":"{}"}}"#, "a".repeat(129));
        assert!(reason::<UserOffline>(Some("m"), &long).starts_with("data.user_id must be 1-128 bytes, got 129"));
        assert!(reason::<UserOffline>(Some("m"), r#"{"user_id":5}"#).starts_with("data: invalid type"));
        let wrong_type = r#"{"specversion":"1.0","id":"e","type":"UserOnline","data":{"user_id":"a"}}"#;
        assert_eq!(reason::<UserOffline>(None, wrong_type), "event type `UserOnline` is not UserOffline");
        let no_data = r#"{"specversion":"1.0","id":"e","type":"UserOffline"}"#;
        assert_eq!(reason::<UserOffline>(None, no_data), "CloudEvents `data` is missing");
        let bad_agent = r#"{"ticket_id":"T","customer_id":"c","agent_id":""}"#;
        assert!(reason::<SupportTicketCreated>(Some("m"), bad_agent).starts_with("data.agent_id"));
        let long_id = "m".repeat(257);
        assert!(reason::<UserOffline>(Some(&long_id), r#"{"user_id":"a"}"#).starts_with("message id has 257 bytes"));
    }
}
