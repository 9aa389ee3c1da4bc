//! `vc-migrate`: brings the database at `DATABASE_URL` to the current schema and exits — the
//! one-shot job that runs before the fleet starts (docker/compose.yaml), so no service starts on
//! an old schema. Services also migrate at start, which is then a no-op; concurrent migrators are
//! serialised by an advisory lock (`videocall_runtime::db::migrate`). Waits for the database
//! while it is unreachable, at most `MIGRATE_TIMEOUT_SECS` (default 120).

use std::{process::ExitCode, time::Duration};

use videocall_runtime::{
    config::{Checker, ConfigError},
    db, shutdown,
    telemetry::{self, LogFormat},
};

struct Settings {
    database_url: String,
    timeout: Duration,
    log_format: LogFormat,
}

fn settings() -> Result<Settings, ConfigError> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let mut c = Checker::new();
    let database_url = c.database_url("DATABASE_URL", &var("DATABASE_URL"));
    let timeout = c.parse::<u64>("MIGRATE_TIMEOUT_SECS", &var("MIGRATE_TIMEOUT_SECS").unwrap_or_else(|| "120".into()));
    let log_format = c.parse::<LogFormat>("LOG_FORMAT", &var("LOG_FORMAT").unwrap_or_else(|| "text".into()));
    c.finish()?;
    match (database_url, timeout, log_format) {
        (Some(database_url), Some(timeout), Some(log_format)) => {
            Ok(Settings { database_url, timeout: Duration::from_secs(timeout), log_format })
        }
        _ => Err(ConfigError(vec!["internal: a checked value is missing".into()])),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let settings = match settings() {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("vc-migrate: {error}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(settings.log_format);
    let stop = shutdown::on_signal();
    let deadline = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(settings.timeout).await;
        deadline.cancel();
    });
    match db::connect_and_migrate(&settings.database_url, &stop).await {
        Ok(conn) => {
            conn.close().await.ok();
            tracing::info!("schema is current");
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "migration failed");
            ExitCode::FAILURE
        }
    }
}
