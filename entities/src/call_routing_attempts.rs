//! `call_routing_attempts`: each offer of a desk call to an agent, numbered per call from 1.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "call_routing_attempts")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub call_id: Uuid,
    pub attempt: i32,
    pub agent_id: String,
    pub offered_at: DateTimeUtc,
    /// Unanswered by then, the offer goes to the next agent (`AGENT_RING_SECS`).
    pub expires_at: DateTimeUtc,
    pub ended_at: Option<DateTimeUtc>,
    /// `answered` | `rejected` | `no_answer` | `abandoned` | `ended` (the call ended otherwise
    /// while it rang: the agent went offline, the queue timed out); empty while it rings.
    pub outcome: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
