//! `agents`: each agent's availability. An available agent not in a live call is offered the
//! queued calls of their desks (`agent_desks`), the longest idle agent first.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "agents")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub agent_id: String,
    pub available: bool,
    /// Since when the agent waits for a call: when they became available, or their last call or
    /// offer ended, whichever is later.
    pub idle_since: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
