//! `signaling-relay`: the WebSocket signaling edge (offer/answer/ice-candidate/hangup over Redis Pub/Sub).
//!
//! Not built yet: this binary exists so the fleet's layout is in place, and says so instead of
//! pretending to work. See the project's issue tracker for its progress.

fn main() -> std::process::ExitCode {
    eprintln!(
        "signaling-relay: not implemented yet (the WebSocket signaling edge (offer/answer/ice-candidate/hangup over Redis Pub/Sub)); nothing was started"
    );
    std::process::ExitCode::from(78) // EX_CONFIG: a supervisor should not restart it in a loop
}
