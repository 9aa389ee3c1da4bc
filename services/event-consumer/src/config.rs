//! event-consumer configuration: every variable also a `--flag`, every bad value reported at once.

use std::time::Duration;

use clap::Parser;
use videocall_runtime::config::{Checker, Common, CommonArgs, ConfigError, QueueType, QueueTypeArgs};

#[derive(Debug, Clone, Parser)]
#[command(name = "event-consumer", version, about = "Consumes UserOffline and SupportTicketCreated from RabbitMQ")]
pub struct ConsumerArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// PostgreSQL URL (or sqlite:).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// RabbitMQ URL.
    #[arg(long, env = "AMQP_URL")]
    pub amqp_url: Option<String>,
    /// Redis URL for the customers' notices; wins over REDIS_HOST.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,
    /// Redis host (`host` or `host:port`) when REDIS_URL is unset.
    #[arg(long, env = "REDIS_HOST", default_value = "127.0.0.1")]
    pub redis_host: String,
    /// Upstream topic exchange of UserOffline.
    #[arg(long, env = "USER_OFFLINE_EXCHANGE", default_value = "presence.events")]
    pub user_offline_exchange: String,
    #[arg(long, env = "USER_OFFLINE_ROUTING_KEY", default_value = "user.offline")]
    pub user_offline_routing_key: String,
    #[arg(long, env = "USER_OFFLINE_QUEUE", default_value = "videocall.user-offline")]
    pub user_offline_queue: String,
    /// Upstream topic exchange of SupportTicketCreated.
    #[arg(long, env = "TICKET_CREATED_EXCHANGE", default_value = "support.events")]
    pub ticket_created_exchange: String,
    #[arg(long, env = "TICKET_CREATED_ROUTING_KEY", default_value = "ticket.created")]
    pub ticket_created_routing_key: String,
    #[arg(long, env = "TICKET_CREATED_QUEUE", default_value = "videocall.ticket-created")]
    pub ticket_created_queue: String,
    /// Direct exchange of the dead-letter queues (`<queue>.dlq`, bound with the queue's name).
    #[arg(long, env = "DLX_EXCHANGE", default_value = "videocall.dlx")]
    pub dlx_exchange: String,
    /// Unacknowledged messages the broker hands each consumer at once.
    #[arg(long, env = "PREFETCH", default_value = "16")]
    pub prefetch: String,
    /// Attempts at a message that keeps meeting a transient fault before it is dead-lettered
    /// (also the quorum queues' `x-delivery-limit`).
    #[arg(long, env = "MAX_RETRIES", default_value = "5")]
    pub max_retries: String,
    #[command(flatten)]
    pub queue_type: QueueTypeArgs,
    /// How long a support offer stays open.
    #[arg(long, env = "SUPPORT_OFFER_TTL_SECS", default_value = "900")]
    pub support_offer_ttl_secs: String,
    /// `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, env = "OPS_LISTEN_ADDR", default_value = "0.0.0.0:9092")]
    pub ops_listen_addr: String,
}

/// One consumed queue: where it is bound and what it is called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueBinding {
    pub exchange: String,
    pub routing_key: String,
    pub queue: String,
}

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub common: Common,
    pub database_url: String,
    pub amqp_url: String,
    pub redis_url: String,
    pub user_offline: QueueBinding,
    pub ticket_created: QueueBinding,
    pub dlx_exchange: String,
    pub prefetch: u16,
    pub max_retries: u32,
    pub queue_type: QueueType,
    pub support_offer_ttl: Duration,
    pub ops_listen_addr: std::net::SocketAddr,
}

/// AMQP names are short strings (at most 255 bytes); we also refuse blanks.
fn amqp_name(c: &mut Checker, var: &str, raw: &str) -> Option<String> {
    let value = raw.trim();
    c.check(var, !value.is_empty() && value.len() <= 255, "must be 1-255 bytes").then(|| value.to_owned())
}

fn binding(c: &mut Checker, prefix: &str, exchange: &str, key: &str, queue: &str) -> Option<QueueBinding> {
    let exchange = amqp_name(c, &format!("{prefix}_EXCHANGE"), exchange);
    let routing_key = amqp_name(c, &format!("{prefix}_ROUTING_KEY"), key);
    let queue = amqp_name(c, &format!("{prefix}_QUEUE"), queue);
    if let Some(q) = &queue {
        // `<queue>.dlq` must still be a valid name.
        c.check(&format!("{prefix}_QUEUE"), q.len() <= 251, "must leave room for the `.dlq` suffix (≤ 251 bytes)");
    }
    Some(QueueBinding { exchange: exchange?, routing_key: routing_key?, queue: queue? })
}

impl ConsumerArgs {
    pub fn validate(&self) -> Result<ConsumerConfig, ConfigError> {
        let mut c = Checker::new();
        let common = self.common.check("event-consumer", &mut c);
        let database_url = c.database_url("DATABASE_URL", &self.database_url);
        let amqp_url = c.amqp_url(&self.amqp_url);
        let redis_url = match self.redis_url.as_deref().map(str::trim).filter(|u| !u.is_empty()) {
            Some(url) => {
                let ok = videocall_runtime::config::is_redis_url(url);
                c.check("REDIS_URL", ok, "must start with redis://, rediss:// or unix://").then(|| url.to_owned())
            }
            None => {
                let host = self.redis_host.trim();
                let ok = !host.is_empty() && !host.contains('/') && !host.contains(char::is_whitespace);
                c.check("REDIS_HOST", ok, "must be `host` or `host:port`").then(|| {
                    if host.contains(':') { format!("redis://{host}") } else { format!("redis://{host}:6379") }
                })
            }
        };
        let user_offline = binding(
            &mut c,
            "USER_OFFLINE",
            &self.user_offline_exchange,
            &self.user_offline_routing_key,
            &self.user_offline_queue,
        );
        let ticket_created = binding(
            &mut c,
            "TICKET_CREATED",
            &self.ticket_created_exchange,
            &self.ticket_created_routing_key,
            &self.ticket_created_queue,
        );
        if let (Some(a), Some(b)) = (&user_offline, &ticket_created) {
            c.check("TICKET_CREATED_QUEUE", a.queue != b.queue, "must differ from USER_OFFLINE_QUEUE");
        }
        let dlx_exchange = amqp_name(&mut c, "DLX_EXCHANGE", &self.dlx_exchange);
        let prefetch = c.parse::<u16>("PREFETCH", &self.prefetch);
        if let Some(p) = prefetch {
            c.check("PREFETCH", (1..=1000).contains(&p), "must be between 1 and 1000");
        }
        let max_retries = c.parse::<u32>("MAX_RETRIES", &self.max_retries);
        if let Some(m) = max_retries {
            c.check("MAX_RETRIES", m <= 100, "must be between 0 and 100");
        }
        let queue_type = self.queue_type.check(&mut c);
        let ttl = c.parse::<u64>("SUPPORT_OFFER_TTL_SECS", &self.support_offer_ttl_secs);
        if let Some(t) = ttl {
            c.check("SUPPORT_OFFER_TTL_SECS", (60..=7 * 86_400).contains(&t), "must be between 60 and 604800");
        }
        let ops = c.parse::<std::net::SocketAddr>("OPS_LISTEN_ADDR", &self.ops_listen_addr);
        c.finish()?;
        let Some(ops_listen_addr) = ops else {
            return Err(ConfigError(vec!["internal: a checked value is missing".into()]));
        };
        match (
            common,
            database_url,
            amqp_url,
            redis_url,
            user_offline,
            ticket_created,
            dlx_exchange,
            prefetch,
            max_retries,
            queue_type,
            ttl,
        ) {
            (
                Some(common),
                Some(database_url),
                Some(amqp_url),
                Some(redis_url),
                Some(user_offline),
                Some(ticket_created),
                Some(dlx_exchange),
                Some(prefetch),
                Some(max_retries),
                Some(queue_type),
                Some(ttl),
            ) => Ok(ConsumerConfig {
                common,
                database_url,
                amqp_url,
                redis_url,
                user_offline,
                ticket_created,
                dlx_exchange,
                prefetch,
                max_retries,
                queue_type,
                support_offer_ttl: Duration::from_secs(ttl),
                ops_listen_addr,
            }),
            _ => Err(ConfigError(vec!["internal: a checked value is missing".into()])),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AMQP: &str = "--amqp-url=amqp://videocall:secret@rabbitmq:5672/%2f";

    #[test]
    fn the_broker_url_has_no_default() {
        let args = ConsumerArgs::try_parse_from(["event-consumer", "--database-url=postgres://x/y"]).expect("parse");
        assert_eq!(args.validate().unwrap_err().0, ["AMQP_URL: is required"]);
    }

    #[test]
    fn defaults_follow_the_design() {
        let args =
            ConsumerArgs::try_parse_from(["event-consumer", "--database-url=postgres://x/y", AMQP]).expect("parse");
        let config = args.validate().expect("valid");
        assert_eq!(config.user_offline.exchange, "presence.events");
        assert_eq!(config.user_offline.routing_key, "user.offline");
        assert_eq!(config.user_offline.queue, "videocall.user-offline");
        assert_eq!(config.ticket_created.exchange, "support.events");
        assert_eq!(config.ticket_created.routing_key, "ticket.created");
        assert_eq!(config.ticket_created.queue, "videocall.ticket-created");
        assert_eq!(config.dlx_exchange, "videocall.dlx");
        assert_eq!(config.max_retries, 5);
        assert_eq!(config.queue_type, QueueType::Quorum);
        assert_eq!(config.support_offer_ttl, Duration::from_secs(900));
        assert_eq!(config.redis_url, "redis://127.0.0.1:6379");
        assert_eq!(config.common.service_name, "event-consumer");
    }

    #[test]
    fn every_bad_variable_is_named_at_once() {
        let args = ConsumerArgs::try_parse_from([
            "event-consumer",
            "--amqp-url=http://broker",
            "--redis-url=http://redis",
            "--user-offline-queue= ",
            "--prefetch=0",
            "--max-retries=many",
            "--queue-type=lazy",
            "--support-offer-ttl-secs=5",
        ])
        .expect("flags parse");
        let err = args.validate().expect_err("invalid");
        let vars: Vec<_> = err.0.iter().map(|l| l.split(':').next().unwrap_or_default()).collect();
        assert_eq!(
            vars,
            [
                "DATABASE_URL",
                "AMQP_URL",
                "REDIS_URL",
                "USER_OFFLINE_QUEUE",
                "PREFETCH",
                "MAX_RETRIES",
                "QUEUE_TYPE",
                "SUPPORT_OFFER_TTL_SECS"
            ],
            "{err}"
        );
    }

    #[test]
    fn redis_host_becomes_a_url() {
        let args = ConsumerArgs::try_parse_from([
            "event-consumer",
            "--database-url=sqlite://x.db",
            "--redis-host=cache:6380",
            AMQP,
        ])
        .expect("parse");
        assert_eq!(args.validate().expect("valid").redis_url, "redis://cache:6380");
    }
}
