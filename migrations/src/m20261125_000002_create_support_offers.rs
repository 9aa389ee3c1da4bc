//! support_offers: video support offered on new support tickets (event-consumer).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(SupportOffers::Table)
                    .if_not_exists()
                    .col(uuid(SupportOffers::Id).primary_key())
                    .col(string_len(SupportOffers::TicketId, 128))
                    .col(string_len(SupportOffers::CustomerId, 128))
                    .col(string_len_null(SupportOffers::AgentId, 128))
                    .col(string_len_null(SupportOffers::Subject, 512))
                    .col(string_len(SupportOffers::Status, 16))
                    .col(uuid_null(SupportOffers::CallId))
                    .col(timestamp_with_time_zone(SupportOffers::CreatedAt))
                    .col(timestamp_with_time_zone(SupportOffers::ExpiresAt))
                    .to_owned(),
            )
            .await?;
        let indexes = [
            Index::create()
                .name("support_offers_ticket_uq")
                .table(SupportOffers::Table)
                .col(SupportOffers::TicketId)
                .unique()
                .to_owned(),
            Index::create()
                .name("support_offers_customer_idx")
                .table(SupportOffers::Table)
                .col(SupportOffers::CustomerId)
                .col(SupportOffers::CreatedAt)
                .to_owned(),
            Index::create()
                .name("support_offers_status_expires_idx")
                .table(SupportOffers::Table)
                .col(SupportOffers::Status)
                .col(SupportOffers::ExpiresAt)
                .to_owned(),
        ];
        for mut index in indexes {
            manager.create_index(index.if_not_exists().to_owned()).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(SupportOffers::Table).if_exists().to_owned()).await
    }
}

#[derive(DeriveIden)]
enum SupportOffers {
    Table,
    Id,
    TicketId,
    CustomerId,
    AgentId,
    Subject,
    Status,
    CallId,
    CreatedAt,
    ExpiresAt,
}
