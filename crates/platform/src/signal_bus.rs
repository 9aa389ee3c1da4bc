//! The signal bus on Redis: a signal gets the call's next sequence number (consecutive within a
//! call, and still increasing after a Redis restart), lands in the call's
//! capped, expiring log (for replay) and is published on the receiver's user channel — all in one
//! Lua script, so log order is sequence order. Pub/Sub loses what a disconnected subscriber
//! missed; the log is how it catches up.

use std::time::Duration;

use redis::{AsyncCommands, Script, aio::ConnectionManager};
use serde::Serialize;

use crate::{
    redis_keys::{call_log, call_seq, user_channel},
    signals::{FrameHead, SignalError, SignalType, frame_tail},
};

/// A call's counter starts at Redis' clock in microseconds (rounded to the millisecond), so
/// sequence numbers keep growing even if Redis loses its data and the counter starts again.
const PUBLISH_SIGNAL: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then
  local t = redis.call('TIME')
  redis.call('SET', KEYS[1], tonumber(t[1]) * 1000000 + math.floor(tonumber(t[2]) / 1000) * 1000)
end
local seq = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
local frame = '{"seq":' .. string.format('%d', seq) .. ',' .. ARGV[1]
redis.call('RPUSH', KEYS[2], frame)
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[2]), -1)
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

/// Publishes signals and notices, and reads the replay log. Cheap to clone; the connection
/// reconnects by itself.
#[derive(Clone)]
pub struct SignalBus {
    conn: ConnectionManager,
    config: SignalBusConfig,
    script: Script,
}

impl std::fmt::Debug for SignalBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignalBus").field("config", &self.config).finish_non_exhaustive()
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
        Ok(Self { conn, config, script: Script::new(PUBLISH_SIGNAL) })
    }

    /// Connects, waiting (with backoff) while Redis is unreachable, until `shutdown`.
    pub async fn connect_with_retry(
        config: SignalBusConfig,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<Self> {
        let mut backoff = crate::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
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
        let mut conn = self.conn.clone();
        let seq: u64 = self
            .script
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
        let mut conn = self.conn.clone();
        let _: i64 = conn.publish(user_channel(&self.config.cell_id, user_id), json).await?;
        Ok(())
    }

    /// The logged signals of `call_id` addressed to `user_id` with a sequence number above
    /// `after_seq`, oldest first, as the frames were published.
    pub async fn replay(&self, call_id: &str, user_id: &str, after_seq: u64) -> Result<Vec<(u64, String)>, BusError> {
        let mut conn = self.conn.clone();
        let frames: Vec<String> = conn.lrange(call_log(&self.config.cell_id, call_id), 0, -1).await?;
        Ok(frames
            .into_iter()
            .filter_map(|frame| {
                let head: FrameHead = serde_json::from_str(&frame).ok()?;
                (head.to == user_id && head.seq > after_seq).then_some((head.seq, frame))
            })
            .collect())
    }

    /// A new Pub/Sub connection (subscribers need their own).
    pub async fn pubsub(&self) -> Result<redis::aio::PubSub, redis::RedisError> {
        redis::Client::open(self.config.redis_url.as_str())?.get_async_pubsub().await
    }

    pub fn user_channel(&self, user_id: &str) -> String {
        user_channel(&self.config.cell_id, user_id)
    }
}
