//! Structured logs through `tracing`: human text by default, JSON lines with `LOG_FORMAT=json`;
//! and traces: when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the standard `OTEL_*` variables apply),
//! the same spans go to an OpenTelemetry collector over OTLP/gRPC, and W3C trace context crosses
//! process boundaries (gRPC metadata, AMQP headers, the CloudEvents `traceparent` extension)
//! through [`trace_context`].

use std::str::FromStr;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::{EnvFilter, Layer, fmt, layer::SubscriberExt, util::SubscriberInitExt};

const DEFAULT_FILTER: &str = "info,sqlx=warn,sea_orm=warn,lapin=warn,h2=warn,tower=warn,hyper=warn";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    /// The `LOG_FORMAT` value that selects this format.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("`{other}` is not one of text, json")),
        }
    }
}

/// Installs the global subscriber (logs only). `RUST_LOG` overrides the default filter.
pub fn init(format: LogFormat) {
    install(format, None);
}

/// The span exporter of a process, while it runs: [`Traces::shutdown`] flushes what is buffered.
#[must_use = "keep it until the process ends, then call shutdown"]
pub struct Traces(Option<SdkTracerProvider>);

impl Traces {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.0.is_some()
    }

    /// Exports what is buffered and stops.
    pub fn shutdown(self) {
        if let Some(provider) = self.0
            && let Err(error) = provider.shutdown()
        {
            eprintln!("traces not flushed: {error}");
        }
    }
}

/// As [`init`], and when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
/// is set, every span is exported too, as service `service` (`OTEL_SERVICE_NAME` wins). Call it
/// inside the Tokio runtime.
pub fn init_service(format: LogFormat, service: &str) -> Traces {
    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    let wanted = ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
        .iter()
        .any(|var| std::env::var(var).is_ok_and(|v| !v.trim().is_empty()));
    let provider = if wanted {
        match opentelemetry_otlp::SpanExporter::builder().with_tonic().build() {
            Ok(exporter) => {
                let name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service.to_owned());
                let resource = opentelemetry_sdk::Resource::builder().with_service_name(name).build();
                Some(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
            }
            Err(error) => {
                eprintln!("OTLP trace exporter not started: {error}");
                None
            }
        }
    } else {
        None
    };
    install(format, provider.clone());
    Traces(provider)
}

fn install(format: LogFormat, traces: Option<SdkTracerProvider>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let otel = traces.map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("videocall")));
    let logs = match format {
        LogFormat::Text => fmt::layer().with_target(true).boxed(),
        LogFormat::Json => fmt::layer().json().flatten_event(true).with_current_span(true).boxed(),
    };
    if let Err(error) = tracing_subscriber::registry().with(filter).with(otel).with(logs).try_init() {
        eprintln!("logging was already initialised: {error}");
    }
}

/// W3C trace context across processes: the current span's `traceparent` to send along, and a
/// received one made the parent of a span.
pub mod trace_context {
    use std::collections::HashMap;

    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    /// The current span's `traceparent` (`00-<trace id>-<span id>-<flags>`), when it is traced.
    pub fn current() -> Option<String> {
        let context = tracing::Span::current().context();
        let mut carrier: HashMap<String, String> = HashMap::new();
        TraceContextPropagator::new().inject_context(&context, &mut carrier);
        carrier.remove("traceparent")
    }

    /// Makes `span` a child of the remote span `traceparent` names; an invalid one is ignored.
    pub fn set_parent(span: &tracing::Span, traceparent: &str) {
        let carrier: HashMap<String, String> = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
        let context = TraceContextPropagator::new().extract(&carrier);
        use opentelemetry::trace::TraceContextExt;
        if context.span().span_context().is_valid() {
            let _ = span.set_parent(context);
        }
    }
}

/// For tests: logs only when `TEST_LOG` is set, so a passing suite stays quiet.
pub fn init_for_tests() {
    if std::env::var_os("TEST_LOG").is_some() {
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
        let _ = fmt().with_env_filter(filter).with_test_writer().try_init();
    }
}
