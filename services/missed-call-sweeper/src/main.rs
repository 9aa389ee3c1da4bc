//! `missed-call-sweeper` binary: configuration, telemetry, run.

use clap::Parser;
use videocall_runtime::{shutdown, telemetry};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = match missed_call_sweeper::SweeperArgs::parse().validate() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("missed-call-sweeper: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    telemetry::init(config.common.log_format);
    match missed_call_sweeper::run(config, shutdown::on_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "missed-call-sweeper failed");
            std::process::ExitCode::FAILURE
        }
    }
}
