//! Database connections: PostgreSQL in production, a SQLite file in the standalone mode.
//! Connecting retries with backoff until it succeeds or the process is told to stop.

use std::time::Duration;

use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, TransactionTrait};
use tokio_util::sync::CancellationToken;
use videocall_migrations::{Migrator, MigratorTrait};

use crate::backoff::Backoff;

/// Connects (retrying while the database is unreachable) and brings the schema current.
pub async fn connect_and_migrate(url: &str, shutdown: &CancellationToken) -> anyhow::Result<DatabaseConnection> {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(if url.starts_with("sqlite:") { 1 } else { 16 })
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(5))
        .sqlx_logging(false);
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let db = loop {
        match Database::connect(options.clone()).await {
            Ok(db) => break db,
            Err(error) => {
                let delay = backoff.next_delay();
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "database unreachable");
                tokio::select! {
                    _ = shutdown.cancelled() => anyhow::bail!("stopped while waiting for the database"),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    };
    migrate(&db).await.map_err(|e| anyhow::anyhow!("migrations failed: {e}"))?;
    Ok(db)
}

/// Key of the PostgreSQL advisory lock that serialises migrations.
const MIGRATION_LOCK: i64 = 0x5643_4d49_4752; // "VCMIGR"

/// Brings the schema current. On PostgreSQL several services starting at once against a fresh
/// database would race on `CREATE TABLE`; a transaction-scoped advisory lock lets one migrate
/// while the others wait and then find nothing to do.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
    if db.get_database_backend() != DbBackend::Postgres {
        return Migrator::up(db, None).await;
    }
    let txn = db.begin().await?;
    txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")).await?;
    Migrator::up(&txn, None).await?;
    txn.commit().await
}

/// Cheap readiness probe.
pub async fn ping(db: &DatabaseConnection) -> Result<(), DbErr> {
    db.execute_unprepared("SELECT 1").await.map(|_| ())
}
