//! RabbitMQ connections that retry with backoff until they succeed or the process stops.

use std::time::Duration;

use lapin::{Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;

use crate::{backoff::Backoff, ops::Readiness};

/// Connects to `url`, retrying while the broker is unreachable. `None` once `shutdown` fires.
pub async fn connect(url: &str, name: &str, shutdown: &CancellationToken) -> Option<Connection> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        match Connection::connect(url, properties).await {
            Ok(connection) => return Some(connection),
            Err(error) => {
                let delay = backoff.next_delay();
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "broker unreachable");
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Runs `session` on a broker connection until `shutdown`, reconnecting with backoff whenever a
/// session fails (the backoff starts over after a session that lasted 30 s). `ready` is false
/// between sessions; a session sets it once it consumes. The session hands the connection back
/// so it is closed here.
pub async fn run_sessions<F, Fut>(
    url: &str,
    name: &str,
    shutdown: &CancellationToken,
    ready: &Readiness,
    mut session: F,
) where
    F: FnMut(Connection) -> Fut,
    Fut: std::future::Future<Output = (Connection, anyhow::Result<()>)>,
{
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    while !shutdown.is_cancelled() {
        let Some(connection) = connect(url, name, shutdown).await else { break };
        let started = std::time::Instant::now();
        let (connection, result) = session(connection).await;
        ready.set(false);
        let _ = connection.close(200, "shutting down".into()).await;
        if let Err(error) = result {
            if started.elapsed() > Duration::from_secs(30) {
                backoff.reset(); // it worked for a while: this is a fresh failure
            }
            let delay = backoff.next_delay();
            tracing::warn!(
                error = format!("{error:#}"),
                retry_in_ms = delay.as_millis() as u64,
                "broker session ended; reconnecting"
            );
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}
