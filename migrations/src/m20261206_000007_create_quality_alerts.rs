//! `quality_alerts`: episodes of poor quality per media path of a call, written by the
//! quality-aggregator, shown by GetCall. A partial unique index keeps one open episode per path.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(QualityAlerts::Table)
                    .if_not_exists()
                    .col(uuid(QualityAlerts::Id).primary_key())
                    .col(uuid(QualityAlerts::CallId))
                    .col(string_len(QualityAlerts::SenderId, 128))
                    .col(string_len(QualityAlerts::ReceiverId, 128))
                    .col(timestamp_with_time_zone(QualityAlerts::StartedAt))
                    .col(double(QualityAlerts::Mos))
                    .col(double(QualityAlerts::PacketLossPercent))
                    .col(double(QualityAlerts::RttMs))
                    .col(double(QualityAlerts::WorstMos))
                    .col(timestamp_with_time_zone_null(QualityAlerts::EndedAt))
                    .col(string_len_null(QualityAlerts::EndReason, 16))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("quality_alerts_call_idx")
                    .table(QualityAlerts::Table)
                    .col(QualityAlerts::CallId)
                    .col(QualityAlerts::StartedAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        // One open episode per path, whatever two replicas do (PostgreSQL and SQLite both take a
        // partial index).
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE UNIQUE INDEX IF NOT EXISTS quality_alerts_open_uq \
                 ON quality_alerts (call_id, sender_id, receiver_id) WHERE ended_at IS NULL",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(QualityAlerts::Table).if_exists().to_owned()).await
    }
}

#[derive(DeriveIden)]
enum QualityAlerts {
    Table,
    Id,
    CallId,
    SenderId,
    ReceiverId,
    StartedAt,
    Mos,
    PacketLossPercent,
    RttMs,
    WorstMos,
    EndedAt,
    EndReason,
}
