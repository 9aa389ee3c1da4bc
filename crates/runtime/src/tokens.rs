//! How a service verifies bearer tokens, as configured: the JWT flags shared by the gateway, the
//! relay and the standalone binary, checked like every other setting.

use crate::{
    auth::{DEFAULT_AUDIENCE, DEFAULT_ISSUER, JwtKeys, check_hs256_secret, parse_jwks},
    config::{Checker, Secret},
};

/// Records the complaint about an HS256 secret in `var` that is too short; returns whether it is
/// long enough ([`check_hs256_secret`]).
pub fn check_secret(c: &mut Checker, var: &str, secret: &str) -> bool {
    match check_hs256_secret(secret) {
        Ok(()) => true,
        Err(message) => c.check(var, false, &message),
    }
}

/// How bearer tokens are verified: shared by the gateway, the relay and the standalone binary
/// (`#[command(flatten)]`).
#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    /// A JWK set file of Ed25519 public keys (with `kid`s: two during a rotation) that verify
    /// EdDSA tokens. The issuer (vc-token) keeps the private key; nothing here can mint.
    #[arg(long, env = "JWT_PUBLIC_KEYS")]
    pub jwt_public_keys: Option<std::path::PathBuf>,
    /// HS256 secret (at least 32 bytes). Only where set: whoever holds it can mint any token.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Required `iss` of every token.
    #[arg(long, env = "JWT_ISSUER", default_value = DEFAULT_ISSUER)]
    pub jwt_issuer: String,
    /// Required `aud` of every token.
    #[arg(long, env = "JWT_AUDIENCE", default_value = DEFAULT_AUDIENCE)]
    pub jwt_audience: String,
    /// Tokens valid for longer than this from now are refused.
    #[arg(long, env = "JWT_MAX_LIFETIME_SECS", default_value = "86400")]
    pub jwt_max_lifetime_secs: String,
}

impl TokenArgs {
    /// The verifier, or each bad setting reported to `c`. `required`: one of JWT_PUBLIC_KEYS and
    /// JWT_SECRET must be set (the standalone binary has its own key otherwise).
    pub fn check(&self, c: &mut Checker, required: bool) -> Option<JwtKeys> {
        let secret = self.jwt_secret.as_deref().filter(|s| !s.is_empty());
        if required && secret.is_none() && self.jwt_public_keys.is_none() {
            c.check("JWT_PUBLIC_KEYS", false, "is required (or JWT_SECRET, for HS256 tokens)");
        }
        let secret_ok = secret.is_none_or(|s| check_secret(c, "JWT_SECRET", s));
        let public_keys = match &self.jwt_public_keys {
            None => Some(Vec::new()),
            Some(path) => match std::fs::read_to_string(path).map_err(|e| e.to_string()).and_then(|t| parse_jwks(&t)) {
                Ok(keys) => Some(keys),
                Err(e) => {
                    c.check("JWT_PUBLIC_KEYS", false, &format!("{}: {e}", path.display()));
                    None
                }
            },
        };
        for (var, value) in [("JWT_ISSUER", &self.jwt_issuer), ("JWT_AUDIENCE", &self.jwt_audience)] {
            c.check(var, !value.trim().is_empty(), "must not be empty");
        }
        let lifetime = c.parse::<u64>("JWT_MAX_LIFETIME_SECS", &self.jwt_max_lifetime_secs);
        if let Some(l) = lifetime {
            c.check("JWT_MAX_LIFETIME_SECS", (60..=30 * 24 * 3600).contains(&l), "must be between 60 and 2592000");
        }
        let mut keys = JwtKeys::none().with_public_keys(public_keys?).with_claims(
            self.jwt_issuer.trim(),
            self.jwt_audience.trim(),
            std::time::Duration::from_secs(lifetime?),
        );
        if let Some(secret) = secret.filter(|_| secret_ok) {
            keys = keys.with_hs256(&Secret::new(secret));
        }
        Some(keys)
    }
}
