//! `signaling-relay` binary: the service shell around [`signaling_relay::Application`].

#[tokio::main]
async fn main() -> std::process::ExitCode {
    videocall_runtime::service::main::<signaling_relay::Application>().await
}
