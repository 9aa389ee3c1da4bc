//! The shared queue worker when the broker goes away under it: the message being applied cannot
//! be acknowledged, and the worker must fail its session at once instead of applying the rest of
//! its prefetched messages (whose acks would be lost too); after the broker is back, every
//! message arrives again. RabbitMQ is reached through a `FaultProxy`, so the real broker runs on.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions},
    types::FieldTable,
};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use videocall_messaging::{
    amqp::QueueType, inbox_worker::Handler, inbox_worker::QueueWorker, inbox_worker::Verdict,
    inbox_worker::publisher_channel,
};
use videocall_testkit::{amqp_url, fault_proxy::FaultProxy, unique_name};

const MESSAGES: usize = 5;
const WAIT: Duration = Duration::from_secs(10);

/// Records every message id it applies; each call waits for a permit, so the test decides when
/// an application finishes.
#[derive(Clone)]
struct Gated {
    applied: Arc<Mutex<Vec<String>>>,
    started: Arc<AtomicUsize>,
    permits: Arc<Semaphore>,
}

impl Handler for Gated {
    async fn handle(&self, message_id: Option<&str>, _body: &[u8]) -> Verdict {
        self.started.fetch_add(1, Ordering::SeqCst);
        let Ok(permit) = self.permits.acquire().await else { return Verdict::Retry("closed".into()) };
        permit.forget();
        self.applied.lock().expect("lock").push(message_id.unwrap_or_default().to_owned());
        Verdict::Done("applied")
    }
}

async fn wait_for(what: &str, mut probe: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !probe() {
        assert!(Instant::now() < deadline, "timed out after {WAIT:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn worker(
    queue: &str,
    publisher: lapin::Channel,
    handler: Gated,
    counted: Arc<Mutex<Vec<&'static str>>>,
) -> QueueWorker<Gated> {
    QueueWorker {
        queue: queue.to_owned(),
        dlx_exchange: String::new(),
        prefetch: MESSAGES as u16,
        max_retries: 1,
        queue_type: QueueType::Classic,
        publisher,
        handler,
        count: Arc::new(move |outcome| counted.lock().expect("lock").push(outcome)),
        lag: Default::default(),
    }
}

#[tokio::test]
async fn a_lost_broker_ends_the_session_at_the_first_unacknowledged_message_and_nothing_is_lost() {
    let queue = unique_name("test.worker-outage");
    let direct = Connection::connect(&amqp_url(), ConnectionProperties::default()).await.expect("RabbitMQ reachable");
    let channel = direct.create_channel().await.expect("channel");
    channel.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    channel
        .queue_declare(queue.as_str().into(), QueueDeclareOptions::default(), FieldTable::default())
        .await
        .expect("queue");
    for i in 0..MESSAGES {
        channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                b"{}",
                BasicProperties::default().with_message_id(format!("m{i}").into()),
            )
            .await
            .expect("publish")
            .await
            .expect("confirmed");
    }

    let proxy = FaultProxy::start("127.0.0.1:5672".parse().expect("addr")).await;
    let proxied = proxy.rewrite_url(&amqp_url());
    let handler = Gated { applied: Arc::default(), started: Arc::default(), permits: Arc::new(Semaphore::new(0)) };
    let counted = Arc::new(Mutex::new(Vec::new()));
    let connection = Connection::connect(&proxied, ConnectionProperties::default()).await.expect("through the proxy");
    let publisher = publisher_channel(&connection).await.expect("publisher channel");
    let status = connection.status().clone();
    let first = worker(&queue, publisher, handler.clone(), counted.clone());
    let shutdown = CancellationToken::new();
    let session = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let result = first.run(&connection, &shutdown).await;
            (connection, result)
        })
    };

    // The first message is being applied when the broker goes away.
    wait_for("the first message to reach the handler", || handler.started.load(Ordering::SeqCst) == 1).await;
    proxy.cut();
    wait_for("the client to notice the lost connection", || !status.connected()).await;
    let probe = Connection::connect(&proxied, ConnectionProperties::default()).await;
    assert!(probe.is_err(), "the proxy refuses connections while cut");
    // Give every remaining prefetched message a permit: a worker that ignores the lost broker
    // applies them all.
    handler.permits.add_permits(MESSAGES);
    let (connection, result) =
        tokio::time::timeout(WAIT, session).await.expect("the session ends by itself").expect("session task");
    let error = result.expect_err("a lost broker ends the session with an error");
    assert!(format!("{error:#}").contains("channel closed"), "the error says why: {error:#}");
    assert_eq!(handler.applied.lock().expect("lock").len(), 1, "no prefetched message applied after the loss");
    assert!(counted.lock().expect("lock").is_empty(), "an unacknowledged message is not counted as settled");
    drop(connection);

    // Back: every message, the applied one included, is delivered again.
    proxy.restore();
    let connection = Connection::connect(&proxied, ConnectionProperties::default()).await.expect("reconnect");
    let publisher = publisher_channel(&connection).await.expect("publisher channel");
    let second = worker(&queue, publisher, handler.clone(), counted.clone());
    let session = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move { second.run(&connection, &shutdown).await })
    };
    handler.permits.add_permits(MESSAGES);
    wait_for("every message settled after the restore", || counted.lock().expect("lock").len() == MESSAGES).await;
    shutdown.cancel();
    tokio::time::timeout(WAIT, session).await.expect("stops").expect("task").expect("clean stop");
    let mut applied = handler.applied.lock().expect("lock").clone();
    applied.sort();
    let mut expected: Vec<String> = (0..MESSAGES).map(|i| format!("m{i}")).collect();
    expected.insert(0, "m0".into()); // applied before the loss, redelivered after
    assert_eq!(applied, expected);
    let _ = channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
}
