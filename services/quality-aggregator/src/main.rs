//! `quality-aggregator` binary: configuration, telemetry, run.

use clap::Parser;
use videocall_runtime::{shutdown, telemetry};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = match quality_aggregator::AggregatorArgs::parse().validate() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("quality-aggregator: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    telemetry::init(config.common.log_format);
    match quality_aggregator::run(config, shutdown::on_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "quality-aggregator failed");
            std::process::ExitCode::FAILURE
        }
    }
}
