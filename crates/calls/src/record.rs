//! A call as the services see it (the row with its enums parsed), who acts on it, what may go
//! wrong, and what a new call needs.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sea_orm::DbErr;
use uuid::Uuid;
use videocall_domain::{CallStatus, CallType, EndReason, Party, Routing};
use videocall_entities::calls;
use videocall_messaging::inbound::Failure;

/// A call as the services see it: the row with its enums parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    pub id: Uuid,
    pub caller_id: String,
    pub callee_id: String,
    pub call_type: CallType,
    pub status: CallStatus,
    pub end_reason: Option<EndReason>,
    pub ended_by: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub request_id: String,
    pub version: i64,
    pub ring_timeout_secs: i32,
    pub created_at: DateTime<Utc>,
    pub ringing_at: Option<DateTime<Utc>>,
    pub answered_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    /// Set on desk calls: when the call joined its desk's queue.
    pub queued_at: Option<DateTime<Utc>>,
    /// W3C `traceparent` of the request that made the call (when it was traced).
    pub trace_context: Option<String>,
}

impl CallRecord {
    /// A desk call (queued for its desk's agents), or a call to a person.
    pub fn routing(&self) -> Routing {
        if self.queued_at.is_some() { Routing::Desk } else { Routing::Direct }
    }

    /// Talk time: from answer to end.
    pub fn duration_ms(&self) -> Option<i64> {
        Some((self.ended_at? - self.answered_at?).num_milliseconds())
    }

    /// The role `actor` plays in this call, if any.
    pub fn party_of(&self, actor: &Actor) -> Option<Party> {
        if actor.is_service {
            Some(Party::Service)
        } else if actor.id == self.caller_id {
            Some(Party::Caller)
        } else if actor.id == self.callee_id {
            Some(Party::Callee)
        } else {
            None
        }
    }

    pub fn from_model(m: calls::Model) -> Result<Self, StoreError> {
        let corrupt = |detail: String| StoreError::Corrupt { id: m.id, detail };
        let status = m.status.parse().map_err(|e: videocall_domain::ParseEnumError| corrupt(e.to_string()))?;
        let call_type = m.call_type.parse().map_err(|e: videocall_domain::ParseEnumError| corrupt(e.to_string()))?;
        let end_reason = match m.end_reason.as_deref() {
            Some(r) => Some(r.parse().map_err(|e: videocall_domain::ParseEnumError| corrupt(e.to_string()))?),
            None => None,
        };
        let metadata = serde_json::from_value(m.metadata.clone()).map_err(|e| corrupt(format!("metadata: {e}")))?;
        Ok(Self {
            id: m.id,
            caller_id: m.caller_id,
            callee_id: m.callee_id,
            call_type,
            status,
            end_reason,
            ended_by: m.ended_by,
            metadata,
            request_id: m.request_id,
            version: m.version,
            ring_timeout_secs: m.ring_timeout_secs,
            created_at: m.created_at,
            ringing_at: m.ringing_at,
            answered_at: m.answered_at,
            ended_at: m.ended_at,
            queued_at: m.queued_at,
            trace_context: m.trace_context,
        })
    }
}

/// Who asks for a change: a user id, or a service acting for anyone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub id: String,
    pub is_service: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("call {0} not found")]
    NotFound(Uuid),
    #[error("not a party of this call")]
    NotAParty,
    #[error("this party may not do that")]
    Forbidden,
    #[error("call is {0}")]
    WrongState(CallStatus),
    #[error("user {0} is busy in another call")]
    Busy(String),
    #[error("end reason `{0}` cannot be given here")]
    BadReason(EndReason),
    #[error("support offer {0} is not available: unknown, expired, taken, or not this caller's")]
    OfferUnavailable(Uuid),
    /// The call's recording cannot do that now (the message says why).
    #[error("{0}")]
    Recording(String),
    /// A transfer cannot be made now (one rings already, no agent of the desk is free).
    #[error("{0}")]
    Transfer(String),
    /// The request names something that can never work (a transfer to a party of the call).
    #[error("{0}")]
    Invalid(String),
    #[error("stored call {id} is unreadable: {detail}")]
    Corrupt { id: Uuid, detail: String },
    #[error("database: {0}")]
    Db(#[from] DbErr),
}

/// A consumer's effect met a store error: the database may come back (retry); anything else will
/// not change on a retry (dead-letter).
impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Db(e) => e.into(),
            other => Failure::Permanent(other.to_string()),
        }
    }
}

/// A call to create.
#[derive(Debug, Clone)]
pub struct NewCall {
    pub request_id: String,
    pub caller_id: String,
    /// Empty for a desk call: it waits in the queue of `call_type` for an agent.
    pub callee_id: String,
    pub call_type: CallType,
    pub metadata: BTreeMap<String, String>,
    /// A call to a person: how long it may ring. A desk call: how long it may wait for an agent
    /// (the queue timeout) before it is missed.
    pub ring_timeout_secs: i32,
}

/// Result of [`CallStore::initiate`]: `created` is false when the request id was seen before.
#[derive(Debug, Clone)]
pub struct Initiated {
    pub call: CallRecord,
    pub created: bool,
}

impl CallRecord {
    /// The users of this call, caller first: who is told when it changes. A queued desk call has
    /// no callee.
    pub fn parties(&self) -> Vec<&str> {
        if self.callee_id.is_empty() { vec![&self.caller_id] } else { vec![&self.caller_id, &self.callee_id] }
    }
}
