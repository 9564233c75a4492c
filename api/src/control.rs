//! The control socket: while a stele process owns a data directory (fjall
//! allows one), other `stele` commands talk to it through
//! `<data>/control.sock`, a Unix socket (mode 0600) speaking JSON lines.
//!
//! Requests, one JSON object per line:
//! - `{"op":"append","stream":S,"text":T,"run":R|null,"cause":N|null}` →
//!   `{"ok":true,"receipt":{"seq","hash","at"}}`
//! - `{"op":"checkpoint"}`, `{"op":"rotate_key","reason":T}` → a receipt
//! - `{"op":"events","from":N,"limit":N|null,"stream":S|null,"run":R|null,"follow":bool}`
//!   → one event JSON line each (as `stele events --json`), then
//!   `{"ok":true,"end":true}` unless following
//!
//! Errors: `{"ok":false,"error":"…"}`. Every request line is bounded; a bad
//! line gets an error reply and never reaches the journal unvalidated.

use std::io::{BufRead, BufReader, Write as _};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use stele_journal::{Append, EventBody, EventRef, Journal, RunId, Seq, StreamId};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as TokioBufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

/// Longest request line: a maximal event body plus JSON overhead.
const MAX_REQUEST_BYTES: u64 = (stele_journal::limits::MAX_BODY_BYTES as u64) * 2 + 4096;
/// Concurrent control connections.
const MAX_CONNECTIONS: usize = 64;
/// Events read from storage per step of an `events` request.
const EVENTS_CHUNK: usize = 512;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Append {
        stream: String,
        text: String,
        #[serde(default)]
        run: Option<String>,
        #[serde(default)]
        cause: Option<u64>,
    },
    Checkpoint,
    RotateKey {
        reason: String,
    },
    Events {
        from: u64,
        #[serde(default)]
        limit: Option<u64>,
        #[serde(default)]
        stream: Option<String>,
        #[serde(default)]
        run: Option<String>,
        #[serde(default)]
        follow: bool,
    },
}

pub fn socket_path(data: &Path) -> PathBuf {
    data.join("control.sock")
}

/// Serves the control socket until the returned guard is dropped.
pub struct Server {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Server {
    /// Binds `<data>/control.sock` (replacing a stale socket left by a killed
    /// process; the data directory lock guarantees nobody else serves it).
    pub fn start(data: &Path, journal: Journal) -> Result<Server> {
        let path = socket_path(data);
        if path.exists() {
            std::fs::remove_file(&path).with_context(|| format!("removing stale {}", path.display()))?;
        }
        let listener = UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod {}", path.display()))?;
        let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    continue;
                };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    let mut conn = conn;
                    let _ = reply(&mut conn, &error_line("too many control connections")).await;
                    continue;
                };
                let journal = journal.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve(conn, journal).await {
                        tracing::debug!(error = %e, "control connection ended");
                    }
                    drop(permit);
                });
            }
        });
        Ok(Server { path, task })
    }
}

fn error_line(msg: &str) -> String {
    serde_json::json!({"ok": false, "error": msg}).to_string()
}

async fn reply(conn: &mut UnixStream, line: &str) -> std::io::Result<()> {
    conn.write_all(line.as_bytes()).await?;
    conn.write_all(b"\n").await
}

fn event_line(e: &EventRef) -> Result<String> {
    Ok(serde_json::to_string(&e.to_event()?)?)
}

async fn serve(conn: UnixStream, journal: Journal) -> Result<()> {
    let (rd, mut wr) = conn.into_split();
    let mut rd = TokioBufReader::new(rd.take(MAX_REQUEST_BYTES));
    let mut line = String::new();
    loop {
        line.clear();
        if rd.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        if !line.ends_with('\n') {
            wr.write_all(
                format!(
                    "{}\n",
                    error_line(&format!("request longer than {MAX_REQUEST_BYTES} bytes"))
                )
                .as_bytes(),
            )
            .await?;
            return Ok(());
        }
        let request: Request = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                wr.write_all(format!("{}\n", error_line(&format!("bad request: {e}"))).as_bytes())
                    .await?;
                continue;
            }
        };
        let out = match handle(&journal, request, &mut wr).await {
            Ok(Some(v)) => v.to_string(),
            Ok(None) => continue,
            Err(e) => error_line(&format!("{e:#}")),
        };
        wr.write_all(format!("{out}\n").as_bytes()).await?;
        // Each connection serves requests until the client closes it; a
        // fresh reader budget per request keeps every line bounded.
        rd.get_mut().set_limit(MAX_REQUEST_BYTES);
    }
}

async fn handle(
    journal: &Journal,
    request: Request,
    wr: &mut tokio::net::unix::OwnedWriteHalf,
) -> Result<Option<serde_json::Value>> {
    let receipt = |r: stele_journal::Receipt| Some(serde_json::json!({"ok": true, "receipt": r}));
    match request {
        Request::Append {
            stream,
            text,
            run,
            cause,
        } => {
            let stream = StreamId::new(stream).context("stream")?;
            if let Some(r) = &run {
                RunId::new(r.clone()).context("run")?;
            }
            let r = journal
                .append(Append {
                    stream,
                    cause: cause.map(Seq),
                    body: EventBody::Annotated { text, run },
                })
                .await?;
            Ok(receipt(r))
        }
        Request::Checkpoint => Ok(receipt(journal.checkpoint().await?)),
        Request::RotateKey { reason } => {
            let (_, r) = journal.rotate_key(&reason).await?;
            Ok(receipt(r))
        }
        Request::Events {
            from,
            limit,
            stream,
            run,
            follow,
        } => {
            let reader = journal.reader();
            let limit = limit.unwrap_or(u64::MAX);
            let stream = stream.map(StreamId::new).transpose().context("stream")?;
            let run = run.map(RunId::new).transpose().context("run")?;
            let matches = |e: &EventRef| -> Result<bool> {
                if let Some(s) = &stream {
                    return Ok(e.stream() == s.as_str());
                }
                if let Some(r) = &run {
                    return Ok(e.to_event()?.body.run_id()?.as_ref() == Some(r));
                }
                Ok(true)
            };
            let mut sent = 0u64;
            // In follow mode, `from: 0` means "what commits from now on".
            let mut next = if follow && from == 0 {
                reader.head().seq.next()
            } else {
                Seq(from.max(1))
            };
            if follow {
                let mut follower = reader.follow(next);
                while sent < limit {
                    let Some(e) = follower.next().await else { break };
                    let e = e?;
                    if matches(&e)? {
                        wr.write_all(format!("{}\n", event_line(&e)?).as_bytes()).await?;
                        sent += 1;
                    }
                }
            } else {
                // Chunks, so that no storage iterator is held across an await.
                let head = reader.head().seq;
                while sent < limit && next <= head {
                    let chunk: Vec<EventRef> = match (&stream, &run) {
                        (Some(s), _) => reader
                            .stream(s, next)
                            .take(EVENTS_CHUNK)
                            .collect::<Result<_, _>>()?,
                        (None, Some(r)) => {
                            reader.run(r, next).take(EVENTS_CHUNK).collect::<Result<_, _>>()?
                        }
                        (None, None) => reader
                            .range(next, head)
                            .take(EVENTS_CHUNK)
                            .collect::<Result<_, _>>()?,
                    };
                    let Some(last) = chunk.last().map(EventRef::seq) else {
                        break;
                    };
                    let mut text = String::new();
                    for e in chunk
                        .iter()
                        .take(usize::try_from(limit - sent).unwrap_or(usize::MAX))
                    {
                        text.push_str(&event_line(e)?);
                        text.push('\n');
                        sent += 1;
                    }
                    wr.write_all(text.as_bytes()).await?;
                    next = last.next();
                }
            }
            Ok(Some(serde_json::json!({"ok": true, "end": true})))
        }
    }
}

/// Sends one request to the process that owns `data` and returns the reply
/// lines (events, then the final status object).
pub fn call(
    data: &Path,
    request: &Request,
    mut on_line: impl FnMut(&str) -> Result<()>,
) -> Result<serde_json::Value> {
    let path = socket_path(data);
    let mut conn = StdUnixStream::connect(&path).with_context(|| {
        format!(
            "{} is in use by another stele process, and its control socket {} does not answer",
            data.display(),
            path.display()
        )
    })?;
    let mut text = serde_json::to_string(request)?;
    text.push('\n');
    conn.write_all(text.as_bytes())
        .context("sending to the control socket")?;
    let reader = BufReader::new(conn);
    for line in reader.lines() {
        let line = line.context("reading from the control socket")?;
        let v: serde_json::Value =
            serde_json::from_str(&line).context("bad reply from the control socket")?;
        if v.get("ok").is_some() && v.get("seq").is_none() {
            if v["ok"] == false {
                bail!(
                    "{}",
                    v["error"]
                        .as_str()
                        .unwrap_or("the owning process refused the request")
                );
            }
            return Ok(v);
        }
        on_line(&line)?;
    }
    bail!("the owning process closed the control socket without an answer")
}
