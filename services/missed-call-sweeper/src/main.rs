//! `missed-call-sweeper` binary: the service shell around [`missed_call_sweeper::Application`].

#[tokio::main]
async fn main() -> std::process::ExitCode {
    videocall_runtime::service::main::<missed_call_sweeper::Application>().await
}
