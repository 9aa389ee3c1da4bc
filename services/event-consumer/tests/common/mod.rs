//! A running event-consumer (its library's `run`) against the real PostgreSQL, RabbitMQ and Redis,
//! with exchanges, queues and the cell id unique to the test, plus ways to feed and observe it.

#![allow(dead_code)] // each test file uses part of the harness

use std::{future::Future, sync::Arc, time::Duration};

use clap::Parser;
use event_consumer::{ConsumerArgs, ConsumerConfig};
use futures_util::StreamExt;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties,
    message::BasicGetMessage,
    options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions},
    types::{AMQPValue, FieldTable},
};
use sea_orm::{DatabaseConnection, EntityTrait, PaginatorTrait};
use tokio::{sync::Notify, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use videocall_calls::{Actor, CallStore, NewCall};
use videocall_domain::{CallType, Command};
use videocall_entities::processed_messages;
use videocall_runtime::service::Service;

pub const WAIT: Duration = Duration::from_secs(15);

pub use videocall_testkit::redis_url;

pub struct Harness {
    pub db: DatabaseConnection,
    pub store: CallStore,
    pub config: ConsumerConfig,
    pub amqp: Connection,
    pub channel: Channel,
    pub shutdown: CancellationToken,
    pub task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Harness {
    /// Starts the consumer with `extra` flags and waits until it consumes both queues.
    pub async fn start(extra: &[&str]) -> Self {
        videocall_runtime::telemetry::init_for_tests();
        let url = videocall_testkit::fresh_database().await;
        let db = videocall_runtime::db::connect_and_migrate(&url, &Default::default()).await.expect("database");
        let store = CallStore::new(db.clone(), "/videocall/test/api-gateway".into(), Arc::new(Notify::new()));
        let u = videocall_testkit::unique_name;
        let mut args = vec![
            "event-consumer".to_owned(),
            format!("--database-url={url}"),
            format!("--amqp-url={}", videocall_testkit::amqp_url()),
            format!("--redis-url={}", redis_url()),
            format!("--cell-id={}", Uuid::now_v7().simple()),
            format!("--user-offline-exchange={}", u("test.presence")),
            format!("--user-offline-queue={}", u("test.user-offline")),
            format!("--ticket-created-exchange={}", u("test.support")),
            format!("--ticket-created-queue={}", u("test.ticket-created")),
            "--ops-listen-addr=127.0.0.1:0".to_owned(),
            format!("--queue-type={}", videocall_testkit::QUEUE_TYPE),
        ];
        // Flags given by the test replace the defaults above.
        let flag = |arg: &str| arg.split('=').next().unwrap_or_default().to_owned();
        args.retain(|arg| !extra.iter().any(|e| flag(e) == flag(arg)));
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let config = ConsumerArgs::try_parse_from(args).expect("flags").validate().expect("valid config");
        let shutdown = CancellationToken::new();
        let app = event_consumer::Application::build(config.clone(), &shutdown).await.expect("binds");
        let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        let amqp = Connection::connect(&videocall_testkit::amqp_url(), ConnectionProperties::default())
            .await
            .expect("RabbitMQ reachable");
        let channel = amqp.create_channel().await.expect("channel");
        channel.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
        let harness = Self { db, store, config, amqp, channel, shutdown, task: Some(task) };
        for queue in [&harness.config.user_offline.queue, &harness.config.ticket_created.queue] {
            eventually(&format!("a consumer on {queue}"), || async {
                harness.queue_counts(queue).await.filter(|(_, consumers)| *consumers > 0)
            })
            .await;
        }
        harness
    }

    /// (ready messages, consumers) of `queue`, None while it does not exist.
    pub async fn queue_counts(&self, queue: &str) -> Option<(u32, u32)> {
        // A failed passive declare closes the channel, so probe on a throwaway one.
        let probe = self.amqp.create_channel().await.ok()?;
        let q = probe
            .queue_declare(
                queue.into(),
                QueueDeclareOptions { passive: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .ok()?;
        let _ = probe.close(200, "probe".into()).await;
        Some((q.message_count(), q.consumer_count()))
    }

    /// Publishes `body` on `exchange` with `routing_key`, waiting for the broker's confirm.
    pub async fn publish(&self, exchange: &str, routing_key: &str, message_id: Option<&str>, body: &[u8]) {
        let mut properties =
            BasicProperties::default().with_content_type("application/json".into()).with_delivery_mode(2);
        if let Some(id) = message_id {
            properties = properties.with_message_id(id.into());
        }
        let confirm = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions { mandatory: true, ..Default::default() },
                body,
                properties,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert_eq!(confirm, Confirmation::Ack(None), "the message reached the consumer's queue");
    }

    pub async fn user_offline(&self, message_id: Option<&str>, body: &serde_json::Value) {
        let b = &self.config.user_offline;
        self.publish(&b.exchange, &b.routing_key, message_id, body.to_string().as_bytes()).await;
    }

    pub async fn ticket_created(&self, message_id: Option<&str>, body: &serde_json::Value) {
        let b = &self.config.ticket_created;
        self.publish(&b.exchange, &b.routing_key, message_id, body.to_string().as_bytes()).await;
    }

    /// The next message of `queue`'s dead-letter queue (acknowledged), waiting for it.
    pub async fn next_dead_letter(&self, queue: &str) -> BasicGetMessage {
        let dlq = format!("{queue}.dlq");
        eventually(&format!("a message on {dlq}"), || async {
            let message = self
                .channel
                .basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .expect("basic.get")?;
            Some(message)
        })
        .await
    }

    pub async fn processed_count(&self) -> u64 {
        processed_messages::Entity::find().count(&self.db).await.expect("count")
    }

    /// Waits until `n` messages have been recorded as processed.
    pub async fn wait_processed(&self, n: u64) {
        eventually(&format!("{n} processed messages"), || async { (self.processed_count().await >= n).then_some(()) })
            .await;
        assert_eq!(self.processed_count().await, n, "exactly {n} processed messages");
    }

    /// A call from `caller` to `callee`, moved by the callee through `commands`.
    pub async fn call(&self, caller: &str, callee: &str, commands: &[Command]) -> Uuid {
        let new = NewCall {
            request_id: format!("r-{caller}-{callee}"),
            caller_id: caller.into(),
            callee_id: callee.into(),
            call_type: CallType::Support,
            metadata: Default::default(),
            ring_timeout_secs: 300,
        };
        let id = self.store.initiate(new, caller).await.expect("initiate").call.id;
        for command in commands {
            self.store.apply(id, *command, &Actor { id: callee.into(), is_service: false }).await.expect("command");
        }
        id
    }

    /// Stops the consumer and checks it stops within the bound and leaves its queues.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let task = self.task.take().expect("running");
        let result = tokio::time::timeout(WAIT, task).await.expect("stops promptly").expect("task not panicked");
        result.expect("run returns Ok on shutdown");
        for queue in [&self.config.user_offline.queue, &self.config.ticket_created.queue] {
            let (_, consumers) = self.queue_counts(queue).await.expect("queue is durable");
            assert_eq!(consumers, 0, "no consumer left on {queue}");
        }
        // The queues have the test's own names: leave none behind (quorum ones least of all).
        for queue in [&self.config.user_offline.queue, &self.config.ticket_created.queue] {
            for name in [queue.clone(), format!("{queue}.dlq")] {
                let _ = self.channel.queue_delete(name.as_str().into(), QueueDeleteOptions::default()).await;
            }
        }
    }
}

/// Polls `probe` every 50 ms until it yields a value; panics naming `what` after [`WAIT`].
pub async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A header of a delivered message as text.
pub fn header(message: &BasicGetMessage, name: &str) -> Option<String> {
    match message.delivery.properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        AMQPValue::LongLongInt(n) => Some(n.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// Reads the first message of a Redis subscription within [`WAIT`].
pub async fn first_message(pubsub: &mut redis::aio::PubSub) -> serde_json::Value {
    let msg = tokio::time::timeout(WAIT, pubsub.on_message().next())
        .await
        .expect("a notice within the bound")
        .expect("subscription open");
    let payload: String = msg.get_payload().expect("text payload");
    serde_json::from_str(&payload).expect("JSON notice")
}
