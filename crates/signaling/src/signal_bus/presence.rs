//! Who still has a socket on some relay: each relay writes, for every user connected to it, a
//! presence lease ("present until", milliseconds of the bus' clock) a few times per lease, and the
//! moment a user's last socket there closed. A user whose lease lies further back than the grace
//! period has been away that long: the sweeper ends their live call as `connection_lost`. A relay
//! that dies stops renewing, so its users' leases run out too.

use std::{sync::LazyLock, time::Duration};

use chrono::{DateTime, Utc};
use redis::Script;

use super::{Backend, BusError, SignalBus, once_more_if_dropped};
use crate::redis_keys::presence;

/// Leases older than this are dropped from the set (and users away longer are no longer looked at).
pub const PRESENCE_RETENTION: Duration = Duration::from_secs(3600);

/// Sets each user's lease to the bus clock plus `ARGV[1]` ms; drops leases older than `ARGV[2]` ms.
const MARK: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = now + tonumber(ARGV[1])
for i = 3, #ARGV do
  redis.call('ZADD', KEYS[1], lease, ARGV[i])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
return now
"#;

/// The users whose lease ended between `ARGV[2]` and `ARGV[1]` ms ago: `{now, user, lease, ...}`.
const AWAY: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local away = redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[2]), '(' .. (now - tonumber(ARGV[1])), 'WITHSCORES')
table.insert(away, 1, tostring(now))
return away
"#;

static MARK_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(MARK));
static AWAY_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(AWAY));

/// Users in one script call.
const MARK_CHUNK: usize = 500;

impl SignalBus {
    /// Renews the presence lease of `users` for `lease` from now (the bus' clock); `Duration::ZERO`
    /// records that they left now.
    pub async fn mark_present(&self, users: &[String], lease: Duration) -> Result<(), BusError> {
        if users.is_empty() {
            return Ok(());
        }
        let conn = match &self.backend {
            Backend::Redis { conn, .. } => conn,
            Backend::InProcess(local) => {
                local.mark_present(users, lease);
                return Ok(());
            }
        };
        let key = presence(&self.config.cell_id);
        for chunk in users.chunks(MARK_CHUNK) {
            let mut invocation = MARK_SCRIPT.key(&key);
            invocation.arg(lease.as_millis() as u64).arg(PRESENCE_RETENTION.as_millis() as u64);
            for user in chunk {
                invocation.arg(user);
            }
            let _: i64 = once_more_if_dropped(|| {
                let (mut conn, invocation) = (conn.clone(), &invocation);
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?;
        }
        Ok(())
    }

    /// The users whose lease ran out more than `grace` ago (but less than `grace + lookback`),
    /// each with the moment it ran out.
    pub async fn away_longer_than(
        &self,
        grace: Duration,
        lookback: Duration,
    ) -> Result<Vec<(String, DateTime<Utc>)>, BusError> {
        let conn = match &self.backend {
            Backend::Redis { conn, .. } => conn,
            Backend::InProcess(local) => return Ok(local.away_longer_than(grace, lookback)),
        };
        let key = presence(&self.config.cell_id);
        let mut invocation = AWAY_SCRIPT.key(&key);
        invocation.arg(grace.as_millis() as u64).arg((grace + lookback).as_millis() as u64);
        let reply: Vec<String> = once_more_if_dropped(|| {
            let (mut conn, invocation) = (conn.clone(), &invocation);
            async move { invocation.invoke_async(&mut conn).await }
        })
        .await?;
        Ok(reply
            .get(1..)
            .unwrap_or_default()
            .chunks_exact(2)
            .filter_map(|pair| {
                let ms: i64 = pair[1].parse::<f64>().ok()? as i64;
                Some((pair[0].clone(), DateTime::from_timestamp_millis(ms)?))
            })
            .collect())
    }
}
