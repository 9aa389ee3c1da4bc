//! Database connections: PostgreSQL in production, a SQLite file in the standalone mode.
//! Connecting retries with backoff until it succeeds or the process is told to stop.

use std::time::Duration;

use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbErr};
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
    Migrator::up(&db, None).await.map_err(|e| anyhow::anyhow!("migrations failed: {e}"))?;
    Ok(db)
}

/// Cheap readiness probe.
pub async fn ping(db: &DatabaseConnection) -> Result<(), DbErr> {
    db.execute_unprepared("SELECT 1").await.map(|_| ())
}
