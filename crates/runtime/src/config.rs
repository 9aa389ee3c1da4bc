//! Configuration shared by every service: read from environment variables (each also a `--flag`),
//! validated at start, every bad value reported at once with the variable's name, secrets never
//! printed.

use std::{fmt, str::FromStr};

use crate::telemetry::LogFormat;

/// Settings every service has. Values arrive as text and are checked by [`Checker`], so one run
/// reports every bad variable instead of stopping at the first.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Name used in logs and as the CloudEvents `source`.
    #[arg(long, env = "SERVICE_NAME")]
    pub service_name: Option<String>,
    /// Cell (deployment) id; prefixes Redis keys and the events' `source`.
    #[arg(long, env = "CELL_ID", default_value = "local")]
    pub cell_id: String,
    /// `text` or `json`.
    #[arg(long, env = "LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

/// Validated form of [`CommonArgs`].
#[derive(Debug, Clone)]
pub struct Common {
    pub service_name: String,
    pub cell_id: String,
    pub log_format: LogFormat,
}

impl CommonArgs {
    pub fn check(&self, default_service: &str, c: &mut Checker) -> Option<Common> {
        let service_name = self.service_name.clone().unwrap_or_else(|| default_service.to_owned());
        let name_ok = c.check("SERVICE_NAME", is_name(&service_name), "must be 1-64 of [A-Za-z0-9_.-]");
        let cell_ok = c.check("CELL_ID", is_name(&self.cell_id), "must be 1-64 of [A-Za-z0-9_.-]");
        let log_format = c.parse::<LogFormat>("LOG_FORMAT", &self.log_format);
        (name_ok && cell_ok).then_some(())?;
        Some(Common { service_name, cell_id: self.cell_id.clone(), log_format: log_format? })
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// Collects configuration errors, one line per bad variable.
#[derive(Debug, Default)]
pub struct Checker {
    errors: Vec<String>,
}

impl Checker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `message` for `var` unless `ok`; returns `ok`.
    pub fn check(&mut self, var: &str, ok: bool, message: &str) -> bool {
        if !ok {
            self.errors.push(format!("{var}: {message}"));
        }
        ok
    }

    /// Parses `raw`, recording the parser's complaint under `var`.
    pub fn parse<T>(&mut self, var: &str, raw: &str) -> Option<T>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        match raw.trim().parse() {
            Ok(value) => Some(value),
            Err(error) => {
                self.errors.push(format!("{var}: `{raw}` is invalid: {error}"));
                None
            }
        }
    }

    /// A value that must be present and non-empty.
    pub fn require(&mut self, var: &str, raw: &Option<String>) -> Option<String> {
        match raw.as_deref().map(str::trim) {
            Some(v) if !v.is_empty() => Some(v.to_owned()),
            _ => {
                self.errors.push(format!("{var}: is required"));
                None
            }
        }
    }

    /// The RabbitMQ URL, required (no `guest:guest` default: RabbitMQ's guest user is for
    /// loopback development only), `amqp://` or `amqps://`.
    pub fn amqp_url(&mut self, raw: &Option<String>) -> Option<String> {
        let url = self.require("AMQP_URL", raw)?;
        let ok = url.starts_with("amqp://") || url.starts_with("amqps://");
        self.check("AMQP_URL", ok, "must start with amqp:// or amqps://").then_some(url)
    }

    /// A database URL this build can talk to.
    pub fn database_url(&mut self, var: &str, raw: &Option<String>) -> Option<String> {
        let url = self.require(var, raw)?;
        let ok = ["postgres://", "postgresql://", "sqlite:"].iter().any(|p| url.starts_with(p));
        self.check(var, ok, "must start with postgres://, postgresql:// or sqlite:").then_some(url)
    }

    /// The Redis URL from REDIS_URL, else `redis://REDIS_HOST`, else the local default.
    pub fn redis_url(&mut self, url: &Option<String>, host: &Option<String>) -> String {
        match (url, host) {
            (Some(url), _) => {
                let ok = is_redis_url(url);
                self.check(
                    "REDIS_URL",
                    ok,
                    "must be a redis:// or rediss:// URL, or a comma-separated list of Redis Cluster seed nodes",
                );
                url.clone()
            }
            (None, Some(host)) => format!("redis://{host}"),
            (None, None) => "redis://127.0.0.1:6379".to_owned(),
        }
    }

    /// Every error so far, or `Ok` when there were none.
    pub fn finish(self) -> Result<(), ConfigError> {
        if self.errors.is_empty() { Ok(()) } else { Err(ConfigError(self.errors)) }
    }
}

/// One or more bad variables, one line each.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration:\n  {}", .0.join("\n  "))]
pub struct ConfigError(pub Vec<String>);

/// A secret value: usable, but never shown by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// How a service declares its durable RabbitMQ queues (`QUEUE_TYPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueType {
    /// Replicated over the cluster's nodes (Raft); redeliveries counted by the broker. The default.
    #[default]
    Quorum,
    /// One node's queue, as declared before `QUEUE_TYPE` existed.
    Classic,
}

impl QueueType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Quorum => "quorum",
            Self::Classic => "classic",
        }
    }
}

impl fmt::Display for QueueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for QueueType {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "quorum" => Ok(Self::Quorum),
            "classic" => Ok(Self::Classic),
            _ => Err("must be `quorum` or `classic`"),
        }
    }
}

/// `QUEUE_TYPE`, for every service that declares durable queues.
#[derive(Debug, Clone, clap::Args)]
pub struct QueueTypeArgs {
    /// `quorum` (the default: replicated, redeliveries counted by the broker) or `classic`: the type of the
    /// durable queues this service declares.
    #[arg(long, env = "QUEUE_TYPE", default_value = "quorum")]
    pub queue_type: String,
}

impl QueueTypeArgs {
    pub fn check(&self, c: &mut Checker) -> Option<QueueType> {
        c.parse("QUEUE_TYPE", &self.queue_type)
    }
}

/// Whether `url` names Redis in a scheme the redis crate connects to: one server, or a
/// comma-separated list of Redis Cluster seed nodes (`redis://a:7000,redis://b:7001`; a list is
/// what selects cluster mode, so one seed is written with a trailing comma).
pub fn is_redis_url(url: &str) -> bool {
    let one = |u: &str| ["redis://", "rediss://", "redis+unix://", "unix://"].iter().any(|p| u.starts_with(p));
    if url.contains(',') {
        let seeds = split_list(url);
        !seeds.is_empty() && seeds.iter().all(|u| u.starts_with("redis://") || u.starts_with("rediss://"))
    } else {
        one(url)
    }
}

/// Comma separated list, blanks dropped.
pub fn split_list(raw: &str) -> Vec<String> {
    raw.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_urls_name_one_server_or_a_list_of_cluster_seeds() {
        assert!(is_redis_url("redis://cache:6379"));
        assert!(is_redis_url("unix:///run/redis.sock"));
        assert!(is_redis_url("redis://a:7000,redis://b:7001"));
        assert!(is_redis_url("redis://a:7000,"));
        assert!(!is_redis_url("cache:6379"));
        assert!(!is_redis_url("redis://a:7000,b:7001"));
        assert!(!is_redis_url(","));
        assert!(!is_redis_url("unix:///a.sock,unix:///b.sock"));
    }

    #[test]
    fn every_bad_variable_is_reported_at_once() {
        let args =
            CommonArgs { service_name: Some("bad name".into()), cell_id: String::new(), log_format: "xml".into() };
        let mut c = Checker::new();
        assert!(args.check("svc", &mut c).is_none());
        c.database_url("DATABASE_URL", &Some("mysql://x".into()));
        c.require("JWT_SECRET", &None);
        let err = c.finish().unwrap_err();
        let vars: Vec<_> = err.0.iter().map(|l| l.split(':').next().unwrap_or_default()).collect();
        assert_eq!(vars, ["SERVICE_NAME", "CELL_ID", "LOG_FORMAT", "DATABASE_URL", "JWT_SECRET"]);
    }

    #[test]
    fn good_values_pass() {
        let args = CommonArgs { service_name: None, cell_id: "eu-1".into(), log_format: "json".into() };
        let mut c = Checker::new();
        let common = args.check("api-gateway", &mut c).expect("valid");
        assert_eq!(common.service_name, "api-gateway");
        assert_eq!(common.log_format, LogFormat::Json);
        assert_eq!(c.finish(), Ok(()));
    }

    #[test]
    fn queue_type_is_quorum_unless_set_to_classic_and_nothing_else() {
        let mut c = Checker::new();
        let quorum = QueueTypeArgs { queue_type: "quorum".into() }.check(&mut c);
        let classic = QueueTypeArgs { queue_type: " classic ".into() }.check(&mut c);
        assert_eq!((quorum, classic), (Some(QueueType::Quorum), Some(QueueType::Classic)));
        assert_eq!(QueueType::default(), QueueType::Quorum);
        assert_eq!(QueueTypeArgs { queue_type: "Quorum".into() }.check(&mut c), None);
        assert_eq!(c.finish().unwrap_err().0, ["QUEUE_TYPE: `Quorum` is invalid: must be `quorum` or `classic`"]);
    }

    #[test]
    fn secrets_do_not_print() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "Secret(***)");
        assert_eq!(split_list(" stun:a:3478, ,stun:b "), ["stun:a:3478", "stun:b"]);
    }
}
