//! The client side of `stele up`'s HTTP control API: commands find the
//! daemon through `<data>/up.json` and fall back to opening the data
//! directory themselves when none runs. With `[http]` tokens configured the
//! token comes from `STELE_TOKEN`; a daemon serving HTTPS is reached with
//! its own certificate (named in `up.json`) as the only trusted root.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// A running daemon.
#[derive(Debug)]
pub struct Daemon {
    base: String,
    pid: u32,
    agent: ureq::Agent,
    /// `Bearer <STELE_TOKEN>`, when set.
    auth: Option<String>,
}

/// An HTTP answer: status and JSON body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    /// The body as sent (JSON text is printed as is: parsing and printing
    /// it again could change a float's last digit).
    pub text: String,
}

impl Answer {
    /// The body on success, or the API's error message.
    pub fn ok(self) -> Result<Value> {
        if (200..300).contains(&self.status) {
            return Ok(self.body);
        }
        let message = self.body["error"]["message"]
            .as_str()
            .map_or_else(|| self.body.to_string(), str::to_owned);
        bail!("{message}")
    }

    /// The body and its text on success, or the API's error message.
    pub fn ok_text(self) -> Result<(Value, String)> {
        let text = self.text.clone();
        self.ok().map(|v| (v, text))
    }
}

impl Daemon {
    /// The daemon serving `data`, if one runs (its `up.json` names a live
    /// process that answers).
    pub fn find(data: &Path) -> Option<Daemon> {
        let text = std::fs::read_to_string(crate::up::up_file(data)).ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        let pid = u32::try_from(v["pid"].as_u64()?).ok()?;
        let http = v["http"].as_str()?;
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return None; // a killed daemon's leftover
        }
        let scheme = v["scheme"].as_str().unwrap_or("http");
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)));
        if let Some(cert) = v["tls_cert"].as_str() {
            let pem = std::fs::read(cert).ok()?;
            let roots: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            config = config.tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::new_with_certs(&roots))
                    .build(),
            );
        }
        let agent: ureq::Agent = config.build().into();
        let d = Daemon {
            base: format!("{scheme}://{http}"),
            pid,
            agent,
            auth: std::env::var("STELE_TOKEN")
                .ok()
                .map(|t| format!("Bearer {}", t.trim())),
        };
        d.get("/v1/status").ok().map(|_| d)
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    fn answer(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>, what: &str) -> Result<Answer> {
        let mut r = r.with_context(|| format!("calling the stele runtime ({what})"))?;
        let status = r.status().as_u16();
        let text = r
            .body_mut()
            .read_to_string()
            .with_context(|| format!("reading the answer to {what}"))?;
        let body = serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.clone()));
        Ok(Answer { status, body, text })
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Result<Answer> {
        let mut r = self.agent.get(format!("{}{path}", self.base));
        if let Some(a) = &self.auth {
            r = r.header("authorization", a);
        }
        Self::answer(r.call(), path)
    }

    /// `POST path` with a body.
    pub fn post(&self, path: &str, content_type: &str, body: &str) -> Result<Answer> {
        let mut r = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("content-type", content_type);
        if let Some(a) = &self.auth {
            r = r.header("authorization", a);
        }
        Self::answer(r.send(body), path)
    }

    /// `PATCH path` with a body.
    pub fn patch(&self, path: &str, content_type: &str, body: &str) -> Result<Answer> {
        let mut r = self
            .agent
            .patch(format!("{}{path}", self.base))
            .header("content-type", content_type);
        if let Some(a) = &self.auth {
            r = r.header("authorization", a);
        }
        Self::answer(r.send(body), path)
    }
}
