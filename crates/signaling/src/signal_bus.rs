//! The signal bus (on Redis, or in-process for the standalone mode): a signal gets the call's next sequence number (consecutive within a
//! call, and still increasing after a Redis restart), lands in the call's
//! capped, expiring log (for replay) and is published on the receiver's user channel — all in one
//! Lua script, so log order is sequence order. Pub/Sub loses what a disconnected subscriber
//! missed; the log is how it catches up.

pub mod hub;
mod local;
mod presence;

pub use presence::PRESENCE_RETENTION;

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use futures_util::StreamExt;
use redis::{
    AsyncCommands, Script,
    aio::ConnectionManager,
    cluster::{ClusterClient, ClusterClientBuilder},
    cluster_async::ClusterConnection,
};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::{
    redis_keys::{self, user_channel},
    signals::{FrameHead, SignalError, SignalType, frame_tail},
};

/// A call's counter starts at Redis' clock in microseconds (rounded to the millisecond), so
/// sequence numbers keep growing even if Redis loses its data and the counter starts again; and
/// it never hands out a number at or below `ARGV[4]`, the highest one the publisher already saw
/// in the call (a failover that lost the newest writes set the counter back: it is raised, and
/// the reply says so).
/// Five commands in the usual case: INCR answers 1 only for a new counter, and the log is trimmed
/// only when RPUSH says it outgrew its capacity.
const PUBLISH_SIGNAL: &str = r#"
local seq = redis.call('INCR', KEYS[1])
if seq == 1 then
  local t = redis.call('TIME')
  seq = tonumber(t[1]) * 1000000 + math.floor(tonumber(t[2]) / 1000) * 1000 + 1
  redis.call('SET', KEYS[1], seq)
end
local raised = 0
if seq <= tonumber(ARGV[4]) then
  seq = tonumber(ARGV[4]) + 1
  redis.call('SET', KEYS[1], seq)
  raised = 1
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
local frame = '{"seq":' .. string.format('%d', seq) .. ',' .. ARGV[1]
if redis.call('RPUSH', KEYS[2], frame) > tonumber(ARGV[2]) then
  redis.call('LTRIM', KEYS[2], -tonumber(ARGV[2]), -1)
end
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('PUBLISH', KEYS[3], frame)
return {seq, raised}
"#;

/// The same on Redis Cluster, where the frame goes out on the call's sharded channel (`SPUBLISH`,
/// KEYS[3] shares the call id's slot with the counter and the log): the whole signal is work on
/// the one shard that owns the call.
fn cluster_script() -> Script {
    Script::new(
        &PUBLISH_SIGNAL.replace("redis.call('PUBLISH', KEYS[3], frame)", "redis.call('SPUBLISH', KEYS[3], frame)"),
    )
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error(transparent)]
    Signal(#[from] SignalError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("signal bus timed out")]
    TimedOut,
}

#[derive(Debug, Clone)]
pub struct SignalBusConfig {
    pub redis_url: String,
    pub cell_id: String,
    /// Signals kept per call for replay.
    pub log_capacity: usize,
    /// How long a call's log and counter live after its last signal.
    pub log_ttl: Duration,
}

/// Publishes signals and notices, reads the replay log and hands out subscribers. Two backends:
/// Redis (the fleet: every relay and gateway replica shares it) and in-process (the standalone
/// `videocall` binary: one process, no Redis), with the same sequencing, log and delivery rules.
/// Cheap to clone; the Redis connection reconnects by itself.
#[derive(Clone)]
pub struct SignalBus {
    config: SignalBusConfig,
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Redis { conn: Conn, script: Script },
    InProcess(Arc<local::LocalSignalBus>),
}

/// A connection to one Redis server, or to a Redis Cluster (made on first use, then kept: it
/// follows the cluster's topology and reconnects by itself — except when it wedges, below).
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster { client: Arc<ClusterClient>, conn: Arc<ClusterSlot> },
}

/// The cluster connection in use, replaced when a command outlives [`CLUSTER_COMMAND_WITHIN`].
#[derive(Default)]
struct ClusterSlot {
    current: tokio::sync::Mutex<Option<(u64, ClusterConnection)>>,
    generation: std::sync::atomic::AtomicU64,
}

/// A cluster command's answer takes at most the client's response timeout (3 s) plus a retry or
/// two. One that takes longer met a wedged connection: with a master SIGKILLed under a few
/// hundred commands in flight, redis 1.8's cluster connection stayed in its recovery state for
/// good and answered nothing more, on healthy shards too (`crates/signaling/tests/cluster.rs`,
/// `CLUSTER_FAULT_CALLS=200`). Then the connection is dropped and the next command makes a new one.
const CLUSTER_COMMAND_WITHIN: Duration = Duration::from_secs(6);

impl ClusterSlot {
    async fn get(&self, client: &ClusterClient) -> redis::RedisResult<(u64, ClusterConnection)> {
        let mut current = self.current.lock().await;
        if let Some(conn) = current.as_ref() {
            return Ok(conn.clone());
        }
        let conn = client.get_async_connection().await?;
        let generation = self.generation.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        *current = Some((generation, conn.clone()));
        Ok((generation, conn))
    }

    /// Drops connection `generation` if it is still the one in use.
    async fn discard(&self, generation: u64) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|(g, _)| *g == generation) {
            tracing::warn!(
                within_ms = CLUSTER_COMMAND_WITHIN.as_millis() as u64,
                "a Redis Cluster command got no answer in time; replacing the cluster connection"
            );
            *current = None;
        }
    }

    /// Runs `command` on the connection in use, bounded by [`CLUSTER_COMMAND_WITHIN`].
    async fn run<T, F, Fut>(&self, client: &ClusterClient, command: F) -> redis::RedisResult<T>
    where
        F: FnOnce(ClusterConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let (generation, conn) = self.get(client).await?;
        match tokio::time::timeout(CLUSTER_COMMAND_WITHIN, command(conn)).await {
            Ok(Err(e)) if e.is_timeout() => {
                self.discard(generation).await;
                Err(e)
            }
            Ok(result) => result,
            Err(_) => {
                self.discard(generation).await;
                Err(redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "Redis Cluster command timed out; the connection is replaced",
                )))
            }
        }
    }
}

impl Conn {
    fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster { .. })
    }
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(conn) => conn.req_packed_command(cmd),
            Conn::Cluster { client, conn } => {
                Box::pin(conn.run(client, move |mut conn| async move { conn.req_packed_command(cmd).await }))
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(conn) => conn.req_packed_commands(cmd, offset, count),
            Conn::Cluster { client, conn } => Box::pin(
                conn.run(client, move |mut conn| async move { conn.req_packed_commands(cmd, offset, count).await }),
            ),
        }
    }

    fn get_db(&self) -> i64 {
        0
    }
}

/// Where `REDIS_URL` points: one server, or (a comma-separated list) a Redis Cluster's seed nodes.
fn cluster_seeds(redis_url: &str) -> Option<Vec<String>> {
    redis_url.contains(',').then(|| videocall_runtime::config::split_list(redis_url))
}

/// A Redis Cluster client: 2 s to connect to a node, 3 s for an answer (a command that times out
/// replaces the connection: [`ClusterSlot`]).
fn cluster_client(
    seeds: &[String],
    pushes: Option<mpsc::UnboundedSender<redis::PushInfo>>,
) -> redis::RedisResult<ClusterClient> {
    let builder = ClusterClientBuilder::new(seeds.iter().map(String::as_str))
        .connection_timeout(Duration::from_secs(2))
        .response_timeout(Duration::from_secs(3));
    match pushes {
        Some(tx) => builder.use_protocol(redis::ProtocolVersion::RESP3).push_sender(tx).build(),
        None => builder.build(),
    }
}

impl std::fmt::Debug for SignalBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let backend = match self.backend {
            Backend::Redis { .. } => "redis",
            Backend::InProcess(_) => "in-process",
        };
        f.debug_struct("SignalBus").field("backend", &backend).field("config", &self.config).finish_non_exhaustive()
    }
}
/// One signal to send.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    pub call_id: &'a str,
    pub from: &'a str,
    pub to: &'a str,
    pub signal_type: SignalType,
    pub payload: &'a str,
}

impl SignalBus {
    /// Connects to the Redis server of `config.redis_url`, or to the Redis Cluster whose seed
    /// nodes it lists.
    pub async fn connect(config: SignalBusConfig) -> Result<Self, redis::RedisError> {
        if let Some(seeds) = cluster_seeds(&config.redis_url) {
            let client = Arc::new(cluster_client(&seeds, None)?);
            let conn: Arc<ClusterSlot> = Arc::default();
            conn.get(&client).await?;
            let backend = Backend::Redis { conn: Conn::Cluster { client, conn }, script: cluster_script() };
            return Ok(Self { config, backend });
        }
        let client = redis::Client::open(config.redis_url.as_str())?;
        let conn = Conn::Single(ConnectionManager::new(client).await?);
        Ok(Self { config, backend: Backend::Redis { conn, script: Script::new(PUBLISH_SIGNAL) } })
    }

    /// A Redis bus that connects on first use, for services that only push frames to users (the
    /// event consumer's notices, the sweeper's call states); commands time out after 2 s so a
    /// dead Redis holds nothing. It keeps no signal log.
    pub fn connect_lazy(redis_url: &str, cell_id: &str) -> Result<Self, redis::RedisError> {
        let config = SignalBusConfig {
            redis_url: redis_url.to_owned(),
            cell_id: cell_id.to_owned(),
            log_capacity: 1,
            log_ttl: Duration::from_secs(1),
        };
        if let Some(seeds) = cluster_seeds(&config.redis_url) {
            let client = Arc::new(cluster_client(&seeds, None)?);
            let conn = Conn::Cluster { client, conn: Arc::default() };
            return Ok(Self { config, backend: Backend::Redis { conn, script: cluster_script() } });
        }
        let client = redis::Client::open(config.redis_url.as_str())?;
        let manager_config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let conn = Conn::Single(ConnectionManager::new_lazy_with_config(client, manager_config)?);
        Ok(Self { config, backend: Backend::Redis { conn, script: Script::new(PUBLISH_SIGNAL) } })
    }

    /// A bus inside this process, for the standalone mode: every clone of it (the gateway's, the
    /// relay's, the event consumer's) shares one log and one set of subscribers. `redis_url` is
    /// not used.
    pub fn in_process(config: SignalBusConfig) -> Self {
        let local = local::LocalSignalBus::new(config.log_capacity, config.log_ttl);
        Self { config, backend: Backend::InProcess(Arc::new(local)) }
    }

    /// Connects, waiting (with backoff) while Redis is unreachable, until `shutdown`.
    pub async fn connect_with_retry(
        config: SignalBusConfig,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<Self> {
        let mut backoff = videocall_runtime::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            match Self::connect(config.clone()).await {
                Ok(bus) => return Ok(bus),
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "redis unreachable");
                    tokio::select! {
                        _ = shutdown.cancelled() => anyhow::bail!("stopped while waiting for Redis"),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    pub fn cell_id(&self) -> &str {
        &self.config.cell_id
    }

    /// Validates, sequences, logs and publishes a signal; returns its sequence number.
    pub async fn publish_signal(&self, s: Outgoing<'_>) -> Result<u64, BusError> {
        Ok(self.publish_signal_above(s, 0).await?.0)
    }

    /// [`Self::publish_signal`] for a publisher that already saw sequence numbers up to `floor` in
    /// this call: the signal gets a higher one even if the bus lost the newest ones (a Redis
    /// Cluster failover loses what the replica had not received yet). The flag says the counter
    /// had gone back: signals of this call were lost.
    pub async fn publish_signal_above(&self, s: Outgoing<'_>, floor: u64) -> Result<(u64, bool), BusError> {
        let tail = frame_tail(s.signal_type, s.call_id, s.from, s.to, s.payload)?;
        let cell = &self.config.cell_id;
        let (conn, script) = match &self.backend {
            Backend::Redis { conn, script } => (conn, script),
            Backend::InProcess(local) => return Ok((local.publish_signal(s.call_id, s.to, &tail), false)),
        };
        let mut conn = conn.clone();
        let cluster = conn.is_cluster();
        // On a cluster the frame goes out on the call's channel (one slot), else on the receiver's.
        let channel =
            if cluster { redis_keys::cluster::call_channel(cell, s.call_id) } else { user_channel(cell, s.to) };
        let (seq, raised): (u64, u8) = script
            .key(redis_keys::call_seq_on(cluster, cell, s.call_id))
            .key(redis_keys::call_log_on(cluster, cell, s.call_id))
            .key(channel)
            .arg(tail)
            .arg(self.config.log_capacity)
            .arg(self.config.log_ttl.as_secs().max(1))
            .arg(floor)
            .invoke_async(&mut conn)
            .await?;
        Ok((seq, raised == 1))
    }

    /// After the bus came back: whether it lost signals of `call_id` numbered up to `floor` (the
    /// highest one the caller saw in the call), raising the call's counter above `floor` if so, so
    /// no number is handed out twice. Always false in process.
    pub async fn counter_fell_below(&self, call_id: &str, floor: u64) -> Result<bool, BusError> {
        const RAISE: &str = r#"
local c = tonumber(redis.call('GET', KEYS[1]) or '0')
if c >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"#;
        static RAISE_SCRIPT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| Script::new(RAISE));
        let Backend::Redis { conn, .. } = &self.backend else { return Ok(false) };
        if floor == 0 {
            return Ok(false);
        }
        let key = redis_keys::call_seq_on(conn.is_cluster(), &self.config.cell_id, call_id);
        let mut invocation = RAISE_SCRIPT.key(key);
        invocation.arg(floor).arg(self.config.log_ttl.as_secs().max(1));
        let raised: u8 = once_more_if_dropped(|| {
            let (mut conn, invocation) = (conn.clone(), &invocation);
            async move { invocation.invoke_async(&mut conn).await }
        })
        .await?;
        Ok(raised == 1)
    }

    /// Publishes any server frame (call state, notices) to a user's channel, without logging it.
    pub async fn publish_to_user<T: Serialize>(&self, user_id: &str, frame: &T) -> Result<(), BusError> {
        let json = serde_json::to_string(frame).map_err(|_| SignalError::BadCandidate)?;
        self.publish_json_to_user(user_id, json).await
    }

    /// Publishes one server frame (a call's state, its recording) to each of `parties`, without
    /// logging it, in one pipelined round trip to Redis bounded to 3 s. Such frames are safe to
    /// repeat, so a dropped connection is tried once more.
    pub async fn push_to_parties<T: Serialize>(&self, parties: &[&str], frame: &T) -> Result<(), BusError> {
        let pushed = async {
            let json = serde_json::to_string(frame).map_err(|_| SignalError::BadCandidate)?;
            match &self.backend {
                Backend::Redis { conn, .. } if conn.is_cluster() => {
                    // Each party's channel lives on its own shard: one SPUBLISH each, side by side.
                    let pushes = parties.iter().map(|user| self.publish_json_to_user(user, json.clone()));
                    for pushed in futures_util::future::join_all(pushes).await {
                        pushed?;
                    }
                }
                Backend::Redis { conn, .. } => {
                    let channels: Vec<String> = parties.iter().map(|u| user_channel(&self.config.cell_id, u)).collect();
                    let () = once_more_if_dropped(|| {
                        let mut pipe = redis::pipe();
                        for channel in &channels {
                            pipe.publish(channel, &json).ignore();
                        }
                        let mut conn = conn.clone();
                        async move { pipe.query_async(&mut conn).await }
                    })
                    .await?;
                }
                Backend::InProcess(local) => {
                    let json: Arc<str> = Arc::from(json);
                    for user in parties {
                        local.deliver(user, json.clone());
                    }
                }
            }
            Ok::<_, BusError>(())
        };
        tokio::time::timeout(Duration::from_secs(3), pushed).await.unwrap_or(Err(BusError::TimedOut))
    }

    /// Publishes an already encoded server frame to a user's channel, without logging it. Such
    /// frames (call state, notices) are safe to repeat, so a command that met a dropped connection
    /// (Redis restarted since the last command) is sent once more on the reconnected one.
    pub async fn publish_json_to_user(&self, user_id: &str, json: String) -> Result<(), BusError> {
        match &self.backend {
            Backend::Redis { conn, .. } => {
                let cluster = conn.is_cluster();
                let channel = redis_keys::user_channel_on(cluster, &self.config.cell_id, user_id);
                let _: i64 = once_more_if_dropped(|| {
                    let mut conn = conn.clone();
                    let (channel, json) = (channel.clone(), json.clone());
                    async move {
                        if cluster { conn.spublish(channel, json).await } else { conn.publish(channel, json).await }
                    }
                })
                .await?;
            }
            Backend::InProcess(local) => local.deliver(user_id, Arc::from(json)),
        }
        Ok(())
    }

    /// The logged signals of `call_id` addressed to `user_id` with a sequence number above
    /// `after_seq`, oldest first, as the frames were published.
    pub async fn replay(&self, call_id: &str, user_id: &str, after_seq: u64) -> Result<Vec<(u64, String)>, BusError> {
        let conn = match &self.backend {
            Backend::Redis { conn, .. } => conn,
            Backend::InProcess(local) => return Ok(local.replay(call_id, user_id, after_seq)),
        };
        let key = redis_keys::call_log_on(conn.is_cluster(), &self.config.cell_id, call_id);
        let frames: Vec<String> = once_more_if_dropped(|| {
            let (mut conn, key) = (conn.clone(), key.clone());
            async move { conn.lrange(key, 0, -1).await }
        })
        .await?;
        Ok(frames
            .into_iter()
            .filter_map(|frame| {
                let head: FrameHead = serde_json::from_str(&frame).ok()?;
                (head.to == user_id && head.seq > after_seq).then_some((head.seq, frame))
            })
            .collect())
    }

    /// Leaves a marker named `owner` on the bus (a relay instance's id); [`Self::marker_survived`]
    /// later tells whether the bus kept its data since — false after Redis restarted without
    /// persistence (or was flushed), when every call's signal log is gone too.
    pub async fn set_marker(&self, owner: &str) -> Result<(), BusError> {
        if let Backend::Redis { conn, .. } = &self.backend {
            let key = format!("{}:vc:marker:{owner}", self.config.cell_id);
            let () = once_more_if_dropped(|| {
                let (mut conn, key) = (conn.clone(), key.clone());
                async move { conn.set_ex(key, 1, 7 * 24 * 3600).await }
            })
            .await?;
        }
        Ok(())
    }

    /// Whether the marker `owner` set is still there (always true in process).
    pub async fn marker_survived(&self, owner: &str) -> Result<bool, BusError> {
        match &self.backend {
            Backend::Redis { conn, .. } => {
                let key = format!("{}:vc:marker:{owner}", self.config.cell_id);
                Ok(once_more_if_dropped(|| {
                    let (mut conn, key) = (conn.clone(), key.clone());
                    async move { conn.exists(key).await }
                })
                .await?)
            }
            Backend::InProcess(_) => Ok(true),
        }
    }

    /// A new subscriber (on Redis, its own Pub/Sub connection; on Redis Cluster, its own cluster
    /// connection with a connection per node): subscribe it to users (and, on a cluster, to
    /// calls) and read the frames published to them.
    pub async fn subscriber(&self) -> Result<Subscriber, BusError> {
        let cell = &self.config.cell_id;
        let inner = match &self.backend {
            Backend::Redis { conn, .. } if conn.is_cluster() => {
                let seeds = cluster_seeds(&self.config.redis_url).unwrap_or_default();
                let (tx, pushes) = mpsc::unbounded_channel();
                let conn = cluster_client(&seeds, Some(tx))?.get_async_connection().await?;
                SubscriberInner::Cluster { conn, pushes, wanted: HashSet::new(), seen: HashMap::new(), held: None }
            }
            Backend::Redis { .. } => {
                let pubsub = redis::Client::open(self.config.redis_url.as_str())?.get_async_pubsub().await?;
                let (sink, stream) = pubsub.split();
                SubscriberInner::Redis { sink, stream }
            }
            Backend::InProcess(local) => SubscriberInner::InProcess { rx: local.receiver(), users: HashSet::new() },
        };
        Ok(Subscriber { cell: cell.clone(), prefix: user_channel(cell, ""), inner })
    }

    /// Whether signals travel on per-call channels (Redis Cluster), so whoever reads a call's
    /// signals must watch that call ([`Subscriber::subscribe_call`], the hub's `watch_call`); on
    /// one Redis and in process they travel on the receiver's channel.
    pub fn signals_per_call(&self) -> bool {
        matches!(&self.backend, Backend::Redis { conn, .. } if conn.is_cluster())
    }

    /// Whether this bus lives in this process (no Redis).
    pub fn is_in_process(&self) -> bool {
        matches!(self.backend, Backend::InProcess(_))
    }
}

/// Runs a repeatable command; if it met a dropped or refused connection (the manager reconnects
/// in the background after such a failure), runs it once more after a moment.
async fn once_more_if_dropped<T, F, Fut>(command: F) -> redis::RedisResult<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = redis::RedisResult<T>>,
{
    match command().await {
        Err(e) if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() => {
            tracing::debug!(error = %e, "redis command met a dropped connection; once more");
            tokio::time::sleep(Duration::from_millis(100)).await;
            command().await
        }
        result => result,
    }
}

/// `SSUBSCRIBE`s a cluster subscriber keeps in flight when it subscribes many channels at once.
pub const SUBSCRIBES_IN_FLIGHT: usize = 64;

/// Reads the frames published to the users (and calls) it is subscribed to.
pub struct Subscriber {
    cell: String,
    /// Channel name of a user on one Redis, without the user id.
    prefix: String,
    inner: SubscriberInner,
}

enum SubscriberInner {
    Redis {
        sink: redis::aio::PubSubSink,
        stream: redis::aio::PubSubStream,
    },
    Cluster {
        conn: ClusterConnection,
        pushes: mpsc::UnboundedReceiver<redis::PushInfo>,
        /// The sharded channels subscribed to: one the server unsubscribes (its slot moved to
        /// another shard) is subscribed again.
        wanted: HashSet<String>,
        /// Per call channel, the highest `seq` it carried. A call's numbers have no holes, so a
        /// frame past the next number means one was published where this subscriber was not
        /// listening (a slot in migration; the redis crate resubscribing the new owner before
        /// the old one's `sunsubscribe`): the watchers resync before that frame goes out, so
        /// nobody applies a later number before the missing one.
        seen: HashMap<String, u64>,
        /// A frame held back behind the resync it caused.
        held: Option<BusEvent>,
    },
    InProcess {
        rx: tokio::sync::broadcast::Receiver<local::Published>,
        users: HashSet<Arc<str>>,
    },
}

/// What a subscriber read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusEvent {
    /// A frame for a user: `(user_id, frame)`.
    Frame(String, Arc<str>),
    /// A channel's slot moved to another shard of the cluster (which unsubscribed it); it is
    /// subscribed again on its new owner, and what was published meanwhile must come from the
    /// replay log.
    Resubscribed(Watched),
}

/// A channel a subscriber listens to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Watched {
    User(String),
    Call(String),
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber").field("cell", &self.cell).finish_non_exhaustive()
    }
}

impl Subscriber {
    /// Frames published to `user_id` from now on are read by [`Self::next`].
    pub async fn subscribe(&mut self, user_id: &str) -> Result<(), BusError> {
        match &mut self.inner {
            SubscriberInner::Redis { sink, .. } => sink.subscribe(format!("{}{user_id}", self.prefix)).await?,
            SubscriberInner::Cluster { conn, wanted, .. } => {
                let channel = redis_keys::cluster::user_channel(&self.cell, user_id);
                wanted.insert(channel.clone());
                conn.ssubscribe(&channel).await?;
            }
            SubscriberInner::InProcess { users, .. } => {
                users.insert(Arc::from(user_id));
            }
        }
        Ok(())
    }

    /// Subscribes to all of `users` and `calls` (a new subscriber taking over the hub's books):
    /// on one Redis in one `SUBSCRIBE` per thousand channels, on a cluster with up to
    /// [`SUBSCRIBES_IN_FLIGHT`] `SSUBSCRIBE`s in flight at once (channels of different slots
    /// cannot share one command). One after the other, a relay's few hundred channels took longer
    /// than the hub's bound on a busy cluster right after a failover, so the subscriber never
    /// came back.
    pub async fn subscribe_all(&mut self, users: &[String], calls: &[String]) -> Result<(), BusError> {
        match &mut self.inner {
            SubscriberInner::Redis { sink, .. } => {
                let channels: Vec<String> = users.iter().map(|u| format!("{}{u}", self.prefix)).collect();
                for chunk in channels.chunks(1000) {
                    sink.subscribe(chunk).await?;
                }
            }
            SubscriberInner::Cluster { conn, wanted, .. } => {
                let channels: Vec<String> = users
                    .iter()
                    .map(|u| redis_keys::cluster::user_channel(&self.cell, u))
                    .chain(calls.iter().map(|c| redis_keys::cluster::call_channel(&self.cell, c)))
                    .collect();
                // Wanted before asked for: a `sunsubscribe` pushed meanwhile (the slot moving) must
                // find the channel wanted, or it would not be subscribed again.
                wanted.extend(channels.iter().cloned());
                let shared = conn.clone();
                let mut taken = futures_util::stream::iter(channels.clone())
                    .map(move |channel| {
                        let mut conn = shared.clone();
                        async move { conn.ssubscribe(channel).await }
                    })
                    .buffer_unordered(SUBSCRIBES_IN_FLIGHT);
                while let Some(result) = taken.next().await {
                    result?;
                }
            }
            SubscriberInner::InProcess { users: subscribed, .. } => {
                subscribed.extend(users.iter().map(|u| Arc::from(u.as_str())));
            }
        }
        Ok(())
    }

    pub async fn unsubscribe(&mut self, user_id: &str) -> Result<(), BusError> {
        match &mut self.inner {
            SubscriberInner::Redis { sink, .. } => sink.unsubscribe(format!("{}{user_id}", self.prefix)).await?,
            SubscriberInner::Cluster { conn, wanted, .. } => {
                let channel = redis_keys::cluster::user_channel(&self.cell, user_id);
                wanted.remove(&channel);
                conn.sunsubscribe(&channel).await?;
            }
            SubscriberInner::InProcess { users, .. } => {
                users.remove(user_id);
            }
        }
        Ok(())
    }

    /// The signals of `call_id` (to whichever party) from now on are read by [`Self::next`]. Only
    /// a cluster subscriber needs this (elsewhere signals come on the receiver's channel): a
    /// no-op there.
    pub async fn subscribe_call(&mut self, call_id: &str) -> Result<(), BusError> {
        if let SubscriberInner::Cluster { conn, wanted, .. } = &mut self.inner {
            let channel = redis_keys::cluster::call_channel(&self.cell, call_id);
            wanted.insert(channel.clone());
            conn.ssubscribe(&channel).await?;
        }
        Ok(())
    }

    pub async fn unsubscribe_call(&mut self, call_id: &str) -> Result<(), BusError> {
        if let SubscriberInner::Cluster { conn, wanted, seen, .. } = &mut self.inner {
            let channel = redis_keys::cluster::call_channel(&self.cell, call_id);
            wanted.remove(&channel);
            seen.remove(&channel);
            conn.sunsubscribe(&channel).await?;
        }
        Ok(())
    }

    /// The next frame for a subscribed user: `(user_id, frame)`. `None` means frames may have been
    /// lost (the Redis connection dropped, or this in-process subscriber fell too far behind):
    /// make a new subscriber and catch up from the replay log. Channels moved between cluster
    /// shards are subscribed again without a word: read [`Self::next_event`] to hear of them.
    pub async fn next(&mut self) -> Option<(String, Arc<str>)> {
        loop {
            if let BusEvent::Frame(user, frame) = self.next_event().await? {
                return Some((user, frame));
            }
        }
    }

    /// The next frame, or the news that a channel moved shards (frames published to it meanwhile
    /// may be missing). `None` as for [`Self::next`].
    pub async fn next_event(&mut self) -> Option<BusEvent> {
        match &mut self.inner {
            SubscriberInner::Redis { stream, .. } => loop {
                let message = stream.next().await?;
                let Ok(payload) = message.get_payload::<String>() else { continue };
                if let Some(user) = message.get_channel_name().strip_prefix(&self.prefix) {
                    return Some(BusEvent::Frame(user.to_owned(), Arc::from(payload)));
                }
            },
            SubscriberInner::Cluster { conn, pushes, wanted, seen, held } => loop {
                if let Some(event) = held.take() {
                    return Some(event);
                }
                let push = pushes.recv().await?;
                let channel = push.data.first().and_then(|v| redis::from_redis_value_ref::<String>(v).ok());
                match push.kind {
                    redis::PushKind::SMessage => {
                        let (Some(channel), Some(payload)) =
                            (channel, push.data.get(1).and_then(|v| redis::from_redis_value_ref::<String>(v).ok()))
                        else {
                            continue;
                        };
                        let (to, gap) = match channel_of(&self.cell, &channel) {
                            Some(Watched::User(user)) => (user, None),
                            Some(Watched::Call(call)) => match serde_json::from_str::<FrameHead>(&payload) {
                                Ok(head) => {
                                    let last = seen.entry(channel).or_insert(0);
                                    let missed = *last > 0 && head.seq > *last + 1;
                                    *last = (*last).max(head.seq);
                                    (head.to, missed.then_some(call))
                                }
                                Err(_) => continue,
                            },
                            None => continue,
                        };
                        let frame = BusEvent::Frame(to, Arc::from(payload));
                        if let Some(call) = gap {
                            tracing::debug!(%call, "a call's signal numbers skipped one; its watchers resync first");
                            *held = Some(frame);
                            return Some(BusEvent::Resubscribed(Watched::Call(call)));
                        }
                        return Some(frame);
                    }
                    // A node's connection dropped (it died, or failed over): start afresh.
                    redis::PushKind::Disconnection => return None,
                    // The server unsubscribed a channel still wanted: its slot moved away.
                    redis::PushKind::SUnsubscribe => {
                        let Some(channel) = channel.filter(|c| wanted.contains(c)) else { continue };
                        tracing::info!(%channel, "sharded channel moved to another shard; subscribing again");
                        if let Err(error) = conn.ssubscribe(&channel).await {
                            tracing::warn!(%error, %channel, "cannot subscribe again");
                            return None;
                        }
                        if let Some(watched) = channel_of(&self.cell, &channel) {
                            return Some(BusEvent::Resubscribed(watched));
                        }
                    }
                    _ => {}
                }
            },
            SubscriberInner::InProcess { rx, users } => loop {
                match rx.recv().await {
                    Ok(published) if users.contains(&published.user_id) => {
                        return Some(BusEvent::Frame(published.user_id.to_string(), published.frame));
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "in-process subscriber fell behind; it must resync");
                        return None;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            },
        }
    }
}

/// Which user or call a cluster channel name belongs to.
fn channel_of(cell: &str, channel: &str) -> Option<Watched> {
    let rest = channel.strip_prefix(cell)?.strip_prefix(":vc:")?;
    if let Some(user) = rest.strip_prefix("user:{").and_then(|r| r.strip_suffix('}')) {
        return Some(Watched::User(user.to_owned()));
    }
    let call = rest.strip_prefix("call:{")?.strip_suffix("}:signals")?;
    Some(Watched::Call(call.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_channel_names_give_back_their_user_or_call() {
        let user = redis_keys::cluster::user_channel("eu-1", "agent-7");
        assert_eq!(channel_of("eu-1", &user), Some(Watched::User("agent-7".into())));
        let call = redis_keys::cluster::call_channel("eu-1", "c1");
        assert_eq!(channel_of("eu-1", &call), Some(Watched::Call("c1".into())));
        assert_eq!(channel_of("eu-2", &call), None);
        assert_eq!(channel_of("eu-1", "eu-1:vc:call:{c1}:log"), None);
    }

    #[test]
    fn seed_lists_select_the_cluster() {
        assert_eq!(cluster_seeds("redis://a:7000"), None);
        assert_eq!(
            cluster_seeds("redis://a:7000,redis://b:7001"),
            Some(vec!["redis://a:7000".into(), "redis://b:7001".into()])
        );
        assert_eq!(cluster_seeds("redis://a:7000,"), Some(vec!["redis://a:7000".into()]));
        let script = cluster_script();
        assert_ne!(script.get_hash(), Script::new(PUBLISH_SIGNAL).get_hash());
    }
}
