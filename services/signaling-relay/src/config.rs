//! signaling-relay configuration: environment variables, each also a `--flag`.

use std::{net::SocketAddr, time::Duration};

use clap::Parser;
use videocall_runtime::{
    auth::JwtKeys,
    config::{Checker, Common, CommonArgs, ConfigError, split_list},
    tokens::TokenArgs,
};
use videocall_signaling::signal_bus::SignalBusConfig;

#[derive(Debug, Clone, Parser)]
#[command(name = "signaling-relay", version, about = "WebSocket signaling edge of Videocall")]
pub struct RelayArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Where HTTP (`/ws`, `/healthz`, `/readyz`) listens.
    #[arg(long, env = "HTTP_LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    pub http_listen_addr: String,
    /// The api-gateway's gRPC URL; call control is forwarded there.
    #[arg(long, env = "GATEWAY_URL", default_value = "http://127.0.0.1:50051")]
    pub gateway_url: String,
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,
    #[arg(long, env = "REDIS_HOST")]
    pub redis_host: Option<String>,
    #[command(flatten)]
    pub tokens: TokenArgs,
    /// Comma separated browser origins allowed to connect (`*` for any). Same-origin pages and
    /// clients that send no Origin are always allowed.
    #[arg(long, env = "ALLOWED_ORIGINS", default_value = "")]
    pub allowed_origins: String,
    #[arg(long, env = "MAX_CONNECTIONS", default_value = "20000")]
    pub max_connections: String,
    #[arg(long, env = "MAX_CONNECTIONS_PER_USER", default_value = "5")]
    pub max_connections_per_user: String,
    /// Largest WebSocket message (and frame) accepted; larger ones close the socket with 1009.
    #[arg(long, env = "MAX_MESSAGE_BYTES", default_value = "65536")]
    pub max_message_bytes: String,
    /// Messages per second a connection may send on average; more closes it with 1008.
    #[arg(long, env = "RATE_LIMIT_PER_SEC", default_value = "50")]
    pub rate_limit_per_sec: String,
    #[arg(long, env = "RATE_LIMIT_BURST", default_value = "200")]
    pub rate_limit_burst: String,
    /// Ping period; a peer silent for three periods is closed.
    #[arg(long, env = "HEARTBEAT_SECS", default_value = "20")]
    pub heartbeat_secs: String,
    #[arg(long, env = "SIGNAL_LOG_CAPACITY", default_value = "256")]
    pub signal_log_capacity: String,
    #[arg(long, env = "SIGNAL_LOG_TTL_SECS", default_value = "3600")]
    pub signal_log_ttl_secs: String,
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value = "10")]
    pub shutdown_grace_secs: String,
    /// How often the relay renews the presence lease (twice this) of every user connected here;
    /// the sweeper ends a call whose party's lease ran out more than PARTY_GRACE_SECS ago.
    #[arg(long, env = "PRESENCE_SECS", default_value = "5")]
    pub presence_secs: String,
    /// `/healthz`, `/readyz` and `/metrics` on an address of their own (e.g. `0.0.0.0:9095`, for
    /// the operators' network only); then `/metrics` is not on the public HTTP port. Empty: all
    /// three on HTTP_LISTEN_ADDR.
    #[arg(long, env = "OPS_LISTEN_ADDR", default_value = "")]
    pub ops_listen_addr: String,
}

#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub common: Common,
    pub http_listen_addr: SocketAddr,
    pub gateway_url: String,
    pub tokens: JwtKeys,
    pub allowed_origins: Vec<String>,
    pub max_connections: usize,
    pub max_connections_per_user: usize,
    pub max_message_bytes: usize,
    pub rate_limit_per_sec: u32,
    pub rate_limit_burst: u32,
    pub heartbeat: Duration,
    pub signal_bus: SignalBusConfig,
    pub shutdown_grace: Duration,
    pub presence_interval: Duration,
    pub ops_listen_addr: Option<SocketAddr>,
}

impl RelayArgs {
    pub fn validate(&self) -> Result<RelayConfig, ConfigError> {
        let mut c = Checker::new();
        let common = self.common.check("signaling-relay", &mut c);
        let addr = c.parse::<SocketAddr>("HTTP_LISTEN_ADDR", &self.http_listen_addr);
        let gateway_ok = self.gateway_url.starts_with("http://") || self.gateway_url.starts_with("https://");
        c.check("GATEWAY_URL", gateway_ok, "must start with http:// or https://");
        let redis_url = c.redis_url(&self.redis_url, &self.redis_host);
        let tokens = self.tokens.check(&mut c, true);
        let mut number = |var: &str, raw: &str, range: std::ops::RangeInclusive<u64>| {
            let v = c.parse::<u64>(var, raw)?;
            c.check(var, range.contains(&v), &format!("must be between {} and {}", range.start(), range.end()))
                .then_some(v)
        };
        let max_connections = number("MAX_CONNECTIONS", &self.max_connections, 1..=1_000_000);
        let per_user = number("MAX_CONNECTIONS_PER_USER", &self.max_connections_per_user, 1..=100);
        let max_message = number("MAX_MESSAGE_BYTES", &self.max_message_bytes, 1024..=1024 * 1024);
        let rate = number("RATE_LIMIT_PER_SEC", &self.rate_limit_per_sec, 1..=10_000);
        let burst = number("RATE_LIMIT_BURST", &self.rate_limit_burst, 1..=100_000);
        let heartbeat = number("HEARTBEAT_SECS", &self.heartbeat_secs, 1..=300);
        let log_capacity = number("SIGNAL_LOG_CAPACITY", &self.signal_log_capacity, 1..=10_000);
        let log_ttl = number("SIGNAL_LOG_TTL_SECS", &self.signal_log_ttl_secs, 1..=86_400);
        let grace = number("SHUTDOWN_GRACE_SECS", &self.shutdown_grace_secs, 0..=600);
        let presence = number("PRESENCE_SECS", &self.presence_secs, 1..=60);
        let origins = split_list(&self.allowed_origins);
        c.check(
            "ALLOWED_ORIGINS",
            origins.iter().all(|o| is_origin(o)),
            "every entry must be `*` or an origin such as https://support.example.com (scheme, host and port only)",
        );
        let ops_listen_addr = match self.ops_listen_addr.trim() {
            "" => Some(None),
            raw => c.parse::<SocketAddr>("OPS_LISTEN_ADDR", raw).map(Some),
        };
        c.finish()?;
        let missing = || ConfigError(vec!["internal: a checked value is missing".into()]);
        let common = common.ok_or_else(missing)?;
        Ok(RelayConfig {
            http_listen_addr: addr.ok_or_else(missing)?,
            gateway_url: self.gateway_url.clone(),
            tokens: tokens.ok_or_else(missing)?,
            allowed_origins: origins,
            max_connections: max_connections.ok_or_else(missing)? as usize,
            max_connections_per_user: per_user.ok_or_else(missing)? as usize,
            max_message_bytes: max_message.ok_or_else(missing)? as usize,
            rate_limit_per_sec: rate.ok_or_else(missing)? as u32,
            rate_limit_burst: burst.ok_or_else(missing)? as u32,
            heartbeat: Duration::from_secs(heartbeat.ok_or_else(missing)?),
            signal_bus: SignalBusConfig {
                redis_url,
                cell_id: common.cell_id.clone(),
                log_capacity: log_capacity.ok_or_else(missing)? as usize,
                log_ttl: Duration::from_secs(log_ttl.ok_or_else(missing)?),
            },
            shutdown_grace: Duration::from_secs(grace.ok_or_else(missing)?),
            presence_interval: Duration::from_secs(presence.ok_or_else(missing)?),
            ops_listen_addr: ops_listen_addr.ok_or_else(missing)?,
            common,
        })
    }
}

/// `*`, or what a browser sends as `Origin`: `http(s)://host[:port]`, no path, no trailing slash.
fn is_origin(entry: &str) -> bool {
    if entry == "*" {
        return true;
    }
    let Some(rest) = entry.strip_prefix("https://").or_else(|| entry.strip_prefix("http://")) else {
        return false;
    };
    !rest.is_empty() && rest.chars().all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '-' | ':' | '[' | ']'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_are_all_named() {
        let args = RelayArgs::try_parse_from([
            "signaling-relay",
            "--jwt-secret=short",
            "--gateway-url=grpc://x",
            "--max-message-bytes=10",
            "--rate-limit-per-sec=zero",
        ])
        .expect("flags");
        let err = args.validate().unwrap_err();
        let vars: Vec<_> = err.0.iter().filter_map(|l| l.split(':').next()).collect();
        assert_eq!(vars, ["GATEWAY_URL", "JWT_SECRET", "MAX_MESSAGE_BYTES", "RATE_LIMIT_PER_SEC"]);
    }

    #[test]
    fn defaults_are_valid() {
        let args = RelayArgs::try_parse_from(["signaling-relay", "--jwt-secret=0123456789abcdef0123456789abcdef"])
            .expect("flags");
        let config = args.validate().expect("valid");
        assert_eq!(config.max_message_bytes, 64 * 1024);
        assert_eq!(config.http_listen_addr.port(), 8080);
    }

    #[test]
    fn allowed_origins_must_be_origins() {
        for good in ["*", "https://support.example.com", "http://127.0.0.1:8080", "https://[::1]:443"] {
            assert!(is_origin(good), "{good}");
        }
        for bad in [
            "",
            "support.example.com",
            "https://example.com/",
            "https://example.com/app",
            "${ALLOWED_ORIGINS:-}",
            "ws://x",
        ] {
            assert!(!is_origin(bad), "{bad}");
        }
        let args = RelayArgs::try_parse_from([
            "relay",
            "--jwt-secret=0123456789abcdef0123456789abcdef",
            "--allowed-origins=https://a.example,https://b.example/",
        ])
        .expect("flags");
        let err = args.validate().unwrap_err();
        assert_eq!(err.0.len(), 1, "{err:?}");
        assert!(err.0[0].starts_with("ALLOWED_ORIGINS:"), "{err:?}");
    }
}
