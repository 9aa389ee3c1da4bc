//! The AMQP side (the shape of event-consumer's): declares the queue (bound to the events exchange
//! with every routing key we need) and its dead-letter queue, consumes with manual acks, and
//! decides each message's fate: ack after the effect committed, dead-letter with the reason when
//! it can never apply, republish with an attempt count after a transient fault.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ExchangeKind,
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions,
        BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable},
};
use tokio_util::sync::CancellationToken;
use videocall_platform::backoff::Backoff;

use crate::{
    config::ROUTING_KEYS,
    summaries::{Aggregator, Failure, Outcome},
};

/// Header with the number of retries a republished message has had.
pub const ATTEMPT_HEADER: &str = "x-attempt";
/// Header on a dead-lettered message saying why it was dead-lettered.
pub const REASON_HEADER: &str = "x-death-reason";

/// Name of the dead-letter queue of `queue`.
pub fn dlq_name(queue: &str) -> String {
    format!("{queue}.dlq")
}

/// Where the consumed queue is and how it is handled.
#[derive(Debug, Clone)]
pub struct Settings {
    pub exchange: String,
    pub queue: String,
    pub dlx_exchange: String,
    pub prefetch: u16,
    pub max_retries: u32,
}

/// Declares the events exchange (durable topic), the dead-letter exchange and queue, and the
/// durable queue bound to the events exchange with every key of [`ROUTING_KEYS`] (dead-lettering
/// to the DLX, should anything reject). Every declaration is idempotent.
pub async fn declare(channel: &Channel, settings: &Settings) -> Result<(), lapin::Error> {
    let (exchange, queue, dlx) = (settings.exchange.as_str(), settings.queue.as_str(), settings.dlx_exchange.as_str());
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    channel.exchange_declare(exchange.into(), ExchangeKind::Topic, durable, FieldTable::default()).await?;
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

/// A channel in confirm mode, for republishing and dead-lettering.
pub async fn publisher_channel(connection: &Connection) -> Result<Channel, lapin::Error> {
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(channel)
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
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MessageLabels {
    pub outcome: &'static str,
}

impl ConsumerMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "videocall_quality_messages",
            "Messages handled, by outcome (applied, late, finalized, duplicate, dead_lettered, retried)",
            metrics.messages.clone(),
        );
        metrics
    }
}

impl QueueConsumer {
    /// Consumes until `shutdown` (then cancels the consumer after the in-flight message is
    /// settled and returns Ok) or until the channel fails (Err: the caller reconnects).
    pub async fn run(&self, connection: &Connection, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let channel = connection.create_channel().await?;
        channel.basic_qos(self.settings.prefetch, BasicQosOptions::default()).await?;
        let mut consumer = channel
            .basic_consume(
                self.settings.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        tracing::info!(queue = %self.settings.queue, exchange = %self.settings.exchange, "consuming");
        loop {
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                next = consumer.next() => next,
            };
            match next {
                Some(Ok(delivery)) => self.settle(delivery, shutdown).await?,
                Some(Err(error)) => return Err(error.into()),
                None => {
                    tracing::warn!(queue = %self.settings.queue, "the broker cancelled the consumer");
                    anyhow::bail!("the broker cancelled the consumer of {}", self.settings.queue);
                }
            }
        }
        // Prefetched messages not yet handled go back to the queue when the connection closes.
        let _ = channel.basic_cancel(consumer.tag(), BasicCancelOptions::default()).await;
        Ok(())
    }

    fn count(&self, outcome: &'static str) {
        self.metrics.messages.get_or_create(&MessageLabels { outcome }).inc();
    }

    /// Applies one delivery and acknowledges it; only broker failures are returned.
    async fn settle(&self, delivery: Delivery, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let message_id = delivery.properties.message_id().as_ref().map(|s| s.as_str().to_owned());
        let attempt = attempt_of(&delivery.properties);
        let span = tracing::info_span!("message", queue = %self.settings.queue, message_id = message_id.as_deref().unwrap_or(""), attempt);
        let outcome = self.aggregator.apply(message_id.as_deref(), &delivery.data).await;
        match outcome {
            Ok(outcome) => {
                tracing::debug!(parent: &span, ?outcome, "applied");
                delivery.acker.ack(BasicAckOptions::default()).await?;
                self.count(match outcome {
                    Outcome::Applied => "applied",
                    Outcome::Late => "late",
                    Outcome::Finalized => "finalized",
                    Outcome::Duplicate => "duplicate",
                });
            }
            Err(failure @ (Failure::Malformed(_) | Failure::Permanent(_))) => {
                tracing::warn!(parent: &span, reason = %failure, "dead-lettering");
                self.dead_letter(&delivery, &failure.to_string(), attempt).await?;
                delivery.acker.ack(BasicAckOptions::default()).await?;
                self.count("dead_lettered");
            }
            Err(Failure::Transient(reason)) if attempt >= self.settings.max_retries => {
                let reason = format!("gave up after {} attempts: {reason}", attempt + 1);
                tracing::warn!(parent: &span, %reason, "dead-lettering");
                self.dead_letter(&delivery, &reason, attempt).await?;
                delivery.acker.ack(BasicAckOptions::default()).await?;
                self.count("dead_lettered");
            }
            Err(Failure::Transient(reason)) => {
                let delay = Backoff::new(Duration::from_millis(200), Duration::from_secs(10)).ceiling(attempt);
                tracing::warn!(parent: &span, %reason, retry_in_ms = delay.as_millis() as u64, "will retry");
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        // Back to the queue as it was; the next replica tries it afresh.
                        delivery.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await?;
                        return Ok(());
                    }
                    _ = tokio::time::sleep(delay) => {}
                }
                let mut headers = headers_of(&delivery.properties);
                headers.insert(ATTEMPT_HEADER.into(), AMQPValue::LongLongInt(i64::from(attempt) + 1));
                let properties = delivery.properties.clone().with_headers(headers).with_delivery_mode(2);
                // Through the default exchange straight back to this queue, at its tail.
                self.publish("", &self.settings.queue, &delivery.data, properties).await?;
                delivery.acker.ack(BasicAckOptions::default()).await?;
                self.count("retried");
            }
        }
        Ok(())
    }

    /// Publishes a copy of `delivery` to the dead-letter queue with the reason in a header.
    async fn dead_letter(&self, delivery: &Delivery, reason: &str, attempt: u32) -> anyhow::Result<()> {
        let mut headers = headers_of(&delivery.properties);
        headers.insert(REASON_HEADER.into(), AMQPValue::LongString(reason.into()));
        headers.insert("x-original-exchange".into(), AMQPValue::LongString(delivery.exchange.as_str().into()));
        headers.insert("x-original-routing-key".into(), AMQPValue::LongString(delivery.routing_key.as_str().into()));
        headers.insert(ATTEMPT_HEADER.into(), AMQPValue::LongLongInt(i64::from(attempt)));
        let properties = delivery.properties.clone().with_headers(headers).with_delivery_mode(2);
        self.publish(&self.settings.dlx_exchange, &self.settings.queue, &delivery.data, properties).await
    }

    /// Publishes `mandatory` and waits for the broker's confirm; anything but a clean ack fails.
    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> anyhow::Result<()> {
        let confirm = self
            .publisher
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions { mandatory: true, ..Default::default() },
                body,
                properties,
            )
            .await?
            .await?;
        match confirm {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(_)) => anyhow::bail!("`{routing_key}` on `{exchange}` reached no queue"),
            Confirmation::Nack(_) => anyhow::bail!("the broker refused a message for `{exchange}`"),
        }
    }
}

fn headers_of(properties: &BasicProperties) -> FieldTable {
    properties.headers().clone().unwrap_or_default()
}

/// Retries already made, from the attempt header (absent on first delivery).
fn attempt_of(properties: &BasicProperties) -> u32 {
    let Some(headers) = properties.headers() else { return 0 };
    let value = match headers.inner().get(ATTEMPT_HEADER) {
        Some(AMQPValue::LongLongInt(n)) => *n,
        Some(AMQPValue::LongInt(n)) => i64::from(*n),
        Some(AMQPValue::LongUInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortShortInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortShortUInt(n)) => i64::from(*n),
        _ => 0,
    };
    u32::try_from(value.max(0)).unwrap_or(u32::MAX)
}
