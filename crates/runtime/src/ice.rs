//! ICE servers handed to each party: the STUN list, plus TURN with ephemeral credentials in the
//! TURN REST API scheme that coturn's `use-auth-secret` accepts:
//! username `<unix expiry>:<handle>`, password base64(HMAC-SHA1(secret, username)). The handle
//! stands for the user without naming them: STUN carries the username in cleartext, and the TURN
//! server's logs keep it.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use sha1::Sha1;

use crate::config::{Checker, Secret, split_list};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceServer {
    pub urls: Vec<String>,
    pub username: String,
    pub credential: String,
}

#[derive(Debug, Clone)]
pub struct IceConfig {
    pub stun_urls: Vec<String>,
    /// `turn:`/`turns:` URLs of one TURN deployment sharing `turn_secret`.
    pub turn_urls: Vec<String>,
    pub turn_secret: Option<Secret>,
    /// How long minted TURN credentials stay valid.
    pub turn_ttl: Duration,
}

impl IceConfig {
    /// The servers for `user_id`, with TURN credentials valid for `turn_ttl` from `now` (unix secs).
    pub fn servers_for(&self, user_id: &str, now: i64) -> Vec<IceServer> {
        let mut servers = Vec::with_capacity(2);
        if !self.stun_urls.is_empty() {
            servers.push(IceServer {
                urls: self.stun_urls.clone(),
                username: String::new(),
                credential: String::new(),
            });
        }
        if let (false, Some(secret)) = (self.turn_urls.is_empty(), &self.turn_secret) {
            let expiry = now + i64::try_from(self.turn_ttl.as_secs()).unwrap_or(i64::MAX / 2);
            let username = format!("{expiry}:{}", turn_handle(secret, user_id));
            let credential = turn_password(secret, &username);
            servers.push(IceServer { urls: self.turn_urls.clone(), username, credential });
        }
        servers
    }
}

/// An opaque, stable stand-in for `user_id` in TURN usernames: the first 16 bytes of
/// HMAC-SHA256(secret, "videocall-turn-user:" + user id), base64url (22 characters). Whoever holds
/// the TURN secret can tell which user a handle is; nobody else can.
pub fn turn_handle(secret: &Secret, user_id: &str) -> String {
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(secret.expose().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(b"videocall-turn-user:");
    mac.update(user_id.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&mac.finalize().into_bytes()[..16])
}

/// base64(HMAC-SHA1(secret, username)), as coturn computes it.
pub fn turn_password(secret: &Secret, username: &str) -> String {
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(secret.expose().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(username.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// A URL list entry is usable as an ICE server URL.
/// The ICE settings shared by the gateway and the standalone binary (`#[command(flatten)]`).
#[derive(Debug, Clone, clap::Args)]
pub struct IceArgs {
    /// Comma separated STUN URLs handed to clients, e.g. `stun:stun.example.com:3478`.
    #[arg(long, env = "STUN_SERVERS", default_value = "")]
    pub stun_servers: String,
    /// Comma separated TURN URLs, e.g. `turn:turn.example.com:3478?transport=udp`.
    #[arg(long, env = "TURN_SERVER", default_value = "")]
    pub turn_server: String,
    /// coturn `static-auth-secret`; required with TURN_SERVER.
    #[arg(long, env = "TURN_SECRET", hide_env_values = true)]
    pub turn_secret: Option<String>,
    /// Lifetime of minted TURN credentials.
    #[arg(long, env = "TURN_TTL_SECS", default_value = "3600")]
    pub turn_ttl_secs: String,
}

impl IceArgs {
    /// Checks every setting, reporting each bad one to `c`; `None` when one was bad.
    pub fn check(&self, c: &mut Checker) -> Option<IceConfig> {
        let stun_urls = split_list(&self.stun_servers);
        let stun_ok = stun_urls.iter().all(|u| is_ice_url(u, &["stun", "stuns"]));
        c.check("STUN_SERVERS", stun_ok, "every entry must be a stun: or stuns: URL");
        let turn_urls = split_list(&self.turn_server);
        let turn_ok = turn_urls.iter().all(|u| is_ice_url(u, &["turn", "turns"]));
        c.check("TURN_SERVER", turn_ok, "every entry must be a turn: or turns: URL");
        let turn_secret = self.turn_secret.clone().filter(|s| !s.is_empty());
        let secret_ok = c.check(
            "TURN_SECRET",
            turn_urls.is_empty() || turn_secret.is_some(),
            "is required when TURN_SERVER is set",
        );
        let turn_ttl = c
            .parse::<u64>("TURN_TTL_SECS", &self.turn_ttl_secs)
            .filter(|ttl| c.check("TURN_TTL_SECS", (60..=86_400).contains(ttl), "must be between 60 and 86400"));
        let turn_ttl = Duration::from_secs(turn_ttl?);
        (stun_ok && turn_ok && secret_ok).then(|| IceConfig {
            stun_urls,
            turn_urls,
            turn_secret: turn_secret.map(Secret::new),
            turn_ttl,
        })
    }
}

pub fn is_ice_url(url: &str, schemes: &[&str]) -> bool {
    schemes.iter().any(|s| url.strip_prefix(s).and_then(|rest| rest.strip_prefix(':')).is_some_and(|h| !h.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_password_matches_rfc2202_hmac_sha1() {
        // RFC 2202 test case 2: key "Jefe", data "what do ya want for nothing?"
        // HMAC-SHA1 = effcdf6ae5eb2fa2d27416d5f184df9c259a7c79
        let expected = STANDARD.encode([
            0xef, 0xfc, 0xdf, 0x6a, 0xe5, 0xeb, 0x2f, 0xa2, 0xd2, 0x74, 0x16, 0xd5, 0xf1, 0x84, 0xdf, 0x9c, 0x25, 0x9a,
            0x7c, 0x79,
        ]);
        assert_eq!(turn_password(&Secret::new("Jefe"), "what do ya want for nothing?"), expected);
    }

    #[test]
    fn servers_carry_stun_and_expiring_turn() {
        let config = IceConfig {
            stun_urls: vec!["stun:stun.example.com:3478".into()],
            turn_urls: vec!["turn:turn.example.com:3478?transport=udp".into()],
            turn_secret: Some(Secret::new("s3cret")),
            turn_ttl: Duration::from_secs(3600),
        };
        let servers = config.servers_for("alice", 1_000);
        assert_eq!(servers.len(), 2);
        assert_eq!(servers[0].username, "");
        let handle = turn_handle(&Secret::new("s3cret"), "alice");
        assert_eq!(servers[1].username, format!("4600:{handle}"));
        assert_eq!(servers[1].credential, turn_password(&Secret::new("s3cret"), &servers[1].username));
        // Opaque, stable, and each user's own; another secret gives other handles.
        assert!(handle.len() == 22 && !handle.contains("alice"));
        assert_eq!(handle, turn_handle(&Secret::new("s3cret"), "alice"));
        assert_ne!(handle, turn_handle(&Secret::new("s3cret"), "bob"));
        assert_ne!(handle, turn_handle(&Secret::new("other"), "alice"));
    }

    #[test]
    fn no_turn_without_a_secret() {
        let config = IceConfig {
            stun_urls: vec![],
            turn_urls: vec!["turn:x".into()],
            turn_secret: None,
            turn_ttl: Duration::from_secs(1),
        };
        assert!(config.servers_for("bob", 0).is_empty());
        assert!(is_ice_url("turn:host:3478", &["turn", "turns"]));
        assert!(!is_ice_url("http://host", &["turn", "turns"]));
        assert!(!is_ice_url("stun:", &["stun"]));
    }
}
