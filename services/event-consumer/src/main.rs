//! `event-consumer` binary: configuration, telemetry, run.

use clap::Parser;
use videocall_runtime::{shutdown, telemetry};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = match event_consumer::ConsumerArgs::parse().validate() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("event-consumer: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    telemetry::init(config.common.log_format);
    match event_consumer::run(config, shutdown::on_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "event-consumer failed");
            std::process::ExitCode::FAILURE
        }
    }
}
