//! The NATS JetStream feed: the publisher ([`run_publisher`], which `stele
//! up` runs when `[nats] enabled`, and `stele publish` on its own), the
//! subscriber (`stele subscribe`) and `stele publish bench`.
//!
//! What is published: every journal event, in seq order, as one CloudEvents
//! 1.0 JSON message (structured mode) on `<prefix>.<kind>.<stream>` to a
//! JetStream stream the publisher creates or updates (subjects `<prefix>.>`,
//! file storage, the configured retention, `max_age` and duplicate window):
//!
//! - `id` = the event hash (hex), also the `Nats-Msg-Id` header, so the
//!   server drops a republished event within the duplicate window;
//! - `source` = `stele://<node>`, the node being the id of the journal's first
//!   signing key (the `key` of event 1): stable for the journal's life,
//!   unlike the directory's name, and the same through every key rotation;
//! - `type` = `stele.<kind>`, `subject` = the event's stream, `time` = `at`
//!   in RFC 3339 (ns), `datacontenttype` = `application/json`, `data` = the
//!   event exactly as `stele events --json` prints it, and the extension
//!   `seq` as a decimal string (CloudEvents integers are 32-bit; `data.seq`
//!   has it as a number).
//!
//! Subject mapping: a stream id may contain `.`, NATS's token separator;
//! every `.` becomes `%2E` (ids cannot contain `%`, so the mapping is
//! reversible and one stream is always one subject token).
//!
//! Order, gaps and duplicates: each publish carries
//! `Nats-Expected-Last-Sequence`, the stream sequence the previous event
//! is stored at, so the server stores an event only right after its
//! predecessor: a publish lost in a reconnect can never be overtaken by a
//! later one. Acks are awaited asynchronously, up to `max_pending` in flight,
//! in any order (the cursor moves over their contiguous prefix); on any
//! failure the publisher drops what is in flight, reads the stream's last
//! message (checked against the journal: its hash must be the journal's at
//! that seq) and resumes right after it — or after the cursor when the
//! stream's tail cannot be read (purged, expired, consumed). A dropped
//! publish that still reaches the server expects the same stream sequence
//! as its replacement, so only one of them is stored. The
//! cursor `<data>/nats.cursor` (the last acknowledged seq and its hash,
//! replaced atomically and fsynced at most every 250 ms and on exit, by a
//! thread of its own so that a slow fsync never holds up publishing) is
//! checked against the journal at start; a mismatch is refused.
//!
//! Where events come from: in `stele up`, the daemon's own [`Reader`]
//! (follow: catch up from disk, then live). `stele publish` opens the
//! journal read-only (a private copy, nothing in the data directory is
//! touched but `nats.cursor` and `nats.lock`); when that copy is exhausted
//! it looks every 500 ms for more: a process that owns the directory is
//! followed through its control socket (as `stele tail` does), otherwise a
//! grown head file means a short-lived writer appended and the journal is
//! reopened. So it works with and without a live owner and never keeps one
//! from starting.
//!
//! Not here: the daemon wiring (`up.rs`), the journal itself.

use std::collections::VecDeque;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{Context as _, Result, anyhow, bail};
use async_nats::jetstream::{self, message::PublishMessage, stream};
use futures::StreamExt as _;
use futures::stream::{FuturesOrdered, FuturesUnordered};
use serde::{Deserialize, Serialize};
use stele_engine::config::{NatsConfig, NatsRetention};
use stele_engine::nats::{BACKOFF_CAP, backoff_delay, connect_failure, connect_options};
use stele_journal::{EventRef, Reader, Seq};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};

use crate::cli::{PublishArgs, PublishBenchArgs, PublishCmd, SubscribeArgs};

/// How often the cursor file is replaced at most (it is also written when
/// the publisher stops or retries). A kill loses at most this much cursor
/// progress; the stream's tail covers it on restart.
const CURSOR_FLUSH: Duration = Duration::from_millis(250);
/// JetStream API requests and publish acknowledgements wait this long.
const API_TIMEOUT: Duration = stele_engine::nats::REQUEST_TIMEOUT;
/// How often `stele publish` looks for new events once it has published
/// everything its read-only copy holds.
const POLL: Duration = Duration::from_millis(500);
/// Events read from a read-only copy at once.
const READ_CHUNK: u64 = 1024;
/// Events buffered from an owner's control socket.
const REMOTE_BUFFER: usize = 1024;
/// Longest line accepted from the control socket: a maximal event as JSON.
const MAX_LINE_BYTES: u64 = (stele_journal::limits::MAX_BODY_BYTES as u64) * 4 + 4096;
/// Cursor file format tag.
const CURSOR_FORMAT: &str = "stele-nats-cursor/1";

// ---------------------------------------------------------------- status

/// What the publisher is doing, for `stele status`: cheap to read from
/// another task at any time.
#[derive(Debug, Default)]
pub struct PublisherStatus {
    /// The last seq JetStream acknowledged; every seq before it is in the
    /// stream too (or was skipped with `--from`).
    pub published_seq: AtomicU64,
    /// The newest committed seq the publisher has seen.
    pub head_seq: AtomicU64,
    /// Connected to a NATS server now.
    pub connected: AtomicBool,
    /// The last NATS error (empty if none yet); kept after recovery.
    pub last_error: Mutex<String>,
}

impl PublisherStatus {
    /// Events committed but not yet acknowledged by JetStream.
    #[must_use]
    pub fn lag(&self) -> u64 {
        self.head_seq
            .load(Ordering::Relaxed)
            .saturating_sub(self.published_seq.load(Ordering::Relaxed))
    }

    /// `{"connected","published_seq","head_seq","lag","last_error"}`.
    #[must_use]
    pub fn to_json(&self) -> serde_json::Value {
        let err = self
            .last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        serde_json::json!({
            "connected": self.connected.load(Ordering::Relaxed),
            "published_seq": self.published_seq.load(Ordering::Relaxed),
            "head_seq": self.head_seq.load(Ordering::Relaxed),
            "lag": self.lag(),
            "last_error": if err.is_empty() { None } else { Some(err) },
        })
    }

    /// Records an error (the daemon records why the publisher stopped).
    pub fn set_error(&self, e: &str) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = e.to_owned();
    }
}

/// Where the publisher's news goes: the daemon's log, or the terminal of
/// `stele publish`.
#[derive(Clone, Copy, Debug)]
enum Voice {
    Log,
    Terminal,
}

impl Voice {
    fn say(self, msg: &str) {
        match self {
            Voice::Log => tracing::info!(target: "stele::nats", "{msg}"),
            Voice::Terminal => eprintln!("publish: {msg}"),
        }
    }

    fn warn(self, msg: &str) {
        match self {
            Voice::Log => tracing::warn!(target: "stele::nats", "{msg}"),
            Voice::Terminal => eprintln!("publish: {msg}"),
        }
    }
}

// ------------------------------------------------- messages and subjects

/// One journal event, ready to publish.
#[derive(Debug)]
struct Item {
    seq: u64,
    hash: String,
    kind: String,
    stream: String,
    at_ns: i64,
    /// The event as `stele events --json` prints it.
    json: Vec<u8>,
}

fn item_of(e: &EventRef) -> Result<Item> {
    Ok(Item {
        seq: e.seq().0,
        hash: e.hash().to_hex(),
        kind: e.body().kind().to_owned(),
        stream: e.stream().to_owned(),
        at_ns: e.at(),
        json: {
            let mut json = Vec::with_capacity(1024);
            serde_json::to_writer(&mut json, &e.to_event()?)?;
            json
        },
    })
}

/// `<prefix>.<kind>.<stream>`, every `.` of the stream as `%2E`.
fn subject_of(prefix: &str, kind: &str, stream: &str) -> String {
    format!("{prefix}.{kind}.{}", stream.replace('.', "%2E"))
}

fn rfc3339_ns(at_ns: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_nanos(u64::try_from(at_ns).unwrap_or(0));
    humantime::format_rfc3339_nanos(t).to_string()
}

#[derive(Serialize)]
struct Envelope<'a> {
    specversion: &'static str,
    id: &'a str,
    source: &'a str,
    #[serde(rename = "type")]
    kind: String,
    subject: &'a str,
    time: String,
    datacontenttype: &'static str,
    seq: String,
}

/// The CloudEvents 1.0 JSON message of `item`; `data` comes last, verbatim.
fn cloud_event(source: &str, item: &Item) -> Result<Vec<u8>> {
    let env = Envelope {
        specversion: "1.0",
        id: &item.hash,
        source,
        kind: format!("stele.{}", item.kind),
        subject: &item.stream,
        time: rfc3339_ns(item.at_ns),
        datacontenttype: "application/json",
        seq: item.seq.to_string(),
    };
    let mut out = Vec::with_capacity(384 + item.json.len());
    serde_json::to_writer(&mut out, &env)?;
    let close = out.pop();
    debug_assert_eq!(close, Some(b'}'));
    out.extend_from_slice(b",\"data\":");
    out.extend_from_slice(&item.json);
    out.push(b'}');
    Ok(out)
}

/// What a reader of the stream needs from a message.
#[derive(Deserialize)]
struct Received {
    id: String,
    source: String,
    seq: String,
}

impl Received {
    fn parse(payload: &[u8]) -> Option<(Received, u64)> {
        let r: Received = serde_json::from_slice(payload).ok()?;
        let seq = r.seq.parse().ok()?;
        Some((r, seq))
    }
}

/// The `data` member of a message this module wrote, verbatim (it is last).
fn data_slice(payload: &[u8]) -> Option<&[u8]> {
    let key = b",\"data\":";
    let at = payload.windows(key.len()).position(|w| w == key)?;
    let rest = &payload[at + key.len()..];
    rest.strip_suffix(b"}")
}

// ------------------------------------------------ cursor and publisher lock

#[derive(Debug, Serialize, Deserialize)]
struct CursorRecord {
    format: String,
    stream: String,
    seq: u64,
    hash: String,
}

/// `<data>/nats.cursor`: the last seq JetStream acknowledged and its hash.
/// Written by a thread of its own, so an fsync (slow while the disk is
/// busy) never holds up publishing; the newest record waiting replaces an
/// older one, and dropping the cursor writes the last one and waits for it.
#[derive(Debug)]
struct Cursor {
    path: PathBuf,
    stream: String,
    saved: (u64, String),
    current: (u64, String),
    last_flush: Instant,
    writer: Option<std::thread::JoinHandle<()>>,
    shared: Arc<CursorShared>,
}

#[derive(Debug, Default)]
struct CursorShared {
    slot: Mutex<CursorSlot>,
    wake: std::sync::Condvar,
}

#[derive(Debug, Default)]
struct CursorSlot {
    pending: Option<CursorRecord>,
    stop: bool,
    error: Option<String>,
}

/// Replaces `path` atomically: write, fsync, rename, fsync the directory.
fn write_cursor(path: &Path, rec: &CursorRecord) -> std::io::Result<()> {
    let tmp = path.with_extension("cursor.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(serde_json::to_string(rec)?.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_data()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn lock(s: &CursorShared) -> std::sync::MutexGuard<'_, CursorSlot> {
    s.slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn cursor_writer(path: PathBuf, shared: Arc<CursorShared>) {
    loop {
        let (rec, stop) = {
            let mut slot = lock(&shared);
            while slot.pending.is_none() && !slot.stop {
                slot = shared
                    .wake
                    .wait(slot)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            (slot.pending.take(), slot.stop)
        };
        if let Some(rec) = rec
            && let Err(e) = write_cursor(&path, &rec)
        {
            lock(&shared).error = Some(format!("writing {}: {e}", path.display()));
        }
        if stop && lock(&shared).pending.is_none() {
            return;
        }
    }
}

fn cursor_path(data: &Path) -> PathBuf {
    data.join("nats.cursor")
}

impl Cursor {
    fn load(data: &Path, stream: &str) -> Result<Cursor> {
        let path = cursor_path(data);
        let at = match std::fs::read(&path) {
            Ok(bytes) => {
                let r: CursorRecord = serde_json::from_slice(&bytes).map_err(|e| {
                    anyhow!(
                        "nats cursor {} is not a cursor file ({e}); remove it to publish from the stream's tail",
                        path.display()
                    )
                })?;
                if r.format != CURSOR_FORMAT {
                    bail!(
                        "nats cursor {} has format {:?}, this build reads {CURSOR_FORMAT:?}",
                        path.display(),
                        r.format
                    );
                }
                if r.stream != stream {
                    bail!(
                        "nats cursor {} is for stream {:?}, but [nats] stream is {stream:?}; remove the file (or pass --from SEQ) to publish into {stream:?}",
                        path.display(),
                        r.stream
                    );
                }
                (r.seq, r.hash)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, String::new()),
            Err(e) => return Err(anyhow!(e).context(format!("reading {}", path.display()))),
        };
        let shared = Arc::new(CursorShared::default());
        let writer = {
            let (path, shared) = (path.clone(), shared.clone());
            std::thread::Builder::new()
                .name("stele-nats-cursor".into())
                .spawn(move || cursor_writer(path, shared))
                .context("starting the cursor writer")?
        };
        Ok(Cursor {
            path,
            stream: stream.to_owned(),
            saved: at.clone(),
            current: at,
            last_flush: Instant::now(),
            writer: Some(writer),
            shared,
        })
    }

    fn seq(&self) -> u64 {
        self.current.0
    }

    fn advance(&mut self, seq: u64, hash: &str) {
        if seq > self.current.0 {
            self.current = (seq, hash.to_owned());
        }
    }

    fn dirty(&self) -> bool {
        self.current != self.saved
    }

    fn flush_due(&mut self) -> Result<()> {
        if self.dirty() && self.last_flush.elapsed() >= CURSOR_FLUSH {
            self.flush()?;
        }
        Ok(())
    }

    /// Hands the current record to the writer thread; fails if an earlier
    /// write failed (the data directory is in trouble: stop).
    fn flush(&mut self) -> Result<()> {
        let mut slot = lock(&self.shared);
        if let Some(e) = &slot.error {
            bail!("{e}");
        }
        if self.current != self.saved {
            slot.pending = Some(CursorRecord {
                format: CURSOR_FORMAT.into(),
                stream: self.stream.clone(),
                seq: self.current.0,
                hash: self.current.1.clone(),
            });
            self.shared.wake.notify_one();
            self.saved = self.current.clone();
            self.last_flush = Instant::now();
        }
        Ok(())
    }
}

impl Drop for Cursor {
    fn drop(&mut self) {
        let _ = self.flush();
        lock(&self.shared).stop = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.writer.take() {
            let _ = t.join();
        }
        if let Some(e) = &lock(&self.shared).error {
            tracing::warn!(target: "stele::nats", error = %e, "could not save the nats cursor");
        }
    }
}

/// `<data>/nats.lock`, held while a publisher runs on the directory: two
/// publishers would fight over the cursor and the stream.
#[derive(Debug)]
struct PublisherLock {
    _file: std::fs::File,
}

impl PublisherLock {
    fn take(data: &Path) -> Result<PublisherLock> {
        let path = data.join("nats.lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match f.try_lock() {
            Ok(()) => Ok(PublisherLock { _file: f }),
            Err(std::fs::TryLockError::WouldBlock) => bail!(
                "another NATS publisher runs on {} (it holds {}); one publisher per journal",
                data.display(),
                path.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(anyhow!(e).context(format!("locking {}", path.display())))
            }
        }
    }
}

// ------------------------------------------------------------- sources

/// What the journal says of one seq.
#[derive(Debug, Deserialize)]
struct Known {
    hash: String,
    key: String,
}

/// Where the publisher reads events from.
trait Source {
    /// Continue at `from`.
    fn seek(&mut self, from: u64);
    /// The next event (waiting for it to commit); `None` once the journal's
    /// writer has stopped. Cancel-safe.
    async fn next(&mut self) -> Result<Option<Item>>;
    /// The hash and key of event `seq`, `None` if the journal has no such event.
    async fn lookup(&mut self, seq: u64) -> Result<Option<Known>>;
    /// The newest committed seq seen.
    fn head(&self) -> u64;
}

/// The journal of this process (the daemon's reader).
struct LocalSource {
    reader: Reader,
    follow: stele_journal::Follow,
}

impl LocalSource {
    fn new(reader: Reader) -> LocalSource {
        let follow = reader.follow(Seq(1));
        LocalSource { reader, follow }
    }
}

impl Source for LocalSource {
    fn seek(&mut self, from: u64) {
        self.follow = self.reader.follow(Seq(from));
    }

    async fn next(&mut self) -> Result<Option<Item>> {
        match self.follow.next().await {
            None => Ok(None),
            Some(e) => Ok(Some(item_of(&e?)?)),
        }
    }

    async fn lookup(&mut self, seq: u64) -> Result<Option<Known>> {
        Ok(self.reader.get(Seq(seq))?.map(|e| Known {
            hash: e.hash().to_hex(),
            key: e.key().to_hex(),
        }))
    }

    fn head(&self) -> u64 {
        self.reader.head().seq.0
    }
}

/// `stele publish`'s view of a data directory it may not own: a read-only
/// copy, or the owner's control socket.
struct StandaloneSource {
    data: PathBuf,
    next: u64,
    head: u64,
    mode: Mode,
    voice: Voice,
}

enum Mode {
    Closed,
    Local {
        reader: Reader,
        buf: VecDeque<Item>,
    },
    Remote {
        rx: tokio::sync::mpsc::Receiver<Result<Item>>,
    },
}

#[derive(Deserialize)]
struct LineEvent {
    seq: u64,
    at: i64,
    stream: String,
    hash: String,
    body: LineBody,
}

#[derive(Deserialize)]
struct LineBody {
    kind: String,
}

/// An owner's reply line: an event, or the final status object.
enum Line {
    Event(Item),
    End,
}

fn parse_line(line: &str) -> Result<Line> {
    if let Ok(e) = serde_json::from_str::<LineEvent>(line) {
        return Ok(Line::Event(Item {
            seq: e.seq,
            hash: e.hash,
            kind: e.body.kind,
            stream: e.stream,
            at_ns: e.at,
            json: line.as_bytes().to_vec(),
        }));
    }
    let v: serde_json::Value = serde_json::from_str(line).context("bad line from the control socket")?;
    match v.get("ok").and_then(serde_json::Value::as_bool) {
        Some(true) => Ok(Line::End),
        Some(false) => bail!(
            "the owning process refused: {}",
            v["error"].as_str().unwrap_or("no reason given")
        ),
        None => bail!("unexpected line from the control socket: {line}"),
    }
}

/// A request sent to the owner; keep the write half until the reply is
/// read (the owner serves a connection until its client closes it).
async fn socket_request(
    socket: &Path,
    req: &crate::control::Request,
) -> Result<(
    tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>,
    tokio::net::unix::OwnedWriteHalf,
)> {
    let conn = tokio::net::UnixStream::connect(socket)
        .await
        .with_context(|| format!("connecting to {}", socket.display()))?;
    let (rd, mut wr) = conn.into_split();
    let mut text = serde_json::to_string(req)?;
    text.push('\n');
    wr.write_all(text.as_bytes()).await?;
    Ok((tokio::io::BufReader::new(rd), wr))
}

async fn read_line(
    rd: &mut tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>,
    buf: &mut Vec<u8>,
) -> Result<Option<String>> {
    buf.clear();
    let n = (&mut *rd).take(MAX_LINE_BYTES).read_until(b'\n', buf).await?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        bail!("a line from the control socket is longer than {MAX_LINE_BYTES} bytes");
    }
    buf.pop();
    Ok(Some(
        String::from_utf8(std::mem::take(buf)).context("control socket line is not UTF-8")?,
    ))
}

/// Follows the owner from `from` on a task of its own; the channel ends
/// when the owner closes the socket.
async fn follow_socket(socket: &Path, from: u64) -> Result<tokio::sync::mpsc::Receiver<Result<Item>>> {
    let req = crate::control::Request::Events {
        from,
        limit: None,
        stream: None,
        run: None,
        follow: true,
    };
    let (mut rd, wr) = socket_request(socket, &req).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(REMOTE_BUFFER);
    tokio::spawn(async move {
        let _wr = wr;
        let mut buf = Vec::new();
        loop {
            let line = tokio::select! {
                l = read_line(&mut rd, &mut buf) => l,
                () = tx.closed() => return,
            };
            let item = match line {
                Ok(None) => return,
                Ok(Some(l)) => match parse_line(&l) {
                    Ok(Line::Event(i)) => Ok(i),
                    Ok(Line::End) => return,
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                return;
            }
        }
    });
    Ok(rx)
}

async fn lookup_socket(socket: &Path, seq: u64) -> Result<Option<Known>> {
    let req = crate::control::Request::Events {
        from: seq,
        limit: Some(1),
        stream: None,
        run: None,
        follow: false,
    };
    let (mut rd, _wr) = socket_request(socket, &req).await?;
    let mut buf = Vec::new();
    while let Some(line) = read_line(&mut rd, &mut buf).await? {
        if let Ok(e) = serde_json::from_str::<LineEvent>(&line) {
            if e.seq != seq {
                return Ok(None);
            }
            let k: Known = serde_json::from_str(&line)?;
            return Ok(Some(k));
        }
        if let Line::End = parse_line(&line)? {
            return Ok(None);
        }
    }
    bail!("the owning process closed the control socket without an answer")
}

async fn open_reader(data: &Path) -> stele_journal::Result<Reader> {
    let d = data.to_owned();
    match tokio::task::spawn_blocking(move || Reader::open(&d)).await {
        Ok(r) => r,
        Err(e) => Err(stele_journal::Error::Io {
            path: data.to_owned(),
            source: std::io::Error::other(e.to_string()),
        }),
    }
}

impl StandaloneSource {
    fn new(data: &Path, voice: Voice) -> StandaloneSource {
        StandaloneSource {
            data: data.to_owned(),
            next: 1,
            head: 0,
            mode: Mode::Closed,
            voice,
        }
    }

    /// Opens a read-only copy, or follows the owner; waits while a
    /// short-lived writer holds the directory.
    async fn open(&mut self) -> Result<()> {
        let socket = crate::control::socket_path(&self.data);
        let mut said = false;
        loop {
            match open_reader(&self.data).await {
                Ok(reader) => {
                    self.head = self.head.max(reader.head().seq.0);
                    self.mode = Mode::Local {
                        reader,
                        buf: VecDeque::new(),
                    };
                    return Ok(());
                }
                Err(stele_journal::Error::Locked { .. }) => {
                    if socket.exists() {
                        match follow_socket(&socket, self.next).await {
                            Ok(rx) => {
                                self.voice.say(&format!(
                                    "{} is owned by another stele process: following it through {}",
                                    self.data.display(),
                                    socket.display()
                                ));
                                self.mode = Mode::Remote { rx };
                                return Ok(());
                            }
                            Err(e) if !said => {
                                self.voice.warn(&format!("{e:#}; waiting for the journal"));
                                said = true;
                            }
                            Err(_) => {}
                        }
                    }
                    tokio::time::sleep(POLL).await;
                }
                Err(e) => {
                    return Err(anyhow!(e).context(format!("opening journal {}", self.data.display())));
                }
            }
        }
    }
}

impl Source for StandaloneSource {
    fn seek(&mut self, from: u64) {
        self.next = from.max(1);
        match &mut self.mode {
            Mode::Local { buf, .. } => buf.clear(),
            Mode::Remote { .. } => self.mode = Mode::Closed,
            Mode::Closed => {}
        }
    }

    async fn next(&mut self) -> Result<Option<Item>> {
        loop {
            match &mut self.mode {
                Mode::Closed => self.open().await?,
                Mode::Local { reader, buf } => {
                    if let Some(i) = buf.pop_front() {
                        self.next = i.seq + 1;
                        return Ok(Some(i));
                    }
                    let head = reader.head().seq.0;
                    self.head = self.head.max(head);
                    if self.next <= head {
                        let to = head.min(self.next + READ_CHUNK - 1);
                        let mut expect = self.next;
                        for e in reader.range(Seq(self.next), Seq(to)) {
                            let i = item_of(&e?)?;
                            if i.seq != expect {
                                bail!("journal read returned seq {} where {expect} was expected", i.seq);
                            }
                            expect += 1;
                            buf.push_back(i);
                        }
                        if expect != to + 1 {
                            bail!("journal events {expect}..={to} are committed but could not be read");
                        }
                        continue;
                    }
                    // Everything this copy holds is out. New events need a
                    // writer: a long-lived owner (follow its socket) or a
                    // short-lived one (its head file grew: reopen).
                    tokio::time::sleep(POLL).await;
                    let grown = reader.acknowledged_head().is_ok_and(|h| h.seq.0 > head);
                    let socket = crate::control::socket_path(&self.data);
                    let owner = socket.exists() && tokio::net::UnixStream::connect(&socket).await.is_ok();
                    if grown || owner {
                        self.mode = Mode::Closed;
                    }
                }
                Mode::Remote { rx } => match rx.recv().await {
                    Some(Ok(i)) => {
                        if i.seq != self.next {
                            bail!(
                                "the owning process sent seq {} where {} was expected",
                                i.seq,
                                self.next
                            );
                        }
                        self.next += 1;
                        self.head = self.head.max(i.seq);
                        return Ok(Some(i));
                    }
                    Some(Err(e)) => {
                        self.voice.warn(&format!("following the owner: {e:#}"));
                        self.mode = Mode::Closed;
                        tokio::time::sleep(POLL).await;
                    }
                    None => {
                        self.voice.say(&format!(
                            "the process owning {} stopped; reading the journal directly",
                            self.data.display()
                        ));
                        self.mode = Mode::Closed;
                    }
                },
            }
        }
    }

    async fn lookup(&mut self, seq: u64) -> Result<Option<Known>> {
        let mut reopened = false;
        loop {
            match &self.mode {
                Mode::Closed => {
                    self.open().await?;
                    reopened = true;
                }
                Mode::Local { reader, .. } => {
                    if seq > reader.head().seq.0 && !reopened {
                        // The copy may be older than the event: look again.
                        self.mode = Mode::Closed;
                        continue;
                    }
                    return Ok(reader.get(Seq(seq))?.map(|e| Known {
                        hash: e.hash().to_hex(),
                        key: e.key().to_hex(),
                    }));
                }
                Mode::Remote { .. } => {
                    return lookup_socket(&crate::control::socket_path(&self.data), seq).await;
                }
            }
        }
    }

    fn head(&self) -> u64 {
        self.head
    }
}

// ---------------------------------------------------------- connection

// The options (URL, TLS, credentials), the back-off and the words for a
// refused connection are the engine's (`stele_engine::nats`), shared with
// the bus's link to peers.

/// Connects, retrying with a capped back-off until it works. The client
/// then reconnects by itself; `status.connected` follows it.
async fn connect_forever(
    cfg: &NatsConfig,
    status: &Arc<PublisherStatus>,
    voice: Voice,
) -> Result<async_nats::Client> {
    let mut attempt = 0;
    loop {
        let st = status.clone();
        let url = cfg.url.clone();
        let opts = connect_options(cfg, "stele").await?.event_callback(move |ev| {
            let st = st.clone();
            let url = url.clone();
            async move {
                match ev {
                    async_nats::Event::Connected => {
                        st.connected.store(true, Ordering::Relaxed);
                        voice.say(&format!("connected to NATS at {url}"));
                    }
                    async_nats::Event::Disconnected => {
                        st.connected.store(false, Ordering::Relaxed);
                        voice.warn(&format!(
                            "lost NATS at {url}; reconnecting (back-off up to {}s; the journal is untouched)",
                            BACKOFF_CAP.as_secs()
                        ));
                    }
                    other => voice.warn(&format!("NATS: {other}")),
                }
            }
        });
        match opts.connect(cfg.url.as_str()).await {
            Ok(c) => {
                status.connected.store(true, Ordering::Relaxed);
                return Ok(c);
            }
            Err(e) => {
                let delay = backoff_delay(attempt);
                let msg = connect_failure(cfg, &e);
                status.set_error(&msg);
                voice.warn(&format!(
                    "{msg}; retrying in {} ms (and on, every {} s at most)",
                    delay.as_millis(),
                    BACKOFF_CAP.as_secs()
                ));
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
        }
    }
}

fn stream_config(cfg: &NatsConfig) -> stream::Config {
    stream::Config {
        name: cfg.stream.clone(),
        description: Some("stele journal events (CloudEvents 1.0 JSON)".into()),
        subjects: vec![format!("{}.>", cfg.subject_prefix)],
        retention: match cfg.retention {
            NatsRetention::Limits => stream::RetentionPolicy::Limits,
            NatsRetention::Interest => stream::RetentionPolicy::Interest,
            NatsRetention::Workqueue => stream::RetentionPolicy::WorkQueue,
        },
        max_age: cfg.max_age,
        duplicate_window: cfg.duplicate_window,
        storage: stream::StorageType::File,
        num_replicas: 1,
        ..Default::default()
    }
}

// ----------------------------------------------------------- publisher

/// Runs the publisher on the journal of this process until the future is
/// dropped (or the journal's writer stops: then it waits for the
/// acknowledgements in flight, saves the cursor and returns `Ok`).
///
/// Never returns because of NATS: unreachable servers, lost connections
/// and refused publishes are retried with a capped back-off and reported in
/// `status`. Returns an error for the journal (a read failure), the data
/// directory (cursor, lock) and refusals that retrying cannot fix: the
/// cursor or the stream's last message does not match the journal, or the
/// stream holds another node's events.
///
/// # Errors
/// As above.
pub async fn run_publisher(
    reader: Reader,
    data: &Path,
    cfg: &NatsConfig,
    status: Arc<PublisherStatus>,
) -> Result<()> {
    publish(LocalSource::new(reader), data, cfg, status, None, Voice::Log).await
}

async fn publish<S: Source>(
    mut source: S,
    data: &Path,
    cfg: &NatsConfig,
    status: Arc<PublisherStatus>,
    from: Option<u64>,
    voice: Voice,
) -> Result<()> {
    let lock = PublisherLock::take(data)?;
    let cursor = Cursor::load(data, &cfg.stream)?;
    if cursor.seq() > 0 {
        match source.lookup(cursor.seq()).await? {
            Some(k) if k.hash == cursor.current.1 => {}
            found => bail!(
                "nats cursor {}: seq {} was published with hash {}, but the journal {}; the cursor belongs to another journal or the journal was replaced. Remove the file to publish from the stream's tail (or pass --from SEQ)",
                cursor.path.display(),
                cursor.seq(),
                short(&cursor.current.1),
                match found {
                    Some(k) => format!("has hash {} there", short(&k.hash)),
                    None => format!("ends before it (head {})", source.head()),
                }
            ),
        }
    }
    status.published_seq.store(cursor.seq(), Ordering::Relaxed);
    let node = loop {
        if let Some(k) = source.lookup(1).await? {
            break k.key;
        }
        tokio::time::sleep(POLL).await;
    };
    let client = connect_forever(cfg, &status, voice).await?;
    // The pipeline holds `max_pending` acknowledgements; after a failure the
    // ones it drops are finished in the background (for `API_TIMEOUT` at
    // most) while the next epoch publishes: room for a few generations.
    let js = jetstream::ContextBuilder::new()
        .timeout(API_TIMEOUT)
        .ack_timeout(API_TIMEOUT)
        .max_ack_inflight(cfg.max_pending as usize * 4)
        .backpressure_on_inflight(true)
        .build(client);
    let mut p = Publisher {
        source,
        js,
        cfg,
        ce_source: format!("stele://{node}"),
        cursor,
        status,
        voice,
        start: from,
        _lock: lock,
    };
    p.run().await
}

fn short(hex: &str) -> String {
    format!("{}…", &hex[..hex.len().min(12)])
}

/// Why an epoch (one stretch of publishing) ended.
enum Stop {
    /// NATS failed or refused; retry after the back-off.
    Nats(String),
    /// Not retried.
    Fatal(anyhow::Error),
    /// The journal's writer stopped.
    Ended,
}

type AckFuture = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = (
                    u64,
                    Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
                ),
            > + Send,
    >,
>;

struct Publisher<'a, S> {
    source: S,
    js: jetstream::Context,
    cfg: &'a NatsConfig,
    ce_source: String,
    cursor: Cursor,
    status: Arc<PublisherStatus>,
    voice: Voice,
    /// `--from`, for the first epoch only.
    start: Option<u64>,
    _lock: PublisherLock,
}

impl<S: Source> Publisher<'_, S> {
    async fn run(&mut self) -> Result<()> {
        let mut failures = 0;
        loop {
            let before = self.cursor.seq();
            let stop = self.epoch().await;
            self.cursor.flush()?;
            match stop {
                Stop::Ended => return Ok(()),
                Stop::Fatal(e) => return Err(e),
                Stop::Nats(msg) => {
                    self.status.set_error(&msg);
                    if self.cursor.seq() > before {
                        failures = 0;
                    }
                    let delay = if failures == 0 {
                        Duration::ZERO
                    } else {
                        backoff_delay(failures - 1)
                    };
                    failures += 1;
                    self.voice.warn(&format!(
                        "{msg}; resuming after seq {} in {} ms (the journal is untouched)",
                        self.cursor.seq(),
                        delay.as_millis()
                    ));
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Checks the stream's last message against the journal: `Some((seq,
    /// hash))` when it is this journal's event, `None` when it cannot be read
    /// or is not a stele event.
    async fn tail(&mut self, stream: &jetstream::stream::Stream<()>, last: u64) -> Result<Option<u64>, Stop> {
        if last == 0 {
            return Ok(None);
        }
        let msg = match stream.get_raw_message(last).await {
            Ok(m) => m,
            Err(e) if matches!(e.kind(), stream::LastRawMessageErrorKind::NoMessageFound) => return Ok(None),
            Err(e) => {
                return Err(Stop::Nats(format!(
                    "reading message {last} of stream {}: {e}",
                    self.cfg.stream
                )));
            }
        };
        let Some((r, seq)) = Received::parse(&msg.payload) else {
            self.voice.warn(&format!(
                "the last message of stream {} (#{last}, subject {}) is not a stele event; resuming from the cursor",
                self.cfg.stream, msg.subject
            ));
            return Ok(None);
        };
        if r.source != self.ce_source {
            return Err(Stop::Fatal(anyhow!(
                "stream {} holds events of {} (its last message), not of this journal ({}); give each journal its own [nats] stream and subject_prefix",
                self.cfg.stream,
                r.source,
                self.ce_source
            )));
        }
        match self.source.lookup(seq).await.map_err(Stop::Fatal)? {
            Some(k) if k.hash == r.id => Ok(Some(seq)),
            found => Err(Stop::Fatal(anyhow!(
                "stream {} ends with this journal's seq {seq} as {}, but the journal {}; the journal was replaced after it was published",
                self.cfg.stream,
                short(&r.id),
                match found {
                    Some(k) => format!("has {} there", short(&k.hash)),
                    None => format!("ends at seq {}", self.source.head()),
                }
            ))),
        }
    }

    async fn epoch(&mut self) -> Stop {
        let nats = |what: String| move |e: &dyn std::fmt::Display| Stop::Nats(format!("{what}: {e}"));
        let info = match self.js.create_or_update_stream(stream_config(self.cfg)).await {
            Ok(i) => i,
            Err(e) => return nats(format!("creating or updating stream {}", self.cfg.stream))(&e),
        };
        let last = info.state.last_sequence;
        let stream = match self.js.get_stream_no_info(&self.cfg.stream).await {
            Ok(s) => s,
            Err(e) => return nats(format!("opening stream {}", self.cfg.stream))(&e),
        };
        let tail = match self.tail(&stream, last).await {
            Ok(t) => t,
            Err(stop) => return stop,
        };
        let acked = self.cursor.seq();
        let from = match (self.start.take(), tail) {
            (Some(f), Some(t)) => f.max(t + 1),
            (Some(f), None) => f.max(1),
            (None, Some(t)) => t + 1,
            (None, None) => acked + 1,
        };
        if let Some(t) = tail {
            if t < acked {
                self.voice.warn(&format!(
                    "stream {} ends at seq {t} but seq {acked} was acknowledged: the server lost messages; republishing from {}",
                    self.cfg.stream,
                    t + 1
                ));
            } else if t > acked {
                // Acknowledgements lost in a crash or a reconnect.
                match self.source.lookup(t).await {
                    Ok(Some(k)) => self.cursor.advance(t, &k.hash),
                    Ok(None) => {}
                    Err(e) => return Stop::Fatal(e),
                }
            }
        }
        self.status
            .published_seq
            .store(self.cursor.seq().max(from - 1), Ordering::Relaxed);
        self.voice.say(&format!(
            "publishing from seq {from} to stream {} (subjects {}.>, last stream message #{last})",
            self.cfg.stream, self.cfg.subject_prefix
        ));
        self.source.seek(from);
        self.pipeline(last).await
    }

    /// Publishes until something stops it. Acknowledgements are taken in
    /// any order (a refusal is seen at once, not after the timeout of a
    /// lost publish before it); the cursor moves over their contiguous
    /// prefix only.
    async fn pipeline(&mut self, mut expected_last: u64) -> Stop {
        let max = self.cfg.max_pending as usize;
        let mut acks: FuturesUnordered<AckFuture> = FuturesUnordered::new();
        // The seqs in flight, consecutive, oldest first: (seq, hash, acked).
        let mut window: VecDeque<(u64, String, bool)> = VecDeque::with_capacity(max);
        // Saves the cursor when acknowledgements stop coming.
        let flush = tokio::time::sleep(CURSOR_FLUSH);
        tokio::pin!(flush);
        loop {
            let room = window.len() < max;
            let dirty = self.cursor.dirty();
            tokio::select! {
                biased;
                Some((seq, r)) = acks.next(), if !acks.is_empty() => match r {
                    Ok(_) => self.acked(&mut window, seq),
                    // Dropped acknowledgements are finished by async-nats
                    // in the background; a stale publish still in the
                    // pipe expects the same stream sequence as its
                    // replacement, so whichever arrives first is stored and
                    // the other is a duplicate or refused.
                    Err(e) => return Stop::Nats(format!("publishing seq {seq}: {e}")),
                },
                item = self.source.next(), if room => match item {
                    Ok(Some(item)) => {
                        self.status.head_seq.store(self.source.head().max(item.seq), Ordering::Relaxed);
                        if let Some(last) = window.back() {
                            assert_eq!(item.seq, last.0 + 1, "the source yields consecutive seqs");
                        }
                        match self.send(&item, expected_last).await {
                            Ok(fut) => {
                                expected_last += 1;
                                window.push_back((item.seq, item.hash, false));
                                acks.push(fut);
                            }
                            Err(msg) => return Stop::Nats(msg),
                        }
                    }
                    Ok(None) => {
                        // The writer stopped: collect what is in flight.
                        while let Some((seq, r)) = acks.next().await {
                            if r.is_ok() {
                                self.acked(&mut window, seq);
                            }
                        }
                        return Stop::Ended;
                    }
                    Err(e) => return Stop::Fatal(e),
                },
                () = &mut flush, if dirty => {
                    flush.as_mut().reset(tokio::time::Instant::now() + CURSOR_FLUSH);
                }
            }
            if let Err(e) = self.cursor.flush_due() {
                return Stop::Fatal(e);
            }
        }
    }

    async fn send(&self, item: &Item, expected_last: u64) -> Result<AckFuture, String> {
        let payload =
            cloud_event(&self.ce_source, item).map_err(|e| format!("encoding seq {}: {e}", item.seq))?;
        let msg = PublishMessage::build()
            .payload(payload.into())
            .message_id(&item.hash)
            .expected_last_sequence(expected_last);
        let subject = subject_of(&self.cfg.subject_prefix, &item.kind, &item.stream);
        let ack = self
            .js
            .send_publish(subject, msg)
            .await
            .map_err(|e| format!("publishing seq {}: {e}", item.seq))?;
        let seq = item.seq;
        Ok(Box::pin(async move { (seq, ack.await) }))
    }

    /// Marks `seq` acknowledged and moves the cursor over the acknowledged
    /// prefix of the window. (A duplicate acknowledgement means the event
    /// was stored before: it counts, but the stream did not grow, so the
    /// next publish's expected sequence is refused and the publisher
    /// resumes after the stream's tail.)
    fn acked(&mut self, window: &mut VecDeque<(u64, String, bool)>, seq: u64) {
        let Some(first) = window.front().map(|w| w.0) else {
            return;
        };
        let Some(slot) = usize::try_from(seq - first).ok().and_then(|i| window.get_mut(i)) else {
            return;
        };
        slot.2 = true;
        while window.front().is_some_and(|w| w.2) {
            let Some((seq, hash, _)) = window.pop_front() else {
                break;
            };
            self.cursor.advance(seq, &hash);
            self.status.published_seq.fetch_max(seq, Ordering::Relaxed);
        }
    }
}

// ------------------------------------------------------- stele publish

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

/// `stele publish`: the publisher on its own, until Ctrl-C or SIGTERM.
pub fn publish_cmd(data: &Path, args: &PublishArgs) -> Result<ExitCode> {
    if let Some(PublishCmd::Bench(b)) = &args.command {
        return bench(b);
    }
    let mut cfg = crate::cli::config().nats.clone();
    if let Some(url) = &args.nats {
        cfg.url.clone_from(url);
    }
    if args.from == Some(0) {
        bail!("--from must be at least 1 (the first event is seq 1)");
    }
    // One thread: the publisher and its NATS connection hand messages to
    // each other without cross-thread wake-ups, and the other core is left
    // to whoever appends and to the server.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let mut source = StandaloneSource::new(data, Voice::Terminal);
        source.open().await?;
        let status = Arc::new(PublisherStatus::default());
        eprintln!(
            "publish: {} -> NATS {} stream {} (subjects {}.>); Ctrl-C stops",
            data.display(),
            cfg.url,
            cfg.stream,
            cfg.subject_prefix
        );
        let progress = tokio::spawn(progress(status.clone()));
        let r = tokio::select! {
            r = publish(source, data, &cfg, status.clone(), args.from, Voice::Terminal) => r,
            () = shutdown_signal() => Ok(()),
        };
        progress.abort();
        println!(
            "stopped: published through seq {} (head {})",
            status.published_seq.load(Ordering::Relaxed),
            status.head_seq.load(Ordering::Relaxed)
        );
        r
    })?;
    Ok(ExitCode::SUCCESS)
}

/// One line a second while something changes.
async fn progress(status: Arc<PublisherStatus>) {
    let mut last = (0, 0);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut prev_seq = status.published_seq.load(Ordering::Relaxed);
    let mut prev_t = Instant::now();
    loop {
        tick.tick().await;
        let p = status.published_seq.load(Ordering::Relaxed);
        let h = status.head_seq.load(Ordering::Relaxed);
        if (p, h) == last {
            continue;
        }
        last = (p, h);
        let rate = p.saturating_sub(prev_seq) as f64 / prev_t.elapsed().as_secs_f64().max(1e-3);
        (prev_seq, prev_t) = (p, Instant::now());
        let connected = if status.connected.load(Ordering::Relaxed) {
            ""
        } else {
            ", disconnected"
        };
        println!(
            "published through seq {p} (head {h}, lag {}{connected}), {rate:.0} events/s",
            status.lag()
        );
        let _ = std::io::stdout().flush();
    }
}

// ----------------------------------------------------- stele subscribe

/// `stele subscribe`: prints the events of a stream live, from any seq.
pub fn subscribe_cmd(args: &SubscribeArgs) -> Result<ExitCode> {
    let mut cfg = crate::cli::config().nats.clone();
    if let Some(url) = &args.nats {
        cfg.url.clone_from(url);
    }
    let stream_name = args.stream.clone().unwrap_or_else(|| cfg.stream.clone());
    let all = format!("{}.>", cfg.subject_prefix);
    let filter = args.filter.clone().unwrap_or_else(|| all.clone());
    let rt = crate::journal_cmd::runtime()?;
    rt.block_on(async {
        let client = stele_engine::nats::connect(&cfg, "stele").await?;
        let js = jetstream::ContextBuilder::new().timeout(API_TIMEOUT).build(client);
        let mut stream = js.get_stream(&stream_name).await.map_err(|e| {
            anyhow!(
                "stream {stream_name:?} on {}: {e}; is a publisher running (`stele publish`, or [nats] enabled in `stele up`)?",
                cfg.url
            )
        })?;
        let info = stream.info().await.context("reading the stream's state")?.clone();
        let deliver = match args.from {
            None => jetstream::consumer::DeliverPolicy::New,
            Some(from) => jetstream::consumer::DeliverPolicy::ByStartSequence {
                start_sequence: start_sequence(&stream, &info.state, from, &all).await?,
            },
        };
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subject: filter.clone(),
                deliver_policy: deliver,
                ..Default::default()
            })
            .await
            .with_context(|| format!("creating a consumer on stream {stream_name:?}"))?;
        let mut messages = consumer.messages().await.context("reading the stream")?;
        let from = args.from.unwrap_or(0);
        let mut last: u64 = 0;
        let unfiltered = filter == all || filter == ">";
        let stdout = std::io::stdout();
        loop {
            let m = tokio::select! {
                m = messages.next() => m,
                () = shutdown_signal() => break,
            };
            let Some(m) = m else { break };
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    // The ordered consumer recreates itself (server restarts,
                    // missed heartbeats); say so and keep reading.
                    eprintln!("subscribe: reading stream {stream_name:?}: {e}; continuing");
                    continue;
                }
            };
            let payload = &m.message.payload;
            let Some((_, seq)) = Received::parse(payload) else {
                eprintln!("subscribe: skipped a message on {} that is not a stele event", m.message.subject);
                continue;
            };
            if seq < from {
                continue;
            }
            if seq <= last {
                eprintln!("subscribe: skipped a second copy of seq {seq}");
                continue;
            }
            if unfiltered && last > 0 && seq > last + 1 {
                eprintln!(
                    "subscribe: seqs {}..={} are not in stream {stream_name:?} (expired, or published from a later seq)",
                    last + 1,
                    seq - 1
                );
            }
            last = seq;
            let mut out = stdout.lock();
            print_received(&mut out, payload, args.json)?;
            out.flush()?;
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The stream sequence of the first message whose journal seq is at least
/// `from`: a binary search over the stream (its journal seqs increase).
/// Stream and journal sequences differ whenever the stream did not start
/// with event 1 or lost messages to retention.
async fn start_sequence(
    stream: &jetstream::stream::Stream,
    state: &stream::State,
    from: u64,
    all: &str,
) -> Result<u64> {
    let first = state.first_sequence.max(1);
    let (mut lo, mut hi) = (first, state.last_sequence + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        // The first message at or after `mid` (some may be deleted).
        let m = match stream
            .raw_message_builder()
            .sequence(mid)
            .next_by_subject(all)
            .send()
            .await
        {
            Ok(m) => m,
            Err(e) if matches!(e.kind(), stream::LastRawMessageErrorKind::NoMessageFound) => {
                hi = mid;
                continue;
            }
            Err(e) => return Err(anyhow!("looking up stream message {mid}: {e}")),
        };
        let seq = Received::parse(&m.payload).map_or(0, |(_, s)| s);
        if seq >= from {
            hi = mid;
        } else {
            lo = m.sequence + 1;
        }
    }
    Ok(lo)
}

fn print_received(out: &mut impl std::io::Write, payload: &[u8], json: bool) -> Result<()> {
    let data: serde_json::Value = match data_slice(payload).and_then(|d| serde_json::from_slice(d).ok()) {
        Some(v) => v,
        None => serde_json::from_slice::<serde_json::Value>(payload)?
            .get("data")
            .cloned()
            .unwrap_or_default(),
    };
    if json {
        match data_slice(payload) {
            Some(raw) => out.write_all(raw)?,
            None => serde_json::to_writer(&mut *out, &data)?,
        }
        writeln!(out)?;
        return Ok(());
    }
    let body = &data["body"];
    let summary = match body["text"].as_str() {
        Some(t) => match body["run"].as_str() {
            Some(r) => format!("[run {r}] {t}"),
            None => t.to_owned(),
        },
        None => {
            let mut b = body.clone();
            if let Some(o) = b.as_object_mut() {
                o.remove("kind");
            }
            b.to_string()
        }
    };
    let time = rfc3339_ns(data["at"].as_i64().unwrap_or(0));
    writeln!(
        out,
        "{:>8}  {}  {:<16} {:<18} {}  {}",
        data["seq"].as_u64().unwrap_or(0),
        time,
        data["stream"].as_str().unwrap_or("?"),
        body["kind"].as_str().unwrap_or("?"),
        data["hash"].as_str().map_or("?", |h| &h[..h.len().min(12)]),
        summary
    )?;
    Ok(())
}

// ------------------------------------------------- stele publish bench

/// The note of bench event `i` of writer `w`: ~200 bytes, as `stele bench
/// journal` appends.
fn bench_note(w: u64, i: u64) -> String {
    format!("bench writer {w:04} event {i:010} {}", "x".repeat(160))
}

/// `writers` tasks appending `events` in all, each awaiting its
/// acknowledgement before the next append. Returns events/s.
async fn append_load(journal: &stele_journal::Journal, events: u64, writers: u64, phase: u64) -> Result<f64> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let journal = journal.clone();
        let n = events / writers + u64::from(w < events % writers);
        let stream = stele_journal::StreamId::new(format!("bench:{w}"))?;
        tasks.push(tokio::spawn(async move {
            for i in 0..n {
                journal
                    .append(stele_journal::Append {
                        stream: stream.clone(),
                        cause: None,
                        body: stele_journal::EventBody::Annotated {
                            text: bench_note(w, phase * 1_000_000_000 + i),
                            run: None,
                        },
                    })
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await.context("bench appender panicked")??;
    }
    Ok(events as f64 / started.elapsed().as_secs_f64())
}

/// Publishes `count` messages of `size` bytes to a fresh stream with plain
/// async-nats, `depth` acknowledgements in flight (what `nats bench js pub
/// --async` does). Returns messages/s.
/// With `Headers::Same`, each message also carries the publisher's two
/// headers (a 64-hex `Nats-Msg-Id`, `Nats-Expected-Last-Sequence`): the
/// server's deduplication and order checks, without the journal.
async fn raw_publish(
    js: &jetstream::Context,
    cfg: &NatsConfig,
    count: u64,
    size: usize,
    headers: RawHeaders,
) -> Result<f64> {
    let mut raw = stream_config(cfg);
    raw.subjects = vec![format!("{}_raw", cfg.subject_prefix)];
    js.create_stream(raw)
        .await
        .context("creating the raw bench stream")?;
    let payload = bytes_of(size);
    let subject = format!("{}_raw", cfg.subject_prefix);
    let depth = cfg.max_pending as usize;
    let started = Instant::now();
    let mut inflight = FuturesOrdered::new();
    for i in 0..count {
        if inflight.len() >= depth
            && let Some(r) = inflight.next().await
        {
            r?;
        }
        let mut msg = PublishMessage::build().payload(payload.clone().into());
        if let RawHeaders::Same = headers {
            msg = msg
                .message_id(format!("{:064x}", u128::from(i) + 1))
                .expected_last_sequence(i);
        }
        let ack = js.send_publish(subject.clone(), msg).await?;
        inflight.push_back(ack.into_future());
    }
    while let Some(r) = inflight.next().await {
        r?;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

#[derive(Clone, Copy, Debug)]
enum RawHeaders {
    None,
    Same,
}

fn bytes_of(size: usize) -> Vec<u8> {
    let mut v = vec![b'x'; size];
    if let Some(first) = v.first_mut() {
        *first = b'{';
    }
    v
}

#[derive(Serialize)]
struct BenchReport {
    events: u64,
    writers: u64,
    durability: &'static str,
    max_pending: u32,
    message_bytes: usize,
    append_alone_events_per_s: f64,
    catch_up_events: u64,
    catch_up_events_per_s: f64,
    live_append_events_per_s: f64,
    live_publish_events_per_s: f64,
    live_lag_events_p50: u64,
    live_lag_events_p99: u64,
    live_lag_events_max: u64,
    drain_ms: f64,
    raw_publish_events_per_s: f64,
    raw_publish_with_headers_events_per_s: f64,
    catch_up_vs_raw: f64,
    catch_up_vs_raw_with_headers: f64,
    catch_up_vs_append: f64,
    live_append_vs_alone: f64,
    /// The publisher's status at the end (what `stele status` shows).
    publisher: serde_json::Value,
}

/// `stele publish bench`: four phases in one process, on a temporary journal
/// and two scratch streams (deleted afterwards):
/// 1. `--writers` appenders append `--events` (no publisher): the journal's
///    rate alone;
/// 2. [`run_publisher`] — the daemon's publisher — catches up over them;
/// 3. the appenders append `--events` more while it publishes live: both
///    rates, the lag (head − acknowledged) sampled every 10 ms, and the time
///    to drain after the last append;
/// 4. plain async-nats publishes as many messages of the same size, with
///    the same pipeline depth: the ceiling of this client and server.
fn bench(args: &PublishBenchArgs) -> Result<ExitCode> {
    anyhow::ensure!(
        args.writers >= 1 && args.events >= args.writers,
        "--events must be at least --writers ≥ 1"
    );
    let mut cfg = crate::cli::config().nats.clone();
    if let Some(url) = &args.nats {
        cfg.url.clone_from(url);
    }
    let tag = format!("{}_{}", std::process::id(), Instant::now().elapsed().as_nanos());
    cfg.stream = format!("STELE_BENCH_{tag}");
    cfg.subject_prefix = format!("stele_bench_{tag}");
    cfg.max_age = Duration::ZERO;
    let tmp = tempfile::tempdir().context("creating a temporary data directory")?;
    let data = tmp.path().join("journal");
    let durability = stele_journal::Durability::from(args.durability);
    let journal = stele_journal::Journal::open(
        &data,
        stele_journal::Options {
            durability,
            ..stele_journal::Options::default()
        },
    )
    .with_context(|| format!("opening journal {}", data.display()))?;
    let rt = crate::journal_cmd::runtime()?;
    let report = rt.block_on(async {
        let client = stele_engine::nats::connect(&cfg, "stele").await?;
        let js = jetstream::ContextBuilder::new()
            .timeout(API_TIMEOUT)
            .build(client);
        let r = bench_phases(&journal, &data, &cfg, &js, args).await;
        let _ = js.delete_stream(&cfg.stream).await;
        let _ = js.delete_stream(format!("{}_RAW", cfg.stream)).await;
        r
    })?;
    drop(journal);
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} events, {} writers, {}, {}-byte messages, pipeline {}:\n\
             appends alone {:.0}/s; catch-up publish {:.0}/s ({:.2}x raw, {:.2}x appends)\n\
             live: appends {:.0}/s ({:.2}x alone), published {:.0}/s, lag p50 {} p99 {} max {} events, drained {:.0} ms after the last append\n\
             raw async-nats publish of same-size messages {:.0}/s, with the publisher's headers {:.0}/s ({:.2}x)",
            report.events,
            report.writers,
            report.durability,
            report.message_bytes,
            report.max_pending,
            report.append_alone_events_per_s,
            report.catch_up_events_per_s,
            report.catch_up_vs_raw,
            report.catch_up_vs_append,
            report.live_append_events_per_s,
            report.live_append_vs_alone,
            report.live_publish_events_per_s,
            report.live_lag_events_p50,
            report.live_lag_events_p99,
            report.live_lag_events_max,
            report.drain_ms,
            report.raw_publish_events_per_s,
            report.raw_publish_with_headers_events_per_s,
            report.catch_up_vs_raw_with_headers
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn bench_phases(
    journal: &stele_journal::Journal,
    data: &Path,
    cfg: &NatsConfig,
    js: &jetstream::Context,
    args: &PublishBenchArgs,
) -> Result<BenchReport> {
    let reader = journal.reader();
    let head = || reader.head().seq.0;
    // 1. The journal alone.
    let append_alone = append_load(journal, args.events, args.writers, 0).await?;
    let caught_up_to = head();
    let sample = reader
        .get(Seq(caught_up_to / 2))?
        .context("a bench event")
        .and_then(|e| item_of(&e))?;
    let key = reader.get(Seq(1))?.context("event 1")?.key().to_hex();
    let message_bytes = cloud_event(&format!("stele://{key}"), &sample)?.len();

    let status = Arc::new(PublisherStatus::default());
    let publisher = run_publisher(reader.clone(), data, cfg, status.clone());
    tokio::pin!(publisher);
    let published = || status.published_seq.load(Ordering::Relaxed);
    let work = async {
        // 2. Catch up.
        let t = Instant::now();
        while published() < caught_up_to {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let catch_up = caught_up_to as f64 / t.elapsed().as_secs_f64();
        // 3. Live.
        let mut lag = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 1 << 40, 3)?;
        let from = published();
        let t = Instant::now();
        let load = append_load(journal, args.events, args.writers, 1);
        tokio::pin!(load);
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let live_append = loop {
            tokio::select! {
                r = &mut load => break r?,
                _ = tick.tick() => lag.saturating_record(head().saturating_sub(published())),
            }
        };
        let appended_at = Instant::now();
        let target = head();
        while published() < target {
            lag.saturating_record(head().saturating_sub(published()));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let drain_ms = appended_at.elapsed().as_secs_f64() * 1e3;
        let live_publish = (target - from) as f64 / t.elapsed().as_secs_f64();
        anyhow::Ok((catch_up, live_append, live_publish, lag, drain_ms))
    };
    let (catch_up, live_append, live_publish, lag, drain_ms) = tokio::select! {
        r = &mut publisher => bail!("the publisher stopped: {r:?}"),
        r = work => r?,
    };
    // 4. The ceiling.
    let mut raw_cfg = cfg.clone();
    raw_cfg.stream = format!("{}_RAW", cfg.stream);
    let raw = raw_publish(js, &raw_cfg, caught_up_to, message_bytes, RawHeaders::None).await?;
    js.delete_stream(&raw_cfg.stream).await?;
    let raw_headers = raw_publish(js, &raw_cfg, caught_up_to, message_bytes, RawHeaders::Same).await?;
    Ok(BenchReport {
        events: args.events,
        writers: args.writers,
        durability: match args.durability {
            crate::cli::DurabilityArg::Sync => "sync",
            crate::cli::DurabilityArg::Buffered => "buffered",
        },
        max_pending: cfg.max_pending,
        message_bytes,
        append_alone_events_per_s: append_alone,
        catch_up_events: caught_up_to,
        catch_up_events_per_s: catch_up,
        live_append_events_per_s: live_append,
        live_publish_events_per_s: live_publish,
        live_lag_events_p50: lag.value_at_quantile(0.5),
        live_lag_events_p99: lag.value_at_quantile(0.99),
        live_lag_events_max: lag.max(),
        drain_ms,
        raw_publish_events_per_s: raw,
        raw_publish_with_headers_events_per_s: raw_headers,
        catch_up_vs_raw: catch_up / raw,
        catch_up_vs_raw_with_headers: catch_up / raw_headers,
        catch_up_vs_append: catch_up / append_alone,
        live_append_vs_alone: live_append / append_alone,
        publisher: status.to_json(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_keep_one_token_per_stream() {
        assert_eq!(
            subject_of("stele", "annotated", "agent:a/b-c_d"),
            "stele.annotated.agent:a/b-c_d"
        );
        assert_eq!(
            subject_of("x.y", "task_finished", "a.b.c"),
            "x.y.task_finished.a%2Eb%2Ec"
        );
    }

    #[test]
    fn cloud_events_carry_data_verbatim_and_last() {
        let item = Item {
            seq: 7,
            hash: "ab".repeat(32),
            kind: "annotated".into(),
            stream: "ops".into(),
            at_ns: 1_700_000_000_123_456_789,
            json: br#"{"seq":7,"body":{"kind":"annotated","text":"x,\"data\":y"}}"#.to_vec(),
        };
        let m = cloud_event("stele://0011223344556677", &item).expect("encode");
        let v: serde_json::Value = serde_json::from_slice(&m).expect("json");
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["type"], "stele.annotated");
        assert_eq!(v["seq"], "7");
        assert_eq!(v["time"], "2023-11-14T22:13:20.123456789Z");
        assert_eq!(data_slice(&m), Some(item.json.as_slice()));
        let (r, seq) = Received::parse(&m).expect("parse");
        assert_eq!((r.id.as_str(), seq), (item.hash.as_str(), 7));
    }
}
