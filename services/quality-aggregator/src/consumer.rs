//! The AMQP side (the shape of event-consumer's): declares the queue (bound to the events exchange
//! with every routing key we need) and its dead-letter queue, consumes with manual acks, and
//! decides each message's fate: ack after the effect committed, dead-letter with the reason when
//! it can never apply, republish with an attempt count after a transient fault.

use lapin::{Channel, Connection};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
pub use videocall_messaging::consumer_metrics::ConsumerMetrics;
use videocall_messaging::{
    amqp::{DeclareError, QueueType},
    inbox_worker::{Handler, QueueShape, QueueWorker, Verdict, declare_queue},
};

use crate::{
    config::ROUTING_KEYS,
    summaries::{Aggregator, Outcome},
};

pub use videocall_messaging::inbox_worker::{ATTEMPT_HEADER, REASON_HEADER, dlq_name, publisher_channel};

/// Where the consumed queue is and how it is handled.
#[derive(Debug, Clone)]
pub struct Settings {
    pub exchange: String,
    pub queue: String,
    pub dlx_exchange: String,
    pub prefetch: u16,
    pub max_retries: u32,
    pub queue_type: QueueType,
}

/// Declares (the events exchange being declared already, with its alternate exchange: see
/// `videocall_messaging::amqp::declare_events_exchange`) the queue and its dead-letter queue,
/// bound to the events exchange with every key of [`ROUTING_KEYS`]. Idempotent.
pub async fn declare(connection: &Connection, settings: &Settings) -> Result<(), DeclareError> {
    let bindings = ROUTING_KEYS.map(|key| (settings.exchange.as_str(), key));
    let shape = QueueShape { queue_type: settings.queue_type, max_retries: settings.max_retries };
    declare_queue(connection, &settings.queue, &settings.dlx_exchange, &bindings, shape).await
}

/// Consumes the queue.
pub struct QueueConsumer {
    pub aggregator: Aggregator,
    pub settings: Settings,
    /// The session's confirm-mode channel for republishing and dead-lettering.
    pub publisher: Channel,
    pub metrics: ConsumerMetrics,
}

/// `videocall_quality_messages{outcome}`: messages handled, by outcome, with a zero series for
/// each from the start.
pub fn metrics(registry: &mut Registry, queue: &str) -> ConsumerMetrics {
    let metrics = ConsumerMetrics::register(
        registry,
        "videocall_quality_messages",
        "Messages handled, by outcome (applied, late, finalized, duplicate, dead_lettered, retried)",
        false,
    );
    metrics.init(queue, &["applied", "late", "finalized", "duplicate", "dead_lettered", "retried"]);
    metrics
}

/// The aggregator as the queue's handler (also what the standalone binary binds to its in-process
/// events, with [`crate::config::ROUTING_KEYS`]).
pub fn handler(aggregator: Aggregator) -> impl Handler {
    Apply(aggregator)
}

/// The aggregator as the queue's handler.
struct Apply(Aggregator);

impl Handler for Apply {
    async fn handle<'a>(&'a self, message_id: Option<&'a str>, body: &'a [u8]) -> Verdict {
        match self.0.apply(message_id, body).await {
            Ok(outcome) => Verdict::Done(match outcome {
                Outcome::Applied => "applied",
                Outcome::Late => "late",
                Outcome::Finalized => "finalized",
                Outcome::Duplicate => "duplicate",
            }),
            Err(failure) => failure.into(),
        }
    }
}

impl QueueConsumer {
    /// Consumes until `shutdown` (then returns Ok after the in-flight message is settled) or
    /// until the channel fails (Err: the caller reconnects).
    pub async fn run(&self, connection: &Connection, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let worker = QueueWorker {
            queue: self.settings.queue.clone(),
            dlx_exchange: self.settings.dlx_exchange.clone(),
            prefetch: self.settings.prefetch,
            max_retries: self.settings.max_retries,
            queue_type: self.settings.queue_type,
            publisher: self.publisher.clone(),
            handler: Apply(self.aggregator.clone()),
            lag: self.metrics.lag.clone(),
            count: self.metrics.counter(&self.settings.queue),
        };
        tracing::info!(queue = %self.settings.queue, exchange = %self.settings.exchange, "consuming");
        worker.run(connection, shutdown).await
    }
}
