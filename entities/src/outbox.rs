//! `outbox`: domain events written with the state change that caused them, published later by the
//! outbox relay with publisher confirms.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "outbox")]
pub struct Model {
    /// The event id: CloudEvents `id` and AMQP `message_id`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The call (or other aggregate) the event is about.
    pub aggregate_id: Uuid,
    /// CloudEvents `type`, e.g. `CallEnded`.
    pub event_type: String,
    /// e.g. `call.ended`
    pub routing_key: String,
    /// The whole CloudEvents envelope, as published.
    #[sea_orm(column_type = "Text")]
    pub payload: String,
    pub created_at: DateTimeUtc,
    /// Not published before this time (backoff after a failed attempt).
    pub available_at: DateTimeUtc,
    pub attempts: i32,
    pub last_error: Option<String>,
    /// Set once the broker confirmed the message; never unset.
    pub published_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
