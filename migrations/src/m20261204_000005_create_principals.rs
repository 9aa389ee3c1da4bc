//! principals: the role each user id last authenticated with (the call policy's directory).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Principals::Table)
                    .if_not_exists()
                    .col(string_len(Principals::UserId, 128).primary_key())
                    .col(string_len(Principals::Role, 16))
                    .col(timestamp_with_time_zone(Principals::SeenAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(Principals::Table).if_exists().to_owned()).await
    }
}

#[derive(DeriveIden)]
enum Principals {
    Table,
    UserId,
    Role,
    SeenAt,
}
