//! quality-aggregator configuration: every variable also a `--flag`, every bad value reported at once.

use clap::Parser;
use videocall_runtime::config::{Checker, Common, CommonArgs, ConfigError, QueueType, QueueTypeArgs};

use crate::alerts::AlertPolicy;

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
    /// Redis (or Redis Cluster seeds) of the signal bus, where `quality.alert` frames reach the
    /// parties' relays; wins over REDIS_HOST.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,
    /// Redis `host:port` when REDIS_URL is unset (default 127.0.0.1:6379).
    #[arg(long, env = "REDIS_HOST")]
    pub redis_host: Option<String>,
    /// A sample is poor when its MOS is below this (1-4.5).
    #[arg(long, env = "QUALITY_ALERT_MOS", default_value = "3.1")]
    pub alert_mos: String,
    /// ... or when its packet loss is above this percentage (0-100).
    #[arg(long, env = "QUALITY_ALERT_LOSS_PERCENT", default_value = "5")]
    pub alert_loss_percent: String,
    /// A media path's alert opens when this many samples in a row are poor, and ends when as many
    /// in a row are good (2-20).
    #[arg(long, env = "QUALITY_ALERT_SAMPLES", default_value = "3")]
    pub alert_samples: String,
    /// ... all reported within this many seconds (1-300): samples further apart are not judged.
    #[arg(long, env = "QUALITY_ALERT_WINDOW_SECS", default_value = "10")]
    pub alert_window_secs: String,
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
    pub redis_url: String,
    pub alerts: AlertPolicy,
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
        let redis_url = c.redis_url(&self.redis_url, &self.redis_host);
        let alert_mos = c.parse::<f64>("QUALITY_ALERT_MOS", &self.alert_mos);
        if let Some(m) = alert_mos {
            c.check("QUALITY_ALERT_MOS", (1.0..=4.5).contains(&m), "must be between 1 and 4.5");
        }
        let alert_loss = c.parse::<f64>("QUALITY_ALERT_LOSS_PERCENT", &self.alert_loss_percent);
        if let Some(l) = alert_loss {
            c.check("QUALITY_ALERT_LOSS_PERCENT", (0.0..=100.0).contains(&l), "must be between 0 and 100");
        }
        let alert_samples = c.parse::<usize>("QUALITY_ALERT_SAMPLES", &self.alert_samples);
        if let Some(n) = alert_samples {
            c.check("QUALITY_ALERT_SAMPLES", (2..=20).contains(&n), "must be between 2 and 20");
        }
        let alert_window = c.parse::<u64>("QUALITY_ALERT_WINDOW_SECS", &self.alert_window_secs);
        if let Some(w) = alert_window {
            c.check("QUALITY_ALERT_WINDOW_SECS", (1..=300).contains(&w), "must be between 1 and 300");
        }
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
            redis_url,
            alerts: AlertPolicy {
                mos_below: alert_mos.ok_or_else(missing)?,
                loss_above: alert_loss.ok_or_else(missing)?,
                samples: alert_samples.ok_or_else(missing)?,
                window: std::time::Duration::from_secs(alert_window.ok_or_else(missing)?),
            },
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
        assert_eq!(config.redis_url, "redis://127.0.0.1:6379");
        assert_eq!(config.alerts, AlertPolicy::default());
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
            "--redis-url=http://redis",
            "--alert-mos=5",
            "--alert-loss-percent=-1",
            "--alert-samples=1",
            "--alert-window-secs=0",
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
                "REDIS_URL",
                "QUALITY_ALERT_MOS",
                "QUALITY_ALERT_LOSS_PERCENT",
                "QUALITY_ALERT_SAMPLES",
                "QUALITY_ALERT_WINDOW_SECS",
                "OPS_LISTEN_ADDR"
            ],
            "{err}"
        );
    }
}
