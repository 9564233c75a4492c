//! Embedders: effect runners turning texts into vectors. Their results are
//! journaled (`EmbeddingComputed`) by [`super::service::ContextService`], so
//! a rebuilt index reads vectors from the journal and never calls a model.
//!
//! - [`HashEmbedder`]: deterministic and local — feature hashing of the
//!   text's terms (and adjacent term pairs, at half weight) into 384
//!   signed buckets by BLAKE3, normalized. Texts sharing words are close;
//!   it knows no synonyms. For the demo, tests and benches.
//! - [`OpenAiEmbedder`]: an OpenAI-compatible `POST <base>/embeddings`
//!   (`{"model", "input": [..]}` → `{"data": [{"index", "embedding"}]}`),
//!   one attempt per call, bounded answer, errors naming the field.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::time::Duration;

use serde_json::{Value, json};

use super::ContextError;
use super::search::tokenize;
use super::vector::normalized;
use crate::config::ContextConfig;

/// Width of the hash embedder's vectors.
pub const HASH_DIMS: usize = 384;
/// Most texts in one embeddings request.
pub const MAX_BATCH: usize = 256;
/// Largest embeddings answer read.
pub const MAX_ANSWER_BYTES: usize = 64 << 20;
/// Time for one embeddings request.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// What an embedder's future yields.
pub type Embedded<'a> = Pin<Box<dyn Future<Output = Result<Vec<Vec<f32>>, ContextError>> + Send + 'a>>;

/// Turns texts into vectors.
pub trait Embedder: Send + Sync + std::fmt::Debug {
    /// The model name journaled with each vector (`hash-384`, `openai:<model>`).
    fn model(&self) -> String;

    /// One vector per text, in order.
    fn embed<'a>(&'a self, texts: &'a [String]) -> Embedded<'a>;
}

/// See the module documentation.
#[derive(Clone, Copy, Debug, Default)]
pub struct HashEmbedder;

impl HashEmbedder {
    /// The vector of one text.
    #[must_use]
    pub fn vector(text: &str) -> Vec<f32> {
        let mut v = vec![0.0_f32; HASH_DIMS];
        let terms = tokenize(text);
        let mut add = |feature: &str, weight: f32| {
            let h = blake3::hash(feature.as_bytes());
            let b = h.as_bytes();
            let idx = (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize) % HASH_DIMS;
            let sign = if b[4] & 1 == 0 { 1.0 } else { -1.0 };
            v[idx] += sign * weight;
        };
        for t in &terms {
            add(t, 1.0);
        }
        for pair in terms.windows(2) {
            add(&format!("{} {}", pair[0], pair[1]), 0.5);
        }
        normalized(v)
    }
}

impl Embedder for HashEmbedder {
    fn model(&self) -> String {
        format!("hash-{HASH_DIMS}")
    }

    fn embed<'a>(&'a self, texts: &'a [String]) -> Embedded<'a> {
        let out = texts.iter().map(|t| HashEmbedder::vector(t)).collect();
        Box::pin(async move { Ok(out) })
    }
}

/// See the module documentation.
#[derive(Clone)]
pub struct OpenAiEmbedder {
    client: reqwest::Client,
    endpoint: reqwest::Url,
    model: String,
    api_key: Option<String>,
}

impl std::fmt::Debug for OpenAiEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiEmbedder")
            .field("endpoint", &self.endpoint.as_str())
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "(set)"))
            .finish_non_exhaustive()
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

fn bad(reason: String) -> ContextError {
    ContextError::Embedding(reason)
}

impl OpenAiEmbedder {
    /// An embedder for `base_url` (`…/v1`) and `model`. Without a key only
    /// a loopback server may be used.
    ///
    /// # Errors
    /// A base URL that is not http(s) with a host, a missing key for a
    /// remote server, an HTTP client that cannot be built.
    pub fn new(base_url: &str, model: &str, api_key: Option<String>) -> Result<OpenAiEmbedder, ContextError> {
        let text = format!("{}/embeddings", base_url.trim_end_matches('/'));
        let endpoint = reqwest::Url::parse(&text)
            .map_err(|e| bad(format!("embedding_base_url {base_url:?} is not a URL: {e}")))?;
        if !matches!(endpoint.scheme(), "http" | "https") || endpoint.host().is_none() {
            return Err(bad(format!(
                "embedding_base_url {base_url:?} is not an http:// or https:// URL with a host"
            )));
        }
        let loopback = is_loopback(&endpoint);
        if api_key.is_none() && !loopback {
            return Err(bad(format!(
                "no API key for {base_url}; only a loopback server may be used without one"
            )));
        }
        if model.is_empty() {
            return Err(bad("embedding_model is empty".into()));
        }
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("stele/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .timeout(TIMEOUT);
        if loopback {
            builder = builder.no_proxy();
        }
        let client = builder
            .build()
            .map_err(|e| bad(format!("cannot build the HTTP client: {e}")))?;
        Ok(OpenAiEmbedder {
            client,
            endpoint,
            model: model.to_owned(),
            api_key,
        })
    }

    /// From `[context]`: the key from the variable `embedding_api_key_env`.
    ///
    /// # Errors
    /// As [`OpenAiEmbedder::new`].
    pub fn from_config(c: &ContextConfig) -> Result<OpenAiEmbedder, ContextError> {
        let key = std::env::var(&c.embedding_api_key_env)
            .ok()
            .filter(|k| !k.is_empty());
        OpenAiEmbedder::new(&c.embedding_base_url, &c.embedding_model, key)
    }

    async fn attempt(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, ContextError> {
        let body = json!({ "model": self.model, "input": texts }).to_string();
        let mut req = self
            .client
            .post(self.endpoint.clone())
            .header("content-type", "application/json")
            .body(body);
        if let Some(k) = &self.api_key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        let mut resp = req
            .send()
            .await
            .map_err(|e| bad(format!("POST {}: {e}", self.endpoint)))?;
        let status = resp.status();
        let mut bytes = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| bad(format!("reading the answer of {}: {e}", self.endpoint)))?
        {
            if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(bad(format!(
                    "the answer of {} is over {MAX_ANSWER_BYTES} bytes",
                    self.endpoint
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes);
            let line = text.lines().next().unwrap_or_default();
            return Err(bad(format!(
                "{} answered {status}: {}",
                self.endpoint,
                crate::orga::bounded(line, 300)
            )));
        }
        parse_answer(&bytes, texts.len())
    }
}

/// Reads an `/embeddings` answer for `n` inputs.
///
/// # Errors
/// The answer is not JSON of that shape; the error names the path.
pub fn parse_answer(bytes: &[u8], n: usize) -> Result<Vec<Vec<f32>>, ContextError> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| bad(format!("the answer is not JSON: {e}")))?;
    let data = v
        .get("data")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("the answer has no `data` array".into()))?;
    if data.len() != n {
        return Err(bad(format!(
            "`data` holds {} embeddings for {n} inputs",
            data.len()
        )));
    }
    let mut out: Vec<Option<Vec<f32>>> = vec![None; n];
    for (i, d) in data.iter().enumerate() {
        let index = match d.get("index") {
            None => i,
            Some(x) => x
                .as_u64()
                .and_then(|x| usize::try_from(x).ok())
                .filter(|x| *x < n)
                .ok_or_else(|| bad(format!("data[{i}].index is not an index below {n}")))?,
        };
        let emb = d
            .get("embedding")
            .and_then(Value::as_array)
            .ok_or_else(|| bad(format!("data[{i}].embedding is not an array")))?;
        let vec = emb
            .iter()
            .enumerate()
            .map(|(j, x)| {
                #[allow(clippy::cast_possible_truncation)] // f32 is the index's precision
                x.as_f64()
                    .map(|f| f as f32)
                    .ok_or_else(|| bad(format!("data[{i}].embedding[{j}] is not a number")))
            })
            .collect::<Result<Vec<f32>, _>>()?;
        if vec.is_empty() {
            return Err(bad(format!("data[{i}].embedding is empty")));
        }
        out[index] = Some(vec);
    }
    out.into_iter()
        .enumerate()
        .map(|(i, v)| v.ok_or_else(|| bad(format!("no embedding for input {i}"))))
        .collect()
}

impl Embedder for OpenAiEmbedder {
    fn model(&self) -> String {
        format!("openai:{}", self.model)
    }

    fn embed<'a>(&'a self, texts: &'a [String]) -> Embedded<'a> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(texts.len());
            for chunk in texts.chunks(MAX_BATCH) {
                out.extend(self.attempt(chunk).await?);
            }
            Ok(out)
        })
    }
}

/// The embedder `[context] embedder` names.
///
/// # Errors
/// An unknown name, or the OpenAI embedder's configuration errors.
pub fn from_config(c: &ContextConfig) -> Result<Box<dyn Embedder>, ContextError> {
    match c.embedder.as_str() {
        "hash" => Ok(Box::new(HashEmbedder)),
        "openai" => Ok(Box::new(OpenAiEmbedder::from_config(c)?)),
        other => Err(ContextError::Invalid {
            what: "[context] embedder",
            reason: format!("{other:?} is not one of hash, openai"),
        }),
    }
}
