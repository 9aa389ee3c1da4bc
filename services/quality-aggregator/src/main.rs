//! `quality-aggregator`: the per-call quality aggregator.
//!
//! Not built yet: this binary exists so the fleet's layout is in place, and says so instead of
//! pretending to work. See the project's issue tracker for its progress.

fn main() -> std::process::ExitCode {
    eprintln!("quality-aggregator: not implemented yet (the per-call quality aggregator); nothing was started");
    std::process::ExitCode::from(78) // EX_CONFIG: a supervisor should not restart it in a loop
}
