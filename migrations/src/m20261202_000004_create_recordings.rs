//! recordings: a call's optional server-side recording — both parties' consent, the recorder that
//! owns it (with a lease), its status and, once done, what was written (files, size, checksum).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Recordings::Table)
                    .if_not_exists()
                    .col(uuid(Recordings::CallId).primary_key())
                    .col(uuid(Recordings::Id))
                    .col(string_len(Recordings::Status, 16))
                    .col(boolean(Recordings::CallerConsent))
                    .col(boolean(Recordings::CalleeConsent))
                    .col(string_len(Recordings::RequestedBy, 128))
                    .col(boolean(Recordings::StopRequested))
                    .col(string_len_null(Recordings::WorkerId, 128))
                    .col(timestamp_with_time_zone_null(Recordings::LeaseUntil))
                    .col(timestamp_with_time_zone_null(Recordings::StartedAt))
                    .col(timestamp_with_time_zone_null(Recordings::EndedAt))
                    .col(big_integer(Recordings::DurationMs))
                    .col(big_integer(Recordings::SizeBytes))
                    .col(string_len(Recordings::Sha256, 64))
                    .col(json_binary(Recordings::Files))
                    .col(string_len_null(Recordings::Error, 512))
                    .col(big_integer(Recordings::Version))
                    .col(timestamp_with_time_zone(Recordings::CreatedAt))
                    .col(timestamp_with_time_zone(Recordings::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("recordings_status_idx")
                    .table(Recordings::Table)
                    .col(Recordings::Status)
                    .col(Recordings::LeaseUntil)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(Recordings::Table).if_exists().to_owned()).await
    }
}

#[derive(DeriveIden)]
enum Recordings {
    Table,
    CallId,
    Id,
    Status,
    CallerConsent,
    CalleeConsent,
    RequestedBy,
    StopRequested,
    WorkerId,
    LeaseUntil,
    StartedAt,
    EndedAt,
    DurationMs,
    SizeBytes,
    Sha256,
    Files,
    Error,
    Version,
    CreatedAt,
    UpdatedAt,
}
