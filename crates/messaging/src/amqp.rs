//! RabbitMQ connections that retry with backoff until they succeed or the process stops.

use std::time::Duration;

use lapin::{
    Connection, ConnectionProperties,
    options::QueueDeclareOptions,
    types::{AMQPValue, FieldTable},
};
use tokio_util::sync::CancellationToken;

pub use videocall_runtime::config::QueueType;
use videocall_runtime::{backoff::Backoff, ops::Readiness};

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
            if matches!(
                error.downcast_ref(),
                Some(DeclareError::TypeMismatch { .. } | DeclareError::Inequivalent { .. })
            ) {
                // Retrying changes nothing until someone deals with the queue: say so as an error.
                tracing::error!(
                    error = format!("{error:#}"),
                    retry_in_ms = delay.as_millis() as u64,
                    "a queue cannot be declared as configured; not consuming"
                );
            } else {
                tracing::warn!(
                    error = format!("{error:#}"),
                    retry_in_ms = delay.as_millis() as u64,
                    "broker session ended; reconnecting"
                );
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}

/// How much of the events nobody was bound for the broker keeps, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnroutedRetention {
    pub max_messages: i64,
    pub ttl: Duration,
    /// The queue's type (`QUEUE_TYPE`).
    pub queue_type: QueueType,
}

impl Default for UnroutedRetention {
    fn default() -> Self {
        Self { max_messages: 100_000, ttl: Duration::from_secs(24 * 3600), queue_type: QueueType::default() }
    }
}

/// A durable queue could not be declared.
#[derive(Debug, thiserror::Error)]
pub enum DeclareError {
    /// The queue exists with the other type; RabbitMQ never changes a queue's type.
    #[error(
        "queue `{queue}` exists as a {existing} queue but QUEUE_TYPE is {wanted}, and RabbitMQ cannot change \
         a queue's type: drain the queue and delete it so that it is declared again as {wanted}, or set \
         QUEUE_TYPE={existing} (docs/operations.md, \"Queue types\")"
    )]
    TypeMismatch { queue: String, existing: QueueType, wanted: QueueType },
    /// The queue exists with other arguments (another MAX_RETRIES, DLX_EXCHANGE, bounds...).
    #[error(
        "queue `{queue}` exists with other arguments than this service declares it with ({broker}): drain \
         the queue and delete it so that it is declared again, or go back to the settings it was declared \
         with (docs/operations.md, \"Queue types\")"
    )]
    Inequivalent { queue: String, broker: String },
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
}

/// Declares the durable `queue` of `queue_type` with `arguments(queue_type)`, plus
/// `x-queue-type: quorum` for a quorum queue (a classic queue gets no type argument, as queues
/// were declared before `QUEUE_TYPE`, so those stay equivalent), on a channel of its own. The
/// broker refuses a queue that exists with another type or other arguments; a declaration of the
/// other type (`arguments` of it: an idempotent no-op should it match) then tells which:
/// [`DeclareError::TypeMismatch`] or [`DeclareError::Inequivalent`], both naming the queue.
pub async fn declare_durable_queue(
    connection: &Connection,
    queue: &str,
    queue_type: QueueType,
    arguments: impl Fn(QueueType) -> FieldTable,
) -> Result<(), DeclareError> {
    let declare = |queue_type: QueueType| {
        let mut arguments = arguments(queue_type);
        if queue_type == QueueType::Quorum {
            arguments.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
        }
        async move {
            let channel = connection.create_channel().await?;
            let durable = QueueDeclareOptions { durable: true, ..Default::default() };
            channel.queue_declare(queue.into(), durable, arguments).await?;
            let _ = channel.close(200, "declared".into()).await;
            Ok::<_, lapin::Error>(())
        }
    };
    let error = match declare(queue_type).await {
        Ok(()) => return Ok(()),
        Err(error) => error,
    };
    // The broker names the first argument that differs, which need not be `x-queue-type`.
    let Some(broker) = precondition_failed(&error) else { return Err(error.into()) };
    let queue = queue.to_owned();
    let other = match queue_type {
        QueueType::Quorum => QueueType::Classic,
        QueueType::Classic => QueueType::Quorum,
    };
    match declare(other).await {
        Ok(()) => Err(DeclareError::TypeMismatch { queue, existing: other, wanted: queue_type }),
        Err(other) if precondition_failed(&other).is_some() => Err(DeclareError::Inequivalent { queue, broker }),
        Err(other) => Err(other.into()),
    }
}

/// The alternate exchange of `exchange`, and the queue behind it: `<exchange>.unrouted`.
pub fn unrouted_name(exchange: &str) -> String {
    format!("{exchange}.unrouted")
}

/// Declares the events exchange: a durable topic exchange whose alternate exchange (a fanout,
/// `<exchange>.unrouted`) takes every event no queue is bound for into one queue of the same name,
/// bounded by `retention` (oldest dropped first; of `retention.queue_type`). So an event a new deployment has no consumer for
/// yet is confirmed and kept for a late consumer to replay, instead of coming back unroutable.
/// Every service that declares the exchange uses this, with the same arguments (a declaration
/// with other arguments is refused by the broker); only the publisher (the outbox relay) passes
/// `retention` and declares the queue, so consumers never disagree with it about its bounds. An
/// exchange made earlier without the alternate exchange is used as it is: `Ok(false)`, and
/// unroutable events then stay in the outbox as before. A queue of the other type is an error
/// ([`DeclareError::TypeMismatch`]).
pub async fn declare_events_exchange(
    connection: &Connection,
    exchange: &str,
    retention: Option<UnroutedRetention>,
) -> Result<bool, DeclareError> {
    use lapin::{
        ExchangeKind,
        options::{ExchangeDeclareOptions, QueueBindOptions},
    };
    let unrouted = unrouted_name(exchange);
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    let channel = connection.create_channel().await?;
    channel.exchange_declare(unrouted.as_str().into(), ExchangeKind::Fanout, durable, FieldTable::default()).await?;
    if let Some(retention) = retention {
        let mut bounds = FieldTable::default();
        bounds.insert("x-max-length".into(), AMQPValue::LongLongInt(retention.max_messages));
        let ttl_ms = i64::try_from(retention.ttl.as_millis()).unwrap_or(i64::MAX);
        bounds.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl_ms));
        bounds.insert("x-overflow".into(), AMQPValue::LongString("drop-head".into()));
        declare_durable_queue(connection, &unrouted, retention.queue_type, |_| bounds.clone()).await?;
        let (name, bind) = (unrouted.as_str(), QueueBindOptions::default());
        channel.queue_bind(name.into(), name.into(), "".into(), bind, FieldTable::default()).await?;
    }
    let mut arguments = FieldTable::default();
    arguments.insert("alternate-exchange".into(), AMQPValue::LongString(unrouted.as_str().into()));
    match channel.exchange_declare(exchange.into(), ExchangeKind::Topic, durable, arguments).await {
        Ok(()) => {
            let _ = channel.close(200, "declared".into()).await;
            Ok(true)
        }
        Err(error) if precondition_failed(&error).is_some() => {
            // The broker closed that channel; look at the exchange as it is on a new one.
            tracing::warn!(
                %exchange,
                "the events exchange exists without the alternate exchange {unrouted}: events no queue is \
                 bound for stay in the outbox (delete the exchange, or give it the alternate exchange by policy)"
            );
            let channel = connection.create_channel().await?;
            let passive = ExchangeDeclareOptions { passive: true, ..durable };
            channel.exchange_declare(exchange.into(), ExchangeKind::Topic, passive, FieldTable::default()).await?;
            let _ = channel.close(200, "declared".into()).await;
            Ok(false)
        }
        Err(error) => Err(error.into()),
    }
}

/// The broker's message when it refused a declaration whose arguments differ from the existing
/// one's (406 PRECONDITION_FAILED).
fn precondition_failed(error: &lapin::Error) -> Option<String> {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    match error.kind() {
        lapin::ErrorKind::ProtocolError(e)
            if matches!(e.kind(), AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)) =>
        {
            Some(e.get_message().to_string())
        }
        _ => None,
    }
}
