//! `event-consumer` binary: the service shell around [`event_consumer::Application`].

#[tokio::main]
async fn main() -> std::process::ExitCode {
    videocall_runtime::service::main::<event_consumer::Application>().await
}
