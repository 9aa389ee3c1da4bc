//! `calls.trace_context`: the W3C `traceparent` of the request that made the call, so every event
//! of the call continues one trace (docs/operations.md, Traces).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if !manager.has_column("calls", "trace_context").await? {
            manager
                .alter_table(
                    Table::alter().table(Calls::Table).add_column(string_len_null(Calls::TraceContext, 64)).to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.alter_table(Table::alter().table(Calls::Table).drop_column(Calls::TraceContext).to_owned()).await
    }
}

#[derive(DeriveIden)]
enum Calls {
    Table,
    TraceContext,
}
