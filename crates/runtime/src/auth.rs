//! Bearer tokens: JWT with `sub` = user id, `role` = user | agent | service, `exp`, `iss` and `aud`
//! required, verified with the `jsonwebtoken` crate.
//!
//! EdDSA (Ed25519) is the default: verifiers hold only public keys (a JWKS with `kid`s, so two keys
//! can be live during a rotation), and only the issuer holds the private key. HS256 is accepted only
//! where a secret of at least 32 bytes is configured (RFC 7518 §3.2). The header's `alg` is checked
//! against what is configured before anything else, so `none` and algorithm confusion are refused.
//! A token may not live longer than the configured maximum.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Validation};
use serde::{Deserialize, Serialize};

use crate::config::Secret;

/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECS: i64 = 30;
const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Shortest HS256 secret accepted (RFC 7518 §3.2: at least the hash's 256 bits).
pub const MIN_HS256_SECRET_BYTES: usize = 32;
/// Whether `secret` is long enough to sign HS256 tokens; the error is the complaint about the
/// variable that holds it.
pub fn check_hs256_secret(secret: &str) -> Result<(), String> {
    if secret.len() >= MIN_HS256_SECRET_BYTES {
        Ok(())
    } else {
        Err(format!("must be at least {MIN_HS256_SECRET_BYTES} bytes (RFC 7518 §3.2)"))
    }
}

/// `iss` and `aud` unless configured otherwise.
pub const DEFAULT_ISSUER: &str = "videocall";
pub const DEFAULT_AUDIENCE: &str = "videocall";
/// Longest a token may still be valid for, unless configured otherwise.
pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// PKCS#8 v1 prefix of an Ed25519 private key; the 32-byte seed follows (RFC 8410).
const ED25519_PKCS8_PREFIX: [u8; 16] =
    [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

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
    #[error("unsupported token algorithm (accepted here: {0})")]
    Algorithm(String),
    #[error("unknown signing key (kid)")]
    UnknownKey,
    #[error("bad token signature")]
    Signature,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("token lives longer than the allowed maximum")]
    Lifetime,
    #[error("token has a wrong or missing `{0}`")]
    Claim(&'static str),
    #[error("token has no usable `sub` (1-128 bytes of printable text, not starting with `@`)")]
    Subject,
}

#[derive(Serialize, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default = "default_role")]
    role: Role,
    exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<i64>,
    iss: String,
    aud: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<i64>,
}

fn default_role() -> Role {
    Role::User
}

/// The part of a token's header read before its signature is checked.
#[derive(Deserialize)]
struct Head {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

/// An Ed25519 key pair for minting (the issuer's; verifiers get only [`Ed25519Key::public_jwk`]).
#[derive(Clone)]
pub struct Ed25519Key {
    pub kid: String,
    seed: [u8; 32],
}

impl std::fmt::Debug for Ed25519Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ed25519Key").field("kid", &self.kid).finish_non_exhaustive()
    }
}

/// One key of a JWK set as this module reads and writes it (`OKP` / `Ed25519`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OkpJwk {
    pub kty: String,
    pub crv: String,
    #[serde(default)]
    pub kid: Option<String>,
    pub x: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub d: Option<String>,
    #[serde(default, rename = "alg", skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub public_key_use: Option<String>,
}

impl Ed25519Key {
    /// A new random key named `kid`.
    pub fn generate(kid: &str) -> Self {
        Self { kid: kid.to_owned(), seed: rand::random() }
    }

    /// Reads a private JWK (`{"kty":"OKP","crv":"Ed25519","kid":…,"x":…,"d":…}`).
    pub fn from_jwk_json(text: &str) -> Result<Self, String> {
        let jwk: OkpJwk = serde_json::from_str(text).map_err(|e| format!("not a JWK: {e}"))?;
        let d = jwk.d.as_deref().ok_or("the JWK has no private part `d`")?;
        let seed: [u8; 32] = decode_32(d).ok_or("`d` is not 32 bytes of base64url")?;
        let key = Self { kid: jwk.kid.clone().unwrap_or_default(), seed };
        check_okp(&jwk)?;
        if key.public_jwk().x != jwk.x {
            return Err("`x` is not the public key of `d`".into());
        }
        Ok(key)
    }

    fn public_bytes(&self) -> [u8; 32] {
        ed25519_dalek::SigningKey::from_bytes(&self.seed).verifying_key().to_bytes()
    }

    /// The public half, for the verifiers' JWKS.
    pub fn public_jwk(&self) -> OkpJwk {
        OkpJwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            kid: Some(self.kid.clone()),
            x: URL_SAFE_NO_PAD.encode(self.public_bytes()),
            d: None,
            algorithm: Some("EdDSA".into()),
            public_key_use: Some("sig".into()),
        }
    }

    /// The whole key, private part included, as a JWK (keep it secret).
    pub fn private_jwk_json(&self) -> String {
        let jwk = OkpJwk { d: Some(URL_SAFE_NO_PAD.encode(self.seed)), ..self.public_jwk() };
        serde_json::to_string_pretty(&jwk).unwrap_or_default()
    }

    /// Writes the whole key as a JWK to a new file at `path`, readable by its owner only (0600);
    /// never over an existing file.
    pub fn write_private(&self, path: &std::path::Path) -> Result<(), String> {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        file.write_all(self.private_jwk_json().as_bytes()).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn encoding_key(&self) -> EncodingKey {
        let mut der = ED25519_PKCS8_PREFIX.to_vec();
        der.extend_from_slice(&self.seed);
        EncodingKey::from_ed_der(&der)
    }
}

/// `{"keys":[…]}` holding these public keys.
pub fn jwks_json(keys: &[OkpJwk]) -> String {
    serde_json::to_string_pretty(&serde_json::json!({ "keys": keys })).unwrap_or_default()
}

fn decode_32(b64: &str) -> Option<[u8; 32]> {
    URL_SAFE_NO_PAD.decode(b64.trim_end_matches('=')).ok()?.try_into().ok()
}

fn check_okp(jwk: &OkpJwk) -> Result<(), String> {
    if jwk.kty != "OKP" || jwk.crv != "Ed25519" {
        return Err(format!("only OKP/Ed25519 keys are used, not {}/{}", jwk.kty, jwk.crv));
    }
    let x = decode_32(&jwk.x).ok_or("`x` is not 32 bytes of base64url")?;
    ed25519_dalek::VerifyingKey::from_bytes(&x).map_err(|_| "`x` is not an Ed25519 public key".to_owned())?;
    Ok(())
}

/// Reads a JWK set of Ed25519 public keys; each needs a `kid` when there are several.
pub fn parse_jwks(text: &str) -> Result<Vec<(Option<String>, DecodingKey)>, String> {
    #[derive(Deserialize)]
    struct Set {
        keys: Vec<OkpJwk>,
    }
    let set: Set = serde_json::from_str(text).map_err(|e| format!("not a JWK set: {e}"))?;
    if set.keys.is_empty() {
        return Err("the JWK set has no keys".into());
    }
    let mut keys = Vec::with_capacity(set.keys.len());
    for jwk in &set.keys {
        check_okp(jwk)?;
        if set.keys.len() > 1 && jwk.kid.as_deref().is_none_or(str::is_empty) {
            return Err("with several keys each needs a `kid`".into());
        }
        let key = DecodingKey::from_ed_components(&jwk.x).map_err(|e| e.to_string())?;
        keys.push((jwk.kid.clone(), key));
    }
    Ok(keys)
}

/// Verifies tokens (and, where a private key or secret is at hand, mints them). Cheap to clone.
#[derive(Clone)]
pub struct JwtKeys {
    hs256: Option<(DecodingKey, EncodingKey)>,
    eddsa: Vec<(Option<String>, DecodingKey)>,
    signing: Option<Ed25519Key>,
    issuer: String,
    audience: String,
    max_lifetime: Duration,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKeys")
            .field("hs256", &self.hs256.is_some())
            .field("eddsa_keys", &self.eddsa.len())
            .field("signing", &self.signing.as_ref().map(|k| &k.kid))
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

impl JwtKeys {
    /// HS256 with `secret` only (tests, and deployments that configure a secret); mints too.
    pub fn new(secret: Secret) -> Self {
        Self::none().with_hs256(&secret)
    }

    /// Nothing accepted yet: add keys with the `with_` methods.
    pub fn none() -> Self {
        Self {
            hs256: None,
            eddsa: Vec::new(),
            signing: None,
            issuer: DEFAULT_ISSUER.into(),
            audience: DEFAULT_AUDIENCE.into(),
            max_lifetime: DEFAULT_MAX_LIFETIME,
        }
    }

    pub fn with_hs256(mut self, secret: &Secret) -> Self {
        let bytes = secret.expose().as_bytes();
        // Only an empty secret is refused, and configuration refuses those (at least 32 bytes).
        if let (Ok(decoding), Ok(encoding)) = (DecodingKey::from_secret(bytes), EncodingKey::from_secret(bytes)) {
            self.hs256 = Some((decoding, encoding));
        }
        self
    }

    /// Accepts EdDSA tokens signed by these public keys.
    pub fn with_public_keys(mut self, keys: Vec<(Option<String>, DecodingKey)>) -> Self {
        self.eddsa.extend(keys);
        self
    }

    /// Mints EdDSA tokens with `key`, and accepts them.
    pub fn with_signing_key(mut self, key: Ed25519Key) -> Self {
        let public = DecodingKey::from_ed_components(&key.public_jwk().x).ok();
        if let Some(public) = public {
            self.eddsa.push((Some(key.kid.clone()), public));
        }
        self.signing = Some(key);
        self
    }

    pub fn with_claims(mut self, issuer: &str, audience: &str, max_lifetime: Duration) -> Self {
        self.issuer = issuer.to_owned();
        self.audience = audience.to_owned();
        self.max_lifetime = max_lifetime;
        self
    }

    fn accepted(&self) -> String {
        let mut names = Vec::new();
        if !self.eddsa.is_empty() {
            names.push("EdDSA");
        }
        if self.hs256.is_some() {
            names.push("HS256");
        }
        names.join(", ")
    }

    /// Checks the token and returns its principal. `now` is unix seconds.
    pub fn verify(&self, token: &str, now: i64) -> Result<Principal, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Malformed);
        }
        let head_b64 = token.split('.').next().ok_or(AuthError::Malformed)?;
        let head: Head = URL_SAFE_NO_PAD
            .decode(head_b64)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or(AuthError::Malformed)?;
        let (algorithm, key) = match head.alg.as_str() {
            "EdDSA" if !self.eddsa.is_empty() => {
                let key = match head.kid.as_deref() {
                    Some(kid) => self.eddsa.iter().find(|(k, _)| k.as_deref() == Some(kid)),
                    None if self.eddsa.len() == 1 => self.eddsa.first(),
                    None => None,
                };
                (Algorithm::EdDSA, &key.ok_or(AuthError::UnknownKey)?.1)
            }
            "HS256" if self.hs256.is_some() => (Algorithm::HS256, &self.hs256.as_ref().ok_or(AuthError::Malformed)?.0),
            _ => return Err(AuthError::Algorithm(self.accepted())),
        };
        let mut validation = Validation::new(algorithm);
        validation.validate_exp = false; // checked below against `now`, without overflow
        validation.validate_nbf = false;
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        let claims = jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                match e.kind() {
                    K::InvalidSignature => AuthError::Signature,
                    K::InvalidIssuer => AuthError::Claim("iss"),
                    K::InvalidAudience => AuthError::Claim("aud"),
                    K::MissingRequiredClaim(claim) => AuthError::Claim(match claim.as_str() {
                        "iss" => "iss",
                        "aud" => "aud",
                        "sub" => "sub",
                        _ => "exp",
                    }),
                    K::InvalidAlgorithm => AuthError::Algorithm(self.accepted()),
                    _ => AuthError::Malformed,
                }
            })?
            .claims;
        if claims.exp.saturating_add(LEEWAY_SECS) < now {
            return Err(AuthError::Expired);
        }
        if claims.nbf.is_some_and(|nbf| nbf.saturating_sub(LEEWAY_SECS) > now) {
            return Err(AuthError::NotYetValid);
        }
        let max = i64::try_from(self.max_lifetime.as_secs()).unwrap_or(i64::MAX);
        if claims.exp.saturating_sub(now) > max.saturating_add(LEEWAY_SECS) {
            return Err(AuthError::Lifetime);
        }
        // The same rule as user ids in requests: 1-128 bytes of printable text, no padding;
        // `@…` names the services' own peers on the signal bus (the recorder).
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

    /// Signs a token for `user_id` valid until `exp` (unix seconds): EdDSA with the signing key
    /// when there is one, else HS256. Empty when neither is configured.
    pub fn mint(&self, user_id: &str, role: Role, exp: i64) -> String {
        let claims = Claims {
            sub: user_id.to_owned(),
            role,
            exp,
            nbf: None,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            iat: Some(chrono::Utc::now().timestamp()),
        };
        let (header, key) = match (&self.signing, &self.hs256) {
            (Some(signing), _) => {
                let mut header = jsonwebtoken::Header::new(Algorithm::EdDSA);
                header.kid = Some(signing.kid.clone());
                (header, signing.encoding_key())
            }
            (None, Some((_, key))) => (jsonwebtoken::Header::new(Algorithm::HS256), key.clone()),
            (None, None) => return String::new(),
        };
        jsonwebtoken::encode(&header, &claims, &key).unwrap_or_default()
    }
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

    fn claims(sub: &str, exp: i64) -> Claims {
        Claims {
            sub: sub.into(),
            role: Role::User,
            exp,
            nbf: None,
            iss: DEFAULT_ISSUER.into(),
            aud: DEFAULT_AUDIENCE.into(),
            iat: None,
        }
    }

    /// A token signed with the test secret carrying any claims.
    fn signed(claims: &Claims) -> String {
        let key = EncodingKey::from_secret(b"test-secret-test-secret-test-secret").expect("key");
        jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::HS256), claims, &key).expect("encodes")
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
    fn eddsa_with_two_keys_for_a_rotation_and_only_public_keys_on_the_verifier() {
        let (old, new) = (Ed25519Key::generate("2026-11"), Ed25519Key::generate("2026-12"));
        let jwks = jwks_json(&[old.public_jwk(), new.public_jwk()]);
        assert!(!jwks.contains("\"d\""), "no private part in the verifiers' set");
        let verifier = JwtKeys::none().with_public_keys(parse_jwks(&jwks).expect("jwks"));
        for issuer in [&old, &new] {
            let token = JwtKeys::none().with_signing_key(issuer.clone()).mint("bob", Role::Service, NOW + 60);
            assert_eq!(verifier.verify(&token, NOW).map(|p| p.role), Ok(Role::Service));
        }
        // A key the verifier does not hold, and an HS256 token where only EdDSA is configured.
        let stranger = JwtKeys::none().with_signing_key(Ed25519Key::generate("2026-12")).mint("bob", Role::User, NOW);
        assert_eq!(verifier.verify(&stranger, NOW), Err(AuthError::Signature));
        let unknown = JwtKeys::none().with_signing_key(Ed25519Key::generate("other")).mint("bob", Role::User, NOW);
        assert_eq!(verifier.verify(&unknown, NOW), Err(AuthError::UnknownKey));
        let hs = keys().mint("bob", Role::Service, NOW + 60);
        assert_eq!(verifier.verify(&hs, NOW), Err(AuthError::Algorithm("EdDSA".into())));
        // A private JWK round-trips; its public half must match.
        let back = Ed25519Key::from_jwk_json(&new.private_jwk_json()).expect("private jwk");
        assert_eq!(back.public_jwk().x, new.public_jwk().x);
        let mut other = serde_json::from_str::<serde_json::Value>(&new.private_jwk_json()).expect("json");
        other["x"] = old.public_jwk().x.into();
        assert!(Ed25519Key::from_jwk_json(&other.to_string()).is_err());
        assert!(parse_jwks(r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"AAAA"}]}"#).is_err(), "short x");
    }

    #[test]
    fn tampered_expired_foreign_and_misaddressed_tokens_are_refused() {
        let token = keys().mint("alice", Role::User, NOW + 60);
        let other =
            JwtKeys::new(Secret::new("another-secret-another-secret-another")).mint("alice", Role::User, NOW + 60);
        assert_eq!(keys().verify(&other, NOW), Err(AuthError::Signature));

        let forged = URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&Claims { role: Role::Service, ..claims("alice", NOW + 60) }).expect("json"));
        let mut parts: Vec<&str> = token.split('.').collect();
        parts[1] = &forged;
        assert_eq!(keys().verify(&parts.join("."), NOW), Err(AuthError::Signature));

        assert_eq!(keys().verify(&token, NOW + 60 + LEEWAY_SECS + 1), Err(AuthError::Expired));
        assert_eq!(keys().verify("a.b", NOW), Err(AuthError::Malformed));
        assert_eq!(keys().verify("", NOW), Err(AuthError::Malformed));

        let elsewhere = signed(&Claims { iss: "someone-else".into(), ..claims("alice", NOW + 60) });
        assert_eq!(keys().verify(&elsewhere, NOW), Err(AuthError::Claim("iss")));
        let other_audience = signed(&Claims { aud: "billing".into(), ..claims("alice", NOW + 60) });
        assert_eq!(keys().verify(&other_audience, NOW), Err(AuthError::Claim("aud")));
        let forever = signed(&claims("alice", NOW + 365 * 24 * 3600));
        assert_eq!(keys().verify(&forever, NOW), Err(AuthError::Lifetime));
    }

    #[test]
    fn reserved_and_unprintable_subjects_are_refused() {
        for sub in ["@recorder", " ", " alice", "al\u{0}ice", "bob\r\nrole: service", "\u{1b}[31mred"] {
            let token = keys().mint(sub, Role::User, NOW + 60);
            assert_eq!(keys().verify(&token, NOW), Err(AuthError::Subject), "{sub:?}");
        }
    }

    #[test]
    fn extreme_times_do_not_overflow() {
        let long = JwtKeys::new(Secret::new("test-secret-test-secret-test-secret")).with_claims(
            DEFAULT_ISSUER,
            DEFAULT_AUDIENCE,
            Duration::from_secs(u64::MAX / 2),
        );
        let far = signed(&Claims { nbf: Some(i64::MIN), ..claims("alice", i64::MAX) });
        assert!(long.verify(&far, NOW).is_ok());
        let never = signed(&claims("alice", i64::MIN));
        assert_eq!(keys().verify(&never, NOW), Err(AuthError::Claim("exp")), "a negative exp is no time at all");
        let long_ago = signed(&claims("alice", 1));
        assert_eq!(keys().verify(&long_ago, NOW), Err(AuthError::Expired));
        let later = signed(&Claims { nbf: Some(i64::MAX), ..claims("alice", NOW + 60) });
        assert_eq!(keys().verify(&later, NOW), Err(AuthError::NotYetValid));
    }

    #[test]
    fn alg_none_is_refused() {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        let body = URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&Claims { role: Role::Service, ..claims("mallory", NOW + 60) }).expect("json"));
        assert_eq!(keys().verify(&format!("{header}.{body}."), NOW), Err(AuthError::Algorithm("HS256".into())));
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
    }
}
