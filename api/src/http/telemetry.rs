//! The process's logging: `[log] level` (a `tracing` filter; the
//! `STELE_LOG_LEVEL` variable overrides it like any `STELE_<SECTION>_<KEY>`)
//! and `[log] format` (`text` lines or one JSON object per record), on
//! stderr. `[otel] endpoint` is checked here too: this build does not
//! export OpenTelemetry traces, so a configured endpoint is refused rather
//! than silently ignored.

use anyhow::{Result, bail};
use stele_engine::config::{LogConfig, LogFormat, OtelConfig};
use tracing_subscriber::EnvFilter;

/// Refuses an `[otel] endpoint` (checked by `stele up`).
///
/// # Errors
/// An endpoint is configured.
pub fn check_otel(otel: &OtelConfig) -> Result<()> {
    if let Some(endpoint) = &otel.endpoint {
        bail!(
            "[otel] endpoint = {endpoint:?} is set, but this stele exports no OpenTelemetry traces; remove it (logs: [log] format = \"json\")"
        );
    }
    Ok(())
}

/// Installs the global subscriber.
///
/// # Errors
/// A filter that does not parse.
pub fn init(log: &LogConfig) -> Result<()> {
    let filter = EnvFilter::try_new(&log.level)
        .map_err(|e| anyhow::anyhow!("[log] level {:?} is not a tracing filter: {e}", log.level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
    // A second init (tests calling twice) keeps the first subscriber.
    let _ = result;
    Ok(())
}
