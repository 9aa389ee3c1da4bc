//! Database connections: PostgreSQL in production, a SQLite file in the standalone mode.
//! Connecting retries with backoff until it succeeds or the process is told to stop.

use std::time::Duration;

use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, RuntimeErr, TransactionTrait, sqlx,
};
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

/// Whether `error` says the database could not be reached, dropped the connection, or is
/// shutting down or starting up — rather than that it refused the statement — so that the same
/// request may succeed later. sea-orm reports a connection lost in the middle of a statement as an
/// `Exec`/`Query` error, not `Conn`, so those are looked into. A connection lost on COMMIT leaves
/// the outcome unknown; that is still "retry", since every command is idempotent on repetition.
pub fn is_unavailable(error: &DbErr) -> bool {
    match error {
        DbErr::Conn(_) | DbErr::ConnectionAcquire(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => sqlx_unavailable(e),
        _ => false,
    }
}

fn sqlx_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // SQLSTATE class 08 (connection exception), 57P01 admin_shutdown, 57P02 crash_shutdown,
        // 57P03 cannot_connect_now, 53300 too_many_connections.
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P03" | "53300")
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn sqlx_query_error(error: sqlx::Error) -> DbErr {
        DbErr::Query(RuntimeErr::SqlxError(Arc::new(error)))
    }

    #[test]
    fn a_connection_lost_mid_statement_is_unavailable() {
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "Connection reset by peer");
        assert!(is_unavailable(&sqlx_query_error(sqlx::Error::Io(reset))));
        let eof = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "expected to read 5 bytes");
        assert!(is_unavailable(&DbErr::Exec(RuntimeErr::SqlxError(Arc::new(sqlx::Error::Io(eof))))));
        assert!(is_unavailable(&sqlx_query_error(sqlx::Error::PoolTimedOut)));
        assert!(is_unavailable(&sqlx_query_error(sqlx::Error::PoolClosed)));
    }

    #[test]
    fn connect_and_acquire_failures_are_unavailable() {
        assert!(is_unavailable(&DbErr::Conn(RuntimeErr::Internal("refused".into()))));
        assert!(is_unavailable(&DbErr::ConnectionAcquire(sea_orm::ConnAcquireErr::Timeout)));
    }

    #[test]
    fn refused_statements_and_missing_rows_are_not() {
        assert!(!is_unavailable(&sqlx_query_error(sqlx::Error::RowNotFound)));
        assert!(!is_unavailable(&sqlx_query_error(sqlx::Error::Protocol("unexpected message".into()))));
        assert!(!is_unavailable(&DbErr::Query(RuntimeErr::Internal("bad SQL".into()))));
        assert!(!is_unavailable(&DbErr::RecordNotFound("call".into())));
        assert!(!is_unavailable(&DbErr::Custom("corrupt".into())));
    }
}
