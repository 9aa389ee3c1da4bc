//! `call_transfers`: each request to hand an active call's agent side to another agent (blind
//! transfer). At most one open (ringing) transfer per call.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "call_transfers")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub call_id: Uuid,
    /// The agent whose leg it was (the call's callee when asked).
    pub from_agent_id: String,
    /// The agent that rings.
    pub to_agent_id: String,
    /// The desk asked for, when the transfer was to a desk (its longest-idle agent rings).
    pub to_call_type: Option<String>,
    /// Who asked: the agent, or a service.
    pub requested_by: String,
    pub requested_at: DateTimeUtc,
    /// Unanswered by then, it fails (`no_answer`).
    pub expires_at: DateTimeUtc,
    /// `ringing` | `transferred` | `failed`.
    pub status: String,
    /// Why it failed: `rejected` | `no_answer` | `call_ended` | `target_offline`.
    pub reason: Option<String>,
    pub ended_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
