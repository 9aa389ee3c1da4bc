//! What every queue consumer counts: messages handled by outcome (and by queue, where one service
//! consumes several), the lag of its queues, and the depth of their dead-letter queues.

use std::{sync::Arc, time::Duration};

use lapin::{Channel, options::QueueDeclareOptions, types::FieldTable};
use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::inbox_worker::QueueLag;

/// Labels of a message counter: `queue` (when counted by queue), then `outcome`.
type Labels = Vec<(&'static str, String)>;

/// A consumer's message counter and queue lag. Cheap to clone (clones count together).
#[derive(Debug, Clone)]
pub struct ConsumerMetrics {
    messages: Family<Labels, Counter>,
    by_queue: bool,
    pub lag: QueueLag,
    /// `videocall_dlq_messages{queue}`: messages in `<queue>.dlq`, read every 15 s.
    dlq: Family<Vec<(&'static str, String)>, Gauge>,
}

/// How often the dead-letter queues' depth is read.
const DLQ_EVERY: Duration = Duration::from_secs(15);

impl ConsumerMetrics {
    /// Registers the message counter as `name` (`by_queue`: with a `queue` label) and the queue
    /// lag histogram.
    pub fn register(registry: &mut Registry, name: &str, help: &str, by_queue: bool) -> Self {
        let metrics = Self { messages: Family::default(), by_queue, lag: QueueLag::default(), dlq: Family::default() };
        registry.register(name, help, metrics.messages.clone());
        metrics.lag.register(registry);
        registry.register(
            "videocall_dlq_messages",
            "Messages waiting in the dead-letter queue of each consumed queue (label: the consumed queue)",
            metrics.dlq.clone(),
        );
        metrics
    }

    /// Reads the depth of each of `queues`' dead-letter queue every 15 s on `channel` (passive
    /// declares), until the channel fails; meant to run beside the consumers of a broker session.
    pub async fn watch_dead_letters(&self, channel: &Channel, queues: &[String]) {
        loop {
            for queue in queues {
                let dlq = crate::inbox_worker::dlq_name(queue);
                let passive = QueueDeclareOptions { passive: true, ..Default::default() };
                match channel.queue_declare(dlq.as_str().into(), passive, FieldTable::default()).await {
                    Ok(q) => self.dlq.get_or_create(&vec![("queue", queue.clone())]).set(i64::from(q.message_count())),
                    Err(error) => {
                        tracing::warn!(%error, queue = %dlq, "dead-letter queue depth not read; stops for this session");
                        return std::future::pending().await;
                    }
                };
            }
            tokio::time::sleep(DLQ_EVERY).await;
        }
    }

    /// Zero series for every one of `outcomes` of `queue`, so the family shows before the first
    /// message.
    pub fn init(&self, queue: &str, outcomes: &[&'static str]) {
        for outcome in outcomes {
            let _ = self.messages.get_or_create(&self.labels(queue, outcome));
        }
        let _ = self.dlq.get_or_create(&vec![("queue", queue.to_owned())]);
    }

    /// Counts one message of `queue` handled with `outcome`.
    pub fn count(&self, queue: &str, outcome: &'static str) {
        self.messages.get_or_create(&self.labels(queue, outcome)).inc();
    }

    /// [`Self::count`] for one queue, as a [`crate::inbox_worker::QueueWorker`] calls it.
    pub fn counter(&self, queue: &str) -> Arc<dyn Fn(&'static str) + Send + Sync> {
        let (metrics, queue) = (self.clone(), queue.to_owned());
        Arc::new(move |outcome| metrics.count(&queue, outcome))
    }

    fn labels(&self, queue: &str, outcome: &'static str) -> Labels {
        let outcome = ("outcome", outcome.to_owned());
        if self.by_queue { vec![("queue", queue.to_owned()), outcome] } else { vec![outcome] }
    }
}
