//! The token issuer for development and operations (grpcurl, the web client, scripts):
//!
//! - `vc-token keygen DIR [KID]` writes a new Ed25519 key: `DIR/signing-key.jwk` (private, mode
//!   0600: keep it with the issuer only) and `DIR/jwks.json` (public: give it to the gateway and
//!   the relays as `JWT_PUBLIC_KEYS`).
//! - `vc-token USER [user|agent|service] [TTL_SECS]` prints a token: EdDSA with the key in
//!   `JWT_SIGNING_KEY` (a private JWK file), else HS256 with `JWT_SECRET` (at least 32 bytes);
//!   `iss`/`aud` from `JWT_ISSUER`/`JWT_AUDIENCE` (default `videocall`).

use std::{path::Path, process::ExitCode, time::Duration};

use videocall_runtime::{
    auth::{
        DEFAULT_AUDIENCE, DEFAULT_ISSUER, DEFAULT_MAX_LIFETIME, Ed25519Key, JwtKeys, Role, check_hs256_secret,
        jwks_json,
    },
    config::Secret,
};

const USAGE: &str = "usage: vc-token USER [user|agent|service] [TTL_SECS]   (reads JWT_SIGNING_KEY or JWT_SECRET)\n       vc-token keygen DIR [KID]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        None => Err(USAGE.to_owned()),
        Some("keygen") => keygen(&args[1..]),
        Some(_) => mint(&args),
    };
    match result {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("vc-token: {message}");
            ExitCode::from(2)
        }
    }
}

fn keygen(args: &[String]) -> Result<String, String> {
    let dir = Path::new(args.first().ok_or(USAGE)?);
    let kid = args.get(1).cloned().unwrap_or_else(|| chrono::Utc::now().format("%Y-%m-%d").to_string());
    let private = dir.join("signing-key.jwk");
    if private.exists() {
        return Err(format!("{} exists; move it away to make a new key", private.display()));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let key = Ed25519Key::generate(&kid);
    key.write_private(&private)?;
    let public = dir.join("jwks.json");
    std::fs::write(&public, jwks_json(&[key.public_jwk()])).map_err(|e| format!("{}: {e}", public.display()))?;
    Ok(format!(
        "JWT_SIGNING_KEY={}  (the issuer's; keep it secret)\nJWT_PUBLIC_KEYS={}  (for the gateway and the relays)",
        private.display(),
        public.display()
    ))
}

fn mint(args: &[String]) -> Result<String, String> {
    let user = &args[0];
    let role = match args.get(1).map(String::as_str).unwrap_or("user") {
        "user" => Role::User,
        "agent" => Role::Agent,
        "service" => Role::Service,
        other => return Err(format!("role `{other}` is not one of user, agent, service")),
    };
    let ttl: u64 = match args.get(2).map(|s| s.parse()) {
        None => 3600,
        Some(Ok(ttl)) => ttl,
        Some(Err(_)) => return Err("TTL_SECS must be a whole number of seconds".into()),
    };
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let keys = match (env("JWT_SIGNING_KEY"), env("JWT_SECRET")) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(&path).map_err(|e| format!("JWT_SIGNING_KEY {path}: {e}"))?;
            JwtKeys::none()
                .with_signing_key(Ed25519Key::from_jwk_json(&text).map_err(|e| format!("JWT_SIGNING_KEY {path}: {e}"))?)
        }
        (None, Some(secret)) => {
            check_hs256_secret(&secret).map_err(|e| format!("JWT_SECRET {e}"))?;
            JwtKeys::new(Secret::new(secret))
        }
        (None, None) => return Err(format!("JWT_SIGNING_KEY (or JWT_SECRET) is required\n{USAGE}")),
    };
    let issuer = env("JWT_ISSUER").unwrap_or_else(|| DEFAULT_ISSUER.to_owned());
    let audience = env("JWT_AUDIENCE").unwrap_or_else(|| DEFAULT_AUDIENCE.to_owned());
    let keys = keys.with_claims(&issuer, &audience, DEFAULT_MAX_LIFETIME.max(Duration::from_secs(ttl)));
    let exp = chrono::Utc::now().timestamp().saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX));
    Ok(keys.mint(user, role, exp))
}
