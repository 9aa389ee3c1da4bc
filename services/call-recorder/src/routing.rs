//! The recorder's side of the signal bus: one subscriber on the `@recorder` channel, whose frames
//! go to the session recording their call. After the subscriber lost its connection, every
//! session's missed signals come back from the call's replay log.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use videocall_runtime::backoff::Backoff;
use videocall_signaling::{
    signal_bus::{BusEvent, SignalBus, Subscriber},
    signals::{ParsedSignal, RECORDER_PEER, SignalType},
};

/// A signal a party sent to the recorder.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub seq: u64,
    pub from: String,
    pub signal_type: SignalType,
    pub payload: String,
}

struct Route {
    tx: mpsc::UnboundedSender<Incoming>,
    last_seq: u64,
}

/// Where each call's signals go. Cheap to clone.
#[derive(Clone, Default)]
pub struct Routes {
    routes: Arc<Mutex<HashMap<String, Route>>>,
    /// A route opened or closed: on Redis Cluster the subscriber watches the calls routed.
    changed: Arc<Notify>,
}

impl Routes {
    /// Signals of `call_id` from now on arrive on the returned receiver (on Redis Cluster, from
    /// the log until the call's channel is watched).
    pub fn open(&self, call_id: &str) -> mpsc::UnboundedReceiver<Incoming> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().insert(call_id.to_owned(), Route { tx, last_seq: 0 });
        self.changed.notify_one();
        rx
    }

    pub fn close(&self, call_id: &str) {
        self.lock().remove(call_id);
        self.changed.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Route>> {
        self.routes.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Hands a frame to its call's session, once (by sequence number).
    fn deliver(&self, frame: &str) {
        let Ok(signal) = serde_json::from_str::<ParsedSignal<'_>>(frame) else {
            tracing::debug!("not a signal frame on the recorder channel");
            return;
        };
        if signal.to != RECORDER_PEER {
            return;
        }
        let mut routes = self.lock();
        let Some(route) = routes.get_mut(&signal.call_id) else { return };
        if signal.seq <= route.last_seq {
            return;
        }
        route.last_seq = signal.seq;
        let _ = route.tx.send(Incoming {
            seq: signal.seq,
            from: signal.from.clone(),
            signal_type: signal.signal_type,
            payload: signal.payload(),
        });
    }

    fn positions(&self) -> Vec<(String, u64)> {
        self.lock().iter().map(|(call, route)| (call.clone(), route.last_seq)).collect()
    }
}

/// Reads the recorder channel until `shutdown`; `subscribed` turns true once it listens (and
/// false while it reconnects).
pub async fn run(bus: SignalBus, routes: Routes, subscribed: watch::Sender<bool>, shutdown: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        let subscriber = async {
            let mut s = bus.subscriber().await?;
            s.subscribe(RECORDER_PEER).await?;
            Ok::<_, videocall_signaling::signal_bus::BusError>(s)
        };
        let mut subscriber = tokio::select! {
            _ = shutdown.cancelled() => return,
            s = subscriber => match s {
                Ok(s) => s,
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "recorder channel unavailable");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(delay) => continue,
                    }
                }
            },
        };
        backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let mut watched = HashSet::new();
        if watch_routed(&mut subscriber, &routes, &mut watched).await.is_err() {
            continue;
        }
        subscribed.send_replace(true);
        // Whatever was published while no subscriber listened is in the calls' logs.
        replay(&bus, &routes, routes.positions()).await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                () = routes.changed.notified(), if bus.signals_per_call() => {
                    match watch_routed(&mut subscriber, &routes, &mut watched).await {
                        Ok(new) => replay(&bus, &routes, new).await,
                        Err(error) => {
                            tracing::warn!(%error, "recorder cannot watch its calls; resubscribing");
                            subscribed.send_replace(false);
                            break;
                        }
                    }
                }
                next = subscriber.next_event() => match next {
                    Some(BusEvent::Frame(_, frame)) => routes.deliver(&frame),
                    // A channel moved between cluster shards: what it carried meanwhile is logged.
                    Some(BusEvent::Resubscribed(_)) => replay(&bus, &routes, routes.positions()).await,
                    None => {
                        tracing::warn!("recorder channel lost; resubscribing");
                        subscribed.send_replace(false);
                        break;
                    }
                },
            }
        }
    }
}

/// On Redis Cluster, where a call's signals travel on its own channel: watches the routed calls
/// not watched yet and stops watching those no longer routed. Returns the newly watched calls with
/// their positions, whose earlier signals must come from the log. A no-op elsewhere.
async fn watch_routed(
    subscriber: &mut Subscriber,
    routes: &Routes,
    watched: &mut HashSet<String>,
) -> Result<Vec<(String, u64)>, videocall_signaling::signal_bus::BusError> {
    let positions = routes.positions();
    let routed: HashSet<&String> = positions.iter().map(|(call, _)| call).collect();
    for gone in watched.iter().filter(|call| !routed.contains(call)).cloned().collect::<Vec<_>>() {
        subscriber.unsubscribe_call(&gone).await?;
        watched.remove(&gone);
    }
    let mut new = Vec::new();
    for (call, after) in &positions {
        if !watched.contains(call) {
            subscriber.subscribe_call(call).await?;
            watched.insert(call.clone());
            new.push((call.clone(), *after));
        }
    }
    Ok(new)
}

/// Hands each call's logged signals after its position to its session.
async fn replay(bus: &SignalBus, routes: &Routes, positions: Vec<(String, u64)>) {
    for (call_id, after) in positions {
        match bus.replay(&call_id, RECORDER_PEER, after).await {
            Ok(frames) => frames.iter().for_each(|(_, frame)| routes.deliver(frame)),
            Err(error) => tracing::warn!(%error, %call_id, "recorder replay failed"),
        }
    }
}
