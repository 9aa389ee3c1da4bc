//! Bearer tokens: JWT with HS256, `sub` = user id, `role` = user | agent | service, `exp` required.
//!
//! Only HS256 is accepted (the header's `alg` is checked, so `none` and algorithm confusion are
//! refused); the signature is compared in constant time by `hmac`.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::config::Secret;

/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECS: i64 = 30;
const MAX_TOKEN_BYTES: usize = 8 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Agent,
    Service,
}

/// Who is calling, as the token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: String,
    pub role: Role,
    /// The token's `exp` (unix seconds): a connection authenticated by it ends then.
    pub expires_at: i64,
}

impl Principal {
    /// A service principal may act for any user.
    pub fn is_service(&self) -> bool {
        self.role == Role::Service
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("malformed token")]
    Malformed,
    #[error("unsupported token algorithm, only HS256 is accepted")]
    Algorithm,
    #[error("bad token signature")]
    Signature,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("token has no usable `sub` (1-128 bytes, not starting with `@`)")]
    Subject,
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default = "default_role")]
    role: Role,
    exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<i64>,
}

fn default_role() -> Role {
    Role::User
}

/// Verifies (and, for tests and the standalone mode, mints) HS256 tokens.
#[derive(Clone, Debug)]
pub struct JwtKeys {
    secret: Secret,
}

impl JwtKeys {
    pub fn new(secret: Secret) -> Self {
        Self { secret }
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length, so this cannot fail.
        <Hmac<Sha256> as Mac>::new_from_slice(self.secret.expose().as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
    }

    /// Checks the token and returns its principal. `now` is unix seconds.
    pub fn verify(&self, token: &str, now: i64) -> Result<Principal, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(claims_b64), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };
        let header: Header = decode_json(header_b64)?;
        if header.alg != "HS256" {
            return Err(AuthError::Algorithm);
        }
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| AuthError::Malformed)?;
        let mut mac = self.mac();
        mac.update(&token.as_bytes()[..header_b64.len() + 1 + claims_b64.len()]);
        mac.verify_slice(&signature).map_err(|_| AuthError::Signature)?;
        let claims: Claims = decode_json(claims_b64)?;
        if claims.exp.saturating_add(LEEWAY_SECS) < now {
            return Err(AuthError::Expired);
        }
        if claims.nbf.is_some_and(|nbf| nbf.saturating_sub(LEEWAY_SECS) > now) {
            return Err(AuthError::NotYetValid);
        }
        // `@…` names the services' own peers on the signal bus (the recorder): no user takes one.
        // The same rule as user ids in requests: 1-128 bytes of printable text, no padding.
        let sub = &claims.sub;
        if sub.trim().is_empty()
            || sub.trim() != sub
            || sub.len() > 128
            || sub.starts_with('@')
            || sub.chars().any(char::is_control)
        {
            return Err(AuthError::Subject);
        }
        Ok(Principal { user_id: claims.sub, role: claims.role, expires_at: claims.exp })
    }

    /// Signs a token for `user_id` valid until `exp` (unix seconds).
    pub fn mint(&self, user_id: &str, role: Role, exp: i64) -> String {
        let header = encode_json(&Header { alg: "HS256".into(), typ: Some("JWT".into()) });
        let claims = encode_json(&Claims { sub: user_id.to_owned(), role, exp, nbf: None });
        let signing_input = format!("{header}.{claims}");
        let mut mac = self.mac();
        mac.update(signing_input.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{signing_input}.{signature}")
    }
}

fn decode_json<T: for<'de> Deserialize<'de>>(part: &str) -> Result<T, AuthError> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| AuthError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)
}

fn encode_json<T: Serialize>(value: &T) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap_or_default())
}

/// Reads `Bearer <token>` from an `authorization` header value.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn keys() -> JwtKeys {
        JwtKeys::new(Secret::new("test-secret-test-secret-test-secret"))
    }

    #[test]
    fn minted_tokens_verify() {
        let token = keys().mint("alice", Role::Agent, NOW + 60);
        assert_eq!(
            keys().verify(&token, NOW),
            Ok(Principal { user_id: "alice".into(), role: Role::Agent, expires_at: NOW + 60 })
        );
    }

    #[test]
    fn tampered_expired_and_foreign_tokens_are_refused() {
        let token = keys().mint("alice", Role::User, NOW + 60);
        let other = JwtKeys::new(Secret::new("another-secret")).mint("alice", Role::User, NOW + 60);
        assert_eq!(keys().verify(&other, NOW), Err(AuthError::Signature));

        let forged_claims = encode_json(&Claims { sub: "alice".into(), role: Role::Service, exp: NOW + 60, nbf: None });
        let mut parts: Vec<&str> = token.split('.').collect();
        parts[1] = &forged_claims;
        assert_eq!(keys().verify(&parts.join("."), NOW), Err(AuthError::Signature));

        assert_eq!(keys().verify(&token, NOW + 60 + LEEWAY_SECS + 1), Err(AuthError::Expired));
        assert_eq!(keys().verify("a.b", NOW), Err(AuthError::Malformed));
        assert_eq!(keys().verify("", NOW), Err(AuthError::Malformed));
    }

    #[test]
    fn reserved_subjects_are_refused() {
        let token = keys().mint("@recorder", Role::User, NOW + 60);
        assert_eq!(keys().verify(&token, NOW), Err(AuthError::Subject));
        for sub in [" ", " alice", "al\u{0}ice", "bob\r\nrole: service", "\u{1b}[31mred"] {
            let token = keys().mint(sub, Role::User, NOW + 60);
            assert_eq!(keys().verify(&token, NOW), Err(AuthError::Subject), "{sub:?}");
        }
    }

    /// A token signed with the test key carrying any claims.
    fn signed(claims: &Claims) -> String {
        let header = encode_json(&Header { alg: "HS256".into(), typ: Some("JWT".into()) });
        let input = format!("{header}.{}", encode_json(claims));
        let mut mac = keys().mac();
        mac.update(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn extreme_times_do_not_overflow() {
        let far = signed(&Claims { sub: "alice".into(), role: Role::User, exp: i64::MAX, nbf: Some(i64::MIN) });
        assert!(keys().verify(&far, NOW).is_ok());
        let never = signed(&Claims { sub: "alice".into(), role: Role::User, exp: i64::MIN, nbf: None });
        assert_eq!(keys().verify(&never, NOW), Err(AuthError::Expired));
        let later = signed(&Claims { sub: "alice".into(), role: Role::User, exp: i64::MAX, nbf: Some(i64::MAX) });
        assert_eq!(keys().verify(&later, NOW), Err(AuthError::NotYetValid));
    }

    #[test]
    fn alg_none_is_refused() {
        let header = encode_json(&Header { alg: "none".into(), typ: None });
        let claims = encode_json(&Claims { sub: "mallory".into(), role: Role::Service, exp: NOW + 60, nbf: None });
        assert_eq!(keys().verify(&format!("{header}.{claims}."), NOW), Err(AuthError::Algorithm));
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
    }
}
