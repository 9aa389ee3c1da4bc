//! One queue's consumer loop, shared by the workers that consume RabbitMQ: manual acks, the
//! handler's verdict decides each message's fate — ack once its effect committed, dead-letter
//! (with the reason in a header) when it can never apply, retry after a transient fault, up to a
//! bound: a quorum queue's message goes back to the queue (nack with requeue) and the broker counts
//! its deliveries (`x-delivery-count`, dead-lettering it past `x-delivery-limit` should the worker
//! never settle it); a classic queue's is republished with an attempt count. Broker failures end
//! the loop so the caller reconnects.

use std::{future::Future, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ExchangeKind,
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions,
        BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    },
    types::{AMQPValue, FieldTable},
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, histogram::Histogram},
    registry::Registry,
};
use tokio_util::sync::CancellationToken;

use videocall_runtime::backoff::Backoff;

use crate::amqp::{DeclareError, QueueType, declare_durable_queue};

/// Header with the number of retries a republished message (classic queues) has had; on a
/// dead-lettered copy, the retries it had whatever the queue's type.
pub const ATTEMPT_HEADER: &str = "x-attempt";
/// Header the broker puts on a quorum queue's redelivered message: its earlier deliveries.
pub const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";
/// Header on a dead-lettered message saying why it was dead-lettered.
pub const REASON_HEADER: &str = "x-death-reason";

/// Name of the dead-letter queue of `queue`.
pub fn dlq_name(queue: &str) -> String {
    format!("{queue}.dlq")
}

/// A channel in confirm mode, for republishing and dead-lettering.
pub async fn publisher_channel(connection: &Connection) -> Result<Channel, lapin::Error> {
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(channel)
}

/// How a consumed queue is declared: its type (`QUEUE_TYPE`) and, for a quorum queue, the
/// deliveries after the first the broker allows a message before dead-lettering it
/// (`x-delivery-limit`, from `MAX_RETRIES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueShape {
    pub queue_type: QueueType,
    pub max_retries: u32,
}

/// Declares the dead-letter exchange `dlx` (direct) and `queue`'s dead-letter queue bound to it,
/// then the durable `queue` (dead-lettering to `dlx`, should anything reject) bound to each
/// `(exchange, routing key)` of `bindings`. The exchanges bound to are declared already. Both
/// queues are of `shape.queue_type`; a quorum `queue` also gets `x-delivery-limit` =
/// `shape.max_retries` and at-least-once dead-lettering (which needs `x-overflow: reject-publish`;
/// the queue has no length bound, so that changes nothing else). Every declaration is idempotent;
/// a queue that exists with another type or other arguments is a [`DeclareError`] naming it.
pub async fn declare_queue(
    connection: &Connection,
    queue: &str,
    dlx: &str,
    bindings: &[(&str, &str)],
    shape: QueueShape,
) -> Result<(), DeclareError> {
    let channel = connection.create_channel().await?;
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    channel.exchange_declare(dlx.into(), ExchangeKind::Direct, durable, FieldTable::default()).await?;
    let dlq = dlq_name(queue);
    declare_durable_queue(connection, &dlq, shape.queue_type, |_| FieldTable::default()).await?;
    channel
        .queue_bind(dlq.as_str().into(), dlx.into(), queue.into(), QueueBindOptions::default(), FieldTable::default())
        .await?;
    let arguments = |queue_type| {
        let mut arguments = FieldTable::default();
        arguments.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(dlx.into()));
        arguments.insert("x-dead-letter-routing-key".into(), AMQPValue::LongString(queue.into()));
        if queue_type == QueueType::Quorum {
            arguments.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(i64::from(shape.max_retries)));
            arguments.insert("x-dead-letter-strategy".into(), AMQPValue::LongString("at-least-once".into()));
            arguments.insert("x-overflow".into(), AMQPValue::LongString("reject-publish".into()));
        }
        arguments
    };
    declare_durable_queue(connection, queue, shape.queue_type, arguments).await?;
    for (exchange, key) in bindings {
        let (exchange, key) = (*exchange, *key);
        channel
            .queue_bind(queue.into(), exchange.into(), key.into(), QueueBindOptions::default(), FieldTable::default())
            .await?;
    }
    let _ = channel.close(200, "declared".into()).await;
    Ok(())
}

/// What became of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Its effect committed (or it was a duplicate); the label is counted on `/metrics`.
    Done(&'static str),
    /// It can never apply: dead-letter it with this reason.
    DeadLetter(String),
    /// It may apply later (e.g. the database failed): retry, boundedly.
    Retry(String),
}

/// Applies one message. Implementations commit the effect and the inbox row together.
pub trait Handler: Send + Sync {
    fn handle<'a>(&'a self, message_id: Option<&'a str>, body: &'a [u8]) -> impl Future<Output = Verdict> + Send + 'a;
}

/// `videocall_queue_lag_seconds{queue}`: time from an event's creation (its CloudEvents `time`,
/// else the AMQP timestamp) to its handling here. Cheap to clone (clones observe together).
#[derive(Debug, Clone)]
pub struct QueueLag(Family<QueueLabel, Histogram, fn() -> Histogram>);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    queue: String,
}

fn lag_histogram() -> Histogram {
    Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 300.0, 1800.0])
}

impl Default for QueueLag {
    fn default() -> Self {
        Self(Family::new_with_constructor(lag_histogram as fn() -> Histogram))
    }
}

impl QueueLag {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "videocall_queue_lag_seconds",
            "Time from an event's creation (CloudEvents time, else the AMQP timestamp) to its handling, by queue",
            self.0.clone(),
        );
    }

    /// Observes how old `delivery` is now, if it says when it was made.
    fn observe(&self, queue: &str, delivery: &Delivery) {
        if let Some(created) = created_at(delivery) {
            let lag = (Utc::now() - created).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6;
            self.0.get_or_create(&QueueLabel { queue: queue.to_owned() }).observe(lag);
        }
    }
}

/// The CloudEvents `time` of the body, else the AMQP timestamp (whole seconds).
fn created_at(delivery: &Delivery) -> Option<DateTime<Utc>> {
    #[derive(serde::Deserialize)]
    struct Stamped {
        time: Option<String>,
    }
    serde_json::from_slice::<Stamped>(&delivery.data)
        .ok()
        .and_then(|s| s.time)
        .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
        .map(|t| t.with_timezone(&Utc))
        .or_else(|| {
            let secs = i64::try_from((*delivery.properties.timestamp())?).ok()?;
            DateTime::from_timestamp(secs, 0)
        })
}

/// Consumes one queue with `handler`.
pub struct QueueWorker<H> {
    pub queue: String,
    pub dlx_exchange: String,
    pub prefetch: u16,
    pub max_retries: u32,
    /// The queue's type, which decides how a transient fault is retried.
    pub queue_type: QueueType,
    /// The session's confirm-mode channel for republishing and dead-lettering.
    pub publisher: Channel,
    pub handler: H,
    /// Called with each message's outcome label (`dead_lettered`, `retried` or the handler's).
    pub count: Arc<dyn Fn(&'static str) + Send + Sync>,
    pub lag: QueueLag,
}

impl<H: Handler> QueueWorker<H> {
    /// Consumes until `shutdown` (then cancels the consumer after the in-flight message is
    /// settled and returns Ok) or until the channel fails (Err: the caller reconnects).
    pub async fn run(&self, connection: &Connection, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let channel = connection.create_channel().await?;
        channel.basic_qos(self.prefetch, BasicQosOptions::default()).await?;
        let mut consumer = channel
            .basic_consume(self.queue.as_str().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
            .await?;
        tracing::info!(queue = %self.queue, "consuming");
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
                    tracing::warn!(queue = %self.queue, "the broker cancelled the consumer");
                    anyhow::bail!("the broker cancelled the consumer of {}", self.queue);
                }
            }
        }
        // Prefetched messages not yet handled go back to the queue when the connection closes.
        let _ = channel.basic_cancel(consumer.tag(), BasicCancelOptions::default()).await;
        Ok(())
    }

    /// Applies one delivery and acknowledges it; only broker failures are returned.
    async fn settle(&self, delivery: Delivery, shutdown: &CancellationToken) -> anyhow::Result<()> {
        // The broker went away after handing us this (prefetched) message: it cannot be acked and
        // comes back on the next session, so applying it now would be work done twice.
        if !delivery.acker.usable() {
            anyhow::bail!("the channel closed before this message could be handled; it will be redelivered");
        }
        let message_id = delivery.properties.message_id().as_ref().map(|s| s.as_str().to_owned());
        let attempt = attempt_of(&delivery.properties);
        if attempt == 0 {
            self.lag.observe(&self.queue, &delivery);
        }
        let span = tracing::info_span!("message", otel.name = "consume", queue = %self.queue, message_id = message_id.as_deref().unwrap_or(""), attempt);
        // The event's trace goes on here: the AMQP header, else the CloudEvents extension.
        if let Some(traceparent) = traceparent_of(&delivery) {
            crate::trace_context::set_parent(&span, &traceparent);
        }
        let handled =
            tracing::Instrument::instrument(self.handler.handle(message_id.as_deref(), &delivery.data), span.clone());
        match handled.await {
            Verdict::Done(outcome) => {
                tracing::debug!(parent: &span, outcome, "applied");
                ack(&delivery).await?;
                (self.count)(outcome);
            }
            Verdict::DeadLetter(reason) => {
                tracing::warn!(parent: &span, %reason, "dead-lettering");
                self.dead_letter(&delivery, &reason, attempt).await?;
                ack(&delivery).await?;
                (self.count)("dead_lettered");
            }
            Verdict::Retry(reason) if attempt >= self.max_retries => {
                let reason = format!("gave up after {} attempts: {reason}", attempt + 1);
                tracing::warn!(parent: &span, %reason, "dead-lettering");
                self.dead_letter(&delivery, &reason, attempt).await?;
                ack(&delivery).await?;
                (self.count)("dead_lettered");
            }
            Verdict::Retry(reason) => {
                let delay = Backoff::new(Duration::from_millis(200), Duration::from_secs(10)).ceiling(attempt);
                tracing::warn!(parent: &span, %reason, retry_in_ms = delay.as_millis() as u64, "will retry");
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        // Back to the queue as it was; the next replica tries it afresh.
                        requeue(&delivery).await?;
                        return Ok(());
                    }
                    _ = tokio::time::sleep(delay) => {}
                }
                match self.queue_type {
                    // Back to the queue; the broker counts the delivery (`x-delivery-count`).
                    QueueType::Quorum => requeue(&delivery).await?,
                    QueueType::Classic => {
                        let mut headers = headers_of(&delivery.properties);
                        headers.insert(ATTEMPT_HEADER.into(), AMQPValue::LongLongInt(i64::from(attempt) + 1));
                        let properties = delivery.properties.clone().with_headers(headers).with_delivery_mode(2);
                        // Through the default exchange straight back to this queue, at its tail.
                        self.publish("", &self.queue, &delivery.data, properties).await?;
                        ack(&delivery).await?;
                    }
                }
                (self.count)("retried");
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
        self.publish(&self.dlx_exchange, &self.queue, &delivery.data, properties).await
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

/// Acknowledges `delivery`. lapin answers `false` instead of failing when the channel is already
/// closed (the broker went away): the ack is lost and the message will be redelivered, so that is
/// a broker failure too — the session ends rather than go on through its prefetched messages.
async fn ack(delivery: &Delivery) -> anyhow::Result<()> {
    if delivery.acker.ack(BasicAckOptions::default()).await? {
        Ok(())
    } else {
        anyhow::bail!("the channel closed before the ack; the message will be redelivered")
    }
}

/// Returns `delivery` to its queue (nack with requeue); `false` from lapin is a broker failure,
/// as for [`ack`].
async fn requeue(delivery: &Delivery) -> anyhow::Result<()> {
    if delivery.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await? {
        Ok(())
    } else {
        anyhow::bail!("the channel closed before the nack; the message will be redelivered")
    }
}

fn headers_of(properties: &BasicProperties) -> FieldTable {
    properties.headers().clone().unwrap_or_default()
}

/// Retries already made: the attempt header of a republished message (classic queues) plus the
/// broker's count of earlier deliveries (quorum queues); both absent on the first delivery.
/// The W3C trace context a delivery carries: its `traceparent` header, else the CloudEvents
/// `traceparent` extension of its body.
fn traceparent_of(delivery: &Delivery) -> Option<String> {
    let header = delivery.properties.headers().as_ref().and_then(|h| {
        h.inner().iter().find(|(k, _)| k.as_str() == "traceparent").and_then(|(_, v)| match v {
            AMQPValue::LongString(s) => Some(s.to_string()),
            AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
            _ => None,
        })
    });
    header.or_else(|| {
        #[derive(serde::Deserialize)]
        struct Head {
            traceparent: Option<String>,
        }
        serde_json::from_slice::<Head>(&delivery.data).ok()?.traceparent
    })
}

fn attempt_of(properties: &BasicProperties) -> u32 {
    let Some(headers) = properties.headers() else { return 0 };
    count_in(headers, ATTEMPT_HEADER).saturating_add(count_in(headers, DELIVERY_COUNT_HEADER))
}

/// A non-negative count in header `name`; 0 when absent or not a number.
fn count_in(headers: &FieldTable, name: &str) -> u32 {
    let value = match headers.inner().get(name) {
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
