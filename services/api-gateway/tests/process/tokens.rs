//! Asymmetric tokens end to end: `vc-token keygen` makes an Ed25519 key, the gateway process holds
//! only its public JWKS (no JWT_SECRET), tokens `vc-token` signs are accepted, HS256 tokens and
//! tokens of another key are not, and two keys at once (a rotation) both verify.

use tonic::{Code, Request};
use videocall_proto::v1::{self as pb, call_service_client::CallServiceClient};
use videocall_runtime::{
    auth::{Ed25519Key, JwtKeys, Role, jwks_json},
    config::Secret,
};
use videocall_testkit::process::{Process, loopback, temp_dir, workspace_binary};

fn vc_token(args: &[&str], envs: &[(&str, &str)]) -> (bool, String, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_vc-token"));
    command.env_clear().args(args);
    for (k, v) in envs {
        command.env(k, v);
    }
    let output = command.output().expect("vc-token runs");
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_owned();
    (output.status.success(), text(&output.stdout), text(&output.stderr))
}

fn with_token<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ascii"));
    request
}

#[tokio::test]
async fn a_gateway_with_public_keys_only_accepts_what_the_issuer_signed() {
    let dir = temp_dir("tokens");
    let keys = dir.join("keys");
    let (ok, out, err) = vc_token(&["keygen", keys.to_str().expect("utf-8"), "2026-12"], &[]);
    assert!(ok, "{err}");
    assert!(out.contains("JWT_PUBLIC_KEYS="), "{out}");
    let (ok, _, err) = vc_token(&["keygen", keys.to_str().expect("utf-8")], &[]);
    assert!(!ok && err.contains("exists"), "keygen never overwrites a key: {err}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(keys.join("signing-key.jwk")).expect("key").permissions().mode();
        assert_eq!(mode & 0o077, 0, "the private key is readable by its owner only");
    }
    // The public set the gateway gets holds this key and a second one (a rotation in progress).
    let next = Ed25519Key::generate("2027-01");
    let current: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(keys.join("jwks.json")).expect("jwks")).expect("json");
    let mut set: Vec<videocall_runtime::auth::OkpJwk> = serde_json::from_value(current["keys"].clone()).expect("keys");
    assert!(set.iter().all(|k| k.d.is_none()), "no private part in jwks.json");
    set.push(next.public_jwk());
    let jwks = dir.join("rotation.json");
    std::fs::write(&jwks, jwks_json(&set)).expect("write jwks");

    let (grpc, ops) = (loopback(), loopback());
    let mut command = workspace_binary("api-gateway");
    command
        .env("DATABASE_URL", videocall_testkit::fresh_database().await)
        .env("AMQP_URL", videocall_testkit::amqp_url())
        .env("REDIS_URL", videocall_testkit::redis_url())
        .env("CELL_ID", videocall_testkit::unique_name("tokens"))
        .env("EVENTS_EXCHANGE", videocall_testkit::unique_name("videocall.events.tokens"))
        .env("JWT_PUBLIC_KEYS", &jwks)
        .env("GRPC_LISTEN_ADDR", grpc.to_string())
        .env("OPS_LISTEN_ADDR", ops.to_string());
    let mut gateway = Process::spawn("api-gateway-tokens", command, &dir);
    gateway.wait_ready(ops, "/readyz").await;
    let mut client = CallServiceClient::connect(format!("http://{grpc}")).await.expect("connect");

    let signing = keys.join("signing-key.jwk");
    let (ok, issued, err) =
        vc_token(&["agent-1", "agent", "600"], &[("JWT_SIGNING_KEY", signing.to_str().expect("utf-8"))]);
    assert!(ok, "{err}");
    let rotated =
        JwtKeys::none().with_signing_key(next).mint("agent-2", Role::Agent, chrono::Utc::now().timestamp() + 600);
    for token in [&issued, &rotated] {
        client.get_ice_servers(with_token(token, pb::GetIceServersRequest {})).await.expect("accepted");
    }
    let hs256 = JwtKeys::new(Secret::new("an-hs256-secret-nobody-configured-here")).mint(
        "mallory",
        Role::Service,
        chrono::Utc::now().timestamp() + 600,
    );
    let stranger = JwtKeys::none().with_signing_key(Ed25519Key::generate("2026-12")).mint(
        "mallory",
        Role::Service,
        chrono::Utc::now().timestamp() + 600,
    );
    for (token, message) in
        [(&hs256, "unsupported token algorithm (accepted here: EdDSA)"), (&stranger, "bad token signature")]
    {
        let status = client.get_ice_servers(with_token(token, pb::GetIceServersRequest {})).await.expect_err(message);
        assert_eq!((status.code(), status.message()), (Code::Unauthenticated, message));
    }
    let status = gateway.terminate(std::time::Duration::from_secs(20)).await;
    assert!(status.success(), "{status}");
    std::fs::remove_dir_all(dir).ok();
}
