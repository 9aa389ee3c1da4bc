//! `quality-aggregator` binary: the service shell around [`quality_aggregator::Application`].

#[tokio::main]
async fn main() -> std::process::ExitCode {
    videocall_runtime::service::main::<quality_aggregator::Application>().await
}
