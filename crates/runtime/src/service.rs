//! The shell every service binary shares: a [`Service`] is built from its
//! validated configuration (connecting and binding; port 0 in tests) and run until a shutdown
//! token is cancelled; each service's `startup::Application` is one. Its `main` is then
//! [`main::<startup::Application>()`](main): parse and check
//! the configuration (exit 2 naming every bad variable), start telemetry, stop on SIGTERM/SIGINT,
//! build, run; exit 1 with the error if either fails.

use std::{future::Future, process::ExitCode};

use tokio_util::sync::CancellationToken;

use crate::{config::ConfigError, shutdown, telemetry::LogFormat};

/// One service, as its binary and the standalone binary run it.
pub trait Service: Sized + Send {
    /// The binary's name, in logs and errors.
    const NAME: &'static str;
    /// The command line and environment (`--help` lists them).
    type Args: clap::Parser;
    /// The checked configuration.
    type Config: Send;

    /// Checks every setting; the error names each bad one.
    fn configure(args: Self::Args) -> Result<Self::Config, ConfigError>;

    fn log_format(config: &Self::Config) -> LogFormat;

    /// Connects (waiting, with backoff, for what must be there; giving up when `shutdown` is
    /// cancelled) and binds every listener.
    fn build(config: Self::Config, shutdown: &CancellationToken) -> impl Future<Output = anyhow::Result<Self>> + Send;

    /// Serves until `shutdown`, then drains.
    fn run_until_stopped(self, shutdown: CancellationToken) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// The configuration this service's own binary would have with its defaults and `overrides`
    /// (`--flag=value`), reading no environment variable: how the standalone binary configures
    /// the services it runs, so each default lives in one place.
    fn configured_with(overrides: &[String]) -> anyhow::Result<Self::Config> {
        use clap::{CommandFactory, FromArgMatches};
        let command = Self::Args::command().mut_args(|arg| arg.env(None::<&'static str>));
        let argv = std::iter::once(Self::NAME.to_owned()).chain(overrides.iter().cloned());
        let matches = command.try_get_matches_from(argv).map_err(|e| anyhow::anyhow!("{}: {e}", Self::NAME))?;
        let args = Self::Args::from_arg_matches(&matches).map_err(|e| anyhow::anyhow!("{}: {e}", Self::NAME))?;
        Self::configure(args).map_err(|e| anyhow::anyhow!("{}: {e}", Self::NAME))
    }
}

/// The configuration items of a [`Service`] impl whose `Args::validate(&self)` checks into its
/// `Config`, which has the shared settings in `common`:
/// `service_configuration!("api-gateway", GatewayArgs => GatewayConfig);`
#[macro_export]
macro_rules! service_configuration {
    ($name:literal, $args:ty => $config:ty) => {
        const NAME: &'static str = $name;
        type Args = $args;
        type Config = $config;

        fn configure(args: $args) -> Result<$config, $crate::config::ConfigError> {
            args.validate()
        }

        fn log_format(config: &$config) -> $crate::telemetry::LogFormat {
            config.common.log_format
        }
    };
}

/// The whole `main` of a service binary.
pub async fn main<A: Service>() -> ExitCode {
    let args = <A::Args as clap::Parser>::parse();
    let config = match A::configure(args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{}: {error}", A::NAME);
            return ExitCode::from(2);
        }
    };
    let traces = crate::telemetry::init_service(A::log_format(&config), A::NAME);
    let shutdown = shutdown::on_signal();
    let result = async {
        let app = A::build(config, &shutdown).await?;
        tracing::info!(service = A::NAME, "ready");
        app.run_until_stopped(shutdown).await
    }
    .await;
    traces.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "{} failed", A::NAME);
            ExitCode::FAILURE
        }
    }
}
