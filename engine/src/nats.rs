//! NATS connections from `[nats]` ([`NatsConfig`]): the one place that
//! turns the URL, TLS (a CA to trust, a client certificate for mutual TLS)
//! and the credentials (a `.creds` file, an NKey seed file, a user with the
//! password in an environment variable, or a token in one) into a
//! connected client. Both users of NATS connect through it with the same
//! settings: the JetStream event feed of the binary (`stele publish`,
//! `stele subscribe`, the publisher of `stele up`) and the bus's link to
//! peer instances (`[bus] nats = true`, [`crate::bus::remote`]).
//!
//! Every file and variable `[nats]` names is read before connecting, so a
//! missing or unreadable one is an error naming it ([`NatsError::Config`]);
//! a refused connection says what to check ([`connect_failure`]): the TLS
//! handshake and the CA trusted, the credentials refused and which, or the
//! server unreachable.
//!
//! async-nats types cross into the binary here on purpose (an exception to
//! "no async-nats type in another crate's signature"): the feed drives
//! JetStream with the client itself, and wrapping the client would only
//! hide the API it needs.
//!
//! Not here: the settings and their checks as the file is read
//! (`config.rs`, `[nats]`), the feed (the binary's `nats.rs`), the bus's
//! subjects and protocol (`bus/remote.rs`).

use std::path::Path;
use std::time::Duration;

use crate::config::{NatsAuth, NatsConfig};

/// A connection attempt gives up after this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests (JetStream API calls, publish acknowledgements) wait this long.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The first delay between reconnection attempts; it doubles up to
/// [`BACKOFF_CAP`].
pub const BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// The longest delay between reconnection attempts.
pub const BACKOFF_CAP: Duration = Duration::from_secs(5);

/// Why a NATS connection could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NatsError {
    /// A setting cannot be used: a file or environment variable `[nats]`
    /// names is missing, unreadable or not what it should hold.
    #[error("{0}")]
    Config(String),
    /// The server was unreachable, or refused the TLS handshake or the
    /// credentials (the message says which, see [`connect_failure`]).
    #[error("{0}")]
    Connect(String),
}

/// The delay before reconnection attempt `attempt` (from 0): doubles from
/// [`BACKOFF_FIRST`] up to [`BACKOFF_CAP`].
#[must_use]
pub fn backoff_delay(attempt: usize) -> Duration {
    let exp = u32::try_from(attempt.min(16)).unwrap_or(16);
    BACKOFF_FIRST
        .saturating_mul(2u32.saturating_pow(exp))
        .min(BACKOFF_CAP)
}

/// Connection options from `[nats]`: the client's `name` (as the server's
/// monitoring shows it), credentials, TLS, timeouts and a capped reconnect
/// back-off. Every file named by `[nats]` is checked here, and the secrets
/// are read (from files and the environment), so a missing or unreadable
/// one is an error naming it before any connection.
///
/// # Errors
/// [`NatsError::Config`] naming the setting and the file or variable.
pub async fn connect_options(cfg: &NatsConfig, name: &str) -> Result<async_nats::ConnectOptions, NatsError> {
    let mut o = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(CONNECT_TIMEOUT)
        .request_timeout(Some(REQUEST_TIMEOUT))
        .reconnect_delay_callback(backoff_delay);
    match cfg
        .auth(|var| std::env::var(var).ok())
        .map_err(NatsError::Config)?
    {
        NatsAuth::Anonymous => {}
        NatsAuth::Credentials(c) => {
            o = o.credentials_file(&c).await.map_err(|e| {
                NatsError::Config(format!(
                    "[nats] credentials: cannot use the credentials file {}: {e}",
                    c.display()
                ))
            })?;
        }
        NatsAuth::NKey { seed, file } => {
            nkeys::KeyPair::from_seed(&seed).map_err(|e| {
                NatsError::Config(format!(
                    "[nats] nkey: {} does not hold a valid NKey seed: {e}",
                    file.display()
                ))
            })?;
            o = o.nkey(seed);
        }
        NatsAuth::UserPassword { user, password } => o = o.user_and_password(user, password),
        NatsAuth::Token(t) => o = o.token(t),
    }
    if let Some(t) = &cfg.tls {
        let required = t.require || t.ca.is_some() || t.cert.is_some();
        o = o.require_tls(required);
        let readable = |what: &str, p: &Path| {
            std::fs::File::open(p).map(drop).map_err(|e| {
                NatsError::Config(format!("[nats.tls] {what}: cannot read {}: {e}", p.display()))
            })
        };
        if let Some(ca) = &t.ca {
            readable("ca", ca)?;
            o = o.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&t.cert, &t.key) {
            readable("cert", cert)?;
            readable("key", key)?;
            o = o.add_client_certificate(cert.clone(), key.clone());
        }
    }
    Ok(o)
}

/// What went wrong connecting to `[nats] url`, in words that say what to
/// check: the TLS handshake (and the CA trusted), the credentials refused
/// (and which), or the server unreachable. Never a secret.
#[must_use]
pub fn connect_failure(cfg: &NatsConfig, e: &async_nats::ConnectError) -> String {
    use async_nats::ConnectErrorKind as K;
    let url = &cfg.url;
    let auth = cfg
        .auth(|var| std::env::var(var).ok())
        .map_or_else(|e| e, |a| a.describe(cfg));
    // The error's text already holds its kind ("TLS error: …"). A refused
    // handshake (unknown issuer, a certificate the server wants) surfaces
    // as an I/O error of the TLS stream.
    let text = e.to_string().to_ascii_lowercase();
    let tls = matches!(e.kind(), K::Tls)
        || (matches!(e.kind(), K::Io)
            && ["certificate", "tls", "handshake", "alert"]
                .iter()
                .any(|w| text.contains(w)));
    match e.kind() {
        _ if tls => {
            let trust = match cfg.tls.as_ref().and_then(|t| t.ca.as_ref()) {
                Some(ca) => format!("the CA of [nats.tls] ca ({})", ca.display()),
                None => "the system's roots (set [nats.tls] ca to trust another CA)".to_owned(),
            };
            let client = match cfg.tls.as_ref().and_then(|t| t.cert.as_ref()) {
                Some(c) => format!("; the client certificate is {}", c.display()),
                None => String::new(),
            };
            format!(
                "TLS with NATS at {url} failed ({e}); the server's certificate must be signed by {trust} and name the host of the URL{client}"
            )
        }
        K::AuthorizationViolation => format!(
            "NATS at {url} refused to authorize {auth} ({e}); check [nats] credentials/nkey/user/token_env against the server's accounts"
        ),
        K::Authentication => format!("cannot authenticate to NATS at {url} with {auth}: {e}"),
        _ => format!("cannot reach NATS at {url}: {e}"),
    }
}

/// Connects once to `[nats] url` with every setting of `[nats]` (see
/// [`connect_options`]), as client `name`. The client then reconnects by
/// itself when the connection drops, with the capped back-off.
///
/// # Errors
/// [`NatsError::Config`] for an unusable setting, [`NatsError::Connect`]
/// for a server unreachable (within [`CONNECT_TIMEOUT`]) or refusing TLS or
/// the credentials, saying which.
pub async fn connect(cfg: &NatsConfig, name: &str) -> Result<async_nats::Client, NatsError> {
    let opts = connect_options(cfg, name).await?;
    // The attempt's own timeout covers the TCP connect and the handshake;
    // this one also bounds name resolution and a server that accepts the
    // socket but never speaks.
    tokio::time::timeout(
        CONNECT_TIMEOUT + Duration::from_secs(1),
        opts.connect(cfg.url.as_str()),
    )
    .await
    .map_err(|_| NatsError::Connect(format!("cannot reach NATS at {}: timed out", cfg.url)))?
    .map_err(|e| NatsError::Connect(connect_failure(cfg, &e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap() {
        assert_eq!(backoff_delay(0), BACKOFF_FIRST);
        assert_eq!(backoff_delay(1), BACKOFF_FIRST * 2);
        assert_eq!(backoff_delay(5), BACKOFF_FIRST * 32);
        assert_eq!(backoff_delay(6), BACKOFF_CAP);
        assert_eq!(backoff_delay(usize::MAX), BACKOFF_CAP);
    }

    #[test]
    fn unusable_files_are_named_before_connecting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let missing = dir.path().join("nope.pem");
        let cfg: NatsConfig = toml::from_str(&format!(
            "url = \"tls://127.0.0.1:1\"\ntls = {{ ca = \"{}\" }}\n",
            missing.display()
        ))
        .expect("config");
        let err = rt.block_on(connect(&cfg, "test")).expect_err("no CA file");
        assert!(
            matches!(&err, NatsError::Config(m) if m.starts_with("[nats.tls] ca: cannot read") && m.contains("nope.pem")),
            "{err}"
        );
        let seed = dir.path().join("user.nk");
        std::fs::write(&seed, "not a seed").expect("write");
        let cfg: NatsConfig = toml::from_str(&format!("nkey = \"{}\"\n", seed.display())).expect("config");
        let err = rt.block_on(connect(&cfg, "test")).expect_err("not a seed");
        assert!(
            matches!(&err, NatsError::Config(m) if m.contains("does not hold an NKey user seed")),
            "{err}"
        );
    }
}
