//! api-gateway configuration: environment variables, each also a `--flag`; `--help` lists them.

use std::{net::SocketAddr, time::Duration};

use clap::Parser;
use videocall_domain::CallType;
use videocall_runtime::{
    auth::JwtKeys,
    config::{Checker, Common, CommonArgs, ConfigError, QueueTypeArgs},
    ice::{IceArgs, IceConfig},
    tokens::TokenArgs,
};
use videocall_signaling::signal_bus::SignalBusConfig;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "api-gateway",
    version,
    about = "gRPC videocall.v1.CallService: call lifecycle, history and ICE servers"
)]
pub struct GatewayArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// PostgreSQL URL (or sqlite: for a single process).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// RabbitMQ URL the outbox relay publishes to.
    #[arg(long, env = "AMQP_URL")]
    pub amqp_url: Option<String>,
    /// Redis URL of the signal bus (or a host name with REDIS_HOST).
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,
    #[arg(long, env = "REDIS_HOST")]
    pub redis_host: Option<String>,
    /// Signals kept per call for replay.
    #[arg(long, env = "SIGNAL_LOG_CAPACITY", default_value = "256")]
    pub signal_log_capacity: String,
    /// How long a call's signal log lives after its last signal.
    #[arg(long, env = "SIGNAL_LOG_TTL_SECS", default_value = "3600")]
    pub signal_log_ttl_secs: String,
    /// Where gRPC listens.
    #[arg(long, env = "GRPC_LISTEN_ADDR", default_value = "0.0.0.0:50051")]
    pub grpc_listen_addr: String,
    /// HS256 secret of the bearer tokens (at least 16 bytes).
    #[command(flatten)]
    pub tokens: TokenArgs,
    #[command(flatten)]
    pub ice: IceArgs,
    /// Ring timeout of every call type without its own.
    #[arg(long, env = "RING_TIMEOUT_SECS", default_value = "45")]
    pub ring_timeout_secs: String,
    #[arg(long, env = "RING_TIMEOUT_SUPPORT_SECS")]
    pub ring_timeout_support_secs: Option<String>,
    #[arg(long, env = "RING_TIMEOUT_SALES_SECS")]
    pub ring_timeout_sales_secs: Option<String>,
    #[arg(long, env = "RING_TIMEOUT_CONSULT_SECS")]
    pub ring_timeout_consult_secs: Option<String>,
    /// How long a desk call rings an agent before it is offered to the next one.
    #[arg(long, env = "AGENT_RING_SECS", default_value = "20")]
    pub agent_ring_secs: String,
    /// How long a desk call may wait for an agent's answer before it is missed (`no_agent`).
    #[arg(long, env = "QUEUE_TIMEOUT_SECS", default_value = "300")]
    pub queue_timeout_secs: String,
    /// Topic exchange of the domain events.
    #[arg(long, env = "EVENTS_EXCHANGE", default_value = "videocall.events")]
    pub events_exchange: String,
    #[arg(long, env = "OUTBOX_BATCH_SIZE", default_value = "100")]
    pub outbox_batch_size: String,
    /// How often the outbox is polled for rows other replicas wrote.
    #[arg(long, env = "OUTBOX_POLL_MS", default_value = "500")]
    pub outbox_poll_ms: String,
    /// `/healthz`, `/readyz` and `/metrics` over HTTP; empty turns it off.
    #[arg(long, env = "OPS_LISTEN_ADDR", default_value = "0.0.0.0:9090")]
    pub ops_listen_addr: String,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value = "20")]
    pub shutdown_grace_secs: String,
    /// Shortest time between two quality samples (UpdateCallQuality) of one reporter in one call;
    /// sooner ones get RESOURCE_EXHAUSTED. 0 turns it off.
    #[arg(long, env = "QUALITY_MIN_INTERVAL_MS", default_value = "1000")]
    pub quality_min_interval_ms: String,
    /// SubscribeToSignals streams one user may hold open at once (per replica).
    #[arg(long, env = "MAX_STREAMS_PER_USER", default_value = "5")]
    pub max_streams_per_user: String,
    /// Events no queue is bound for are kept in `<EVENTS_EXCHANGE>.unrouted`, at most this many
    /// (the oldest dropped first)...
    #[arg(long, env = "UNROUTED_MAX_MESSAGES", default_value = "100000")]
    pub unrouted_max_messages: String,
    /// ...and at most this long.
    #[arg(long, env = "UNROUTED_TTL_SECS", default_value = "86400")]
    pub unrouted_ttl_secs: String,
    /// ...in a queue of this type.
    #[command(flatten)]
    pub queue_type: QueueTypeArgs,
    /// Serve gRPC server reflection (lists every RPC to anyone who asks; for grpcurl in
    /// development).
    #[arg(long, env = "GRPC_REFLECTION", default_value_t = false, action = clap::ArgAction::Set)]
    pub grpc_reflection: bool,
    /// `users-call-agents`: users may call agents only (and take support offers); agents and
    /// services may call anyone. `open`: anyone may call anyone.
    #[arg(long, env = "CALL_POLICY", default_value = "users-call-agents")]
    pub call_policy: String,
    /// Calls one caller may start per minute (per gateway replica); more get RESOURCE_EXHAUSTED.
    #[arg(long, env = "INITIATE_CALLS_PER_MIN", default_value = "10")]
    pub initiate_calls_per_min: String,
}

/// Ring timeouts per call type, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingTimeouts {
    pub support: i32,
    pub sales: i32,
    pub consult: i32,
}

impl RingTimeouts {
    pub fn uniform(secs: i32) -> Self {
        Self { support: secs, sales: secs, consult: secs }
    }

    pub fn for_type(&self, call_type: CallType) -> i32 {
        match call_type {
            CallType::Support => self.support,
            CallType::Sales => self.sales,
            CallType::Consult => self.consult,
        }
    }
}

/// The support desks' timings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeskTimeouts {
    /// How long a desk call rings one agent (`AGENT_RING_SECS`).
    pub agent_ring: Duration,
    /// How long a desk call may go unanswered in all (`QUEUE_TIMEOUT_SECS`).
    pub queue_timeout: Duration,
}

impl Default for DeskTimeouts {
    fn default() -> Self {
        Self { agent_ring: Duration::from_secs(20), queue_timeout: Duration::from_secs(300) }
    }
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub common: Common,
    pub database_url: String,
    pub amqp_url: String,
    pub signal_bus: SignalBusConfig,
    pub grpc_listen_addr: SocketAddr,
    pub tokens: JwtKeys,
    pub ice: IceConfig,
    pub ring_timeouts: RingTimeouts,
    pub desk: DeskTimeouts,
    pub events_exchange: String,
    pub outbox_batch_size: u64,
    pub outbox_poll_interval: Duration,
    pub shutdown_grace: Duration,
    /// Where the operations endpoint listens; None: not served.
    pub ops_listen_addr: Option<SocketAddr>,
    pub call_policy: crate::CallPolicy,
    pub grpc_reflection: bool,
    pub unrouted: videocall_messaging::amqp::UnroutedRetention,
}

impl GatewayArgs {
    /// Checks every value; the error lists each bad variable on its own line.
    pub fn validate(&self) -> Result<GatewayConfig, ConfigError> {
        let mut c = Checker::new();
        let common = self.common.check("api-gateway", &mut c);
        let database_url = c.database_url("DATABASE_URL", &self.database_url);
        let amqp_url = c.amqp_url(&self.amqp_url);
        let redis_url = Some(c.redis_url(&self.redis_url, &self.redis_host));
        let log_capacity = c.parse::<usize>("SIGNAL_LOG_CAPACITY", &self.signal_log_capacity);
        if let Some(cap) = log_capacity {
            c.check("SIGNAL_LOG_CAPACITY", (1..=10_000).contains(&cap), "must be between 1 and 10000");
        }
        let log_ttl = c.parse::<u64>("SIGNAL_LOG_TTL_SECS", &self.signal_log_ttl_secs);
        let grpc_listen_addr = c.parse("GRPC_LISTEN_ADDR", &self.grpc_listen_addr);
        let tokens = self.tokens.check(&mut c, true);
        let ice = self.ice.check(&mut c);
        let ring = |c: &mut Checker, var: &str, raw: &str| {
            let secs = c.parse::<i32>(var, raw)?;
            c.check(var, (5..=600).contains(&secs), "must be between 5 and 600 seconds").then_some(secs)
        };
        let default_ring = ring(&mut c, "RING_TIMEOUT_SECS", &self.ring_timeout_secs);
        let mut per_type = |var: &str, raw: &Option<String>| match raw {
            Some(raw) => ring(&mut c, var, raw),
            None => default_ring,
        };
        let support = per_type("RING_TIMEOUT_SUPPORT_SECS", &self.ring_timeout_support_secs);
        let sales = per_type("RING_TIMEOUT_SALES_SECS", &self.ring_timeout_sales_secs);
        let consult = per_type("RING_TIMEOUT_CONSULT_SECS", &self.ring_timeout_consult_secs);
        c.check("EVENTS_EXCHANGE", !self.events_exchange.trim().is_empty(), "must not be empty");
        let batch = c.parse::<u64>("OUTBOX_BATCH_SIZE", &self.outbox_batch_size);
        if let Some(batch) = batch {
            c.check("OUTBOX_BATCH_SIZE", (1..=1000).contains(&batch), "must be between 1 and 1000");
        }
        let poll = c.parse::<u64>("OUTBOX_POLL_MS", &self.outbox_poll_ms);
        let grace = c.parse::<u64>("SHUTDOWN_GRACE_SECS", &self.shutdown_grace_secs);
        let ops_listen_addr = match self.ops_listen_addr.trim() {
            "" => None,
            raw => c.parse::<SocketAddr>("OPS_LISTEN_ADDR", raw),
        };
        let open = match self.call_policy.trim() {
            "users-call-agents" => Some(false),
            "open" => Some(true),
            _ => {
                c.check("CALL_POLICY", false, "must be `users-call-agents` or `open`");
                None
            }
        };
        let per_minute = c.parse::<u32>("INITIATE_CALLS_PER_MIN", &self.initiate_calls_per_min);
        let quality_ms = c.parse::<u64>("QUALITY_MIN_INTERVAL_MS", &self.quality_min_interval_ms);
        if let Some(ms) = quality_ms {
            c.check("QUALITY_MIN_INTERVAL_MS", ms <= 60_000, "must be at most 60000");
        }
        let max_streams = c.parse::<usize>("MAX_STREAMS_PER_USER", &self.max_streams_per_user);
        if let Some(n) = max_streams {
            c.check("MAX_STREAMS_PER_USER", (1..=1000).contains(&n), "must be between 1 and 1000");
        }
        let unrouted_max = c.parse::<i64>("UNROUTED_MAX_MESSAGES", &self.unrouted_max_messages);
        if let Some(n) = unrouted_max {
            c.check("UNROUTED_MAX_MESSAGES", (1..=100_000_000).contains(&n), "must be between 1 and 100000000");
        }
        let unrouted_ttl = c.parse::<u64>("UNROUTED_TTL_SECS", &self.unrouted_ttl_secs);
        if let Some(t) = unrouted_ttl {
            c.check("UNROUTED_TTL_SECS", (1..=30 * 86_400).contains(&t), "must be between 1 and 2592000");
        }
        let queue_type = self.queue_type.check(&mut c);
        let agent_ring = c.parse::<u64>("AGENT_RING_SECS", &self.agent_ring_secs);
        if let Some(n) = agent_ring {
            c.check("AGENT_RING_SECS", (1..=600).contains(&n), "must be between 1 and 600");
        }
        let queue_timeout = c.parse::<u64>("QUEUE_TIMEOUT_SECS", &self.queue_timeout_secs);
        if let Some(n) = queue_timeout {
            c.check("QUEUE_TIMEOUT_SECS", (1..=86_400).contains(&n), "must be between 1 and 86400");
        }
        if let Some(n) = per_minute {
            c.check("INITIATE_CALLS_PER_MIN", (1..=100_000).contains(&n), "must be between 1 and 100000");
        }
        c.finish()?;
        let missing = || ConfigError(vec!["internal: a checked value is missing".into()]);
        Ok(GatewayConfig {
            grpc_reflection: self.grpc_reflection,
            unrouted: videocall_messaging::amqp::UnroutedRetention {
                max_messages: unrouted_max.ok_or_else(missing)?,
                ttl: Duration::from_secs(unrouted_ttl.ok_or_else(missing)?),
                queue_type: queue_type.ok_or_else(missing)?,
            },
            call_policy: crate::CallPolicy {
                users_may_call_users: open.ok_or_else(missing)?,
                initiate_per_minute: per_minute.ok_or_else(missing)?,
                quality_min_interval: Duration::from_millis(quality_ms.ok_or_else(missing)?),
                max_streams_per_user: max_streams.ok_or_else(missing)?,
            },
            common: common.clone().ok_or_else(missing)?,
            database_url: database_url.ok_or_else(missing)?,
            amqp_url: amqp_url.ok_or_else(missing)?,
            signal_bus: SignalBusConfig {
                redis_url: redis_url.ok_or_else(missing)?,
                cell_id: common.as_ref().map(|c| c.cell_id.clone()).ok_or_else(missing)?,
                log_capacity: log_capacity.ok_or_else(missing)?,
                log_ttl: Duration::from_secs(log_ttl.ok_or_else(missing)?.max(1)),
            },
            grpc_listen_addr: grpc_listen_addr.ok_or_else(missing)?,
            tokens: tokens.ok_or_else(missing)?,
            ice: ice.ok_or_else(missing)?,
            ring_timeouts: RingTimeouts {
                support: support.ok_or_else(missing)?,
                sales: sales.ok_or_else(missing)?,
                consult: consult.ok_or_else(missing)?,
            },
            desk: DeskTimeouts {
                agent_ring: Duration::from_secs(agent_ring.ok_or_else(missing)?),
                queue_timeout: Duration::from_secs(queue_timeout.ok_or_else(missing)?),
            },
            events_exchange: self.events_exchange.trim().to_owned(),
            outbox_batch_size: batch.ok_or_else(missing)?,
            outbox_poll_interval: Duration::from_millis(poll.ok_or_else(missing)?.max(10)),
            shutdown_grace: Duration::from_secs(grace.ok_or_else(missing)?),
            ops_listen_addr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> GatewayArgs {
        let mut argv = vec!["api-gateway"];
        argv.extend_from_slice(extra);
        GatewayArgs::try_parse_from(argv).expect("flags parse")
    }

    #[test]
    fn valid_flags_give_a_typed_config() {
        let config = args(&[
            "--database-url=postgres://localhost/test",
            "--jwt-secret=0123456789abcdef0123456789abcdef",
            "--turn-server=turn:127.0.0.1:3478",
            "--turn-secret=s",
            "--ring-timeout-sales-secs=30",
            "--amqp-url=amqp://videocall:secret@127.0.0.1:5672/%2f",
        ])
        .validate()
        .expect("valid");
        assert_eq!(config.ring_timeouts, RingTimeouts { support: 45, sales: 30, consult: 45 });
        assert_eq!(config.ice.turn_urls, ["turn:127.0.0.1:3478"]);
        assert_eq!(config.grpc_listen_addr.port(), 50051);
    }

    #[test]
    fn every_bad_variable_is_named() {
        let err = args(&[
            "--database-url=mysql://x",
            "--jwt-secret=short",
            "--turn-server=http://nope",
            "--ring-timeout-secs=1",
            "--grpc-listen-addr=nowhere",
            "--amqp-url=http://x",
        ])
        .validate()
        .unwrap_err();
        let vars: Vec<_> = err.0.iter().filter_map(|l| l.split(':').next()).collect();
        for var in [
            "DATABASE_URL",
            "JWT_SECRET",
            "TURN_SERVER",
            "TURN_SECRET",
            "RING_TIMEOUT_SECS",
            "GRPC_LISTEN_ADDR",
            "AMQP_URL",
        ] {
            assert!(vars.contains(&var), "{var} missing from {vars:?}");
        }
    }

    #[test]
    fn missing_required_values_are_reported() {
        let err = args(&[]).validate().unwrap_err();
        assert!(err.0.iter().any(|l| l.starts_with("DATABASE_URL: is required")));
        assert!(err.0.iter().any(|l| l.starts_with("JWT_PUBLIC_KEYS: is required (or JWT_SECRET")));
        assert!(err.0.iter().any(|l| l.starts_with("AMQP_URL: is required")), "no guest:guest default");
    }
}
