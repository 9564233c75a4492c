//! The NATS JetStream feed on a real `nats-server -js`: `stele publish` and
//! `stele subscribe` through the real binary, the stream read back with
//! async-nats. A round trip of 100,000 events in order with nothing missing
//! or doubled; the server killed and restarted mid-stream; the publisher
//! killed (-9) mid-stream and restarted; malformed `[nats]` configuration,
//! unreachable servers and cursors the journal does not match.
//!
//! The shared server's URL is `STELE_TEST_NATS` (default
//! `nats://127.0.0.1:4222`; `scripts/test.sh` starts one). A test fails
//! loudly when it is unreachable. Each test uses its own stream and subject
//! prefix; tests that kill the server start their own on a free port.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use serde_json::Value;

use crate::stele;

/// The longest a test waits for progress it expects (a debug build on a
/// busy 2-core machine); reaching it is a failure, never a measurement.
pub(crate) const PATIENCE: Duration = Duration::from_secs(600);

fn nats_url() -> String {
    std::env::var("STELE_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

pub(crate) fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

async fn connect(url: &str) -> Result<async_nats::jetstream::Context, String> {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(3))
        .connect(url)
        .await
        .map_err(|e| e.to_string())?;
    Ok(async_nats::jetstream::new(client))
}

/// The shared server, or a loud failure.
fn require_nats() -> String {
    let url = nats_url();
    if let Err(e) = rt().block_on(connect(&url)) {
        panic!(
            "NATS at {url} is unreachable ({e}): the NATS tests need `nats-server -js` \
             (scripts/test.sh starts one; or set STELE_TEST_NATS)"
        );
    }
    url
}

/// A stream name and subject prefix no other test (or run) uses.
fn unique(name: &str) -> (String, String) {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() % 1_000_000_000);
    let tag = format!("{name}_{}_{n}", std::process::id());
    (format!("T_{tag}"), format!("t_{tag}"))
}

/// Messages in `stream`, `None` while the server or the stream is missing.
fn stream_messages(url: &str, stream: &str) -> Option<u64> {
    rt().block_on(async {
        let js = connect(url).await.ok()?;
        let mut s = js.get_stream(stream).await.ok()?;
        Some(s.info().await.ok()?.state.messages)
    })
}

fn delete_stream(url: &str, stream: &str) {
    rt().block_on(async {
        if let Ok(js) = connect(url).await {
            let _ = js.delete_stream(stream).await;
        }
    });
}

/// One message of the stream, as stored.
#[derive(Debug)]
struct Stored {
    stream_seq: u64,
    subject: String,
    msg_id: String,
    event: Value,
    payload: Vec<u8>,
}

/// Every message of `stream`, in stream order (no client-side filtering).
fn read_stream(url: &str, stream: &str) -> Vec<Stored> {
    rt().block_on(async {
        let js = connect(url).await.expect("connect");
        let mut s = js.get_stream(stream).await.expect("stream exists");
        let n = s.info().await.expect("stream info").state.messages;
        let consumer = s
            .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
                deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .expect("ordered consumer");
        let mut msgs = consumer.messages().await.expect("messages");
        let mut out = Vec::new();
        while (out.len() as u64) < n {
            let m = tokio::time::timeout(Duration::from_secs(60), msgs.next())
                .await
                .expect("stream delivers its messages")
                .expect("not ended")
                .expect("a message");
            let info = m.info().expect("jetstream message");
            out.push(Stored {
                stream_seq: info.stream_sequence,
                subject: m.subject.to_string(),
                msg_id: m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Nats-Msg-Id"))
                    .map(|v| v.as_str().to_owned())
                    .unwrap_or_default(),
                event: serde_json::from_slice(&m.payload).expect("JSON message"),
                payload: m.payload.to_vec(),
            });
        }
        out
    })
}

/// The journal as `stele events --json` prints it: (seq, hash, line).
pub(crate) fn journal_events(data: &Path) -> Vec<(u64, String, String)> {
    let o = stele()
        .arg("--data")
        .arg(data)
        .args(["events", "--json"])
        .output()
        .expect("stele events");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("json line");
            (
                v["seq"].as_u64().expect("seq"),
                v["hash"].as_str().expect("hash").to_owned(),
                l.to_owned(),
            )
        })
        .collect()
}

/// A journal of `events` bench events (plus JournalOpened and checkpoints).
fn bench_journal(data: &Path, events: u64) {
    let o = stele()
        .arg("--data")
        .arg(data)
        .args([
            "bench",
            "journal",
            "--events",
            &events.to_string(),
            "--durability",
            "buffered",
            "--json",
        ])
        .output()
        .expect("stele bench journal");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// The stream holds exactly the journal, each event once, in seq order,
/// with its hash as id and `Nats-Msg-Id`.
fn assert_stream_is_journal(stored: &[Stored], journal: &[(u64, String, String)]) {
    let seqs: Vec<u64> = stored
        .iter()
        .map(|m| m.event["seq"].as_str().and_then(|s| s.parse().ok()).expect("seq"))
        .collect();
    let mut counts = BTreeMap::<u64, u32>::new();
    for s in &seqs {
        *counts.entry(*s).or_default() += 1;
    }
    let doubled: Vec<_> = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(s, _)| *s)
        .take(10)
        .collect();
    assert!(doubled.is_empty(), "seqs stored twice: {doubled:?}");
    let missing: Vec<u64> = journal
        .iter()
        .map(|(s, _, _)| *s)
        .filter(|s| !counts.contains_key(s))
        .take(10)
        .collect();
    assert!(missing.is_empty(), "seqs missing from the stream: {missing:?}…");
    assert_eq!(stored.len(), journal.len(), "one message per event");
    for (i, (m, (seq, hash, _))) in stored.iter().zip(journal).enumerate() {
        assert_eq!(
            seqs[i], *seq,
            "stream position {i} holds seq {} (out of order)",
            seqs[i]
        );
        assert_eq!(
            m.event["id"].as_str(),
            Some(hash.as_str()),
            "seq {seq}: id is the hash"
        );
        assert_eq!(&m.msg_id, hash, "seq {seq}: Nats-Msg-Id is the hash");
        assert_eq!(m.event["data"]["hash"].as_str(), Some(hash.as_str()));
    }
    let stream_seqs: Vec<u64> = stored.iter().map(|m| m.stream_seq).collect();
    assert!(stream_seqs.windows(2).all(|w| w[0] < w[1]), "stream order");
}

pub(crate) fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ok() {
        assert!(
            t.elapsed() < PATIENCE,
            "gave up after {PATIENCE:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed when dropped; output in files.
pub(crate) struct Proc {
    pub(crate) child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl Proc {
    pub(crate) fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    pub(crate) fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn kill_9(&mut self, what: &str) {
        if let Some(s) = self.child.try_wait().expect("poll") {
            panic!("{what} ended by itself ({s}) before the kill: {}", self.stderr());
        }
        self.child.kill().expect("SIGKILL");
        let s = self.child.wait().expect("reap");
        assert_eq!(s.signal(), Some(9), "{what}: {s}");
    }

    /// SIGTERM, then the exit status.
    pub(crate) fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let t = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().expect("poll") {
                return s;
            }
            assert!(
                t.elapsed() < PATIENCE,
                "still running after SIGTERM: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn spawn(cmd: &mut std::process::Command, logs: &Path, name: &str) -> Proc {
    let out = logs.join(format!("{name}.out"));
    let err = logs.join(format!("{name}.err"));
    let child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("log file"))
        .stderr(std::fs::File::create(&err).expect("log file"))
        .spawn()
        .expect("spawn");
    Proc { child, out, err }
}

/// `stele publish` on `data` to `url`, into `stream` under `prefix`.
fn publisher(data: &Path, url: &str, stream: &str, prefix: &str, logs: &Path, name: &str) -> Proc {
    spawn(
        stele()
            .arg("--data")
            .arg(data)
            .args(["publish", "--nats", url])
            .env("STELE_NATS_STREAM", stream)
            .env("STELE_NATS_SUBJECT_PREFIX", prefix),
        logs,
        name,
    )
}

/// A `nats-server -js` of the test's own, on a free port.
struct OwnServer {
    proc: Option<Proc>,
    port: u16,
    store: PathBuf,
    logs: PathBuf,
}

pub(crate) fn nats_server_bin() -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join("nats-server"))
        .find(|p| p.exists())
        .expect("nats-server is not installed (scripts/test.sh installs it)")
}

impl OwnServer {
    fn start(dir: &Path) -> OwnServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut s = OwnServer {
            proc: None,
            port,
            store: dir.join("js"),
            logs: dir.to_owned(),
        };
        s.restart();
        s
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn restart(&mut self) {
        assert!(self.proc.is_none());
        let n = std::fs::read_dir(&self.logs).map_or(0, Iterator::count);
        self.proc = Some(spawn(
            std::process::Command::new(nats_server_bin())
                .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
                .arg(&self.store),
            &self.logs,
            &format!("nats-server-{n}"),
        ));
        let url = self.url();
        wait_until("the test's nats-server to listen", || {
            rt().block_on(connect(&url)).is_ok()
        });
    }

    fn kill_9(&mut self) {
        let mut p = self.proc.take().expect("running");
        p.kill_9("nats-server");
    }
}

#[test]
fn round_trip_of_100k_events_in_order_with_nothing_missing_or_doubled() {
    let url = require_nats();
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    bench_journal(&data, 100_000);
    let journal = journal_events(&data);
    let head = journal.last().expect("events").0;
    assert!(head > 100_000);
    let (stream, prefix) = unique("roundtrip");
    let mut publ = publisher(&data, &url, &stream, &prefix, tmp.path(), "publish");
    wait_until("the publisher's first acknowledgement", || {
        data.join("nats.cursor").exists()
    });

    // A subscriber from seq 1 prints every event, in order, exactly once.
    let mut sub = stele()
        .args([
            "subscribe",
            "--nats",
            &url,
            "--stream",
            &stream,
            "--from",
            "1",
            "--json",
        ])
        .env("STELE_NATS_SUBJECT_PREFIX", &prefix)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn subscribe");
    let lines = BufReader::new(sub.stdout.take().expect("stdout"));
    let mut got = Vec::with_capacity(journal.len());
    for line in lines.lines() {
        let line = line.expect("subscriber output");
        got.push(line);
        if got.len() == journal.len() {
            break;
        }
    }
    let _ = sub.kill();
    let _ = sub.wait();
    assert_eq!(
        got.len(),
        journal.len(),
        "subscriber ended early: {}",
        publ.stderr()
    );
    for (line, (seq, hash, printed)) in got.iter().zip(&journal) {
        // Exactly what `stele events --json` prints.
        assert_eq!(line, printed, "seq {seq} ({hash})");
    }

    // The stream itself, read raw: nothing doubled that a client could hide.
    wait_until("the whole journal in the stream", || {
        stream_messages(&url, &stream) == Some(journal.len() as u64)
    });
    let stored = read_stream(&url, &stream);
    assert_stream_is_journal(&stored, &journal);
    let m = &stored[0];
    assert_eq!(m.event["specversion"], "1.0");
    assert_eq!(m.event["type"], "stele.journal_opened");
    assert_eq!(m.event["subject"], "system");
    assert_eq!(m.event["datacontenttype"], "application/json");
    assert_eq!(m.subject, format!("{prefix}.journal_opened.system"));
    let key = journal[0].2.split("\"key\":\"").nth(2).map(|s| &s[..16]);
    assert_eq!(
        m.event["source"].as_str(),
        key.map(|k| format!("stele://{k}")).as_deref(),
        "source names the journal's first key"
    );
    assert!(
        m.event["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{}",
        m.event
    );

    // SIGTERM: a clean stop that leaves the cursor at the head.
    let s = publ.terminate();
    assert!(s.success(), "{s}: {}", publ.stderr());
    let cursor: Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("nats.cursor")).expect("cursor"))
            .expect("json");
    assert_eq!(cursor["seq"].as_u64(), Some(head));
    assert_eq!(
        cursor["hash"].as_str(),
        Some(journal.last().expect("last").1.as_str())
    );
    assert!(publ.stdout().contains(&format!("published through seq {head}")));
    delete_stream(&url, &stream);
}

#[test]
fn messages_are_cloud_events_and_subscribers_start_anywhere_and_filter() {
    let url = require_nats();
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    for (stream, text) in [("ops", "one"), ("agent.a.b", "two"), ("ops", "three")] {
        let o = stele()
            .arg("--data")
            .arg(&data)
            .args(["journal", "append", "--stream", stream, "--text", text])
            .output()
            .expect("append");
        assert!(o.status.success());
    }
    // Each `journal append` opens the journal: JournalOpened, then the note.
    let journal = journal_events(&data);
    assert_eq!(journal.len(), 6);
    let (stream, prefix) = unique("shape");
    let mut publ = publisher(&data, &url, &stream, &prefix, tmp.path(), "publish");
    wait_until("the journal in the stream", || {
        stream_messages(&url, &stream) == Some(6)
    });
    let stored = read_stream(&url, &stream);
    assert_stream_is_journal(&stored, &journal);
    let dotted = &stored[3];
    assert_eq!(
        dotted.subject,
        format!("{prefix}.annotated.agent%2Ea%2Eb"),
        "a dot of the stream id is %2E"
    );
    assert_eq!(dotted.event["subject"], "agent.a.b");
    assert_eq!(dotted.event["seq"], "4");
    assert_eq!(dotted.event["type"], "stele.annotated");
    let data_json = String::from_utf8(dotted.payload.clone()).expect("utf-8");
    assert!(
        data_json.ends_with(&format!(",\"data\":{}}}", journal[3].2)),
        "data is the event as `stele events --json` prints it: {data_json}"
    );

    // From seq 3, only `ops` annotations: seq 6 first.
    let mut sub = stele()
        .args([
            "subscribe",
            "--nats",
            &url,
            "--stream",
            &stream,
            "--from",
            "3",
            "--filter",
            &format!("{prefix}.annotated.ops"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("subscribe");
    let mut lines = BufReader::new(sub.stdout.take().expect("stdout")).lines();
    let first = lines.next().expect("a line").expect("read");
    assert!(first.trim_start().starts_with("6 "), "{first}");
    assert!(first.contains("ops") && first.contains("three"), "{first}");

    // Live: a new event reaches the running subscriber (its JournalOpened,
    // seq 7, is filtered out).
    let o = stele()
        .arg("--data")
        .arg(&data)
        .args(["journal", "append", "--stream", "ops", "--text", "four"])
        .output()
        .expect("append");
    assert!(o.status.success());
    let next = lines.next().expect("a live line").expect("read");
    assert!(
        next.trim_start().starts_with("8 ") && next.contains("four"),
        "{next}"
    );
    let _ = sub.kill();
    let _ = sub.wait();
    assert!(publ.terminate().success(), "{}", publ.stderr());
    delete_stream(&url, &stream);
}

#[test]
fn nats_killed_mid_stream_and_restarted_leaves_no_gap_and_no_duplicate() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    bench_journal(&data, 100_000);
    let journal = journal_events(&data);
    let total = journal.len() as u64;
    let server_dir = tmp.path().join("server");
    std::fs::create_dir_all(&server_dir).expect("mkdir");
    let mut server = OwnServer::start(&server_dir);
    let url = server.url();
    let (stream, prefix) = unique("natskill");
    let publ = publisher(&data, &url, &stream, &prefix, tmp.path(), "publish");
    let mut at_kill = 0;
    wait_until("publishing to be under way", || {
        at_kill = stream_messages(&url, &stream).unwrap_or(0);
        at_kill >= 2_000
    });
    server.kill_9();
    assert!(
        at_kill < total,
        "the publisher finished before the kill; nothing was tested"
    );
    wait_until("the publisher to notice", || publ.stderr().contains("lost NATS"));
    std::thread::sleep(Duration::from_secs(1));
    server.restart();
    wait_until("the whole journal in the stream after the restart", || {
        stream_messages(&url, &stream) == Some(total)
    });
    let stored = read_stream(&url, &stream);
    assert_stream_is_journal(&stored, &journal);
    // Still nothing more a while later (no late duplicate).
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(stream_messages(&url, &stream), Some(total));
    drop(publ);
}

#[test]
fn publisher_killed_mid_stream_resumes_without_duplicates() {
    let url = require_nats();
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    bench_journal(&data, 100_000);
    let journal = journal_events(&data);
    let total = journal.len() as u64;
    let (stream, prefix) = unique("pubkill");
    let mut first = publisher(&data, &url, &stream, &prefix, tmp.path(), "publish-1");
    let mut at_kill = 0;
    wait_until("publishing to be under way", || {
        at_kill = stream_messages(&url, &stream).unwrap_or(0);
        at_kill >= 5_000
    });
    first.kill_9("the publisher");
    assert!(
        at_kill < total,
        "the publisher finished before the kill; nothing was tested"
    );
    let killed_at = stream_messages(&url, &stream).expect("stream");
    let second = publisher(&data, &url, &stream, &prefix, tmp.path(), "publish-2");
    wait_until("the whole journal in the stream", || {
        stream_messages(&url, &stream) == Some(total)
    });
    let stored = read_stream(&url, &stream);
    assert_stream_is_journal(&stored, &journal);
    assert!(
        second
            .stderr()
            .contains(&format!("publishing from seq {}", killed_at + 1)),
        "resumes right after the stream's tail ({killed_at}): {}",
        second.stderr()
    );
    drop(second);
    delete_stream(&url, &stream);
}

fn publish_once(data: &Path, args: &[&str], env: &[(&str, &str)]) -> crate::Run {
    let mut cmd = stele();
    cmd.arg("--data").arg(data).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = cmd.output().expect("stele");
    crate::Run {
        code: o.status.code(),
        signal: o.status.signal(),
        timed_out: false,
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

#[test]
fn malformed_nats_config_is_named_with_its_place() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            "[nats]\nretention = \"forever\"\n",
            "bad.toml:2:13: unknown variant `forever`",
        ),
        (
            "[nats]\nmax_pending = 0\n",
            "bad.toml:2:15: max_pending must be 1 to 16384",
        ),
        (
            "[nats]\nurl = \"http://x:1\"\n",
            "bad.toml:2:7: url \"http://x:1\": scheme \"http\"",
        ),
        (
            "[nats]\nstream = \"a.b\"\n",
            "bad.toml:2:10: stream \"a.b\" must be",
        ),
        (
            "[nats]\nsubject_prefix = \"a.>\"\n",
            "bad.toml:2:18: subject_prefix \"a.>\"",
        ),
        (
            "[nats]\nmax_age = \"1m\"\nduplicate_window = \"10m\"\n",
            "bad.toml:1:1: [nats] duplicate_window (10m)",
        ),
        (
            "[nats]\ntls = { cert = \"c.pem\" }\n",
            "bad.toml:2:7: tls needs both cert and key",
        ),
        ("[nats]\nmax_age = 5\n", "bad.toml:2:11: 5 needs a unit"),
        (
            "[nats]\nurl = \"nats://u:pw123@h:4222\"\n",
            "bad.toml:2:7: url holds credentials (user:password@ or token@)",
        ),
        (
            "[nats]\nuser = \"u\"\n",
            "bad.toml:1:1: [nats] user and password_env come together",
        ),
        (
            "[nats]\nnkey = \"u.nk\"\ntoken_env = \"NATS_TOKEN\"\n",
            "bad.toml:1:1: [nats] sets nkey and token_env: choose one way to authenticate",
        ),
        (
            "[nats]\nuser = \"u\"\npassword_env = \"hunter2!\"\n",
            "bad.toml:3:16: must be the NAME of the environment variable holding the secret",
        ),
        (
            "[nats]\ntoken_env = \"STELE_NATS_TOKEN\"\n",
            "bad.toml:2:13: \"STELE_NATS_TOKEN\" cannot hold a secret",
        ),
        ("[nats]\nurl_typo = 1\n", "bad.toml:2:1: unknown field `url_typo`"),
    ];
    let file = tmp.path().join("bad.toml");
    for (text, want) in cases {
        std::fs::write(&file, text).expect("write");
        for cmd in ["publish", "subscribe"] {
            let r = publish_once(tmp.path(), &["--config", file.to_str().expect("utf-8"), cmd], &[]);
            r.no_panic(cmd);
            assert_eq!(r.code, Some(2), "{text:?} {cmd}: {}", r.stderr);
            assert!(
                r.stderr.contains(want),
                "{text:?} {cmd}: want {want:?} in {:?}",
                r.stderr
            );
            assert_eq!(r.stderr.trim().lines().count(), 1, "one line: {}", r.stderr);
            assert!(
                !r.stderr.contains("pw123") && !r.stderr.contains("hunter2"),
                "a secret is never echoed: {}",
                r.stderr
            );
        }
    }
    let r = publish_once(tmp.path(), &["subscribe"], &[("STELE_NATS_RETENTION", "often")]);
    assert_eq!(r.code, Some(2));
    assert!(
        r.stderr
            .contains("environment STELE_NATS_RETENTION: unknown variant `often`"),
        "{}",
        r.stderr
    );

    // `config show` round-trips the section, TLS table included.
    std::fs::write(
        &file,
        "[nats]\nenabled = true\nmax_age = 0\ntls = { require = true, ca = \"ca.pem\" }\ncredentials = \"x.creds\"\n",
    )
    .expect("write");
    let c = stele_engine::Config::load(&file).expect("valid");
    assert!(c.nats.enabled && c.nats.max_age.is_zero());
    let shown = toml::to_string_pretty(&c).expect("toml");
    assert_eq!(
        stele_engine::Config::parse(Path::new("shown"), &shown, &[]).expect("round trip"),
        c
    );
    assert_eq!(
        stele_engine::Config::parse(Path::new("x"), "[nats]\ntls = true\n", &[])
            .expect("tls flag")
            .nats
            .tls
            .map(|t| t.require),
        Some(true)
    );
}

#[test]
fn unreachable_nats_subscribe_fails_and_publish_keeps_retrying() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let o = stele()
        .arg("--data")
        .arg(&data)
        .args(["journal", "append", "--text", "x"])
        .output()
        .expect("append");
    assert!(o.status.success());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    let r = crate::run_bounded(&["subscribe", "--nats", &url]);
    r.no_panic("subscribe");
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!("cannot reach NATS at {url}")),
        "{}",
        r.stderr
    );

    let mut publ = spawn(
        stele().arg("--data").arg(&data).args(["publish", "--nats", &url]),
        tmp.path(),
        "publish",
    );
    wait_until("a second retry message", || {
        publ.stderr().matches("cannot reach NATS").count() >= 2
    });
    assert!(publ.stderr().contains("retrying in"), "{}", publ.stderr());
    assert!(publ.child.try_wait().expect("poll").is_none(), "still running");
    let s = publ.terminate();
    assert!(s.success(), "{s}");
    assert!(!data.join("nats.cursor").exists(), "nothing was acknowledged");
}

#[test]
fn a_cursor_the_journal_does_not_match_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    for t in ["a", "b"] {
        let o = stele()
            .arg("--data")
            .arg(&data)
            .args(["journal", "append", "--text", t])
            .output()
            .expect("append");
        assert!(o.status.success());
    }
    // Refused before any connection: the URL need not answer.
    let nowhere = "nats://127.0.0.1:1";
    let cursor = data.join("nats.cursor");
    let write = |seq: u64, hash: &str, stream: &str| {
        std::fs::write(
            &cursor,
            format!(r#"{{"format":"stele-nats-cursor/1","stream":"{stream}","seq":{seq},"hash":"{hash}"}}"#),
        )
        .expect("write cursor");
    };
    let zero = "00".repeat(32);
    let cases = [
        (
            2,
            zero.as_str(),
            "STELE",
            "seq 2 was published with hash 000000000000…, but the journal has hash",
        ),
        (
            9,
            zero.as_str(),
            "STELE",
            "but the journal ends before it (head 4)",
        ),
        (
            1,
            zero.as_str(),
            "OTHER",
            "is for stream \"OTHER\", but [nats] stream is \"STELE\"",
        ),
    ];
    for (seq, hash, stream, want) in cases {
        write(seq, hash, stream);
        let r = crate::run_bounded(&[
            "--data",
            data.to_str().expect("utf-8"),
            "publish",
            "--nats",
            nowhere,
        ]);
        r.no_panic("publish");
        assert_eq!(r.code, Some(2), "{}", r.stderr);
        assert!(r.stderr.contains(want), "want {want:?} in {}", r.stderr);
        assert!(r.stderr.contains("nats.cursor"), "names the file: {}", r.stderr);
    }
    std::fs::write(&cursor, "not json").expect("write");
    let r = crate::run_bounded(&[
        "--data",
        data.to_str().expect("utf-8"),
        "publish",
        "--nats",
        nowhere,
    ]);
    assert_eq!(r.code, Some(2));
    assert!(r.stderr.contains("is not a cursor file"), "{}", r.stderr);
}

#[test]
fn a_stream_of_another_journal_is_refused() {
    let url = require_nats();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (stream, prefix) = unique("foreign");
    let mut logs = Vec::new();
    for name in ["a", "b"] {
        let data = tmp.path().join(name);
        let o = stele()
            .arg("--data")
            .arg(&data)
            .args(["journal", "append", "--text", name])
            .output()
            .expect("append");
        assert!(o.status.success());
        logs.push(data);
    }
    let mut a = publisher(&logs[0], &url, &stream, &prefix, tmp.path(), "publish-a");
    wait_until("a's events in the stream", || {
        stream_messages(&url, &stream) == Some(2)
    });
    assert!(a.terminate().success(), "{}", a.stderr());
    let mut b = publisher(&logs[1], &url, &stream, &prefix, tmp.path(), "publish-b");
    let t = Instant::now();
    let status = loop {
        if let Some(s) = b.child.try_wait().expect("poll") {
            break s;
        }
        assert!(t.elapsed() < PATIENCE, "b did not refuse: {}", b.stderr());
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(2));
    assert!(b.stderr().contains("holds events of stele://"), "{}", b.stderr());
    assert_eq!(stream_messages(&url, &stream), Some(2), "b published nothing");
    delete_stream(&url, &stream);
}
