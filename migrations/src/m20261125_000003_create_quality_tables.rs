//! quality_samples (every client quality report the aggregator received) and call_quality (the
//! per-call summary: running sums for O(1) updates plus the metrics derived from them).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(QualitySamples::Table)
                    .if_not_exists()
                    .col(uuid(QualitySamples::Id).primary_key())
                    .col(uuid(QualitySamples::CallId))
                    .col(string_len(QualitySamples::ReporterId, 128))
                    .col(string_len(QualitySamples::Direction, 8))
                    .col(double(QualitySamples::RttMs))
                    .col(double(QualitySamples::JitterMs))
                    .col(double(QualitySamples::PacketLossPercent))
                    .col(double(QualitySamples::BitrateKbps))
                    .col(integer(QualitySamples::Width))
                    .col(integer(QualitySamples::Height))
                    .col(double(QualitySamples::Fps))
                    .col(boolean(QualitySamples::Applied))
                    .col(timestamp_with_time_zone(QualitySamples::ReportedAt))
                    .col(timestamp_with_time_zone(QualitySamples::ReceivedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("quality_samples_call_idx")
                    .table(QualitySamples::Table)
                    .col(QualitySamples::CallId)
                    .col(QualitySamples::ReportedAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(CallQuality::Table)
                    .if_not_exists()
                    .col(uuid(CallQuality::CallId))
                    .col(string_len(CallQuality::Scope, 8))
                    .col(big_integer(CallQuality::SampleCount))
                    .col(double(CallQuality::SumRttMs))
                    .col(double(CallQuality::SumJitterMs))
                    .col(double(CallQuality::SumJitterSq))
                    .col(double(CallQuality::SumPacketLoss))
                    .col(double(CallQuality::MaxPacketLoss))
                    .col(double(CallQuality::SumBitrateKbps))
                    .col(big_integer(CallQuality::Disconnects))
                    .col(json_binary(CallQuality::Resolutions))
                    .col(double(CallQuality::AvgRttMs))
                    .col(double(CallQuality::AvgJitterMs))
                    .col(double(CallQuality::AvgPacketLoss))
                    .col(double(CallQuality::AvgBitrateKbps))
                    .col(string_len(CallQuality::Resolution, 16))
                    .col(double(CallQuality::Stability))
                    .col(double(CallQuality::Mos))
                    .col(big_integer(CallQuality::LateSamples))
                    .col(timestamp_with_time_zone_null(CallQuality::FinalizedAt))
                    .col(timestamp_with_time_zone(CallQuality::UpdatedAt))
                    .primary_key(Index::create().col(CallQuality::CallId).col(CallQuality::Scope))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(CallQuality::Table).if_exists().to_owned()).await?;
        manager.drop_table(Table::drop().table(QualitySamples::Table).if_exists().to_owned()).await
    }
}

#[derive(DeriveIden)]
enum QualitySamples {
    Table,
    Id,
    CallId,
    ReporterId,
    Direction,
    RttMs,
    JitterMs,
    PacketLossPercent,
    BitrateKbps,
    Width,
    Height,
    Fps,
    Applied,
    ReportedAt,
    ReceivedAt,
}

#[derive(DeriveIden)]
enum CallQuality {
    Table,
    CallId,
    Scope,
    SampleCount,
    SumRttMs,
    SumJitterMs,
    SumJitterSq,
    SumPacketLoss,
    MaxPacketLoss,
    SumBitrateKbps,
    Disconnects,
    Resolutions,
    AvgRttMs,
    AvgJitterMs,
    AvgPacketLoss,
    AvgBitrateKbps,
    Resolution,
    Stability,
    Mos,
    LateSamples,
    FinalizedAt,
    UpdatedAt,
}
