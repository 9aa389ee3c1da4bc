//! calls, call_transitions, outbox, processed_messages and live_call_parties.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Calls::Table)
                    .if_not_exists()
                    .col(uuid(Calls::Id).primary_key())
                    .col(string_len(Calls::CallerId, 128))
                    .col(string_len(Calls::CalleeId, 128))
                    .col(string_len(Calls::CallType, 16))
                    .col(string_len(Calls::Status, 16))
                    .col(string_len_null(Calls::EndReason, 32))
                    .col(string_len_null(Calls::EndedBy, 128))
                    .col(json_binary(Calls::Metadata))
                    .col(string_len(Calls::RequestId, 128))
                    .col(big_integer(Calls::Version))
                    .col(integer(Calls::RingTimeoutSecs))
                    .col(timestamp_with_time_zone(Calls::CreatedAt))
                    .col(timestamp_with_time_zone(Calls::RingDeadlineAt))
                    .col(timestamp_with_time_zone_null(Calls::RingingAt))
                    .col(timestamp_with_time_zone_null(Calls::AnsweredAt))
                    .col(timestamp_with_time_zone_null(Calls::EndedAt))
                    .col(timestamp_with_time_zone(Calls::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        let indexes = [
            Index::create()
                .name("calls_caller_request_uq")
                .table(Calls::Table)
                .col(Calls::CallerId)
                .col(Calls::RequestId)
                .unique()
                .to_owned(),
            Index::create()
                .name("calls_caller_id_idx")
                .table(Calls::Table)
                .col(Calls::CallerId)
                .col(Calls::Id)
                .to_owned(),
            Index::create()
                .name("calls_callee_id_idx")
                .table(Calls::Table)
                .col(Calls::CalleeId)
                .col(Calls::Id)
                .to_owned(),
            Index::create()
                .name("calls_status_created_idx")
                .table(Calls::Table)
                .col(Calls::Status)
                .col(Calls::CreatedAt)
                .to_owned(),
        ];
        for mut index in indexes {
            manager.create_index(index.if_not_exists().to_owned()).await?;
        }

        manager
            .create_table(
                Table::create()
                    .table(CallTransitions::Table)
                    .if_not_exists()
                    .col(uuid(CallTransitions::Id).primary_key())
                    .col(uuid(CallTransitions::CallId))
                    .col(string_len_null(CallTransitions::FromStatus, 16))
                    .col(string_len(CallTransitions::ToStatus, 16))
                    .col(string_len_null(CallTransitions::Reason, 32))
                    .col(string_len(CallTransitions::Actor, 128))
                    .col(big_integer(CallTransitions::Version))
                    .col(timestamp_with_time_zone(CallTransitions::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("call_transitions_call_idx")
                    .table(CallTransitions::Table)
                    .col(CallTransitions::CallId)
                    .col(CallTransitions::Version)
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Outbox::Table)
                    .if_not_exists()
                    .col(uuid(Outbox::Id).primary_key())
                    .col(uuid(Outbox::AggregateId))
                    .col(string_len(Outbox::EventType, 64))
                    .col(string_len(Outbox::RoutingKey, 128))
                    .col(text(Outbox::Payload))
                    .col(timestamp_with_time_zone(Outbox::CreatedAt))
                    .col(timestamp_with_time_zone(Outbox::AvailableAt))
                    .col(integer(Outbox::Attempts))
                    .col(text_null(Outbox::LastError))
                    .col(timestamp_with_time_zone_null(Outbox::PublishedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("outbox_pending_idx")
                    .table(Outbox::Table)
                    .col(Outbox::PublishedAt)
                    .col(Outbox::AvailableAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(ProcessedMessages::Table)
                    .if_not_exists()
                    .col(string_len(ProcessedMessages::Consumer, 64))
                    .col(string_len(ProcessedMessages::MessageId, 256))
                    .col(timestamp_with_time_zone(ProcessedMessages::ProcessedAt))
                    .primary_key(Index::create().col(ProcessedMessages::Consumer).col(ProcessedMessages::MessageId))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(LiveCallParties::Table)
                    .if_not_exists()
                    .col(string_len(LiveCallParties::UserId, 128).primary_key())
                    .col(uuid(LiveCallParties::CallId))
                    .col(timestamp_with_time_zone(LiveCallParties::Since))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("live_call_parties_call_idx")
                    .table(LiveCallParties::Table)
                    .col(LiveCallParties::CallId)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            LiveCallParties::Table.into_iden(),
            ProcessedMessages::Table.into_iden(),
            Outbox::Table.into_iden(),
            CallTransitions::Table.into_iden(),
            Calls::Table.into_iden(),
        ] {
            manager.drop_table(Table::drop().table(table).if_exists().to_owned()).await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Calls {
    Table,
    Id,
    CallerId,
    CalleeId,
    CallType,
    Status,
    EndReason,
    EndedBy,
    Metadata,
    RequestId,
    Version,
    RingTimeoutSecs,
    CreatedAt,
    RingDeadlineAt,
    RingingAt,
    AnsweredAt,
    EndedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum CallTransitions {
    Table,
    Id,
    CallId,
    FromStatus,
    ToStatus,
    Reason,
    Actor,
    Version,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Outbox {
    Table,
    Id,
    AggregateId,
    EventType,
    RoutingKey,
    Payload,
    CreatedAt,
    AvailableAt,
    Attempts,
    LastError,
    PublishedAt,
}

#[derive(DeriveIden)]
enum ProcessedMessages {
    Table,
    Consumer,
    MessageId,
    ProcessedAt,
}

#[derive(DeriveIden)]
enum LiveCallParties {
    Table,
    UserId,
    CallId,
    Since,
}
