//! The process's logging and trace export, set up once per command by
//! [`init`]:
//!
//! - `[log] level` (a `tracing` filter; `STELE_LOG_LEVEL` overrides it like
//!   any `STELE_<SECTION>_<KEY>`) and `[log] format` (`text` lines or one
//!   JSON object per record), on stderr;
//! - `[otel] endpoint`: the `tracing` spans chosen by `[otel] level` (the
//!   ORGA phases of reasoning runs, `orga.*`, and the journal's group
//!   commits, `journal.commit`) go through `tracing-opentelemetry` into the
//!   SDK's batch span processor (its own thread, `[otel] batch_delay`) and
//!   on to the collector as OTLP/HTTP protobuf. A collector that is down or
//!   refuses a batch costs the batch and one warning on stderr (and one
//!   more when it answers again), never the command; the queue drops
//!   spans when full rather than slowing the runtime.
//!
//! The [`Telemetry`] guard flushes what is still batched when the command
//! ends (within `[otel] timeout`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter,
};
use stele_engine::config::{LogConfig, LogFormat, OtelConfig};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// Spans batched before the processor drops new ones (the SDK's default).
const MAX_QUEUED_SPANS: usize = 2048;
/// Spans per OTLP request.
const MAX_SPANS_PER_EXPORT: usize = 512;
/// Crates whose own spans would feed back into the export (the exporter's
/// HTTP client) or are of no use in a trace of stele.
const NEVER_EXPORTED: &str = "opentelemetry=off,opentelemetry_sdk=off,opentelemetry_otlp=off,opentelemetry_http=off,reqwest=off,hyper=off,hyper_util=off,h2=off";

/// Flushes the exported spans when dropped (at the end of the command).
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    flush_timeout: Duration,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take()
            && let Err(e) = p.shutdown_with_timeout(self.flush_timeout)
        {
            eprintln!("stele: warning: flushing the OpenTelemetry spans at exit: {e}");
        }
    }
}

/// Installs the global subscriber: the log on stderr and, with an
/// `[otel] endpoint`, the span export.
///
/// # Errors
/// A filter that does not parse; an endpoint that is not an http(s) URL;
/// the exporter cannot be built.
pub fn init(log: &LogConfig, otel: &OtelConfig) -> Result<Telemetry> {
    let filter = EnvFilter::try_new(&log.level)
        .map_err(|e| anyhow::anyhow!("[log] level {:?} is not a tracing filter: {e}", log.level))?;
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = vec![match log.format {
        LogFormat::Text => fmt.with_filter(filter).boxed(),
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_filter(filter)
            .boxed(),
    }];
    let mut guard = Telemetry::default();
    if let Some(endpoint) = &otel.endpoint {
        let provider = provider(endpoint, otel)?;
        let spans = EnvFilter::try_new(format!("{},{NEVER_EXPORTED}", otel.level))
            .map_err(|e| anyhow::anyhow!("[otel] level {:?} is not a tracing filter: {e}", otel.level))?;
        layers.push(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("stele"))
                .with_filter(spans)
                .boxed(),
        );
        guard = Telemetry {
            provider: Some(provider),
            flush_timeout: otel.timeout,
        };
    }
    // A second init (tests calling twice) keeps the first subscriber; the
    // guard then has nothing of its own to flush.
    if tracing_subscriber::registry().with(layers).try_init().is_err() {
        return Ok(Telemetry::default());
    }
    Ok(guard)
}

/// The tracer provider exporting to `endpoint` in batches.
fn provider(endpoint: &str, otel: &OtelConfig) -> Result<SdkTracerProvider> {
    let scheme_ok = endpoint
        .split_once("://")
        .is_some_and(|(s, rest)| matches!(s, "http" | "https") && !rest.is_empty());
    if !scheme_ok {
        bail!(
            "[otel] endpoint {endpoint:?} is not an http:// or https:// URL (OTLP/HTTP, e.g. \"http://127.0.0.1:4318/v1/traces\")"
        );
    }
    // reqwest is built without a crypto provider of its own: an https
    // endpoint uses ring, as every other rustls user in stele. Installed
    // already is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .with_timeout(otel.timeout)
        .build()
        .with_context(|| format!("[otel] endpoint {endpoint:?}: building the OTLP/HTTP exporter"))?;
    let exporter = Warned {
        inner: exporter,
        endpoint: endpoint.to_owned(),
        failing: AtomicBool::new(false),
    };
    let batch = BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(MAX_QUEUED_SPANS)
                .with_max_export_batch_size(MAX_SPANS_PER_EXPORT)
                .with_scheduled_delay(otel.batch_delay)
                .build(),
        )
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(batch)
        .with_resource(resource(otel))
        .build())
}

/// `service.name`, `service.version`, `service.instance.id` (host and pid),
/// `host.name`, `process.pid`, what `OTEL_RESOURCE_ATTRIBUTES` adds, then
/// `[otel] resource` (which wins).
fn resource(otel: &OtelConfig) -> Resource {
    let pid = std::process::id();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    Resource::builder()
        .with_service_name(otel.service_name.clone())
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("service.instance.id", format!("{host}/{pid}")),
            KeyValue::new("host.name", host),
            KeyValue::new("process.pid", i64::from(pid)),
        ])
        .with_attributes(
            otel.resource
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
        )
        .build()
}

/// The OTLP exporter, saying on stderr when exports start failing and when
/// they work again (once each, not per batch).
#[derive(Debug)]
struct Warned<E> {
    inner: E,
    endpoint: String,
    failing: AtomicBool,
}

impl<E: SpanExporter> SpanExporter for Warned<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        match &result {
            Err(e) if !self.failing.swap(true, Ordering::Relaxed) => eprintln!(
                "stele: warning: OpenTelemetry export to {} failed ({spans} spans dropped): {e}; later batches are tried as they come",
                self.endpoint
            ),
            Ok(()) if self.failing.swap(false, Ordering::Relaxed) => {
                eprintln!("stele: OpenTelemetry export to {} works again", self.endpoint);
            }
            _ => {}
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
