//! `signaling-relay` binary: configuration, telemetry, build, run.

use clap::Parser;
use videocall_runtime::{shutdown, telemetry};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = match signaling_relay::RelayArgs::parse().validate() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("signaling-relay: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    telemetry::init(config.common.log_format);
    let shutdown = shutdown::on_signal();
    let result = async {
        let app = signaling_relay::Application::build(config, &shutdown).await?;
        tracing::info!(addr = %app.local_addr(), "signaling-relay ready");
        app.run_until_stopped(shutdown).await
    }
    .await;
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "signaling-relay failed");
            std::process::ExitCode::FAILURE
        }
    }
}
