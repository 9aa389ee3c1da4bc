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

use crate::signal_bus::{BusEvent, SignalBus, Watched};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use videocall_runtime::{backoff::Backoff, ops::Readiness};

/// How long a new subscriber may take to connect, and then to subscribe to everything.
const SUBSCRIBE_WITHIN: Duration = Duration::from_secs(5);

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

/// Queues a resync for one connection. Unlike a frame (dropped when the queue is full: the client
/// sees the gap), a dropped resync would be noticed by nobody, so a full queue gets it as soon as
/// there is room; a late resync only replays what the connection has already.
fn send_resync(tx: &mpsc::Sender<Outbound>, lost: bool) {
    if let Err(mpsc::error::TrySendError::Full(resync)) = tx.try_send(Outbound::Resync { lost }) {
        let tx = tx.clone();
        tokio::spawn(async move {
            let _ = tx.send(resync).await;
        });
    }
}

enum Command {
    Subscribe(String, oneshot::Sender<()>),
    Unsubscribe(String),
    /// Answered once every command before it went out.
    Ack(oneshot::Sender<()>),
    SubscribeCall(String, oneshot::Sender<()>),
    UnsubscribeCall(String),
}

type Conns = HashMap<String, HashMap<u64, mpsc::Sender<Outbound>>>;

/// The hub's books: each user's connections here, and (on Redis Cluster, where signals travel on
/// per-call channels) which connections watch which call.
#[derive(Default)]
struct Books {
    conns: Conns,
    /// Call id → (connection id → its user).
    watchers: HashMap<String, HashMap<u64, String>>,
}

/// Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    books: Mutex<Books>,
    /// Signals travel on per-call channels (Redis Cluster): connections watch their calls.
    per_call: bool,
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

impl Registration {
    /// A handle that watches calls for this connection ([`Watcher::watch_call`]).
    pub fn watcher(&self) -> Watcher {
        Watcher { hub: self.hub.clone(), id: self.id, user_id: self.user_id.clone() }
    }
}

/// Watches calls on behalf of one registered connection. Cheap to clone.
#[derive(Clone)]
pub struct Watcher {
    hub: Hub,
    id: u64,
    user_id: String,
}

impl Watcher {
    /// Whether calls must be watched for their signals to arrive (Redis Cluster).
    pub fn per_call(&self) -> bool {
        self.hub.inner.per_call
    }

    /// Makes the signals of `call_id` addressed to this connection's user reach it, and waits
    /// until they do: signals published before this returned may have been missed (replay them
    /// from the log). Where signals travel on the receiver's channel (one Redis, in process) this
    /// returns at once. A connection unwatches its calls when it is dropped.
    pub async fn watch_call(&self, call_id: &str) -> Result<(), RegisterError> {
        if !self.hub.inner.per_call {
            return Ok(());
        }
        let first = {
            let mut books = self.hub.lock();
            let watchers = books.watchers.entry(call_id.to_owned()).or_default();
            let first = watchers.is_empty();
            watchers.insert(self.id, self.user_id.clone());
            first
        };
        // A later watcher of a call already subscribed still waits for the command queue, so it
        // never returns before the first watcher's subscription went out.
        let (ack_tx, ack_rx) = oneshot::channel();
        let command = if first { Command::SubscribeCall(call_id.to_owned(), ack_tx) } else { Command::Ack(ack_tx) };
        if self.hub.inner.commands.send(command).is_err() {
            return Err(RegisterError::NotSubscribed);
        }
        match tokio::time::timeout(Duration::from_secs(5), ack_rx).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(RegisterError::NotSubscribed),
        }
    }

    /// The signals of `call_id` (it ended) need not reach this connection any more.
    pub fn unwatch_call(&self, call_id: &str) {
        if self.hub.inner.per_call {
            self.hub.unwatch(self.id, call_id);
        }
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
        let per_call = bus.signals_per_call();
        let hub = Hub {
            inner: Arc::new(Inner {
                books: Mutex::new(Books::default()),
                per_call,
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
        self.lock().conns.values().map(HashMap::len).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Books> {
        self.inner.books.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn unwatch(&self, id: u64, call_id: &str) {
        let mut books = self.lock();
        if let Some(watchers) = books.watchers.get_mut(call_id)
            && watchers.remove(&id).is_some()
            && watchers.is_empty()
        {
            books.watchers.remove(call_id);
            let _ = self.inner.commands.send(Command::UnsubscribeCall(call_id.to_owned()));
        }
    }

    /// Registers a connection of `user_id` and waits until its channel is subscribed, so nothing
    /// published after this returns is missed.
    pub async fn register(&self, user_id: &str, max_per_user: usize) -> Result<Registration, RegisterError> {
        let (tx, rx) = mpsc::channel(CONNECTION_BUFFER);
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut books = self.lock();
            let mine = books.conns.entry(user_id.to_owned()).or_default();
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
        self.lock().conns.get(user_id).map_or(0, HashMap::len)
    }

    fn unregister(&self, user_id: &str, id: u64) {
        let mut books = self.lock();
        if self.inner.per_call {
            books.watchers.retain(|call_id, watchers| {
                if watchers.remove(&id).is_some() && watchers.is_empty() {
                    let _ = self.inner.commands.send(Command::UnsubscribeCall(call_id.clone()));
                    return false;
                }
                true
            });
        }
        if let Some(mine) = books.conns.get_mut(user_id) {
            mine.remove(&id);
            if mine.is_empty() {
                books.conns.remove(user_id);
                let _ = self.inner.commands.send(Command::Unsubscribe(user_id.to_owned()));
                let _ = self.inner.presence.send((user_id.to_owned(), false));
            }
        }
    }

    fn deliver(&self, user: &str, payload: Arc<str>) {
        let books = self.lock();
        if let Some(mine) = books.conns.get(user) {
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
                    let users: Vec<String> = self.lock().conns.keys().cloned().collect();
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
        for tx in self.lock().conns.values().flat_map(HashMap::values) {
            send_resync(tx, lost);
        }
    }

    /// A channel moved to another cluster shard and was subscribed again there: the connections
    /// it feeds replay what may have been published meanwhile.
    fn resync_moved(&self, watched: &Watched) {
        let books = self.lock();
        let resync = |user: &str, id: Option<u64>| {
            for (conn, tx) in books.conns.get(user).into_iter().flatten() {
                if id.is_none_or(|id| id == *conn) {
                    send_resync(tx, false);
                }
            }
        };
        match watched {
            Watched::User(user) => resync(user, None),
            Watched::Call(call) => {
                for (id, user) in books.watchers.get(call).into_iter().flatten() {
                    resync(user, Some(*id));
                }
            }
        }
    }

    async fn run(self, bus: SignalBus, mut commands: mpsc::UnboundedReceiver<Command>, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut first = true;
        let marker = uuid::Uuid::now_v7().simple().to_string();
        while !shutdown.is_cancelled() {
            // Bounded: on a cluster whose master just died, a node may not answer until its replica
            // took over; then this starts again.
            let subscriber = tokio::time::timeout(SUBSCRIBE_WITHIN, bus.subscriber()).await;
            let mut subscriber = match subscriber.unwrap_or(Err(super::BusError::TimedOut)) {
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
            let (users, calls): (Vec<String>, Vec<String>) = {
                let books = self.lock();
                (books.conns.keys().cloned().collect(), books.watchers.keys().cloned().collect())
            };
            let subscribed = subscriber.subscribe_all(&users, &calls);
            let taken =
                tokio::time::timeout(SUBSCRIBE_WITHIN, subscribed).await.unwrap_or(Err(super::BusError::TimedOut));
            if let Err(error) = taken {
                tracing::warn!(%error, users = users.len(), calls = calls.len(), "signal bus subscriptions not taken; again");
                let delay = backoff.next_delay();
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => continue,
                }
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
                        Some(Command::Ack(ack)) => {
                            let _ = ack.send(());
                        }
                        Some(Command::SubscribeCall(call, ack)) => {
                            if subscriber.subscribe_call(&call).await.is_err() { break; }
                            let _ = ack.send(());
                        }
                        Some(Command::UnsubscribeCall(call)) => {
                            if subscriber.unsubscribe_call(&call).await.is_err() { break; }
                        }
                    },
                    event = subscriber.next_event() => match event {
                        None => break,
                        Some(BusEvent::Frame(user, frame)) => self.deliver(&user, frame),
                        Some(BusEvent::Resubscribed(watched)) => self.resync_moved(&watched),
                    },
                }
            }
            self.inner.connected.set(false);
            tracing::warn!("signal bus subscriber lost; subscribing again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_resync_for_a_full_queue_arrives_once_there_is_room() {
        let (tx, mut rx) = mpsc::channel(1);
        tx.try_send(Outbound::Frame(Arc::from("{\"seq\":1}"))).expect("room for one");
        send_resync(&tx, true);
        assert!(matches!(rx.recv().await, Some(Outbound::Frame(_))), "the queued frame first");
        let next = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv()).await.expect("in time");
        assert!(matches!(next, Some(Outbound::Resync { lost: true })), "then the resync, not dropped: {next:?}");
    }
}
