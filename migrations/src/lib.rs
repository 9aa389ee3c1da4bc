//! Versioned schema of Videocall. Services run `Migrator::up` at start (advisory: migrations are
//! idempotent and PostgreSQL runs each in a transaction), so one command brings a database current.

pub use sea_orm_migration::prelude::*;

mod m20261125_000001_create_call_tables;
mod m20261125_000002_create_support_offers;
mod m20261125_000003_create_quality_tables;
mod m20261202_000004_create_recordings;
mod m20261204_000005_create_principals;
mod m20261205_000006_create_desks;
mod m20261206_000007_create_quality_alerts;
mod m20261206_000008_create_call_transfers;
mod m20261206_000009_add_call_trace_context;

/// Every migration, oldest first.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261125_000001_create_call_tables::Migration),
            Box::new(m20261125_000002_create_support_offers::Migration),
            Box::new(m20261125_000003_create_quality_tables::Migration),
            Box::new(m20261202_000004_create_recordings::Migration),
            Box::new(m20261204_000005_create_principals::Migration),
            Box::new(m20261205_000006_create_desks::Migration),
            Box::new(m20261206_000007_create_quality_alerts::Migration),
            Box::new(m20261206_000008_create_call_transfers::Migration),
            Box::new(m20261206_000009_add_call_trace_context::Migration),
        ]
    }
}
