//! `call-recorder` binary: configuration, telemetry, run.

use clap::Parser;
use videocall_runtime::{shutdown, telemetry};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = match call_recorder::RecorderArgs::parse().validate() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("call-recorder: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    telemetry::init(config.common.log_format);
    match call_recorder::run(config, shutdown::on_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "call-recorder failed");
            std::process::ExitCode::FAILURE
        }
    }
}
