//! Events inside one process (the standalone mode): the outbox relay hands each committed event to
//! the consumers bound to its exchange and routing key (AMQP topic patterns: `*` one word, `#`
//! any number) and awaits them, so a row counts as sent only once every bound consumer applied it
//! — the same handlers the RabbitMQ workers run, with the same inbox dedupe. A consumer asking to
//! retry leaves the row pending (the relay tries again with backoff; consumers that applied it
//! already see a duplicate); one that can never apply it is logged and counted, as a dead letter.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, RwLock},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

use crate::inbox_worker::{Handler, Verdict};

type BoxedVerdict<'a> = Pin<Box<dyn Future<Output = Verdict> + Send + 'a>>;

/// A [`Handler`] behind a pointer.
pub trait DynHandler: Send + Sync {
    fn handle_boxed<'a>(&'a self, message_id: Option<&'a str>, body: &'a [u8]) -> BoxedVerdict<'a>;
}

impl<H: Handler> DynHandler for H {
    fn handle_boxed<'a>(&'a self, message_id: Option<&'a str>, body: &'a [u8]) -> BoxedVerdict<'a> {
        Box::pin(self.handle(message_id, body))
    }
}

struct Binding {
    consumer: String,
    exchange: String,
    pattern: String,
    handler: Arc<dyn DynHandler>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    consumer: String,
    outcome: &'static str,
}

/// The in-process router. Cheap to share (`Arc`).
#[derive(Default)]
pub struct LocalEvents {
    bindings: RwLock<Vec<Binding>>,
    messages: Family<Labels, Counter>,
}

impl std::fmt::Debug for LocalEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bindings = self.bindings.read().map(|b| b.len()).unwrap_or_default();
        f.debug_struct("LocalEvents").field("bindings", &bindings).finish_non_exhaustive()
    }
}

/// What became of a delivered event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Consumers bound to it (zero: nobody in this process listens for it).
    pub consumers: usize,
    /// `(consumer, reason)` of each consumer that can never apply it (a dead letter).
    pub rejected: Vec<(String, String)>,
}

/// Why an event was not delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{consumer} will retry: {reason}")]
pub struct Postponed {
    pub consumer: String,
    pub reason: String,
}

impl LocalEvents {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `videocall_local_event_messages_total{consumer,outcome}`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "videocall_local_event_messages",
            "In-process event deliveries, by consumer and outcome",
            self.messages.clone(),
        );
    }

    /// `consumer` gets every event published to `exchange` whose routing key matches `pattern`.
    pub fn bind(&self, consumer: &str, exchange: &str, pattern: &str, handler: Arc<dyn DynHandler>) {
        let binding = Binding {
            consumer: consumer.to_owned(),
            exchange: exchange.to_owned(),
            pattern: pattern.to_owned(),
            handler,
        };
        self.bindings.write().unwrap_or_else(|poisoned| poisoned.into_inner()).push(binding);
    }

    /// Hands the event to every matching consumer in turn (`message_id` is what they dedupe on;
    /// without it, a CloudEvents body's `id`). Stops at the first consumer that asks
    /// to retry.
    pub async fn deliver(
        &self,
        exchange: &str,
        routing_key: &str,
        message_id: Option<&str>,
        body: &[u8],
    ) -> Result<Delivery, Postponed> {
        let targets: Vec<(String, Arc<dyn DynHandler>)> = self
            .bindings
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .filter(|b| b.exchange == exchange && topic_matches(&b.pattern, routing_key))
            .map(|b| (b.consumer.clone(), b.handler.clone()))
            .collect();
        let mut delivery = Delivery { consumers: targets.len(), rejected: Vec::new() };
        #[derive(serde::Deserialize)]
        struct Head {
            traceparent: Option<String>,
        }
        let traceparent = serde_json::from_slice::<Head>(body).ok().and_then(|h| h.traceparent);
        for (consumer, handler) in &targets {
            // As over RabbitMQ: the consumer's handling continues the event's trace.
            let span = tracing::info_span!("message", otel.name = "consume", %consumer, %routing_key);
            if let Some(traceparent) = &traceparent {
                crate::trace_context::set_parent(&span, traceparent);
            }
            let handled = tracing::Instrument::instrument(handler.handle_boxed(message_id, body), span);
            let outcome = match handled.await {
                Verdict::Done(outcome) => outcome,
                Verdict::DeadLetter(reason) => {
                    tracing::error!(%consumer, message_id = message_id.unwrap_or("-"), %routing_key, %reason, "event can never apply; dropped");
                    delivery.rejected.push((consumer.clone(), reason));
                    "dead_lettered"
                }
                Verdict::Retry(reason) => {
                    self.count(consumer, "retried");
                    return Err(Postponed { consumer: consumer.clone(), reason });
                }
            };
            self.count(consumer, outcome);
        }
        Ok(delivery)
    }

    fn count(&self, consumer: &str, outcome: &'static str) {
        self.messages.get_or_create(&Labels { consumer: consumer.to_owned(), outcome }).inc();
    }
}

/// AMQP topic matching: words split on `.`, `*` matches exactly one word, `#` zero or more.
pub fn topic_matches(pattern: &str, key: &str) -> bool {
    fn go(p: &[&str], k: &[&str]) -> bool {
        match p.split_first() {
            None => k.is_empty(),
            Some((&"#", rest)) => (0..=k.len()).any(|skip| go(rest, &k[skip..])),
            Some((&word, rest)) => {
                k.split_first().is_some_and(|(&first, tail)| (word == "*" || word == first) && go(rest, tail))
            }
        }
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let k: Vec<&str> = key.split('.').collect();
    go(&p, &k)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[test]
    fn topic_patterns_match_like_rabbitmq() {
        assert!(topic_matches("call.ended", "call.ended"));
        assert!(!topic_matches("call.ended", "call.ended.x"));
        assert!(topic_matches("call.*", "call.ended"));
        assert!(!topic_matches("call.*", "call"));
        assert!(topic_matches("call.#", "call"));
        assert!(topic_matches("#", "a.b.c"));
        assert!(topic_matches("*.offline", "user.offline"));
        assert!(!topic_matches("*.offline", "user.online"));
        assert!(topic_matches("a.#.z", "a.b.c.z"));
        assert!(!topic_matches("a.#.z", "a.b.c"));
    }

    struct Recorder {
        seen: Mutex<Vec<String>>,
        verdict: Verdict,
    }

    impl Handler for Recorder {
        async fn handle<'a>(&'a self, message_id: Option<&'a str>, body: &'a [u8]) -> Verdict {
            let body = String::from_utf8_lossy(body);
            self.seen.lock().expect("lock").push(format!("{}:{body}", message_id.unwrap_or("-")));
            self.verdict.clone()
        }
    }

    fn recorder(verdict: Verdict) -> Arc<Recorder> {
        Arc::new(Recorder { seen: Mutex::new(Vec::new()), verdict })
    }

    #[tokio::test]
    async fn delivers_to_matching_bindings_and_reports_retries() {
        let events = LocalEvents::new();
        let quality = recorder(Verdict::Done("applied"));
        let offline = recorder(Verdict::Retry("database down".into()));
        events.bind("quality", "videocall.events", "call.*", quality.clone());
        events.bind("offline", "users", "user.offline", offline.clone());

        let one = Delivery { consumers: 1, rejected: Vec::new() };
        assert_eq!(events.deliver("videocall.events", "call.ended", Some("m1"), b"x").await, Ok(one));
        assert_eq!(
            events.deliver("videocall.events", "support.video_offered", Some("m2"), b"y").await,
            Ok(Delivery::default())
        );
        assert_eq!(
            events.deliver("other", "call.ended", Some("m3"), b"z").await,
            Ok(Delivery::default()),
            "exchange must match"
        );
        let postponed = events.deliver("users", "user.offline", Some("m4"), b"w").await.expect_err("retry asked");
        assert_eq!(postponed.consumer, "offline");
        assert_eq!(postponed.reason, "database down");
        assert_eq!(*quality.seen.lock().expect("lock"), vec!["m1:x".to_owned()]);
        assert_eq!(*offline.seen.lock().expect("lock"), vec!["m4:w".to_owned()]);
    }

    #[tokio::test]
    async fn dead_letters_are_reported_and_the_rest_still_delivered() {
        let events = LocalEvents::new();
        let picky = recorder(Verdict::DeadLetter("missing field `user_id`".into()));
        let other = recorder(Verdict::Done("applied"));
        events.bind("picky", "x", "#", picky);
        events.bind("other", "x", "#", other.clone());
        let delivery = events.deliver("x", "a.b", Some("m1"), b"{}").await.expect("not postponed");
        assert_eq!(delivery.consumers, 2);
        assert_eq!(delivery.rejected, vec![("picky".to_owned(), "missing field `user_id`".to_owned())]);
        assert_eq!(other.seen.lock().expect("lock").len(), 1);
    }
}
