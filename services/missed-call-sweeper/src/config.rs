//! missed-call-sweeper configuration.

use clap::Parser;
use videocall_runtime::config::{Checker, Common, CommonArgs, ConfigError};

#[derive(Debug, Clone, Parser)]
#[command(name = "missed-call-sweeper", version, about = "Marks unanswered calls missed on a cron schedule")]
pub struct SweeperArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// PostgreSQL URL (or sqlite:).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Cron expression with seconds; the default sweeps every second (a sweep with nothing due is
    /// a few indexed queries).
    #[arg(long, env = "SWEEP_SCHEDULE", default_value = "* * * * * *")]
    pub sweep_schedule: String,
    /// Active calls with no activity (state change, signal through the gateway, quality report)
    /// for this long end with reason connection_lost; 0 turns this off.
    #[arg(long, env = "ZOMBIE_TIMEOUT_SECS", default_value = "600")]
    pub zombie_timeout_secs: String,
    /// A party of a live call whose sockets have all been gone from the relays this long ends the
    /// call with reason connection_lost (needs REDIS_URL, where the relays keep presence); 0 turns
    /// this off. Must exceed twice the relays' PRESENCE_SECS.
    #[arg(long, env = "PARTY_GRACE_SECS", default_value = "30")]
    pub party_grace_secs: String,
    /// `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, env = "OPS_LISTEN_ADDR", default_value = "0.0.0.0:9091")]
    pub ops_listen_addr: String,
    /// Redis URL of the signal bus: when set, the parties' connections are told at once that a call
    /// was missed or ended (a `call_state` frame); unset, they see it on their next read.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,
    /// Calls claimed per transaction.
    #[arg(long, env = "SWEEP_BATCH_SIZE", default_value = "200")]
    pub sweep_batch_size: String,
}

#[derive(Debug, Clone)]
pub struct SweeperConfig {
    pub common: Common,
    pub database_url: String,
    pub schedule: cron::Schedule,
    pub batch_size: u64,
    pub ops_listen_addr: std::net::SocketAddr,
    pub zombie_timeout: Option<std::time::Duration>,
    pub party_grace: Option<std::time::Duration>,
    pub redis_url: Option<String>,
}

impl SweeperArgs {
    pub fn validate(&self) -> Result<SweeperConfig, ConfigError> {
        let mut c = Checker::new();
        let common = self.common.check("missed-call-sweeper", &mut c);
        let database_url = c.database_url("DATABASE_URL", &self.database_url);
        let schedule = match crate::parse_schedule(&self.sweep_schedule) {
            Ok(s) => Some(s),
            Err(e) => {
                c.check(
                    "SWEEP_SCHEDULE",
                    false,
                    &format!("`{}` is not a cron expression with seconds: {e}", self.sweep_schedule),
                );
                None
            }
        };
        let batch_size = c.parse::<u64>("SWEEP_BATCH_SIZE", &self.sweep_batch_size);
        let ops = c.parse::<std::net::SocketAddr>("OPS_LISTEN_ADDR", &self.ops_listen_addr);
        let zombie = c.parse::<u64>("ZOMBIE_TIMEOUT_SECS", &self.zombie_timeout_secs);
        if let Some(z) = zombie {
            c.check(
                "ZOMBIE_TIMEOUT_SECS",
                z == 0 || (60..=86_400).contains(&z),
                "must be 0 (off) or between 60 and 86400",
            );
        }
        let party_grace = c.parse::<u64>("PARTY_GRACE_SECS", &self.party_grace_secs);
        if let Some(g) = party_grace {
            c.check("PARTY_GRACE_SECS", g <= 3600, "must be 0 (off) or at most 3600");
        }
        if let Some(b) = batch_size {
            c.check("SWEEP_BATCH_SIZE", (1..=5000).contains(&b), "must be between 1 and 5000");
        }
        let redis_url = self.redis_url.as_deref().map(str::trim).filter(|u| !u.is_empty()).map(str::to_owned);
        if let Some(url) = &redis_url {
            let ok = videocall_runtime::config::is_redis_url(url);
            c.check("REDIS_URL", ok, "must start with redis://, rediss:// or unix://");
        }
        c.finish()?;
        match (common, database_url, schedule, batch_size, ops, zombie, party_grace) {
            (
                Some(common),
                Some(database_url),
                Some(schedule),
                Some(batch_size),
                Some(ops_listen_addr),
                Some(z),
                Some(g),
            ) => {
                let zombie_timeout = (z > 0).then(|| std::time::Duration::from_secs(z));
                let party_grace = (g > 0).then(|| std::time::Duration::from_secs(g));
                Ok(SweeperConfig {
                    common,
                    database_url,
                    schedule,
                    batch_size,
                    ops_listen_addr,
                    zombie_timeout,
                    party_grace,
                    redis_url,
                })
            }
            _ => Err(ConfigError(vec!["internal: a checked value is missing".into()])),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_schedule_and_batch_are_named() {
        let args = SweeperArgs::try_parse_from([
            "missed-call-sweeper",
            "--database-url=postgres://x/y",
            "--sweep-schedule=every five seconds",
            "--sweep-batch-size=0",
        ])
        .expect("flags parse");
        let err = args.validate().unwrap_err();
        assert!(err.0[0].starts_with("SWEEP_SCHEDULE: `every five seconds` is not a cron expression"), "{err}");
        assert!(err.0[1].starts_with("SWEEP_BATCH_SIZE:"), "{err}");
    }

    #[test]
    fn redis_url_is_optional_but_checked() {
        let args = SweeperArgs::try_parse_from(["missed-call-sweeper", "--database-url=sqlite://x.db"]).expect("parse");
        assert_eq!(args.validate().expect("valid").redis_url, None);
        let args = SweeperArgs::try_parse_from([
            "missed-call-sweeper",
            "--database-url=sqlite://x.db",
            "--redis-url=http://cache",
        ])
        .expect("parse");
        let err = args.validate().unwrap_err();
        assert!(err.0[0].starts_with("REDIS_URL: must start with redis://"), "{err}");
    }

    #[test]
    fn defaults_sweep_every_second_with_a_30_second_party_grace() {
        let args = SweeperArgs::try_parse_from(["missed-call-sweeper", "--database-url=sqlite://x.db"]).expect("parse");
        let config = args.validate().expect("valid");
        let ticks: Vec<_> = config.schedule.upcoming(chrono::Utc).take(2).collect();
        assert_eq!((ticks[1] - ticks[0]).num_seconds(), 1);
        assert_eq!(config.batch_size, 200);
        assert_eq!(config.party_grace, Some(std::time::Duration::from_secs(30)));
    }
}
