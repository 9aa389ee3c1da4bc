//! Who may call whom, and how often: the call policy InitiateCall applies. Users may call agents
//! (and take support offers, whose agent they call), agents and services may call anyone, users
//! may not call users unless the policy is open; every caller starts at most
//! `initiate_per_minute` calls a minute (per gateway replica). Agents are known by the role they
//! last authenticated with (the `principals` table), written when any of their requests arrives
//! (a relay asks for the agent's calls as soon as the agent connects).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use sea_orm::{DatabaseConnection, EntityTrait, sea_query::OnConflict};

use crate::error::ApiError;
use videocall_entities::principals;
use videocall_runtime::auth::{Principal, Role};

/// A user's role is written again at most this often by one replica.
const ROLE_REFRESH: Duration = Duration::from_secs(300);
/// Callers tracked by the limiter before idle ones are forgotten.
const MAX_TRACKED: usize = 100_000;

/// The rules, from configuration (`CALL_POLICY`, `INITIATE_CALLS_PER_MIN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallPolicy {
    /// `CALL_POLICY=open`: anyone may call anyone.
    pub users_may_call_users: bool,
    /// Calls one caller may start per minute; a burst of that many is allowed.
    pub initiate_per_minute: u32,
    /// Shortest time between two quality samples of one reporter in one call.
    pub quality_min_interval: Duration,
    /// `SubscribeToSignals` streams one user may hold open at once (per gateway replica).
    pub max_streams_per_user: usize,
}

impl Default for CallPolicy {
    fn default() -> Self {
        Self {
            users_may_call_users: false,
            initiate_per_minute: 10,
            quality_min_interval: Duration::from_secs(1),
            max_streams_per_user: 5,
        }
    }
}

impl CallPolicy {
    /// Anyone may call anyone, as often as they like (load tests, closed deployments).
    pub fn open() -> Self {
        Self {
            users_may_call_users: true,
            initiate_per_minute: u32::MAX,
            quality_min_interval: Duration::ZERO,
            max_streams_per_user: usize::MAX,
        }
    }
}

/// Applies a [`CallPolicy`]. Cheap to clone.
#[derive(Clone)]
pub struct Policy {
    db: DatabaseConnection,
    rules: CallPolicy,
    recorded: Arc<Mutex<HashMap<String, (Role, Instant)>>>,
    buckets: Arc<Mutex<HashMap<String, (f64, Instant)>>>,
    /// When each (call, reporter) last reported quality.
    samples: Arc<Mutex<HashMap<(uuid::Uuid, String), Instant>>>,
    /// Open signal streams per user.
    streams: Arc<Mutex<HashMap<String, usize>>>,
}

/// One open signal stream of a user; dropping it (the stream ended) gives the place back.
pub struct StreamPermit {
    user: String,
    streams: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(open) = streams.get_mut(&self.user) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                streams.remove(&self.user);
            }
        }
    }
}

impl Policy {
    pub fn new(db: DatabaseConnection, rules: CallPolicy) -> Self {
        Self {
            db,
            rules,
            recorded: Arc::default(),
            buckets: Arc::default(),
            samples: Arc::default(),
            streams: Arc::default(),
        }
    }

    /// Records that `p` is an agent or a service (users need no row: anyone not recorded is
    /// called as a user), unless this replica did so recently. A failure is logged: the request
    /// goes on.
    pub async fn note(&self, p: &Principal) {
        if p.role == Role::User {
            return;
        }
        {
            let recorded = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
            if recorded.get(&p.user_id).is_some_and(|(role, at)| *role == p.role && at.elapsed() < ROLE_REFRESH) {
                return;
            }
        }
        let row = principals::ActiveModel {
            user_id: sea_orm::Set(p.user_id.clone()),
            role: sea_orm::Set(role_name(p.role).to_owned()),
            seen_at: sea_orm::Set(chrono::Utc::now()),
        };
        let upsert = principals::Entity::insert(row).on_conflict(
            OnConflict::column(principals::Column::UserId)
                .update_columns([principals::Column::Role, principals::Column::SeenAt])
                .to_owned(),
        );
        match upsert.exec(&self.db).await {
            Ok(_) => {
                let mut recorded = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
                if recorded.len() >= MAX_TRACKED {
                    recorded.retain(|_, (_, at)| at.elapsed() < ROLE_REFRESH);
                }
                recorded.insert(p.user_id.clone(), (p.role, Instant::now()));
            }
            Err(error) => tracing::warn!(%error, user_id = %p.user_id, "role not recorded"),
        }
    }

    /// Takes one call from `caller`'s allowance: RESOURCE_EXHAUSTED with the wait when it is spent.
    pub fn take_initiate(&self, caller: &str) -> Result<(), ApiError> {
        let per_minute = self.rules.initiate_per_minute;
        if per_minute == u32::MAX {
            return Ok(());
        }
        let (capacity, per_sec) = (f64::from(per_minute), f64::from(per_minute) / 60.0);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(caller) {
            buckets.retain(|_, (tokens, at)| *tokens + at.elapsed().as_secs_f64() * per_sec < capacity);
        }
        let now = Instant::now();
        let (tokens, at) = buckets.entry(caller.to_owned()).or_insert((capacity, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * per_sec).min(capacity);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            return Ok(());
        }
        let wait = ((1.0 - *tokens) / per_sec).ceil().max(1.0) as u64;
        Err(ApiError::TooMany {
            message: format!("too many calls started: at most {per_minute} a minute; retry in {wait} s"),
            retry_after_secs: wait,
        })
    }

    /// Admits one quality sample of `reporter` in `call`: RESOURCE_EXHAUSTED when the last one
    /// came less than `quality_min_interval` ago (per gateway replica).
    pub fn take_quality_sample(&self, call: uuid::Uuid, reporter: &str) -> Result<(), ApiError> {
        let interval = self.rules.quality_min_interval;
        if interval.is_zero() {
            return Ok(());
        }
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if samples.len() >= MAX_TRACKED {
            samples.retain(|_, at| at.elapsed() < interval);
        }
        let key = (call, reporter.to_owned());
        if let Some(last) = samples.get(&key)
            && last.elapsed() < interval
        {
            let wait = (interval - last.elapsed()).as_secs_f64().ceil().max(1.0) as u64;
            return Err(ApiError::TooMany {
                message: format!(
                    "quality samples come at most one per {} ms per reporter and call; retry in {wait} s",
                    interval.as_millis()
                ),
                retry_after_secs: wait,
            });
        }
        samples.insert(key, Instant::now());
        Ok(())
    }

    /// A place for one more signal stream of `user`, or RESOURCE_EXHAUSTED when they hold
    /// `max_streams_per_user` already.
    pub fn open_stream(&self, user: &str) -> Result<StreamPermit, ApiError> {
        let max = self.rules.max_streams_per_user;
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        let open = streams.entry(user.to_owned()).or_default();
        if *open >= max {
            return Err(ApiError::TooMany {
                message: format!("at most {max} signal streams per user are open at once; close one first"),
                retry_after_secs: 1,
            });
        }
        *open += 1;
        Ok(StreamPermit { user: user.to_owned(), streams: self.streams.clone() })
    }

    /// Whether `p` may call `callee` (`offer_agent`: the agent of the support offer being taken up).
    pub async fn may_call(&self, p: &Principal, callee: &str, offer_agent: Option<&str>) -> Result<(), ApiError> {
        if p.role != Role::User || self.rules.users_may_call_users || offer_agent == Some(callee) {
            return Ok(());
        }
        let role = principals::Entity::find_by_id(callee.to_owned())
            .one(&self.db)
            .await
            .map_err(|error| {
                tracing::warn!(%error, "principals unreadable");
                ApiError::Unavailable("database unavailable, retry".into())
            })?
            .map(|row| row.role);
        match role.as_deref() {
            Some("agent" | "service") => Ok(()),
            _ => Err(ApiError::denied(format!(
                "users may call agents only, and `{}` is not a known agent",
                callee.chars().take(64).collect::<String>()
            ))),
        }
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::User => "user",
        Role::Agent => "agent",
        Role::Service => "service",
    }
}
