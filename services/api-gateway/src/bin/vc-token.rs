//! `vc-token USER [user|agent|service] [TTL_SECS]`: mints a bearer token with `JWT_SECRET`, for
//! development and operations (grpcurl, the web client, scripts).

use std::process::ExitCode;

use videocall_platform::{
    auth::{JwtKeys, Role},
    config::Secret,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(user) = args.first() else {
        eprintln!("usage: vc-token USER [user|agent|service] [TTL_SECS]   (reads JWT_SECRET)");
        return ExitCode::from(2);
    };
    let role = match args.get(1).map(String::as_str).unwrap_or("user") {
        "user" => Role::User,
        "agent" => Role::Agent,
        "service" => Role::Service,
        other => {
            eprintln!("vc-token: role `{other}` is not one of user, agent, service");
            return ExitCode::from(2);
        }
    };
    let ttl: i64 = match args.get(2).map(|s| s.parse()) {
        None => 3600,
        Some(Ok(ttl)) => ttl,
        Some(Err(_)) => {
            eprintln!("vc-token: TTL_SECS must be a whole number");
            return ExitCode::from(2);
        }
    };
    let Some(secret) = std::env::var("JWT_SECRET").ok().filter(|s| !s.is_empty()) else {
        eprintln!("vc-token: JWT_SECRET is required");
        return ExitCode::from(2);
    };
    let exp = chrono::Utc::now().timestamp() + ttl;
    println!("{}", JwtKeys::new(Secret::new(secret)).mint(user, role, exp));
    ExitCode::SUCCESS
}
