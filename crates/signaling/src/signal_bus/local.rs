//! The signal bus inside one process (the standalone mode): the same rules as the Redis bus —
//! per-call sequence numbers starting at the clock (so they grow across restarts), a capped log
//! per call that expires after its last signal, and frames delivered to every subscriber of the
//! receiving user — with a mutex and a broadcast channel instead of a Lua script and Pub/Sub.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::broadcast;

/// Frames in flight to subscribers; one that falls further behind resyncs from the log.
const DELIVERY_BUFFER: usize = 4096;
/// Expired call logs are dropped every this many signals.
const PRUNE_EVERY: u64 = 256;

/// A frame published to a user.
#[derive(Debug, Clone)]
pub struct Published {
    pub user_id: Arc<str>,
    pub frame: Arc<str>,
}

#[derive(Debug)]
struct CallLog {
    last_seq: u64,
    /// `(seq, receiver, frame)`, oldest first.
    frames: VecDeque<(u64, Arc<str>, Arc<str>)>,
    touched: Instant,
}

#[derive(Debug)]
pub struct LocalSignalBus {
    calls: Mutex<(HashMap<String, CallLog>, u64)>,
    tx: broadcast::Sender<Published>,
    capacity: usize,
    ttl: Duration,
    /// Presence leases: user → until when (unix ms) they count as connected.
    leases: Mutex<HashMap<String, i64>>,
}

impl LocalSignalBus {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        let (tx, _) = broadcast::channel(DELIVERY_BUFFER);
        Self {
            calls: Mutex::new((HashMap::new(), 0)),
            tx,
            capacity: capacity.max(1),
            ttl,
            leases: Mutex::new(HashMap::new()),
        }
    }

    /// Sequences `tail` (a frame without its opening `{"seq":N,`), logs it and delivers it to
    /// `to`'s subscribers; returns the sequence number.
    pub fn publish_signal(&self, call_id: &str, to: &str, tail: &str) -> u64 {
        let now = Instant::now();
        let to: Arc<str> = Arc::from(to);
        let (seq, frame) = {
            let mut guard = self.calls.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let (calls, published) = &mut *guard;
            *published += 1;
            if (*published).is_multiple_of(PRUNE_EVERY) {
                calls.retain(|_, log| now.duration_since(log.touched) < self.ttl);
            }
            let log = calls.entry(call_id.to_owned()).or_insert_with(|| CallLog {
                last_seq: clock_base(),
                frames: VecDeque::new(),
                touched: now,
            });
            if now.duration_since(log.touched) >= self.ttl {
                log.frames.clear(); // expired, as the Redis key would have
            }
            log.last_seq += 1;
            log.touched = now;
            let seq = log.last_seq;
            let frame: Arc<str> = Arc::from(format!("{{\"seq\":{seq},{tail}"));
            log.frames.push_back((seq, to.clone(), frame.clone()));
            while log.frames.len() > self.capacity {
                log.frames.pop_front();
            }
            (seq, frame)
        };
        let _ = self.tx.send(Published { user_id: to, frame });
        seq
    }

    /// Delivers a frame to `user_id`'s subscribers without logging it.
    pub fn deliver(&self, user_id: &str, frame: Arc<str>) {
        let _ = self.tx.send(Published { user_id: Arc::from(user_id), frame });
    }

    /// The logged frames of `call_id` addressed to `user_id` after `after_seq`, oldest first.
    pub fn replay(&self, call_id: &str, user_id: &str, after_seq: u64) -> Vec<(u64, String)> {
        let guard = self.calls.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(log) = guard.0.get(call_id) else { return Vec::new() };
        if Instant::now().duration_since(log.touched) >= self.ttl {
            return Vec::new();
        }
        log.frames
            .iter()
            .filter(|(seq, to, _)| **to == *user_id && *seq > after_seq)
            .map(|(seq, _, frame)| (*seq, frame.to_string()))
            .collect()
    }

    /// Renews `users`' presence leases until `lease` from now (zero: they left now); drops leases
    /// older than the retention, as the Redis script does.
    pub fn mark_present(&self, users: &[String], lease: Duration) {
        let now = unix_millis();
        let until = now + i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 4);
        let retention = super::PRESENCE_RETENTION.as_millis() as i64;
        let mut leases = self.leases.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for user in users {
            leases.insert(user.clone(), until);
        }
        leases.retain(|_, lease| *lease >= now - retention);
    }

    /// The users whose lease ran out more than `grace` but less than `grace + lookback` ago.
    pub fn away_longer_than(
        &self,
        grace: Duration,
        lookback: Duration,
    ) -> Vec<(String, chrono::DateTime<chrono::Utc>)> {
        let now = unix_millis();
        let (newest, oldest) = (now - grace.as_millis() as i64, now - (grace + lookback).as_millis() as i64);
        let leases = self.leases.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        leases
            .iter()
            .filter(|(_, lease)| (oldest..newest).contains(*lease))
            .filter_map(|(user, lease)| Some((user.clone(), chrono::DateTime::from_timestamp_millis(*lease)?)))
            .collect()
    }

    pub fn receiver(&self) -> broadcast::Receiver<Published> {
        self.tx.subscribe()
    }
}

fn unix_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Where a new call's counter starts: the clock in microseconds rounded to the millisecond, as
/// the Redis script does.
fn clock_base() -> u64 {
    let micros = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_micros();
    u64::try_from(micros / 1000 * 1000).unwrap_or(u64::MAX / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_logs_caps_and_replays_per_receiver() {
        let bus = LocalSignalBus::new(3, Duration::from_secs(60));
        let mut rx = bus.receiver();
        let first = bus.publish_signal("c1", "bob", r#""type":"offer"}"#);
        let second = bus.publish_signal("c1", "alice", r#""type":"answer"}"#);
        assert_eq!(second, first + 1);
        let delivered = rx.try_recv().expect("delivered");
        assert_eq!(&*delivered.user_id, "bob");
        assert_eq!(&*delivered.frame, format!(r#"{{"seq":{first},"type":"offer"}}"#));
        assert_eq!(bus.replay("c1", "bob", 0), vec![(first, format!(r#"{{"seq":{first},"type":"offer"}}"#))]);
        assert!(bus.replay("c1", "bob", first).is_empty());
        for to in ["bob", "alice", "bob"] {
            bus.publish_signal("c1", to, r#""type":"ice-candidate"}"#);
        }
        let kept = bus.replay("c1", "bob", 0);
        assert_eq!(kept.len(), 2, "capacity 3 keeps the last three frames of the call, two of them bob's");
        assert!(kept.iter().all(|(seq, _)| *seq > second));
        assert!(bus.replay("other", "bob", 0).is_empty());
    }

    #[test]
    fn counters_start_at_the_clock_so_they_grow_across_restarts() {
        let before = LocalSignalBus::new(8, Duration::from_secs(60)).publish_signal("c1", "bob", "}");
        std::thread::sleep(Duration::from_millis(2));
        let after = LocalSignalBus::new(8, Duration::from_secs(60)).publish_signal("c1", "bob", "}");
        assert!(after > before);
    }

    #[test]
    fn expired_logs_replay_nothing() {
        let bus = LocalSignalBus::new(8, Duration::from_millis(1));
        bus.publish_signal("c1", "bob", "}");
        std::thread::sleep(Duration::from_millis(5));
        assert!(bus.replay("c1", "bob", 0).is_empty());
    }
}
