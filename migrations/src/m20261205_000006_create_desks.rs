//! The support desks: `calls.queued_at` (set on desk calls), `agents` (availability),
//! `agent_desks` (the desks, by call type, each agent serves) and `call_routing_attempts` (each
//! offer of a desk call to an agent).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if !manager.has_column("calls", "queued_at").await? {
            manager
                .alter_table(
                    Table::alter()
                        .table(Calls::Table)
                        .add_column(timestamp_with_time_zone_null(Calls::QueuedAt))
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_index(
                Index::create()
                    .name("calls_desk_queue_idx")
                    .table(Calls::Table)
                    .col(Calls::Status)
                    .col(Calls::CallType)
                    .col(Calls::QueuedAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Agents::Table)
                    .if_not_exists()
                    .col(string_len(Agents::AgentId, 128).primary_key())
                    .col(boolean(Agents::Available))
                    .col(timestamp_with_time_zone(Agents::IdleSince))
                    .col(timestamp_with_time_zone(Agents::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(AgentDesks::Table)
                    .if_not_exists()
                    .col(string_len(AgentDesks::AgentId, 128))
                    .col(string_len(AgentDesks::CallType, 16))
                    .primary_key(Index::create().col(AgentDesks::AgentId).col(AgentDesks::CallType))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(CallRoutingAttempts::Table)
                    .if_not_exists()
                    .col(uuid(CallRoutingAttempts::Id).primary_key())
                    .col(uuid(CallRoutingAttempts::CallId))
                    .col(integer(CallRoutingAttempts::Attempt))
                    .col(string_len(CallRoutingAttempts::AgentId, 128))
                    .col(timestamp_with_time_zone(CallRoutingAttempts::OfferedAt))
                    .col(timestamp_with_time_zone(CallRoutingAttempts::ExpiresAt))
                    .col(timestamp_with_time_zone_null(CallRoutingAttempts::EndedAt))
                    .col(string_len_null(CallRoutingAttempts::Outcome, 16))
                    .to_owned(),
            )
            .await?;
        let indexes = [
            Index::create()
                .name("call_routing_attempts_call_uq")
                .table(CallRoutingAttempts::Table)
                .col(CallRoutingAttempts::CallId)
                .col(CallRoutingAttempts::Attempt)
                .unique()
                .to_owned(),
            Index::create()
                .name("call_routing_attempts_open_idx")
                .table(CallRoutingAttempts::Table)
                .col(CallRoutingAttempts::EndedAt)
                .col(CallRoutingAttempts::ExpiresAt)
                .to_owned(),
        ];
        for mut index in indexes {
            manager.create_index(index.if_not_exists().to_owned()).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(CallRoutingAttempts::Table).if_exists().to_owned()).await?;
        manager.drop_table(Table::drop().table(AgentDesks::Table).if_exists().to_owned()).await?;
        manager.drop_table(Table::drop().table(Agents::Table).if_exists().to_owned()).await?;
        manager.drop_index(Index::drop().name("calls_desk_queue_idx").table(Calls::Table).to_owned()).await?;
        manager.alter_table(Table::alter().table(Calls::Table).drop_column(Calls::QueuedAt).to_owned()).await
    }
}

#[derive(DeriveIden)]
enum Calls {
    Table,
    Status,
    CallType,
    QueuedAt,
}

#[derive(DeriveIden)]
enum Agents {
    Table,
    AgentId,
    Available,
    IdleSince,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum AgentDesks {
    Table,
    AgentId,
    CallType,
}

#[derive(DeriveIden)]
enum CallRoutingAttempts {
    Table,
    Id,
    CallId,
    Attempt,
    AgentId,
    OfferedAt,
    ExpiresAt,
    EndedAt,
    Outcome,
}
