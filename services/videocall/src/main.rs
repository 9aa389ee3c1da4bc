//! `videocall` binary: the whole fleet in one process (see the library docs). Prints where
//! everything listens and ready-to-open page links with tokens.

use std::{process::ExitCode, time::Duration};

use clap::Parser;
use videocall::{Standalone, StandaloneArgs, mint_token};
use videocall_runtime::{shutdown, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let args = StandaloneArgs::parse();
    let config = match args.validate() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("videocall: {error}");
            return ExitCode::from(2);
        }
    };
    if let Some(user) = &args.token {
        return match mint_token(&config.tokens, user, &args.role, Duration::from_secs(12 * 3600)) {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("videocall: {error}");
                ExitCode::from(2)
            }
        };
    }
    let traces = telemetry::init_service(config.log_format, "videocall");
    let shutdown = shutdown::on_signal();
    let app = match Standalone::build(config, &shutdown).await {
        Ok(app) => app,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "videocall could not start");
            traces.shutdown();
            return ExitCode::FAILURE;
        }
    };
    print_welcome(&app);
    let stopped = app.run_until_stopped(shutdown).await;
    traces.shutdown();
    match stopped {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "videocall failed");
            ExitCode::FAILURE
        }
    }
}

fn print_welcome(app: &Standalone) {
    let config = app.config();
    let day = Duration::from_secs(12 * 3600);
    let token = |user: &str, role: &str| mint_token(&config.tokens, user, role, day).unwrap_or_default();
    let http = app.http_addr();
    let data = config.data_dir.join("videocall.sqlite3");
    let workers = app.workers_addr().map(|a| a.to_string()).unwrap_or_default();
    let ops = app.ops_addr().map(|a| a.to_string()).unwrap_or_default();
    println!(
        "\nVideocall is running (standalone: SQLite at {data}, in-process buses).\n\n  \
         Agent page:    http://{http}/agent.html?token={agent}\n  \
         Customer page: http://{http}/customer.html?token={customer}\n\n  \
         (open both; the customer calls agent-1)\n\n  \
         gRPC:          {grpc}  (videocall.v1.CallService, health, reflection)\n  \
         WebSocket:     ws://{http}/ws?token=...  (docs/protocol.md)\n  \
         Health:        http://{ops}/readyz  http://{workers}/readyz  http://{http}/readyz\n  \
         Events in:     POST http://{workers}/events/presence.events/user.offline (CloudEvents JSON, a service token)\n  \
         More tokens:   cargo run -- --token USER --role user|agent|service\n\n\
         Ctrl-C stops.\n",
        data = data.display(),
        agent = token("agent-1", "agent"),
        customer = token("customer-1", "user"),
        grpc = app.grpc_addr(),
    );
}
