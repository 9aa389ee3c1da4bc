//! The AMQP side: declares the queues (each with its dead-letter queue), consumes with manual
//! acks, and decides each message's fate: ack after the effect committed, dead-letter with the
//! reason when it can never apply, republish with an attempt count after a transient fault.

use lapin::{Channel, Connection, ExchangeKind, options::ExchangeDeclareOptions, types::FieldTable};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
pub use videocall_messaging::consumer_metrics::ConsumerMetrics;
use videocall_messaging::{
    amqp::{DeclareError, QueueType},
    inbox_worker::{Handler, QueueShape, QueueWorker, Verdict, declare_queue},
};

use crate::{
    config::QueueBinding,
    effects::{Effects, Kind},
};

pub use videocall_messaging::inbox_worker::{ATTEMPT_HEADER, REASON_HEADER, dlq_name, publisher_channel};

#[derive(Debug, Clone)]
pub struct Settings {
    pub dlx_exchange: String,
    pub prefetch: u16,
    pub max_retries: u32,
    pub queue_type: QueueType,
}

impl Settings {
    /// How the queues are declared.
    pub fn shape(&self) -> QueueShape {
        QueueShape { queue_type: self.queue_type, max_retries: self.max_retries }
    }
}

/// Declares the upstream topic exchange, then the queue with its dead-letter queue, bound to it.
/// Every declaration is idempotent.
pub async fn declare(connection: &Connection, binding: &QueueBinding, settings: &Settings) -> Result<(), DeclareError> {
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    let channel = connection.create_channel().await?;
    channel
        .exchange_declare(binding.exchange.as_str().into(), ExchangeKind::Topic, durable, FieldTable::default())
        .await?;
    let _ = channel.close(200, "declared".into()).await;
    let bindings = [(binding.exchange.as_str(), binding.routing_key.as_str())];
    declare_queue(connection, &binding.queue, &settings.dlx_exchange, &bindings, settings.shape()).await
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

/// `videocall_consumer_messages{queue,outcome}`: messages handled, by queue and outcome.
pub fn metrics(registry: &mut Registry) -> ConsumerMetrics {
    ConsumerMetrics::register(
        registry,
        "videocall_consumer_messages",
        "Messages handled, by queue and outcome (applied, dead_lettered, retried)",
        true,
    )
}

/// The outcomes counted for each queue.
pub const OUTCOMES: [&str; 3] = ["applied", "dead_lettered", "retried"];

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
            Err(failure) => failure.into(),
        }
    }
}

impl QueueConsumer {
    /// Consumes until `shutdown` (then returns Ok after the in-flight message is settled) or
    /// until the channel fails (Err: the caller reconnects).
    pub async fn run(&self, connection: &Connection, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let worker = QueueWorker {
            queue: self.binding.queue.clone(),
            dlx_exchange: self.settings.dlx_exchange.clone(),
            prefetch: self.settings.prefetch,
            max_retries: self.settings.max_retries,
            queue_type: self.settings.queue_type,
            publisher: self.publisher.clone(),
            handler: Apply { effects: self.effects.clone(), kind: self.kind },
            lag: self.metrics.lag.clone(),
            count: self.metrics.counter(&self.binding.queue),
        };
        tracing::info!(queue = %self.binding.queue, exchange = %self.binding.exchange, routing_key = %self.binding.routing_key, "consuming");
        worker.run(connection, shutdown).await
    }
}
