//! What every queue consumer counts: messages handled by outcome (and by queue, where one service
//! consumes several), and the lag of its queues.

use std::sync::Arc;

use prometheus_client::{
    metrics::{counter::Counter, family::Family},
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
}

impl ConsumerMetrics {
    /// Registers the message counter as `name` (`by_queue`: with a `queue` label) and the queue
    /// lag histogram.
    pub fn register(registry: &mut Registry, name: &str, help: &str, by_queue: bool) -> Self {
        let metrics = Self { messages: Family::default(), by_queue, lag: QueueLag::default() };
        registry.register(name, help, metrics.messages.clone());
        metrics.lag.register(registry);
        metrics
    }

    /// Zero series for every one of `outcomes` of `queue`, so the family shows before the first
    /// message.
    pub fn init(&self, queue: &str, outcomes: &[&'static str]) {
        for outcome in outcomes {
            let _ = self.messages.get_or_create(&self.labels(queue, outcome));
        }
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
