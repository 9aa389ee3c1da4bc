//! `call-recorder` binary: the service shell around [`call_recorder::Application`].

#[tokio::main]
async fn main() -> std::process::ExitCode {
    videocall_runtime::service::main::<call_recorder::Application>().await
}
