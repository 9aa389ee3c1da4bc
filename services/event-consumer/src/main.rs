//! `event-consumer`: the UserOffline / SupportTicketCreated consumer.
//!
//! Not built yet: this binary exists so the fleet's layout is in place, and says so instead of
//! pretending to work. See the project's issue tracker for its progress.

fn main() -> std::process::ExitCode {
    eprintln!(
        "event-consumer: not implemented yet (the UserOffline / SupportTicketCreated consumer); nothing was started"
    );
    std::process::ExitCode::from(78) // EX_CONFIG: a supervisor should not restart it in a loop
}
