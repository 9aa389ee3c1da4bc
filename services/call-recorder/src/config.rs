//! call-recorder configuration.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use clap::Parser;
use videocall_runtime::{
    config::{Checker, Common, CommonArgs, ConfigError, split_list},
    ice::{IceArgs, IceConfig},
};

#[derive(Debug, Clone, Parser)]
#[command(name = "call-recorder", version, about = "Records calls both parties consented to record")]
pub struct RecorderArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// PostgreSQL URL (or sqlite:).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Redis URL of the signal bus the relays use.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,
    /// Where recordings are written: one directory per call, named by the call id.
    #[arg(long, env = "RECORDINGS_DIR", default_value = "recordings")]
    pub recordings_dir: String,
    /// This instance's name in `recordings.worker_id`; default `<hostname>-<pid>`.
    #[arg(long, env = "RECORDER_ID")]
    pub recorder_id: Option<String>,
    /// How often to look for recordings to start.
    #[arg(long, env = "RECORDER_POLL_MS", default_value = "1000")]
    pub poll_ms: String,
    /// A recording's owner renews its claim this often ÷ 3; past it another instance may take a
    /// starting recording, and an active one counts as failed.
    #[arg(long, env = "RECORDER_LEASE_SECS", default_value = "30")]
    pub lease_secs: String,
    /// A recording that is not active (media of both parties) this long after its recorder took
    /// it fails.
    #[arg(long, env = "RECORDER_START_TIMEOUT_SECS", default_value = "30")]
    pub start_timeout_secs: String,
    /// Longest recording; it completes when reached.
    #[arg(long, env = "RECORDER_MAX_SECS", default_value = "14400")]
    pub max_secs: String,
    /// Recordings this instance runs at once.
    #[arg(long, env = "RECORDER_MAX_CONCURRENT", default_value = "16")]
    pub max_concurrent: String,
    /// Comma separated IPs or CIDRs the recorder gathers host candidates on (e.g. `10.0.0.0/8`,
    /// `127.0.0.1` for a one-machine setup); empty: every interface but loopback.
    #[arg(long, env = "RECORDER_CANDIDATE_NETWORKS", default_value = "")]
    pub candidate_networks: String,
    /// Comma separated public IPs to advertise instead of the host's own (1:1 NAT).
    #[arg(long, env = "RECORDER_NAT_1TO1_IPS", default_value = "")]
    pub nat_1to1_ips: String,
    /// UDP ports for media, `MIN-MAX` (publish them from a container); empty: any free port.
    #[arg(long, env = "RECORDER_UDP_PORTS", default_value = "")]
    pub udp_ports: String,
    #[command(flatten)]
    pub ice: IceArgs,
    /// `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, env = "OPS_LISTEN_ADDR", default_value = "0.0.0.0:9094")]
    pub ops_listen_addr: String,
}

/// An IP network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Network {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let (ip, prefix) = match raw.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (raw, None),
        };
        let addr: IpAddr = ip.trim().parse().map_err(|_| format!("`{raw}` is not an IP or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= max).ok_or(format!("`{raw}` has a bad prefix"))?,
            None => max,
        };
        Ok(Self { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = |ip: IpAddr| -> u128 {
            match ip {
                IpAddr::V4(v4) => u128::from(u32::from(v4)) << 96,
                IpAddr::V6(v6) => u128::from(v6),
            }
        };
        if self.addr.is_ipv4() != ip.is_ipv4() {
            return false;
        }
        // IPv4 sits in the top 32 bits, so one mask formula serves both families.
        let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(self.prefix)) };
        bits(self.addr) & mask == bits(ip) & mask
    }
}

#[derive(Debug, Clone)]
pub struct RecorderConfig {
    pub common: Common,
    pub database_url: String,
    pub redis_url: String,
    pub recordings_dir: PathBuf,
    pub recorder_id: String,
    pub poll: Duration,
    pub lease: Duration,
    pub start_timeout: Duration,
    pub max_duration: Duration,
    pub max_concurrent: usize,
    pub candidate_networks: Vec<Network>,
    pub nat_1to1_ips: Vec<String>,
    pub udp_ports: Option<(u16, u16)>,
    pub ice: IceConfig,
    pub ops_listen_addr: std::net::SocketAddr,
}

fn default_recorder_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "recorder".to_owned());
    format!("{host}-{}", std::process::id())
}

impl RecorderArgs {
    pub fn validate(&self) -> Result<RecorderConfig, ConfigError> {
        let mut c = Checker::new();
        let common = self.common.check("call-recorder", &mut c);
        let database_url = c.database_url("DATABASE_URL", &self.database_url);
        let redis_url = c.require("REDIS_URL", &self.redis_url);
        if let Some(url) = &redis_url {
            let ok = videocall_runtime::config::is_redis_url(url);
            c.check("REDIS_URL", ok, "must start with redis://, rediss:// or unix://");
        }
        let dir = self.recordings_dir.trim();
        c.check("RECORDINGS_DIR", !dir.is_empty(), "must not be empty");
        let recorder_id = self.recorder_id.clone().map(|s| s.trim().to_owned()).unwrap_or_else(default_recorder_id);
        c.check(
            "RECORDER_ID",
            !recorder_id.is_empty() && recorder_id.len() <= 128 && !recorder_id.chars().any(char::is_control),
            "must be 1-128 bytes of printable text",
        );
        let ranged = |c: &mut Checker, var: &str, raw: &str, range: std::ops::RangeInclusive<u64>| {
            let value = c.parse::<u64>(var, raw)?;
            let message = format!("must be between {} and {}", range.start(), range.end());
            c.check(var, range.contains(&value), &message).then_some(value)
        };
        let poll = ranged(&mut c, "RECORDER_POLL_MS", &self.poll_ms, 50..=60_000);
        let lease = ranged(&mut c, "RECORDER_LEASE_SECS", &self.lease_secs, 3..=600);
        let start_timeout = ranged(&mut c, "RECORDER_START_TIMEOUT_SECS", &self.start_timeout_secs, 1..=600);
        let max_secs = ranged(&mut c, "RECORDER_MAX_SECS", &self.max_secs, 1..=86_400);
        let max_concurrent = ranged(&mut c, "RECORDER_MAX_CONCURRENT", &self.max_concurrent, 1..=1000);
        let mut candidate_networks = Vec::new();
        for raw in split_list(&self.candidate_networks) {
            match Network::parse(&raw) {
                Ok(n) => candidate_networks.push(n),
                Err(e) => {
                    c.check("RECORDER_CANDIDATE_NETWORKS", false, &e);
                }
            }
        }
        let nat_1to1_ips = split_list(&self.nat_1to1_ips);
        let nat_ok = nat_1to1_ips.iter().all(|ip| ip.parse::<IpAddr>().is_ok());
        c.check("RECORDER_NAT_1TO1_IPS", nat_ok, "every entry must be an IP address");
        let udp_ports = match self.udp_ports.trim() {
            "" => None,
            raw => {
                let range = raw
                    .split_once('-')
                    .and_then(|(a, b)| Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?)))
                    .filter(|(min, max)| *min > 0 && min <= max);
                c.check("RECORDER_UDP_PORTS", range.is_some(), &format!("`{raw}` is not a port range MIN-MAX"));
                range
            }
        };
        let ice = self.ice.check(&mut c);
        let ops = c.parse::<std::net::SocketAddr>("OPS_LISTEN_ADDR", &self.ops_listen_addr);
        c.finish()?;
        match (common, database_url, redis_url, poll, lease, start_timeout, max_secs, max_concurrent, ice, ops) {
            (
                Some(common),
                Some(database_url),
                Some(redis_url),
                Some(poll),
                Some(lease),
                Some(start_timeout),
                Some(max_secs),
                Some(max_concurrent),
                Some(ice),
                Some(ops_listen_addr),
            ) => Ok(RecorderConfig {
                common,
                database_url,
                redis_url,
                recordings_dir: PathBuf::from(dir),
                recorder_id,
                poll: Duration::from_millis(poll),
                lease: Duration::from_secs(lease),
                start_timeout: Duration::from_secs(start_timeout),
                max_duration: Duration::from_secs(max_secs),
                max_concurrent: usize::try_from(max_concurrent).unwrap_or(16),
                candidate_networks,
                nat_1to1_ips,
                udp_ports,
                ice,
                ops_listen_addr,
            }),
            _ => Err(ConfigError(vec!["internal: a checked value is missing".into()])),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bad_setting_is_named() {
        let args = RecorderArgs::try_parse_from([
            "call-recorder",
            "--database-url=mysql://x",
            "--poll-ms=5",
            "--candidate-networks=10.0.0.0/8,nonsense,10.0.0.0/40",
            "--nat-1to1-ips=host.example",
            "--udp-ports=6000-5000",
        ])
        .expect("flags parse");
        let err = args.validate().unwrap_err().to_string();
        for var in [
            "DATABASE_URL",
            "REDIS_URL",
            "RECORDER_POLL_MS",
            "RECORDER_CANDIDATE_NETWORKS",
            "RECORDER_NAT_1TO1_IPS",
            "RECORDER_UDP_PORTS",
        ] {
            assert!(err.contains(&format!("{var}:")), "{var} missing in {err}");
        }
        assert!(err.contains("`nonsense` is not an IP or CIDR"), "{err}");
        assert!(err.contains("`10.0.0.0/40` has a bad prefix"), "{err}");
    }

    #[test]
    fn defaults_are_usable() {
        let args = RecorderArgs::try_parse_from([
            "call-recorder",
            "--database-url=postgres://localhost/x",
            "--redis-url=redis://127.0.0.1:6379",
        ])
        .expect("parse");
        let config = args.validate().expect("valid");
        assert_eq!(config.lease, Duration::from_secs(30));
        assert_eq!(config.recordings_dir, PathBuf::from("recordings"));
        assert!(config.candidate_networks.is_empty());
        assert!(config.recorder_id.ends_with(&format!("-{}", std::process::id())));
    }

    #[test]
    fn networks_match_their_addresses() {
        let lan = Network::parse("10.1.0.0/16").expect("cidr");
        assert!(lan.contains("10.1.200.3".parse().expect("ip")));
        assert!(!lan.contains("10.2.0.1".parse().expect("ip")));
        assert!(!lan.contains("::1".parse().expect("ip")));
        let one = Network::parse("127.0.0.1").expect("ip");
        assert!(one.contains("127.0.0.1".parse().expect("ip")));
        assert!(!one.contains("127.0.0.2".parse().expect("ip")));
        let any = Network::parse("0.0.0.0/0").expect("cidr");
        assert!(any.contains("192.0.2.2".parse().expect("ip")));
        let v6 = Network::parse("fd00::/8").expect("cidr");
        assert!(v6.contains("fd12::1".parse().expect("ip")));
        assert!(!v6.contains("fe80::1".parse().expect("ip")));
    }
}
