//! `calls`: one row per call, the current state of its life.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "calls")]
pub struct Model {
    /// UUID v7: time ordered, so history pages by id.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub caller_id: String,
    /// Empty while a desk call waits in its queue; then the agent it rings.
    pub callee_id: String,
    /// `support` | `sales` | `consult`
    pub call_type: String,
    /// `queued` | `initiated` | `ringing` | `active` | `ended` | `rejected` | `missed`
    pub status: String,
    pub end_reason: Option<String>,
    pub ended_by: Option<String>,
    /// Client metadata, a flat JSON object of strings.
    pub metadata: Json,
    /// Idempotency key of InitiateCall, unique per caller.
    pub request_id: String,
    /// 1 at initiation, +1 per transition; carried by every event so consumers can order them.
    pub version: i64,
    pub ring_timeout_secs: i32,
    pub created_at: DateTimeUtc,
    /// `created_at + ring_timeout_secs` (a desk call: + the queue timeout): unanswered past this,
    /// the sweeper marks the call missed.
    pub ring_deadline_at: DateTimeUtc,
    pub ringing_at: Option<DateTimeUtc>,
    pub answered_at: Option<DateTimeUtc>,
    pub ended_at: Option<DateTimeUtc>,
    pub updated_at: DateTimeUtc,
    /// Set on desk calls (a customer calling a desk): when the call first joined its queue.
    pub queued_at: Option<DateTimeUtc>,
    /// W3C `traceparent` of the request that made the call: the call's events continue its trace.
    pub trace_context: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
