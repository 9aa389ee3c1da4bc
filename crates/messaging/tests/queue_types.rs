//! The durable queues' types against the real RabbitMQ: quorum queues (QUEUE_TYPE=quorum) with a
//! delivery limit, classic ones as before, the unrouted retention queue, and a queue that exists
//! with the other type. Every test uses queues and exchanges of its own.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties,
    message::BasicGetMessage,
    options::{
        BasicGetOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable},
};
use tokio_util::sync::CancellationToken;
use videocall_messaging::{
    amqp::{DeclareError, QueueType, UnroutedRetention, declare_events_exchange, unrouted_name},
    inbox_worker::{
        ATTEMPT_HEADER, DELIVERY_COUNT_HEADER, Handler, QueueShape, QueueWorker, REASON_HEADER, Verdict, declare_queue,
        dlq_name, publisher_channel,
    },
};
use videocall_testkit::{amqp_url, unique_name};

const WAIT: Duration = Duration::from_secs(15);

async fn connect() -> Connection {
    Connection::connect(&amqp_url(), ConnectionProperties::default()).await.expect("RabbitMQ reachable")
}

/// Polls `probe` until it gives a value, failing after [`WAIT`].
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {WAIT:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Publishes one persistent message straight to `queue` and waits for the broker's confirm.
async fn publish(channel: &Channel, exchange: &str, routing_key: &str, id: &str) {
    channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            b"{}",
            BasicProperties::default().with_message_id(id.into()).with_delivery_mode(2),
        )
        .await
        .expect("publish")
        .await
        .expect("confirmed");
}

/// The next message on `queue`, taken off it (waiting up to [`WAIT`]).
async fn next_on(connection: &Connection, queue: &str) -> BasicGetMessage {
    let channel = connection.create_channel().await.expect("channel");
    eventually(&format!("a message on {queue}"), || async {
        channel.basic_get(queue.into(), BasicGetOptions { no_ack: true }).await.expect("basic.get")
    })
    .await
}

/// Messages ready in `queue` (a passive declare).
async fn depth(connection: &Connection, queue: &str) -> u32 {
    let channel = connection.create_channel().await.expect("channel");
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    channel.queue_declare(queue.into(), passive, FieldTable::default()).await.expect("the queue exists").message_count()
}

fn header<'a>(message: &'a BasicGetMessage, name: &str) -> Option<&'a AMQPValue> {
    message.delivery.properties.headers().as_ref()?.inner().get(name)
}

fn text(value: Option<&AMQPValue>) -> Option<String> {
    match value? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

fn number(value: Option<&AMQPValue>) -> Option<i64> {
    match value? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortUInt(n) => Some(i64::from(*n)),
        _ => None,
    }
}

/// The `reason` of the broker's first `x-death` entry (a message the broker dead-lettered).
fn broker_death_reason(message: &BasicGetMessage) -> Option<String> {
    let AMQPValue::FieldArray(deaths) = header(message, "x-death")? else { return None };
    let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else { return None };
    text(first.inner().get("reason"))
}

/// A handler whose database is always down.
#[derive(Clone, Default)]
struct AlwaysFailing {
    calls: Arc<AtomicUsize>,
}

impl Handler for AlwaysFailing {
    async fn handle(&self, _message_id: Option<&str>, _body: &[u8]) -> Verdict {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Verdict::Retry("database down".into())
    }
}

/// The test's queue, its dead-letter exchange and a connection to the broker.
struct Queue {
    connection: Connection,
    name: String,
    dlx: String,
}

impl Queue {
    async fn declare(prefix: &str, shape: QueueShape) -> Self {
        let connection = connect().await;
        let (name, dlx) = (unique_name(prefix), unique_name("test.dlx"));
        declare_queue(&connection, &name, &dlx, &[], shape).await.expect("declared");
        Self { connection, name, dlx }
    }

    /// Runs a worker with `handler` until `settled` outcomes were counted; returns them.
    async fn work(&self, shape: QueueShape, handler: AlwaysFailing, settled: usize) -> Vec<&'static str> {
        let counted = Arc::new(Mutex::new(Vec::new()));
        let worker = QueueWorker {
            queue: self.name.clone(),
            dlx_exchange: self.dlx.clone(),
            prefetch: 1,
            max_retries: shape.max_retries,
            queue_type: shape.queue_type,
            publisher: publisher_channel(&self.connection).await.expect("publisher channel"),
            handler,
            count: {
                let counted = counted.clone();
                Arc::new(move |outcome| counted.lock().expect("lock").push(outcome))
            },
            lag: Default::default(),
        };
        let shutdown = CancellationToken::new();
        let run = worker.run(&self.connection, &shutdown);
        let done = eventually("the message settled", || async {
            let outcomes = counted.lock().expect("lock").clone();
            (outcomes.len() >= settled).then_some(outcomes)
        });
        let outcomes = tokio::select! {
            result = run => panic!("the worker stopped early: {result:?}"),
            outcomes = done => outcomes,
        };
        outcomes
    }

    async fn delete(self) {
        let channel = self.connection.create_channel().await.expect("channel");
        for queue in [self.name.clone(), dlq_name(&self.name)] {
            let _ = channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
        }
        let _ = channel.exchange_delete(self.dlx.as_str().into(), ExchangeDeleteOptions::default()).await;
        let _ = self.connection.close(200, "done".into()).await;
    }
}

const QUORUM: QueueShape = QueueShape { queue_type: QueueType::Quorum, max_retries: 2 };
const CLASSIC: QueueShape = QueueShape { queue_type: QueueType::Classic, max_retries: 2 };

#[tokio::test]
async fn a_quorum_queue_retries_by_requeueing_and_dead_letters_with_the_reason_after_max_retries() {
    let queue = Queue::declare("test.quorum-retry", QUORUM).await;
    let publisher = publisher_channel(&queue.connection).await.expect("channel");
    publish(&publisher, "", &queue.name, "m1").await;
    let handler = AlwaysFailing::default();
    let outcomes = queue.work(QUORUM, handler.clone(), 3).await;
    assert_eq!(outcomes, ["retried", "retried", "dead_lettered"]);
    assert_eq!(handler.calls.load(Ordering::SeqCst), 3, "the first try and MAX_RETRIES=2 retries");

    let dead = next_on(&queue.connection, &dlq_name(&queue.name)).await;
    assert_eq!(dead.delivery.properties.message_id().as_ref().map(|s| s.as_str()), Some("m1"));
    assert_eq!(
        text(header(&dead, REASON_HEADER)).as_deref(),
        Some("gave up after 3 attempts: database down"),
        "the worker's reason, as with classic queues"
    );
    // Nothing republished it with an attempt header: the count is the broker's `x-delivery-count`.
    assert_eq!(number(header(&dead, ATTEMPT_HEADER)), Some(2), "the broker counted two earlier deliveries");
    assert_eq!(depth(&queue.connection, &queue.name).await, 0, "nothing left behind");
    queue.delete().await;
}

#[tokio::test]
async fn the_broker_dead_letters_a_quorum_queue_message_no_consumer_settles_past_the_delivery_limit() {
    let shape = QueueShape { queue_type: QueueType::Quorum, max_retries: 1 };
    let queue = Queue::declare("test.quorum-limit", shape).await;
    let publisher = publisher_channel(&queue.connection).await.expect("channel");
    publish(&publisher, "", &queue.name, "poison").await;
    // Consumers that die with the message in hand: it goes back, counted, each time.
    for delivery in 0..=shape.max_retries {
        let channel = queue.connection.create_channel().await.expect("channel");
        let message = eventually("the message back on its queue", || async {
            channel.basic_get(queue.name.as_str().into(), BasicGetOptions { no_ack: false }).await.expect("get")
        })
        .await;
        let count = number(header(&message, DELIVERY_COUNT_HEADER)).unwrap_or(0);
        assert_eq!(count, i64::from(delivery), "x-delivery-count of delivery {delivery}");
        if delivery % 2 == 0 {
            channel.close(200, "a consumer that dies".into()).await.expect("close");
        } else {
            let requeue = BasicNackOptions { requeue: true, ..Default::default() };
            assert!(message.delivery.acker.nack(requeue).await.expect("nack"), "nacked");
        }
    }
    let dead = next_on(&queue.connection, &dlq_name(&queue.name)).await;
    assert_eq!(dead.delivery.properties.message_id().as_ref().map(|s| s.as_str()), Some("poison"));
    assert_eq!(broker_death_reason(&dead).as_deref(), Some("delivery_limit"), "{:?}", dead.delivery.properties);
    assert_eq!(header(&dead, REASON_HEADER), None, "the broker, not the worker, dead-lettered it");
    assert_eq!(depth(&queue.connection, &queue.name).await, 0, "taken off its queue");
    queue.delete().await;
}

#[tokio::test]
async fn queue_type_classic_keeps_the_republished_attempt_count() {
    let queue = Queue::declare("test.classic-retry", CLASSIC).await;
    // The arguments a classic queue had before QUEUE_TYPE are still what it is declared with.
    let channel = queue.connection.create_channel().await.expect("channel");
    let before = pre_quorum_arguments(&queue.name, &queue.dlx);
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    channel.queue_declare(queue.name.as_str().into(), durable, before).await.expect("equivalent declaration");

    let publisher = publisher_channel(&queue.connection).await.expect("channel");
    publish(&publisher, "", &queue.name, "m1").await;
    let handler = AlwaysFailing::default();
    let outcomes = queue.work(CLASSIC, handler.clone(), 3).await;
    assert_eq!(outcomes, ["retried", "retried", "dead_lettered"]);
    assert_eq!(handler.calls.load(Ordering::SeqCst), 3);
    let dead = next_on(&queue.connection, &dlq_name(&queue.name)).await;
    assert_eq!(text(header(&dead, REASON_HEADER)).as_deref(), Some("gave up after 3 attempts: database down"));
    assert_eq!(number(header(&dead, ATTEMPT_HEADER)), Some(2));
    assert_eq!(header(&dead, DELIVERY_COUNT_HEADER), None, "a classic queue counts nothing itself");
    queue.delete().await;
}

/// The arguments the consumer queues had before `QUEUE_TYPE`.
fn pre_quorum_arguments(queue: &str, dlx: &str) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(dlx.into()));
    arguments.insert("x-dead-letter-routing-key".into(), AMQPValue::LongString(queue.into()));
    arguments
}

#[tokio::test]
async fn a_queue_of_the_other_type_is_refused_with_its_type_and_what_to_do() {
    // A classic queue an older deployment declared, and now QUEUE_TYPE=quorum.
    let connection = connect().await;
    let (name, dlx) = (unique_name("test.was-classic"), unique_name("test.dlx"));
    let channel = connection.create_channel().await.expect("channel");
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    let arguments = pre_quorum_arguments(&name, &dlx);
    channel.queue_declare(name.as_str().into(), durable, arguments).await.expect("the old declaration");
    let old = Queue { connection, name, dlx };
    let error = declare_queue(&old.connection, &old.name, &old.dlx, &[], QUORUM).await.expect_err("refused");
    assert!(
        matches!(&error, DeclareError::TypeMismatch { queue, existing: QueueType::Classic, wanted: QueueType::Quorum }
            if queue == &old.name),
        "{error:?}"
    );
    let message = error.to_string();
    let expected = ["exists as a classic queue but QUEUE_TYPE is quorum", "delete it", "QUEUE_TYPE=classic"];
    for part in [old.name.as_str()].into_iter().chain(expected) {
        assert!(message.contains(part), "`{part}` missing from: {message}");
    }
    old.delete().await;

    // And the other way round: quorum queues, QUEUE_TYPE=classic.
    let new = Queue::declare("test.is-quorum", QUORUM).await;
    let error = declare_queue(&new.connection, &new.name, &new.dlx, &[], CLASSIC).await.expect_err("refused");
    assert!(
        matches!(&error, DeclareError::TypeMismatch { queue, existing: QueueType::Quorum, wanted: QueueType::Classic }
            if queue == &dlq_name(&new.name)),
        "the queues were declared as quorum queues: {error:?}"
    );
    assert!(error.to_string().contains("QUEUE_TYPE=quorum"), "{error}");
    // Another MAX_RETRIES is another `x-delivery-limit`: refused too, saying which argument.
    let other_limit = QueueShape { max_retries: 3, ..QUORUM };
    let error = declare_queue(&new.connection, &new.name, &new.dlx, &[], other_limit).await.expect_err("refused");
    assert!(matches!(&error, DeclareError::Inequivalent { queue, .. } if queue == &new.name), "{error:?}");
    assert!(error.to_string().contains("x-delivery-limit"), "{error}");
    new.delete().await;
}

#[tokio::test]
async fn the_unrouted_retention_queue_is_a_bounded_quorum_queue_keeping_the_newest() {
    let connection = connect().await;
    let exchange = unique_name("test.events.quorum");
    let retention = UnroutedRetention { max_messages: 3, ttl: Duration::from_secs(600), queue_type: QueueType::Quorum };
    assert!(declare_events_exchange(&connection, &exchange, Some(retention)).await.expect("declared"));
    let unrouted = unrouted_name(&exchange);

    let channel = connection.create_channel().await.expect("channel");
    channel.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    for i in 0..5 {
        publish(&channel, &exchange, "nobody.listens", &format!("e{i}")).await;
    }
    let kept = eventually("the queue at its bound", || async {
        let n = depth(&connection, &unrouted).await;
        (n == 3).then_some(n)
    })
    .await;
    assert_eq!(kept, 3);
    let oldest = next_on(&connection, &unrouted).await;
    assert_eq!(oldest.delivery.properties.message_id().as_ref().map(|s| s.as_str()), Some("e2"), "drop-head");

    // It is a quorum queue: the relay's classic declaration of it is refused, naming the type it has.
    let classic = UnroutedRetention { queue_type: QueueType::Classic, ..retention };
    let error = declare_events_exchange(&connection, &exchange, Some(classic)).await.expect_err("refused");
    assert!(
        matches!(&error, DeclareError::TypeMismatch { queue, existing: QueueType::Quorum, .. } if queue == &unrouted),
        "{error:?}"
    );

    let cleanup = connection.create_channel().await.expect("channel");
    let _ = cleanup.queue_delete(unrouted.as_str().into(), QueueDeleteOptions::default()).await;
    for name in [exchange.as_str(), unrouted.as_str()] {
        let _ = cleanup.exchange_delete(name.into(), ExchangeDeleteOptions::default()).await;
    }
    let _ = connection.close(200, "done".into()).await;
}
