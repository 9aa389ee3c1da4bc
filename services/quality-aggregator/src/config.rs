//! quality-aggregator configuration: every variable also a `--flag`, every bad value reported at once.

use clap::Parser;
use videocall_runtime::config::{Checker, Common, CommonArgs, ConfigError, QueueType, QueueTypeArgs};

/// Routing keys the queue is bound with: samples, and the endings that finalize a summary.
pub const ROUTING_KEYS: [&str; 4] = ["call.quality", "call.ended", "call.missed", "call.rejected"];

#[derive(Debug, Clone, Parser)]
#[command(name = "quality-aggregator", version, about = "Keeps per-call quality summaries from call.quality events")]
pub struct AggregatorArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// PostgreSQL URL (or sqlite:).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// RabbitMQ URL.
    #[arg(long, env = "AMQP_URL")]
    pub amqp_url: Option<String>,
    /// Topic exchange of the domain events (the gateway's EVENTS_EXCHANGE).
    #[arg(long, env = "EVENTS_EXCHANGE", default_value = "videocall.events")]
    pub events_exchange: String,
    /// Durable queue we consume, bound with call.quality, call.ended, call.missed, call.rejected.
    #[arg(long, env = "QUALITY_QUEUE", default_value = "videocall.quality-aggregator")]
    pub quality_queue: String,
    /// Direct exchange of the dead-letter queue (`<queue>.dlq`, bound with the queue's name).
    #[arg(long, env = "DLX_EXCHANGE", default_value = "videocall.dlx")]
    pub dlx_exchange: String,
    /// Unacknowledged messages the broker hands the consumer at once.
    #[arg(long, env = "PREFETCH", default_value = "32")]
    pub prefetch: String,
    /// Retries of a message that keeps meeting a transient fault before it is dead-lettered
    /// (also the quorum queue's `x-delivery-limit`).
    #[arg(long, env = "MAX_RETRIES", default_value = "5")]
    pub max_retries: String,
    #[command(flatten)]
    pub queue_type: QueueTypeArgs,
    /// `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, env = "OPS_LISTEN_ADDR", default_value = "0.0.0.0:9093")]
    pub ops_listen_addr: String,
}

#[derive(Debug, Clone)]
pub struct AggregatorConfig {
    pub common: Common,
    pub database_url: String,
    pub amqp_url: String,
    pub events_exchange: String,
    pub queue: String,
    pub dlx_exchange: String,
    pub prefetch: u16,
    pub max_retries: u32,
    pub queue_type: QueueType,
    pub ops_listen_addr: std::net::SocketAddr,
}

/// AMQP names are short strings (at most 255 bytes); we also refuse blanks.
fn amqp_name(c: &mut Checker, var: &str, raw: &str, max: usize) -> Option<String> {
    let value = raw.trim();
    let ok = !value.is_empty() && value.len() <= max;
    c.check(var, ok, &format!("must be 1-{max} bytes")).then(|| value.to_owned())
}

impl AggregatorArgs {
    pub fn validate(&self) -> Result<AggregatorConfig, ConfigError> {
        let mut c = Checker::new();
        let common = self.common.check("quality-aggregator", &mut c);
        let database_url = c.database_url("DATABASE_URL", &self.database_url);
        let amqp_url = c.amqp_url(&self.amqp_url);
        let events_exchange = amqp_name(&mut c, "EVENTS_EXCHANGE", &self.events_exchange, 255);
        // `<queue>.dlq` must still be a valid name.
        let queue = amqp_name(&mut c, "QUALITY_QUEUE", &self.quality_queue, 251);
        let dlx_exchange = amqp_name(&mut c, "DLX_EXCHANGE", &self.dlx_exchange, 255);
        let prefetch = c.parse::<u16>("PREFETCH", &self.prefetch);
        if let Some(p) = prefetch {
            c.check("PREFETCH", (1..=1000).contains(&p), "must be between 1 and 1000");
        }
        let max_retries = c.parse::<u32>("MAX_RETRIES", &self.max_retries);
        if let Some(m) = max_retries {
            c.check("MAX_RETRIES", m <= 100, "must be between 0 and 100");
        }
        let queue_type = self.queue_type.check(&mut c);
        let ops = c.parse::<std::net::SocketAddr>("OPS_LISTEN_ADDR", &self.ops_listen_addr);
        c.finish()?;
        let missing = || ConfigError(vec!["internal: a checked value is missing".into()]);
        Ok(AggregatorConfig {
            common: common.ok_or_else(missing)?,
            database_url: database_url.ok_or_else(missing)?,
            amqp_url: amqp_url.ok_or_else(missing)?,
            events_exchange: events_exchange.ok_or_else(missing)?,
            queue: queue.ok_or_else(missing)?,
            dlx_exchange: dlx_exchange.ok_or_else(missing)?,
            prefetch: prefetch.ok_or_else(missing)?,
            max_retries: max_retries.ok_or_else(missing)?,
            queue_type: queue_type.ok_or_else(missing)?,
            ops_listen_addr: ops.ok_or_else(missing)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_design() {
        let args = AggregatorArgs::try_parse_from([
            "quality-aggregator",
            "--database-url=postgres://x/y",
            "--amqp-url=amqp://x/%2f",
        ])
        .expect("parse");
        let config = args.validate().expect("valid");
        assert_eq!(config.events_exchange, "videocall.events");
        assert_eq!(config.queue, "videocall.quality-aggregator");
        assert_eq!(config.dlx_exchange, "videocall.dlx");
        assert_eq!((config.prefetch, config.max_retries, config.queue_type), (32, 5, QueueType::Quorum));
        assert_eq!(config.common.service_name, "quality-aggregator");
        assert_eq!(config.ops_listen_addr.port(), 9093);
    }

    #[test]
    fn every_bad_variable_is_named_at_once() {
        let args = AggregatorArgs::try_parse_from([
            "quality-aggregator",
            "--amqp-url=http://broker",
            "--events-exchange= ",
            "--quality-queue=",
            "--prefetch=0",
            "--max-retries=many",
            "--queue-type=stream",
            "--ops-listen-addr=nowhere",
        ])
        .expect("flags parse");
        let err = args.validate().expect_err("invalid");
        let vars: Vec<_> = err.0.iter().map(|l| l.split(':').next().unwrap_or_default()).collect();
        assert_eq!(
            vars,
            [
                "DATABASE_URL",
                "AMQP_URL",
                "EVENTS_EXCHANGE",
                "QUALITY_QUEUE",
                "PREFETCH",
                "MAX_RETRIES",
                "QUEUE_TYPE",
                "OPS_LISTEN_ADDR"
            ],
            "{err}"
        );
    }
}
