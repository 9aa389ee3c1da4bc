//! The AMQP side (the shape of event-consumer's): declares the queue (bound to the events exchange
//! with every routing key we need) and its dead-letter queue, consumes with manual acks, and
//! decides each message's fate: ack after the effect committed, dead-letter with the reason when
//! it can never apply, republish with an attempt count after a transient fault.

use std::sync::Arc;

use lapin::{
    Channel, Connection, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use tokio_util::sync::CancellationToken;
use videocall_messaging::inbox_worker::{Handler, QueueLag, QueueWorker, Verdict};

use crate::{
    config::ROUTING_KEYS,
    summaries::{Aggregator, Failure, Outcome},
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
}

/// Declares (the events exchange being declared already, with its alternate exchange: see
/// `videocall_messaging::amqp::declare_events_exchange`) the dead-letter exchange and queue, and the
/// durable queue bound to the events exchange with every key of [`ROUTING_KEYS`] (dead-lettering
/// to the DLX, should anything reject). Every declaration is idempotent.
pub async fn declare(channel: &Channel, settings: &Settings) -> Result<(), lapin::Error> {
    let (exchange, queue, dlx) = (settings.exchange.as_str(), settings.queue.as_str(), settings.dlx_exchange.as_str());
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    channel.exchange_declare(dlx.into(), ExchangeKind::Direct, durable, FieldTable::default()).await?;
    let durable_queue = QueueDeclareOptions { durable: true, ..Default::default() };
    let dlq = dlq_name(queue);
    channel.queue_declare(dlq.as_str().into(), durable_queue, FieldTable::default()).await?;
    channel
        .queue_bind(dlq.as_str().into(), dlx.into(), queue.into(), QueueBindOptions::default(), FieldTable::default())
        .await?;
    let mut arguments = FieldTable::default();
    arguments.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(dlx.into()));
    arguments.insert("x-dead-letter-routing-key".into(), AMQPValue::LongString(queue.into()));
    channel.queue_declare(queue.into(), durable_queue, arguments).await?;
    for key in ROUTING_KEYS {
        channel
            .queue_bind(queue.into(), exchange.into(), key.into(), QueueBindOptions::default(), FieldTable::default())
            .await?;
    }
    Ok(())
}

/// Consumes the queue.
pub struct QueueConsumer {
    pub aggregator: Aggregator,
    pub settings: Settings,
    /// The session's confirm-mode channel for republishing and dead-lettering.
    pub publisher: Channel,
    pub metrics: ConsumerMetrics,
}

/// Messages handled, by outcome (`applied`, `late`, `finalized`, `duplicate`, `dead_lettered`,
/// `retried`).
#[derive(Debug, Clone, Default)]
pub struct ConsumerMetrics {
    pub messages: Family<MessageLabels, Counter>,
    pub lag: QueueLag,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MessageLabels {
    pub outcome: &'static str,
}

impl ConsumerMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        // Zero series for every outcome, so the family shows before the first message.
        for outcome in ["applied", "late", "finalized", "duplicate", "dead_lettered", "retried"] {
            let _ = metrics.messages.get_or_create(&MessageLabels { outcome });
        }
        registry.register(
            "videocall_quality_messages",
            "Messages handled, by outcome (applied, late, finalized, duplicate, dead_lettered, retried)",
            metrics.messages.clone(),
        );
        metrics.lag.register(registry);
        metrics
    }
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
            Err(failure @ (Failure::Malformed(_) | Failure::Permanent(_))) => Verdict::DeadLetter(failure.to_string()),
            Err(Failure::Transient(reason)) => Verdict::Retry(reason),
        }
    }
}

impl QueueConsumer {
    /// Consumes until `shutdown` (then returns Ok after the in-flight message is settled) or
    /// until the channel fails (Err: the caller reconnects).
    pub async fn run(&self, connection: &Connection, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let metrics = self.metrics.clone();
        let worker = QueueWorker {
            queue: self.settings.queue.clone(),
            dlx_exchange: self.settings.dlx_exchange.clone(),
            prefetch: self.settings.prefetch,
            max_retries: self.settings.max_retries,
            publisher: self.publisher.clone(),
            handler: Apply(self.aggregator.clone()),
            lag: self.metrics.lag.clone(),
            count: Arc::new(move |outcome| {
                metrics.messages.get_or_create(&MessageLabels { outcome }).inc();
            }),
        };
        tracing::info!(queue = %self.settings.queue, exchange = %self.settings.exchange, "consuming");
        worker.run(connection, shutdown).await
    }
}
