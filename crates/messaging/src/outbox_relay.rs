//! The outbox relay: publishes committed outbox rows to RabbitMQ with publisher confirms and marks
//! them sent only after a clean ack. Rows are claimed with `FOR UPDATE SKIP LOCKED`, so any number
//! of replicas can run it; an unroutable or refused message is retried later with backoff.
//! In the standalone mode it hands the rows to in-process consumers instead ([`LocalEvents`]).

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use lapin::{
    BasicProperties, Channel, Confirmation,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::FieldTable,
};
use prometheus_client::{
    metrics::{counter::Counter, gauge::Gauge},
    registry::Registry,
};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait,
    sea_query::{Expr, LockBehavior, LockType},
};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use videocall_entities::outbox;

use videocall_runtime::backoff::Backoff;

use crate::{amqp, local_events::LocalEvents};

#[derive(Debug, Clone)]
pub struct OutboxRelayConfig {
    pub amqp_url: String,
    /// Topic exchange the events go to (`videocall.events`).
    pub exchange: String,
    pub batch_size: u64,
    /// Poll period when nothing wakes the relay (events written by other processes).
    pub poll_interval: Duration,
    pub connection_name: String,
    /// The bounds of the queue that keeps events no consumer is bound for.
    pub unrouted: amqp::UnroutedRetention,
}

/// Health of the relay, for readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayState {
    Connecting,
    Connected,
}

pub struct OutboxRelay {
    db: DatabaseConnection,
    config: OutboxRelayConfig,
    wake: Arc<Notify>,
    state: watch::Sender<RelayState>,
    published: Counter,
    postponed: Counter,
    /// Messages waiting in `<exchange>.unrouted` (events no consumer was bound for), as last read.
    unrouted: Gauge,
    /// The last "not published" warning, and how many were held back since: at most one a minute.
    warned: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
    /// Deliver to these in-process consumers instead of RabbitMQ.
    local: Option<Arc<LocalEvents>>,
}

/// How often the unrouted queue's depth is read.
const UNROUTED_READ_EVERY: Duration = Duration::from_secs(10);
/// At most one "not published" warning this often (the rest are counted into the next one).
const WARN_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("database: {0}")]
    Db(#[from] sea_orm::DbErr),
}

impl OutboxRelay {
    pub fn new(db: DatabaseConnection, config: OutboxRelayConfig, wake: Arc<Notify>) -> Self {
        Self {
            db,
            config,
            wake,
            state: watch::Sender::new(RelayState::Connecting),
            published: Counter::default(),
            postponed: Counter::default(),
            unrouted: Gauge::default(),
            warned: std::sync::Mutex::new((None, 0)),
            local: None,
        }
    }

    /// Delivers to in-process consumers instead of RabbitMQ (the standalone mode; one relay per
    /// database, as a SQLite file has one writer). `amqp_url` is not used; events nobody in the
    /// process listens to count as sent, since no one outside can listen.
    pub fn deliver_in_process(mut self, events: Arc<LocalEvents>) -> Self {
        self.local = Some(events);
        self
    }

    /// Registers `videocall_outbox_published_total` and `videocall_outbox_postponed_total`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register("videocall_outbox_published", "Events the broker confirmed", self.published.clone());
        registry.register(
            "videocall_outbox_postponed",
            "Publish attempts that failed (unroutable, nacked, broker error) and were postponed",
            self.postponed.clone(),
        );
        registry.register(
            "videocall_outbox_unrouted_messages",
            "Events no queue was bound for, kept in <exchange>.unrouted (read every 10 s)",
            self.unrouted.clone(),
        );
    }

    pub fn state(&self) -> watch::Receiver<RelayState> {
        self.state.subscribe()
    }

    /// Runs until `shutdown`; reconnects to the broker with backoff whenever the channel fails.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        if let Some(events) = self.local.clone() {
            self.run_in_process(&events, &shutdown).await;
            return Ok(());
        }
        let mut db_backoff = Backoff::default();
        while !shutdown.is_cancelled() {
            self.state.send_replace(RelayState::Connecting);
            let Some(connection) = amqp::connect(&self.config.amqp_url, &self.config.connection_name, &shutdown).await
            else {
                break;
            };
            let channel = match self.open_channel(&connection).await {
                Ok(channel) => channel,
                Err(error @ amqp::DeclareError::Broker(_)) => {
                    tracing::warn!(%error, "cannot set up the events exchange; reconnecting");
                    sleep_or_stop(Duration::from_secs(1), &shutdown).await;
                    continue;
                }
                Err(error) => {
                    // Nothing changes by retrying until someone acts on the queue; say so, loudly.
                    tracing::error!(%error, "cannot declare the unrouted events queue; retrying in 10 s");
                    sleep_or_stop(Duration::from_secs(10), &shutdown).await;
                    continue;
                }
            };
            self.state.send_replace(RelayState::Connected);
            tracing::info!(exchange = %self.config.exchange, "outbox relay connected");
            let mut unrouted_read: Option<std::time::Instant> = None;
            loop {
                if unrouted_read.is_none_or(|at| at.elapsed() >= UNROUTED_READ_EVERY) {
                    unrouted_read = Some(std::time::Instant::now());
                    self.read_unrouted(&channel).await;
                }
                match self.publish_batch(&channel).await {
                    Ok(n) => {
                        db_backoff.reset();
                        if n as u64 >= self.config.batch_size {
                            continue; // more may be waiting
                        }
                    }
                    Err(RelayError::Broker(error)) => {
                        tracing::warn!(%error, "broker channel failed; reconnecting");
                        break;
                    }
                    Err(RelayError::Db(error)) => {
                        let delay = db_backoff.next_delay();
                        tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "outbox read failed");
                        sleep_or_stop(delay, &shutdown).await;
                    }
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(self.config.poll_interval) => {}
                }
            }
            let _ = connection.close(200, "shutting down".into()).await;
        }
        Ok(())
    }

    async fn run_in_process(&self, events: &LocalEvents, shutdown: &CancellationToken) {
        self.state.send_replace(RelayState::Connected);
        tracing::info!(exchange = %self.config.exchange, "outbox relay delivering in process");
        let mut db_backoff = Backoff::default();
        while !shutdown.is_cancelled() {
            match self.deliver_batch(events).await {
                Ok(n) => {
                    db_backoff.reset();
                    if n as u64 >= self.config.batch_size {
                        continue;
                    }
                }
                Err(error) => {
                    let delay = db_backoff.next_delay();
                    tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "outbox read failed");
                    sleep_or_stop(delay, shutdown).await;
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.config.poll_interval) => {}
            }
        }
    }

    /// Hands up to `batch_size` due rows to the in-process consumers, oldest first, marking each
    /// sent once its consumers applied it. No transaction is held while a consumer runs: the
    /// consumers write to the same database (and a SQLite pool has one connection).
    async fn deliver_batch(&self, events: &LocalEvents) -> Result<usize, sea_orm::DbErr> {
        let rows = outbox::Entity::find()
            .filter(outbox::Column::PublishedAt.is_null())
            .filter(outbox::Column::AvailableAt.lte(Utc::now()))
            .order_by_asc(outbox::Column::Id)
            .limit(self.config.batch_size)
            .all(&self.db)
            .await?;
        for row in &rows {
            let id = row.id.to_string();
            publish_span(row);
            match events.deliver(&self.config.exchange, &row.routing_key, Some(&id), row.payload.as_bytes()).await {
                Ok(delivery) => {
                    tracing::debug!(event_type = %row.event_type, consumers = delivery.consumers, "event delivered in process");
                    outbox::Entity::update_many()
                        .col_expr(outbox::Column::PublishedAt, Expr::value(Utc::now()))
                        .filter(outbox::Column::Id.eq(row.id))
                        .exec(&self.db)
                        .await?;
                    self.published.inc();
                }
                Err(postponed) => {
                    tracing::warn!(event_type = %row.event_type, reason = %postponed, "event postponed");
                    self.postpone(&self.db, row.id, row.attempts, &postponed.to_string()).await?;
                    self.postponed.inc();
                }
            }
        }
        Ok(rows.len())
    }

    async fn open_channel(&self, connection: &lapin::Connection) -> Result<Channel, amqp::DeclareError> {
        amqp::declare_events_exchange(connection, &self.config.exchange, Some(self.config.unrouted)).await?;
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(channel)
    }

    /// Reads how many events wait in the unrouted queue into the gauge (a passive declare).
    async fn read_unrouted(&self, channel: &Channel) {
        let name = amqp::unrouted_name(&self.config.exchange);
        let passive = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
        if let Ok(queue) = channel.queue_declare(name.as_str().into(), passive, FieldTable::default()).await {
            self.unrouted.set(i64::from(queue.message_count()));
        }
    }

    /// Claims up to `batch_size` due rows, publishes them, waits for every confirm, then records
    /// which were acked (sent) and which must be retried. Returns how many rows it claimed.
    async fn publish_batch(&self, channel: &Channel) -> Result<usize, RelayError> {
        let txn = self.db.begin().await?;
        let now = Utc::now();
        let mut select = outbox::Entity::find()
            .filter(outbox::Column::PublishedAt.is_null())
            .filter(outbox::Column::AvailableAt.lte(now))
            .order_by_asc(outbox::Column::Id)
            .limit(self.config.batch_size);
        if txn.get_database_backend() == DbBackend::Postgres {
            select = select.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
        }
        let rows = select.all(&txn).await?;
        if rows.is_empty() {
            txn.commit().await?;
            return Ok(0);
        }
        let mut pending = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut properties = BasicProperties::default()
                .with_message_id(row.id.to_string().into())
                .with_type(row.event_type.as_str().into())
                .with_content_type("application/cloudevents+json".into())
                .with_delivery_mode(2)
                .with_timestamp(u64::try_from(row.created_at.timestamp()).unwrap_or_default());
            // The event's trace goes on in the AMQP headers too, for consumers that do not read
            // the CloudEvents extension; the publish is a span of that trace.
            if let Some(traceparent) = publish_span(row) {
                let mut headers = FieldTable::default();
                headers.insert("traceparent".into(), lapin::types::AMQPValue::LongString(traceparent.into()));
                properties = properties.with_headers(headers);
            }
            let confirm = channel
                .basic_publish(
                    self.config.exchange.as_str().into(),
                    row.routing_key.as_str().into(),
                    BasicPublishOptions { mandatory: true, ..Default::default() },
                    row.payload.as_bytes(),
                    properties,
                )
                .await;
            pending.push(confirm);
        }
        let mut sent = Vec::new();
        let mut failed = Vec::new();
        let mut broker_error = None;
        for (row, confirm) in rows.iter().zip(pending) {
            let outcome = match confirm {
                Ok(confirm) => confirm.await,
                Err(e) => Err(e),
            };
            match outcome {
                Ok(Confirmation::Ack(None)) => sent.push(row.id),
                Ok(Confirmation::Ack(Some(_))) => {
                    failed.push((row, "unroutable: no queue is bound for this routing key".to_owned()))
                }
                Ok(Confirmation::Nack(_)) => failed.push((row, "nacked by the broker".to_owned())),
                Ok(Confirmation::NotRequested) => failed.push((row, "publisher confirms are off".to_owned())),
                Err(error) => {
                    failed.push((row, format!("publish failed: {error}")));
                    broker_error.get_or_insert(error);
                }
            }
        }
        if !sent.is_empty() {
            outbox::Entity::update_many()
                .col_expr(outbox::Column::PublishedAt, Expr::value(Utc::now()))
                .filter(outbox::Column::Id.is_in(sent.iter().copied()))
                .exec(&txn)
                .await?;
        }
        for (row, reason) in &failed {
            self.postpone(&txn, row.id, row.attempts, reason).await?;
        }
        txn.commit().await?;
        self.published.inc_by(sent.len() as u64);
        self.postponed.inc_by(failed.len() as u64);
        if !failed.is_empty() {
            let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
            if warned.0.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                let held_back = std::mem::take(&mut warned.1);
                *warned = (Some(std::time::Instant::now()), 0);
                tracing::warn!(sent = sent.len(), failed = failed.len(), first_error = %failed[0].1, similar_warnings_held_back = held_back, "some events were not published; will retry");
            } else {
                warned.1 += 1;
            }
        } else {
            tracing::debug!(sent = sent.len(), "events published");
        }
        match broker_error {
            Some(error) => Err(RelayError::Broker(error)),
            None => Ok(rows.len()),
        }
    }

    async fn postpone(
        &self,
        txn: &impl ConnectionTrait,
        id: Uuid,
        attempts: i32,
        reason: &str,
    ) -> Result<(), sea_orm::DbErr> {
        let delay = Backoff::new(Duration::from_millis(500), Duration::from_secs(60)).ceiling(attempts.max(0) as u32);
        let next = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
        outbox::Entity::update_many()
            .col_expr(outbox::Column::Attempts, Expr::value(attempts.saturating_add(1)))
            .col_expr(outbox::Column::AvailableAt, Expr::value(next))
            .col_expr(outbox::Column::LastError, Expr::value(reason))
            .filter(outbox::Column::Id.eq(id))
            .exec(txn)
            .await?;
        Ok(())
    }
}

/// Records an `outbox.publish` span for `row` in the trace its event continues (the CloudEvents
/// `traceparent`), and returns that traceparent.
fn publish_span(row: &outbox::Model) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Head {
        traceparent: Option<String>,
    }
    let traceparent = serde_json::from_str::<Head>(&row.payload).ok()?.traceparent?;
    let span = tracing::info_span!(
        "outbox.publish",
        otel.name = "outbox.publish",
        event_type = %row.event_type,
        routing_key = %row.routing_key,
        call_id = %row.aggregate_id,
    );
    crate::trace_context::set_parent(&span, &traceparent);
    span.in_scope(|| tracing::debug!("publishing"));
    Some(traceparent)
}

async fn sleep_or_stop(delay: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(delay) => {}
    }
}

/// When the oldest row not yet published was written (`None` when every row is published).
pub async fn oldest_pending(db: &DatabaseConnection) -> Result<Option<chrono::DateTime<chrono::Utc>>, sea_orm::DbErr> {
    use sea_orm::QueryOrder;
    let oldest = outbox::Entity::find()
        .filter(outbox::Column::PublishedAt.is_null())
        .order_by_asc(outbox::Column::CreatedAt)
        .one(db)
        .await?;
    Ok(oldest.map(|row| row.created_at))
}

/// Rows not yet published, for metrics and tests.
pub async fn backlog(db: &DatabaseConnection) -> Result<u64, sea_orm::DbErr> {
    use sea_orm::PaginatorTrait;
    outbox::Entity::find().filter(outbox::Column::PublishedAt.is_null()).count(db).await
}
