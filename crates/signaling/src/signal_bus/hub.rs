//! The hub: which local connections belong to which user, and one signal-bus subscriber (a Redis
//! Pub/Sub connection, or the in-process bus in the standalone mode) subscribed to every user with
//! a connection here — the relay's sockets, the gateway's SubscribeToSignals streams. A frame for a user goes to each of that user's local connections. When the
//! subscriber is lost (Redis restarted, or an in-process subscriber fell behind), the hub
//! subscribes again and tells every connection to resync (replay from its last sequence numbers).

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use crate::signal_bus::SignalBus;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use videocall_runtime::{backoff::Backoff, ops::Readiness};

/// Frames queued per connection before it counts as too slow and is closed.
pub const CONNECTION_BUFFER: usize = 512;

#[derive(Debug, Clone)]
pub enum Outbound {
    /// A JSON frame from the user's channel.
    Frame(Arc<str>),
    /// The bus subscriber was replaced: replay what may have been missed. `lost`: the bus lost
    /// its data meanwhile (signal logs included).
    Resync { lost: bool },
}

enum Command {
    Subscribe(String, oneshot::Sender<()>),
    Unsubscribe(String),
}

type Conns = HashMap<String, HashMap<u64, mpsc::Sender<Outbound>>>;

/// Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    conns: Mutex<Conns>,
    commands: mpsc::UnboundedSender<Command>,
    /// Users whose first socket arrived or last socket left here: their presence lease is
    /// written at once.
    presence: mpsc::UnboundedSender<(String, bool)>,
    next_id: AtomicU64,
    /// Whether the subscriber is up: the readiness of whoever serves through this hub.
    connected: Readiness,
}

/// A connection's place in the hub; dropping it unregisters the connection.
pub struct Registration {
    pub id: u64,
    pub user_id: String,
    pub rx: mpsc::Receiver<Outbound>,
    hub: Hub,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.unregister(&self.user_id, self.id);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("user has {0} connections already")]
    TooManyForUser(usize),
    #[error("the signal bus is not subscribed yet")]
    NotSubscribed,
}

impl Hub {
    /// Starts the hub's subscriber task and, with `presence_interval`, its presence task (the
    /// users' leases renewed every interval: the relay's sockets are presence, the gateway's
    /// streams are not); both run until `shutdown`.
    pub fn start(
        bus: SignalBus,
        presence_interval: Option<Duration>,
        shutdown: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (presence_tx, presence_rx) = mpsc::unbounded_channel();
        let hub = Hub {
            inner: Arc::new(Inner {
                conns: Mutex::new(HashMap::new()),
                commands: tx,
                presence: presence_tx,
                next_id: AtomicU64::new(1),
                connected: Readiness::default(),
            }),
        };
        let subscriber = hub.clone().run(bus.clone(), rx, shutdown.clone());
        let task = match presence_interval {
            Some(interval) => {
                let presence = hub.clone().presence(bus, presence_rx, interval, shutdown);
                tokio::spawn(async move {
                    tokio::join!(subscriber, presence);
                })
            }
            None => tokio::spawn(subscriber),
        };
        (hub, task)
    }

    /// Whether the subscriber is up (readiness).
    pub fn is_connected(&self) -> bool {
        self.inner.connected.get()
    }

    /// The subscriber's state as a readiness flag, for an ops endpoint to report.
    pub fn readiness(&self) -> Readiness {
        self.inner.connected.clone()
    }

    pub fn connection_count(&self) -> usize {
        self.lock().values().map(HashMap::len).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Conns> {
        self.inner.conns.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a connection of `user_id` and waits until its channel is subscribed, so nothing
    /// published after this returns is missed.
    pub async fn register(&self, user_id: &str, max_per_user: usize) -> Result<Registration, RegisterError> {
        let (tx, rx) = mpsc::channel(CONNECTION_BUFFER);
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut conns = self.lock();
            let mine = conns.entry(user_id.to_owned()).or_default();
            if mine.len() >= max_per_user {
                return Err(RegisterError::TooManyForUser(mine.len()));
            }
            if mine.is_empty() {
                let _ = self.inner.presence.send((user_id.to_owned(), true));
            }
            mine.insert(id, tx);
        }
        let registration = Registration { id, user_id: user_id.to_owned(), rx, hub: self.clone() };
        let (ack_tx, ack_rx) = oneshot::channel();
        if self.inner.commands.send(Command::Subscribe(user_id.to_owned(), ack_tx)).is_err() {
            return Err(RegisterError::NotSubscribed);
        }
        match tokio::time::timeout(Duration::from_secs(5), ack_rx).await {
            Ok(Ok(())) => Ok(registration),
            _ => Err(RegisterError::NotSubscribed),
        }
    }

    /// How many connections `user_id` has here.
    pub fn connections_of(&self, user_id: &str) -> usize {
        self.lock().get(user_id).map_or(0, HashMap::len)
    }

    fn unregister(&self, user_id: &str, id: u64) {
        let mut conns = self.lock();
        if let Some(mine) = conns.get_mut(user_id) {
            mine.remove(&id);
            if mine.is_empty() {
                conns.remove(user_id);
                let _ = self.inner.commands.send(Command::Unsubscribe(user_id.to_owned()));
                let _ = self.inner.presence.send((user_id.to_owned(), false));
            }
        }
    }

    fn deliver(&self, user: &str, payload: Arc<str>) {
        let conns = self.lock();
        if let Some(mine) = conns.get(user) {
            for tx in mine.values() {
                // A full queue means a stalled client; it notices the missing seq and resumes.
                let _ = tx.try_send(Outbound::Frame(payload.clone()));
            }
        }
    }

    /// Keeps the bus' presence leases of this relay's users: a user's lease is renewed for two
    /// intervals when their first socket arrives and every interval while one is open, and ends
    /// when their last socket leaves (the party grace starts then). Failures are logged and the
    /// next round writes everything again.
    async fn presence(
        self,
        bus: SignalBus,
        mut changes: mpsc::UnboundedReceiver<(String, bool)>,
        interval: Duration,
        shutdown: CancellationToken,
    ) {
        let lease = interval * 2;
        let mut renew = tokio::time::interval(interval);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = renew.tick() => {
                    let users: Vec<String> = self.lock().keys().cloned().collect();
                    if let Err(error) = bus.mark_present(&users, lease).await {
                        tracing::warn!(%error, users = users.len(), "presence leases not renewed");
                    }
                }
                change = changes.recv() => {
                    let Some((user, arrived)) = change else { return };
                    // A user who left and came back meanwhile is here: renew rather than end.
                    let here = arrived || self.connections_of(&user) > 0;
                    let lease = if here { lease } else { Duration::ZERO };
                    if let Err(error) = bus.mark_present(std::slice::from_ref(&user), lease).await {
                        tracing::warn!(%error, "presence lease not written");
                    }
                }
            }
        }
    }

    fn broadcast_resync(&self, lost: bool) {
        for tx in self.lock().values().flat_map(HashMap::values) {
            let _ = tx.try_send(Outbound::Resync { lost });
        }
    }

    async fn run(self, bus: SignalBus, mut commands: mpsc::UnboundedReceiver<Command>, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut first = true;
        let marker = uuid::Uuid::now_v7().simple().to_string();
        while !shutdown.is_cancelled() {
            let mut subscriber = match bus.subscriber().await {
                Ok(subscriber) => subscriber,
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "signal bus unreachable");
                    // Acknowledge nothing while down: registrations time out and are refused.
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(delay) => continue,
                    }
                }
            };
            let users: Vec<String> = self.lock().keys().cloned().collect();
            let mut ok = true;
            for user in &users {
                if subscriber.subscribe(user).await.is_err() {
                    ok = false;
                    break;
                }
            }
            if !ok {
                continue;
            }
            backoff.reset();
            self.inner.connected.set(true);
            // This relay's marker on the bus: gone after a reconnect means the bus lost its data.
            let lost = !first && !matches!(bus.marker_survived(&marker).await, Ok(true));
            if let Err(error) = bus.set_marker(&marker).await {
                tracing::warn!(%error, "cannot set the signal bus marker");
            }
            if !first {
                tracing::info!(users = users.len(), lost, "signal bus subscriber back; resyncing connections");
                self.broadcast_resync(lost);
            }
            first = false;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    command = commands.recv() => match command {
                        None => return,
                        Some(Command::Subscribe(user, ack)) => {
                            if subscriber.subscribe(&user).await.is_err() { break; }
                            let _ = ack.send(());
                        }
                        Some(Command::Unsubscribe(user)) => {
                            if subscriber.unsubscribe(&user).await.is_err() { break; }
                        }
                    },
                    message = subscriber.next() => match message {
                        None => break,
                        Some((user, frame)) => self.deliver(&user, frame),
                    },
                }
            }
            self.inner.connected.set(false);
            tracing::warn!("signal bus subscriber lost; subscribing again");
        }
    }
}
