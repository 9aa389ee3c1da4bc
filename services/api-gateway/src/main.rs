//! `api-gateway` binary: the service shell around [`api_gateway::Application`].

#[tokio::main]
async fn main() -> std::process::ExitCode {
    videocall_runtime::service::main::<api_gateway::Application>().await
}
