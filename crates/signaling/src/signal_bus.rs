//! The signal bus (on Redis, or in-process for the standalone mode): a signal gets the call's next sequence number (consecutive within a
//! call, and still increasing after a Redis restart), lands in the call's
//! capped, expiring log (for replay) and is published on the receiver's user channel — all in one
//! Lua script, so log order is sequence order. Pub/Sub loses what a disconnected subscriber
//! missed; the log is how it catches up.

pub mod hub;
mod local;
mod presence;

pub use presence::PRESENCE_RETENTION;

use std::{collections::HashSet, sync::Arc, time::Duration};

use futures_util::StreamExt;
use redis::{AsyncCommands, Script, aio::ConnectionManager};
use serde::Serialize;

use crate::{
    redis_keys::{call_log, call_seq, user_channel},
    signals::{FrameHead, SignalError, SignalType, frame_tail},
};

/// A call's counter starts at Redis' clock in microseconds (rounded to the millisecond), so
/// sequence numbers keep growing even if Redis loses its data and the counter starts again.
/// Five commands in the usual case: INCR answers 1 only for a new counter, and the log is trimmed
/// only when RPUSH says it outgrew its capacity.
const PUBLISH_SIGNAL: &str = r#"
local seq = redis.call('INCR', KEYS[1])
if seq == 1 then
  local t = redis.call('TIME')
  seq = tonumber(t[1]) * 1000000 + math.floor(tonumber(t[2]) / 1000) * 1000 + 1
  redis.call('SET', KEYS[1], seq)
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
local frame = '{"seq":' .. string.format('%d', seq) .. ',' .. ARGV[1]
if redis.call('RPUSH', KEYS[2], frame) > tonumber(ARGV[2]) then
  redis.call('LTRIM', KEYS[2], -tonumber(ARGV[2]), -1)
end
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('PUBLISH', KEYS[3], frame)
return seq
"#;

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
    Redis { conn: ConnectionManager, script: Script },
    InProcess(Arc<local::LocalSignalBus>),
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
    pub async fn connect(config: SignalBusConfig) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(config.redis_url.as_str())?;
        let conn = ConnectionManager::new(client).await?;
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
        let client = redis::Client::open(config.redis_url.as_str())?;
        let manager_config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_lazy_with_config(client, manager_config)?;
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
        let tail = frame_tail(s.signal_type, s.call_id, s.from, s.to, s.payload)?;
        let cell = &self.config.cell_id;
        let (conn, script) = match &self.backend {
            Backend::Redis { conn, script } => (conn, script),
            Backend::InProcess(local) => return Ok(local.publish_signal(s.call_id, s.to, &tail)),
        };
        let mut conn = conn.clone();
        let seq: u64 = script
            .key(call_seq(cell, s.call_id))
            .key(call_log(cell, s.call_id))
            .key(user_channel(cell, s.to))
            .arg(tail)
            .arg(self.config.log_capacity)
            .arg(self.config.log_ttl.as_secs().max(1))
            .invoke_async(&mut conn)
            .await?;
        Ok(seq)
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
                let channel = user_channel(&self.config.cell_id, user_id);
                let _: i64 = once_more_if_dropped(|| {
                    let mut conn = conn.clone();
                    let (channel, json) = (channel.clone(), json.clone());
                    async move { conn.publish(channel, json).await }
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
        let key = call_log(&self.config.cell_id, call_id);
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

    /// A new subscriber (on Redis, its own Pub/Sub connection): subscribe it to users and read
    /// the frames published to them.
    pub async fn subscriber(&self) -> Result<Subscriber, BusError> {
        let inner = match &self.backend {
            Backend::Redis { .. } => {
                let pubsub = redis::Client::open(self.config.redis_url.as_str())?.get_async_pubsub().await?;
                let (sink, stream) = pubsub.split();
                SubscriberInner::Redis { sink, stream }
            }
            Backend::InProcess(local) => SubscriberInner::InProcess { rx: local.receiver(), users: HashSet::new() },
        };
        Ok(Subscriber { prefix: user_channel(&self.config.cell_id, ""), inner })
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

/// Reads the frames published to the users it is subscribed to.
pub struct Subscriber {
    /// Channel name of a user, without the user id.
    prefix: String,
    inner: SubscriberInner,
}

enum SubscriberInner {
    Redis { sink: redis::aio::PubSubSink, stream: redis::aio::PubSubStream },
    InProcess { rx: tokio::sync::broadcast::Receiver<local::Published>, users: HashSet<Arc<str>> },
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl Subscriber {
    /// Frames published to `user_id` from now on are read by [`Self::next`].
    pub async fn subscribe(&mut self, user_id: &str) -> Result<(), BusError> {
        match &mut self.inner {
            SubscriberInner::Redis { sink, .. } => sink.subscribe(format!("{}{user_id}", self.prefix)).await?,
            SubscriberInner::InProcess { users, .. } => {
                users.insert(Arc::from(user_id));
            }
        }
        Ok(())
    }

    pub async fn unsubscribe(&mut self, user_id: &str) -> Result<(), BusError> {
        match &mut self.inner {
            SubscriberInner::Redis { sink, .. } => sink.unsubscribe(format!("{}{user_id}", self.prefix)).await?,
            SubscriberInner::InProcess { users, .. } => {
                users.remove(user_id);
            }
        }
        Ok(())
    }

    /// The next frame for a subscribed user: `(user_id, frame)`. `None` means frames may have been
    /// lost (the Redis connection dropped, or this in-process subscriber fell too far behind):
    /// make a new subscriber and catch up from the replay log.
    pub async fn next(&mut self) -> Option<(String, Arc<str>)> {
        match &mut self.inner {
            SubscriberInner::Redis { stream, .. } => loop {
                let message = stream.next().await?;
                let Ok(payload) = message.get_payload::<String>() else { continue };
                if let Some(user) = message.get_channel_name().strip_prefix(&self.prefix) {
                    return Some((user.to_owned(), Arc::from(payload)));
                }
            },
            SubscriberInner::InProcess { rx, users } => loop {
                match rx.recv().await {
                    Ok(published) if users.contains(&published.user_id) => {
                        return Some((published.user_id.to_string(), published.frame));
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
