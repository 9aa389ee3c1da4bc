//! `call_transitions`: the audit trail, one row per state change, written in the same transaction.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "call_transitions")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub call_id: Uuid,
    /// None for the initiation.
    pub from_status: Option<String>,
    pub to_status: String,
    pub reason: Option<String>,
    /// User id or service name that caused the change.
    pub actor: String,
    /// The call's version after this change.
    pub version: i64,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
