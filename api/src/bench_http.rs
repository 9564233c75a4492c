//! `stele bench http`: whole-system HTTP figures against a real `stele up`
//! (this binary, started as a child on 127.0.0.1 with a read token), each
//! beside a baseline measured in the same run:
//!
//! 1. **Streaming**: every event of a pre-filled journal read through
//!    `GET /v1/events` (pages of 1000, following `next_cursor`) and through
//!    the SSE stream from seq 1, against reading and serialising the same
//!    events in-process (before the daemon starts).
//! 2. **Fan-out**: `--clients` SSE clients follow the live stream while
//!    appenders on the control socket add `--append-rate` events/s for
//!    `--seconds`. Per delivered event: lag = arrival time − the event's
//!    commit timestamp (`at`); and how long after the last append every
//!    client had every event. Baseline: the appenders' own ack latency.
//! 3. **Latency**: `GET /v1/agents` at `--request-rate` req/s, open loop
//!    (each request is sent at its scheduled time whatever the earlier ones
//!    are doing, and its latency counts from that time, so a stall is not
//!    hidden by the generator waiting: no coordinated omission). Baseline:
//!    the same generator against a bare axum server in this process
//!    answering the same bytes.
//!
//! Only loopback addresses are used; every loop is bounded in count and
//! time.

use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use stele_journal::{Append, EventBody, Seq, StreamId};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

/// Longest the daemon may take to come up or go down.
const START_STOP: Duration = Duration::from_secs(60);
/// Control-socket connections appending in the fan-out part (the control
/// server takes 64).
const APPENDERS: usize = 48;
/// Longest the fan-out clients may take to drain after the last append.
const DRAIN: Duration = Duration::from_secs(60);
/// Events per journal group while pre-filling.
const FILL_BATCH: usize = 1000;

#[derive(Debug, clap::Args)]
pub struct BenchHttpArgs {
    /// Events in the journal before the daemon starts (all streamed in part 1).
    #[arg(long, default_value_t = 200_000)]
    pub events: u64,
    /// SSE clients in the fan-out part.
    #[arg(long, default_value_t = 100)]
    pub clients: u64,
    /// Appends per second during the fan-out.
    #[arg(long, default_value_t = 10_000)]
    pub append_rate: u64,
    /// Requests per second of GET /v1/agents.
    #[arg(long, default_value_t = 1000)]
    pub request_rate: u64,
    /// Seconds of the fan-out and of each latency run.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Agents registered (what GET /v1/agents lists).
    #[arg(long, default_value_t = 100)]
    pub agents: u64,
    /// One JSON object.
    #[arg(long)]
    pub json: bool,
}

#[allow(clippy::disallowed_methods)] // a bench reads the clock
fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

fn histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 600_000_000_000, 3).context("histogram bounds")
}

fn us(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn summary(h: &Histogram<u64>) -> Value {
    json!({
        "count": h.len(),
        "p50_us": us(h, 0.5),
        "p99_us": us(h, 0.99),
        "p999_us": us(h, 0.999),
        "max_us": h.max() as f64 / 1000.0,
    })
}

/// The daemon under test; killed if the bench fails half-way.
struct Daemon {
    child: Option<Child>,
    base: String,
    token: String,
    data: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Daemon {
    fn start(dir: &Path, args: &BenchHttpArgs) -> Result<Daemon> {
        let data = dir.join("data");
        let agents = dir.join("agents");
        std::fs::create_dir_all(&agents)?;
        for i in 0..args.agents {
            // Event-driven on a stream nothing writes: registered, never run.
            std::fs::write(
                agents.join(format!("bench-{i:04}.toml")),
                format!(
                    "name = \"bench-{i:04}\"\npriority = \"normal\"\ndescription = \"stele bench http\"\n\n\
                     [mode]\nkind = \"event-driven\"\nfilter = {{ kinds = [\"annotated\"], streams = [\"never\"] }}\n\n\
                     [limits]\nmemory_mb = 64\ncpu_cores = 0.1\nexecution_timeout = \"10s\"\n\n\
                     [runs]\nkind = \"process\"\ntier = \"native\"\ncommand = \"/bin/true\"\n"
                ),
            )?;
        }
        let (token, hash) = crate::http::auth::create_token()?;
        let config = dir.join("stele.toml");
        std::fs::write(
            &config,
            format!(
                "[runtime]\nhttp_port = 0\nstop_grace = \"2s\"\n\n[security]\ndefault_sandbox_tier = \"native\"\n\n\
                 [http]\nmax_concurrent = 4096\nmax_streams = {}\n\n\
                 [[http.tokens]]\nname = \"bench\"\nhash = \"{hash}\"\nscope = \"read\"\n",
                args.clients + 16
            ),
        )?;
        let exe = std::env::current_exe().context("finding the stele binary")?;
        let child = std::process::Command::new(exe)
            .arg("--data")
            .arg(&data)
            .arg("--config")
            .arg(&config)
            .arg("up")
            .arg("--agents")
            .arg(&agents)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting stele up")?;
        let mut d = Daemon {
            child: Some(child),
            base: String::new(),
            token,
            data,
        };
        let pid = d.child.as_ref().map(|c| u64::from(c.id()));
        let deadline = Instant::now() + START_STOP;
        loop {
            if let Ok(text) = std::fs::read_to_string(crate::up::up_file(&d.data))
                && let Ok(v) = serde_json::from_str::<Value>(&text)
                && v["pid"].as_u64() == pid
            {
                d.base = format!("http://{}", v["http"].as_str().context("up.json without http")?);
                return Ok(d);
            }
            if let Some(status) = d.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("stele up exited before it served: {status}");
            }
            ensure!(
                Instant::now() < deadline,
                "stele up did not come up within {START_STOP:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits for the graceful shutdown.
    fn stop(mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).context("signalling stele up")?;
        let deadline = Instant::now() + START_STOP;
        loop {
            if let Some(s) = child.try_wait()? {
                ensure!(s.success(), "stele up exited with {s}");
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("stele up did not shut down within {START_STOP:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

pub fn bench(args: &BenchHttpArgs) -> Result<ExitCode> {
    ensure!(args.events >= 1, "--events must be at least 1");
    ensure!(args.clients >= 1, "--clients must be at least 1");
    ensure!(args.seconds >= 1, "--seconds must be at least 1");
    ensure!(
        (1..=1_000_000).contains(&args.append_rate) && (1..=100_000).contains(&args.request_rate),
        "--append-rate must be 1-1000000 and --request-rate 1-100000"
    );
    let tmp = tempfile::tempdir().context("creating a temporary directory")?;
    let rt = crate::journal_cmd::runtime()?;
    let baseline_stream = fill(&rt, &tmp.path().join("data"), args.events)?;
    if !args.json {
        eprintln!(
            "filled {} events; in-process read+serialise: {:.0} events/s",
            args.events, baseline_stream
        );
    }
    let daemon = Daemon::start(tmp.path(), args)?;
    let report = rt.block_on(measure(&daemon, args, baseline_stream));
    daemon.stop()?;
    let report = report?;
    if args.json {
        println!("{report}");
    } else {
        print(&report);
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `n` events (~200 B notes) and times reading them back as the API
/// serialises them: the streaming baseline, events/s.
fn fill(rt: &tokio::runtime::Runtime, data: &Path, n: u64) -> Result<f64> {
    let journal = crate::journal_cmd::open_writer(data)?;
    let stream = StreamId::new("bench".to_owned())?;
    rt.block_on(async {
        let mut written = 0;
        while written < n {
            let k = (n - written).min(FILL_BATCH as u64);
            let batch = (written..written + k)
                .map(|i| Append {
                    stream: stream.clone(),
                    cause: None,
                    body: EventBody::Annotated {
                        text: format!("bench http event {i:010} {}", "x".repeat(160)),
                        run: None,
                    },
                })
                .collect();
            journal.append_many(batch).await?;
            written += k;
        }
        anyhow::Ok(())
    })?;
    let reader = journal.reader();
    let started = Instant::now();
    let mut bytes = 0usize;
    let mut count = 0u64;
    for e in reader.range(Seq(1), Seq(u64::MAX)) {
        let e = e?;
        bytes += serde_json::to_string(&serde_json::to_value(e.to_event()?)?)?.len();
        count += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    std::hint::black_box(bytes);
    journal.close();
    Ok(count as f64 / secs)
}

async fn measure(d: &Daemon, args: &BenchHttpArgs, baseline_stream: f64) -> Result<Value> {
    // reqwest is built without a crypto provider; stele's is ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(4096)
        .build()
        .context("building the HTTP client")?;
    let auth = format!("Bearer {}", d.token);
    // 1. Streaming.
    let (paged, paged_events) = paged(&client, &d.base, &auth).await?;
    let (sse, sse_events) = sse_catch_up(&client, &d.base, &auth, paged_events).await?;
    if !args.json {
        eprintln!("streaming: paged {paged:.0} events/s, SSE {sse:.0} events/s");
    }
    // 2. Fan-out.
    let fan = fan_out(&client, d, &auth, args).await?;
    if !args.json {
        eprintln!("fan-out: {}", fan);
    }
    // 3. Latency: the daemon, then a bare server with the same answer.
    let url = format!("{}/v1/agents", d.base);
    let body = client
        .get(&url)
        .header("authorization", &auth)
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    let listed = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| {
            v.as_array()
                .map(Vec::len)
                .or_else(|| v["agents"].as_array().map(Vec::len))
        })
        .unwrap_or(0);
    let stele = open_loop(&client, &url, Some(&auth), args.request_rate, args.seconds).await?;
    let bare_url = bare_server(body.clone()).await?;
    let bare = open_loop(&client, &bare_url, None, args.request_rate, args.seconds).await?;
    Ok(json!({
        "journal_events": paged_events,
        "streaming": {
            "paged_events_per_s": paged,
            "sse_events_per_s": sse,
            "sse_events": sse_events,
            "baseline_in_process_events_per_s": baseline_stream,
            "paged_ratio": paged / baseline_stream,
            "sse_ratio": sse / baseline_stream,
        },
        "fan_out": fan,
        "agents_latency": {
            "rate_per_s": args.request_rate,
            "seconds": args.seconds,
            "agents_listed": listed,
            "body_bytes": body.len(),
            "stele": stele,
            "baseline_bare_axum": bare,
        },
    }))
}

/// Pages through `GET /v1/events` (1000 a page); events/s and the count.
async fn paged(client: &reqwest::Client, base: &str, auth: &str) -> Result<(f64, u64)> {
    let started = Instant::now();
    let mut cursor: Option<String> = None;
    let mut count = 0u64;
    loop {
        let url = match &cursor {
            Some(c) => format!("{base}/v1/events?limit=1000&cursor={c}"),
            None => format!("{base}/v1/events?limit=1000"),
        };
        let bytes = client
            .get(url)
            .header("authorization", auth)
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        let page: Value = serde_json::from_slice(&bytes).context("a page of /v1/events is not JSON")?;
        count += page["events"].as_array().map_or(0, |a| a.len() as u64);
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    Ok((count as f64 / started.elapsed().as_secs_f64(), count))
}

/// Reads the SSE stream from seq 1 until `n` events arrived; events/s.
async fn sse_catch_up(client: &reqwest::Client, base: &str, auth: &str, n: u64) -> Result<(f64, u64)> {
    let started = Instant::now();
    let mut resp = client
        .get(format!("{base}/v1/events/stream?from=1"))
        .header("authorization", auth)
        .send()
        .await?
        .error_for_status()?;
    let mut lines = SseLines::default();
    let mut count = 0u64;
    let deadline = Instant::now() + Duration::from_secs(600);
    while count < n {
        ensure!(Instant::now() < deadline, "the SSE catch-up took over 600 s");
        let Some(chunk) = resp.chunk().await? else {
            bail!("the SSE stream ended after {count} of {n} events");
        };
        lines.feed(&chunk, |_| count += 1);
    }
    Ok((count as f64 / started.elapsed().as_secs_f64(), count))
}

/// Splits an SSE byte stream into `data:` payloads.
#[derive(Default)]
struct SseLines {
    partial: Vec<u8>,
}

impl SseLines {
    fn feed(&mut self, chunk: &[u8], mut on_data: impl FnMut(&[u8])) {
        self.partial.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(i) = self.partial[start..].iter().position(|b| *b == b'\n') {
            let line = &self.partial[start..start + i];
            if let Some(d) = line.strip_prefix(b"data:") {
                on_data(d.strip_prefix(b" ").unwrap_or(d));
            }
            start += i + 1;
        }
        self.partial.drain(..start);
    }
}

/// The commit timestamp of an event's JSON, without parsing all of it.
fn at_of(data: &[u8]) -> Option<i64> {
    let key = b"\"at\":";
    let i = data.windows(key.len()).position(|w| w == key)? + key.len();
    let digits: Vec<u8> = data[i..]
        .iter()
        .copied()
        .skip_while(|b| *b == b' ')
        .take_while(u8::is_ascii_digit)
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

async fn fan_out(client: &reqwest::Client, d: &Daemon, auth: &str, args: &BenchHttpArgs) -> Result<Value> {
    let total = args.append_rate * args.seconds;
    // Clients first, all connected before the first append.
    let mut clients = Vec::new();
    for _ in 0..args.clients {
        let resp = client
            .get(format!("{}/v1/events/stream?stream=fan", d.base))
            .header("authorization", auth)
            .send()
            .await?
            .error_for_status()?;
        clients.push(resp);
    }
    let last_arrival = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for mut resp in clients {
        let last_arrival = Arc::clone(&last_arrival);
        tasks.push(tokio::spawn(async move {
            let mut lags = histogram()?;
            let mut lines = SseLines::default();
            let mut got = 0u64;
            let deadline = Instant::now() + DRAIN + Duration::from_secs(600);
            while got < total && Instant::now() < deadline {
                let chunk = match tokio::time::timeout(DRAIN, resp.chunk()).await {
                    Ok(Ok(Some(c))) => c,
                    _ => break,
                };
                let arrived = now_ns();
                lines.feed(&chunk, |data| {
                    got += 1;
                    if let Some(at) = at_of(data) {
                        let _ = lags.record(u64::try_from((arrived - at).max(1)).unwrap_or(1));
                    }
                });
            }
            last_arrival.fetch_max(u64::try_from(now_ns()).unwrap_or(0), Ordering::Relaxed);
            anyhow::Ok((got, lags))
        }));
    }
    // Appenders: open loop at append_rate, spread over APPENDERS connections.
    let next = Arc::new(AtomicU64::new(0));
    let period_ns = 1_000_000_000 / args.append_rate;
    let started = tokio::time::Instant::now();
    let socket = crate::control::socket_path(&d.data);
    let mut appenders = Vec::new();
    for _ in 0..APPENDERS {
        let (next, socket) = (Arc::clone(&next), socket.clone());
        appenders.push(tokio::spawn(async move {
            let conn = tokio::net::UnixStream::connect(&socket)
                .await
                .with_context(|| format!("connecting to {}", socket.display()))?;
            let (r, mut w) = conn.into_split();
            let mut r = tokio::io::BufReader::new(r);
            let mut acks = histogram()?;
            let mut line = String::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let due = started + Duration::from_nanos(i * period_ns);
                tokio::time::sleep_until(due).await;
                let req = json!({"op": "append", "stream": "fan", "text": format!("fan {i:010}")});
                w.write_all(format!("{req}\n").as_bytes()).await?;
                line.clear();
                r.read_line(&mut line).await?;
                ensure!(line.contains("\"ok\":true"), "append refused: {line}");
                let _ = acks.record(u64::try_from(due.elapsed().as_nanos()).unwrap_or(u64::MAX).max(1));
            }
            anyhow::Ok(acks)
        }));
    }
    let mut acks = histogram()?;
    for a in appenders {
        acks.add(a.await??)?;
    }
    let append_secs = started.elapsed().as_secs_f64();
    let appended_at = now_ns();
    let mut lags = histogram()?;
    let mut min_got = u64::MAX;
    let mut complete = 0u64;
    for t in tasks {
        let (got, l) = t.await??;
        min_got = min_got.min(got);
        complete += u64::from(got == total);
        lags.add(l)?;
    }
    let drain_ms =
        (i64::try_from(last_arrival.load(Ordering::Relaxed)).unwrap_or(0) - appended_at).max(0) as f64 / 1e6;
    Ok(json!({
        "clients": args.clients,
        "target_appends_per_s": args.append_rate,
        "appended": total,
        "achieved_appends_per_s": total as f64 / append_secs,
        "clients_with_every_event": complete,
        "fewest_events_at_a_client": min_got,
        "deliveries_per_s": (lags.len() as f64) / append_secs,
        "lag": summary(&lags),
        "drain_after_last_append_ms": drain_ms,
        "baseline_append_ack": summary(&acks),
    }))
}

/// `GET url` at `rate`/s for `seconds`, open loop: latencies from each
/// request's scheduled time (and, as `from_send`, from when it was sent).
async fn open_loop(
    client: &reqwest::Client,
    url: &str,
    auth: Option<&str>,
    rate: u64,
    seconds: u64,
) -> Result<Value> {
    // Warm the pool and the route.
    for _ in 0..50 {
        let mut req = client.get(url);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.send().await?.error_for_status()?.bytes().await?;
    }
    let n = rate * seconds;
    let period_ns = 1_000_000_000 / rate;
    let started = tokio::time::Instant::now();
    let failures = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(usize::try_from(n)?);
    for i in 0..n {
        let due = started + Duration::from_nanos(i * period_ns);
        tokio::time::sleep_until(due).await;
        let mut req = client.get(url);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let failures = Arc::clone(&failures);
        tasks.push(tokio::spawn(async move {
            let sent = tokio::time::Instant::now();
            let ok = matches!(
                tokio::time::timeout(Duration::from_secs(30), async {
                    req.send().await?.error_for_status()?.bytes().await
                })
                .await,
                Ok(Ok(_))
            );
            if !ok {
                failures.fetch_add(1, Ordering::Relaxed);
            }
            let ns = |since: tokio::time::Instant| {
                u64::try_from(since.elapsed().as_nanos())
                    .unwrap_or(u64::MAX)
                    .max(1)
            };
            (ns(due), ns(sent))
        }));
    }
    let (mut h, mut service) = (histogram()?, histogram()?);
    for t in tasks {
        let (from_due, from_sent) = t.await?;
        let _ = h.record(from_due);
        let _ = service.record(from_sent);
    }
    let secs = started.elapsed().as_secs_f64();
    let mut v = summary(&h);
    // From the moment the request was actually sent: without the timer's
    // slack (tokio's timer has 1 ms granularity) and any generator delay.
    v["from_send"] = summary(&service);
    v["achieved_per_s"] = json!(n as f64 / secs);
    v["failures"] = json!(failures.load(Ordering::Relaxed));
    Ok(v)
}

/// A bare axum server on 127.0.0.1 answering `body` as JSON, on a thread
/// and runtime of its own (as the daemon is a process of its own).
async fn bare_server(body: axum::body::Bytes) -> Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/v1/agents",
        axum::routing::get(move || {
            let body = body.clone();
            async move { ([(axum::http::header::CONTENT_TYPE, "application/json")], body) }
        }),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("the bare server's runtime")?;
    std::thread::spawn(move || {
        rt.block_on(async move {
            if let Ok(listener) = tokio::net::TcpListener::from_std(listener) {
                let _ = axum::serve(listener, app).await;
            }
        });
    });
    Ok(format!("http://{addr}/v1/agents"))
}

fn print(r: &Value) {
    let s = &r["streaming"];
    println!("stele bench http ({} events in the journal)", r["journal_events"]);
    println!(
        "  GET /v1/events (pages of 1000): {:>10.0} events/s  ({:.2}x in-process read+serialise, {:.0}/s)",
        s["paged_events_per_s"].as_f64().unwrap_or(0.0),
        s["paged_ratio"].as_f64().unwrap_or(0.0),
        s["baseline_in_process_events_per_s"].as_f64().unwrap_or(0.0)
    );
    println!(
        "  SSE catch-up from seq 1:        {:>10.0} events/s  ({:.2}x in-process)",
        s["sse_events_per_s"].as_f64().unwrap_or(0.0),
        s["sse_ratio"].as_f64().unwrap_or(0.0)
    );
    let f = &r["fan_out"];
    println!(
        "  SSE fan-out: {} clients, {:.0} appends/s achieved (target {}), {} of {} clients got all {} events",
        f["clients"],
        f["achieved_appends_per_s"].as_f64().unwrap_or(0.0),
        f["target_appends_per_s"],
        f["clients_with_every_event"],
        f["clients"],
        f["appended"]
    );
    println!(
        "    delivery lag p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; drained {:.0} ms after the last append; append ack p99 {:.1} ms",
        f["lag"]["p50_us"].as_f64().unwrap_or(0.0) / 1000.0,
        f["lag"]["p99_us"].as_f64().unwrap_or(0.0) / 1000.0,
        f["lag"]["max_us"].as_f64().unwrap_or(0.0) / 1000.0,
        f["drain_after_last_append_ms"].as_f64().unwrap_or(0.0),
        f["baseline_append_ack"]["p99_us"].as_f64().unwrap_or(0.0) / 1000.0
    );
    let l = &r["agents_latency"];
    for (name, v) in [("stele", &l["stele"]), ("bare axum", &l["baseline_bare_axum"])] {
        println!(
            "  GET /v1/agents ({} agents, {} B) at {}/s open loop, {name}: p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs, max {:.0} µs (from send: p50 {:.0} µs, p99 {:.0} µs), {} failures",
            l["agents_listed"],
            l["body_bytes"],
            l["rate_per_s"],
            v["p50_us"].as_f64().unwrap_or(0.0),
            v["p99_us"].as_f64().unwrap_or(0.0),
            v["p999_us"].as_f64().unwrap_or(0.0),
            v["max_us"].as_f64().unwrap_or(0.0),
            v["from_send"]["p50_us"].as_f64().unwrap_or(0.0),
            v["from_send"]["p99_us"].as_f64().unwrap_or(0.0),
            v["failures"]
        );
    }
}
