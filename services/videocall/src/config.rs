//! The standalone binary's own settings (`--help` lists them), checked at start: where it listens,
//! where its data lives, how tokens are signed, and the few choices it makes for the services.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;
use videocall_runtime::{
    auth::{Ed25519Key, JwtKeys, Role, jwks_json},
    config::{Checker, ConfigError, Secret},
    ice::{IceArgs, IceConfig},
    telemetry::LogFormat,
    tokens::check_secret,
};

/// Where the standalone's Ed25519 token key lives unless `VIDEOCALL_KEY_FILE` says otherwise: one
/// per OS user, so `videocall --token` mints tokens every standalone of this user accepts.
pub fn default_key_file() -> PathBuf {
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from(".videocall"));
    state.join("videocall").join("standalone-signing-key.jwk")
}

/// The key in `path`, made (mode 0600, published atomically so racing processes agree) if missing.
pub fn standalone_key(path: &std::path::Path) -> Result<Ed25519Key, String> {
    if !path.exists() {
        let dir = path.parent().unwrap_or(std::path::Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let temp = dir.join(format!(".key-{}", uuid::Uuid::now_v7().simple()));
        Ed25519Key::generate("standalone").write_private(&temp)?;
        // Fails if another process published its key first: then that one is used.
        let _ = std::fs::hard_link(&temp, path);
        let _ = std::fs::remove_file(&temp);
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ed25519Key::from_jwk_json(&text).map_err(|e| format!("{}: {e}", path.display()))
}
/// Writes the public half of `key` as a JWK set beside its file (what a fleet's services are
/// given as JWT_PUBLIC_KEYS); returns its path.
fn public_key_set(key_file: &std::path::Path, key: &Ed25519Key) -> Result<PathBuf, String> {
    let path = key_file.with_extension("public.jwks");
    let temp = path.with_extension(format!("tmp-{}", uuid::Uuid::now_v7().simple()));
    let written = std::fs::write(&temp, jwks_json(&[key.public_jwk()])).and_then(|()| std::fs::rename(&temp, &path));
    written.map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "videocall",
    version,
    about = "Runs every Videocall service in one process: SQLite, in-process buses, loopback only"
)]
pub struct StandaloneArgs {
    /// Where the SQLite database lives (created if missing).
    #[arg(long, env = "VIDEOCALL_DATA_DIR", default_value = ".videocall")]
    pub data_dir: PathBuf,
    /// The relay: web client, WebSocket signaling (`/ws`), `/metrics`.
    #[arg(long, env = "HTTP_LISTEN_ADDR", default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,
    /// gRPC `videocall.v1.CallService` (with health and reflection).
    #[arg(long, env = "GRPC_LISTEN_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc: SocketAddr,
    /// The gateway's `/healthz`, `/readyz`, `/metrics`.
    #[arg(long, env = "OPS_LISTEN_ADDR", default_value = "127.0.0.1:9090")]
    pub ops: SocketAddr,
    /// The workers' `/healthz`, `/readyz`, `/metrics`, and `POST /events/{exchange}/{routing_key}`.
    #[arg(long, env = "WORKERS_LISTEN_ADDR", default_value = "127.0.0.1:9091")]
    pub workers: SocketAddr,
    /// HS256 token secret (at least 32 bytes). Without it tokens are EdDSA, signed with this
    /// user's generated key (VIDEOCALL_KEY_FILE), and only loopback addresses are allowed.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// The Ed25519 key tokens are signed with when JWT_SECRET is not set (made if missing;
    /// default `$XDG_STATE_HOME/videocall/standalone-signing-key.jwk`, or under `~/.local/state`).
    #[arg(long, env = "VIDEOCALL_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// STUN and TURN servers handed to clients (none: host candidates only, enough on one
    /// machine); TURN needs a coturn with `use-auth-secret` and the same secret.
    #[command(flatten)]
    pub ice: IceArgs,
    /// Seconds a call rings before it is missed.
    #[arg(long, env = "RING_TIMEOUT_SECS", default_value = "45")]
    pub ring_timeout_secs: i32,
    /// Active calls silent this long end as `connection_lost`.
    #[arg(long, env = "ZOMBIE_TIMEOUT_SECS", default_value = "600")]
    pub zombie_timeout_secs: u64,
    /// A party of a live call whose sockets have all been gone this long ends the call as
    /// `connection_lost` (a reload or reconnect within it keeps the call); 0 turns this off.
    #[arg(long, env = "PARTY_GRACE_SECS", default_value = "30")]
    pub party_grace_secs: u64,
    /// `text` or `json`.
    #[arg(long, env = "LOG_FORMAT", default_value = "text")]
    pub log_format: String,
    /// Print a bearer token for USER (`--role` user, agent or service) and exit.
    #[arg(long, value_name = "USER")]
    pub token: Option<String>,
    #[arg(long, default_value = "user", requires = "token")]
    pub role: String,
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct StandaloneConfig {
    pub data_dir: PathBuf,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub ops: SocketAddr,
    pub workers: SocketAddr,
    /// Verifies tokens, and mints them (`--token`, the printed page links).
    pub tokens: JwtKeys,
    /// How the gateway and relay are told to verify the same tokens (a `--flag=value`).
    pub verifier: Secret,
    pub ice: IceConfig,
    pub ring_timeout_secs: i32,
    pub zombie_timeout: Duration,
    pub party_grace: Option<Duration>,
    pub log_format: LogFormat,
}

impl StandaloneArgs {
    /// Checks every setting; the error names each bad one.
    pub fn validate(&self) -> Result<StandaloneConfig, ConfigError> {
        let mut c = Checker::new();
        let dev_secret = self.jwt_secret.is_none();
        // The services verify tokens as their own binaries would: with the HS256 secret, or with
        // the public half of the signing key (a JWK set beside it).
        let tokens = match &self.jwt_secret {
            Some(secret) => check_secret(&mut c, "JWT_SECRET", secret)
                .then(|| (JwtKeys::new(Secret::new(secret.clone())), Secret::new(format!("--jwt-secret={secret}")))),
            None => {
                let path = self.key_file.clone().unwrap_or_else(default_key_file);
                match standalone_key(&path).and_then(|key| public_key_set(&path, &key).map(|jwks| (key, jwks))) {
                    Ok((key, jwks)) => Some((
                        JwtKeys::none().with_signing_key(key),
                        Secret::new(format!("--jwt-public-keys={}", jwks.display())),
                    )),
                    Err(e) => {
                        c.check("VIDEOCALL_KEY_FILE", false, &e);
                        None
                    }
                }
            }
        };
        for (name, addr) in [
            ("HTTP_LISTEN_ADDR", self.http),
            ("GRPC_LISTEN_ADDR", self.grpc),
            ("OPS_LISTEN_ADDR", self.ops),
            ("WORKERS_LISTEN_ADDR", self.workers),
        ] {
            c.check(
                name,
                !dev_secret || addr.ip().is_loopback(),
                &format!(
                    "{addr} is not a loopback address; with the development token key only loopback is allowed \
                     (set JWT_SECRET to listen elsewhere)"
                ),
            );
        }
        let ice = self.ice.check(&mut c);
        c.check("RING_TIMEOUT_SECS", (5..=600).contains(&self.ring_timeout_secs), "must be between 5 and 600");
        c.check("ZOMBIE_TIMEOUT_SECS", self.zombie_timeout_secs >= 30, "must be at least 30");
        c.check(
            "PARTY_GRACE_SECS",
            self.party_grace_secs == 0 || (2..=3600).contains(&self.party_grace_secs),
            "must be 0 (off) or between 2 and 3600",
        );
        let log_format = c.parse::<LogFormat>("LOG_FORMAT", &self.log_format);
        c.finish()?;
        match (ice, log_format, tokens) {
            (Some(ice), Some(log_format), Some((tokens, verifier))) => Ok(StandaloneConfig {
                data_dir: self.data_dir.clone(),
                http: self.http,
                grpc: self.grpc,
                ops: self.ops,
                workers: self.workers,
                tokens,
                verifier,
                ice,
                ring_timeout_secs: self.ring_timeout_secs,
                zombie_timeout: Duration::from_secs(self.zombie_timeout_secs),
                party_grace: (self.party_grace_secs > 0).then(|| Duration::from_secs(self.party_grace_secs)),
                log_format,
            }),
            _ => Err(ConfigError(vec!["internal: a checked value is missing".into()])),
        }
    }
}

/// Mints a bearer token with the configured key or secret, valid for `ttl`.
pub fn mint_token(keys: &JwtKeys, user: &str, role: &str, ttl: Duration) -> anyhow::Result<String> {
    let role = match role {
        "user" => Role::User,
        "agent" => Role::Agent,
        "service" => Role::Service,
        other => anyhow::bail!("role `{other}` is not one of user, agent, service"),
    };
    let exp = chrono::Utc::now().timestamp() + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2);
    Ok(keys.mint(user, role, exp))
}
