//! `call_transfers`: blind transfers of active calls from one agent to another. A partial unique
//! index keeps one open transfer per call.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(CallTransfers::Table)
                    .if_not_exists()
                    .col(uuid(CallTransfers::Id).primary_key())
                    .col(uuid(CallTransfers::CallId))
                    .col(string_len(CallTransfers::FromAgentId, 128))
                    .col(string_len(CallTransfers::ToAgentId, 128))
                    .col(string_len_null(CallTransfers::ToCallType, 16))
                    .col(string_len(CallTransfers::RequestedBy, 128))
                    .col(timestamp_with_time_zone(CallTransfers::RequestedAt))
                    .col(timestamp_with_time_zone(CallTransfers::ExpiresAt))
                    .col(string_len(CallTransfers::Status, 16))
                    .col(string_len_null(CallTransfers::Reason, 16))
                    .col(timestamp_with_time_zone_null(CallTransfers::EndedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("call_transfers_call_idx")
                    .table(CallTransfers::Table)
                    .col(CallTransfers::CallId)
                    .col(CallTransfers::RequestedAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE UNIQUE INDEX IF NOT EXISTS call_transfers_open_uq ON call_transfers (call_id) \
                 WHERE ended_at IS NULL",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(CallTransfers::Table).if_exists().to_owned()).await
    }
}

#[derive(DeriveIden)]
enum CallTransfers {
    Table,
    Id,
    CallId,
    FromAgentId,
    ToAgentId,
    ToCallType,
    RequestedBy,
    RequestedAt,
    ExpiresAt,
    Status,
    Reason,
    EndedAt,
}
