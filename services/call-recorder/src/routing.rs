//! The recorder's side of the signal bus: one subscriber on the `@recorder` channel, whose frames
//! go to the session recording their call. After the subscriber lost its connection, every
//! session's missed signals come back from the call's replay log.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use videocall_runtime::backoff::Backoff;
use videocall_signaling::{
    signal_bus::SignalBus,
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
pub struct Routes(Arc<Mutex<HashMap<String, Route>>>);

impl Routes {
    /// Signals of `call_id` from now on arrive on the returned receiver.
    pub fn open(&self, call_id: &str) -> mpsc::UnboundedReceiver<Incoming> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().insert(call_id.to_owned(), Route { tx, last_seq: 0 });
        rx
    }

    pub fn close(&self, call_id: &str) {
        self.lock().remove(call_id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Route>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
        subscribed.send_replace(true);
        // Whatever was published while no subscriber listened is in the calls' logs.
        for (call_id, after) in routes.positions() {
            match bus.replay(&call_id, RECORDER_PEER, after).await {
                Ok(frames) => frames.iter().for_each(|(_, frame)| routes.deliver(frame)),
                Err(error) => tracing::warn!(%error, %call_id, "recorder replay failed"),
            }
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                next = subscriber.next() => match next {
                    Some((_, frame)) => routes.deliver(&frame),
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
