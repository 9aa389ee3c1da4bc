//! The AMQP side: declares the queues (each with its dead-letter queue), consumes with manual
//! acks, and decides each message's fate: ack after the effect committed, dead-letter with the
//! reason when it can never apply, republish with an attempt count after a transient fault.

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
    config::QueueBinding,
    effects::{Effects, Failure, Kind},
};

pub use videocall_messaging::inbox_worker::{ATTEMPT_HEADER, REASON_HEADER, dlq_name, publisher_channel};

#[derive(Debug, Clone)]
pub struct Settings {
    pub dlx_exchange: String,
    pub prefetch: u16,
    pub max_retries: u32,
}

/// Declares the upstream topic exchange, the dead-letter exchange and queue, and the durable
/// queue bound to the upstream exchange (dead-lettering to the DLX, should anything reject).
/// Every declaration is idempotent.
pub async fn declare(channel: &Channel, binding: &QueueBinding, dlx_exchange: &str) -> Result<(), lapin::Error> {
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    channel
        .exchange_declare(binding.exchange.as_str().into(), ExchangeKind::Topic, durable, FieldTable::default())
        .await?;
    channel.exchange_declare(dlx_exchange.into(), ExchangeKind::Direct, durable, FieldTable::default()).await?;
    let durable_queue = QueueDeclareOptions { durable: true, ..Default::default() };
    let dlq = dlq_name(&binding.queue);
    channel.queue_declare(dlq.as_str().into(), durable_queue, FieldTable::default()).await?;
    channel
        .queue_bind(
            dlq.as_str().into(),
            dlx_exchange.into(),
            binding.queue.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut arguments = FieldTable::default();
    arguments.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(dlx_exchange.into()));
    arguments.insert("x-dead-letter-routing-key".into(), AMQPValue::LongString(binding.queue.as_str().into()));
    channel.queue_declare(binding.queue.as_str().into(), durable_queue, arguments).await?;
    channel
        .queue_bind(
            binding.queue.as_str().into(),
            binding.exchange.as_str().into(),
            binding.routing_key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// Consumes one queue.
pub struct QueueConsumer {
    pub binding: QueueBinding,
    pub kind: Kind,
    pub effects: Effects,
    pub settings: Settings,
    pub publisher: Channel,
    pub metrics: ConsumerMetrics,
}

/// Messages handled, by queue and outcome (`applied`, `dead_lettered`, `retried`).
#[derive(Debug, Clone, Default)]
pub struct ConsumerMetrics {
    pub messages: Family<MessageLabels, Counter>,
    pub lag: QueueLag,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MessageLabels {
    pub queue: String,
    pub outcome: &'static str,
}

impl ConsumerMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "videocall_consumer_messages",
            "Messages handled, by queue and outcome (applied, dead_lettered, retried)",
            metrics.messages.clone(),
        );
        metrics.lag.register(registry);
        metrics
    }

    /// Zero series for every outcome of `queue`, so the family shows before the first message.
    pub fn init_queue(&self, queue: &str) {
        for outcome in ["applied", "dead_lettered", "retried"] {
            let _ = self.messages.get_or_create(&MessageLabels { queue: queue.to_owned(), outcome });
        }
    }
}

/// The effects of one kind of message as a queue's handler (also what the standalone binary binds
/// to its in-process events).
pub fn handler(effects: Effects, kind: Kind) -> impl Handler {
    Apply { effects, kind }
}

/// The effects of one kind of message, as the queue's handler.
struct Apply {
    effects: Effects,
    kind: Kind,
}

impl Handler for Apply {
    async fn handle<'a>(&'a self, message_id: Option<&'a str>, body: &'a [u8]) -> Verdict {
        match self.effects.apply(self.kind, message_id, body).await {
            Ok(outcome) => {
                tracing::debug!(?outcome, "applied");
                Verdict::Done("applied")
            }
            Err(failure @ (Failure::Malformed(_) | Failure::Permanent(_))) => Verdict::DeadLetter(failure.to_string()),
            Err(Failure::Transient(reason)) => Verdict::Retry(reason),
        }
    }
}

impl QueueConsumer {
    /// Consumes until `shutdown` (then returns Ok after the in-flight message is settled) or
    /// until the channel fails (Err: the caller reconnects).
    pub async fn run(&self, connection: &Connection, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let (metrics, queue) = (self.metrics.clone(), self.binding.queue.clone());
        let worker = QueueWorker {
            queue: self.binding.queue.clone(),
            dlx_exchange: self.settings.dlx_exchange.clone(),
            prefetch: self.settings.prefetch,
            max_retries: self.settings.max_retries,
            publisher: self.publisher.clone(),
            handler: Apply { effects: self.effects.clone(), kind: self.kind },
            lag: self.metrics.lag.clone(),
            count: Arc::new(move |outcome| {
                metrics.messages.get_or_create(&MessageLabels { queue: queue.clone(), outcome }).inc();
            }),
        };
        tracing::info!(queue = %self.binding.queue, exchange = %self.binding.exchange, routing_key = %self.binding.routing_key, "consuming");
        worker.run(connection, shutdown).await
    }
}
