//! The live event stream (`GET /v1/events/stream`) of a real `stele up`
//! under concurrent appends: many clients at once each get every event
//! exactly once and in seq order; the wire format is `id: SEQ`, `data:` the
//! same JSON bytes as `GET /v1/events/{seq}`; a client resuming with
//! `Last-Event-ID` mid-stream gets the exact continuation; a client that
//! stops reading while the shared feed's buffer is one message (`[http]
//! sse_buffer = 1`) falls behind, is counted in `stele_sse_lagged_total`,
//! and still gets every event from the journal; `stream` and `kind`
//! filters hold throughout; `[http] sse_buffer` is read and range-checked.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::up::{CONFIG, Up};

/// Longest a client waits for its next byte before the test fails.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

fn start(dir: &Path, http: &str) -> Up {
    std::fs::write(dir.join("stele.toml"), format!("{CONFIG}\n[http]\n{http}\n")).expect("config");
    Up::start_with(dir, None, &[])
}

fn addr(up: &Up) -> String {
    up.http.trim_start_matches("http://").to_owned()
}

/// `GET path` on the daemon: the status and the body text.
fn get(up: &Up, path: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into();
    let mut r = agent
        .get(format!("{}{path}", up.http))
        .call()
        .expect("HTTP request");
    let status = r.status().as_u16();
    (status, r.body_mut().read_to_string().expect("body"))
}

/// Appends `n` notes to `stream` over one control-socket connection of the
/// daemon on `data`; the seqs the journal gave them.
fn append(data: &Path, stream: &str, tag: &str, n: usize, text_bytes: usize) -> Vec<u64> {
    let socket = data.join("control.sock");
    let conn = UnixStream::connect(&socket).unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    conn.set_read_timeout(Some(READ_TIMEOUT)).expect("timeout");
    let mut w = conn.try_clone().expect("clone");
    let mut r = BufReader::new(conn);
    let pad = "x".repeat(text_bytes);
    let mut seqs = Vec::with_capacity(n);
    let mut line = String::new();
    for i in 0..n {
        let req = json!({"op": "append", "stream": stream, "text": format!("{tag} {i} {pad}")});
        w.write_all(format!("{req}\n").as_bytes()).expect("send append");
        line.clear();
        r.read_line(&mut line).expect("append reply");
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("reply {line:?}: {e}"));
        assert_eq!(v["ok"], true, "append refused: {line}");
        seqs.push(v["receipt"]["seq"].as_u64().expect("receipt seq"));
    }
    seqs
}

/// Appends from `threads` connections at once, `each` notes per connection;
/// the seqs, sorted.
fn append_concurrently(
    data: &Path,
    stream: &str,
    threads: usize,
    each: usize,
    text_bytes: usize,
) -> Vec<u64> {
    let mut seqs: Vec<u64> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| s.spawn(move || append(data, stream, &format!("t{t}"), each, text_bytes)))
            .collect();
        hs.into_iter().flat_map(|h| h.join().expect("appender")).collect()
    });
    seqs.sort_unstable();
    seqs
}

/// The note that ends a test's appends; clients read until they see it.
const END: &str = "the-end";

/// A raw SSE client: HTTP/1.1 over TCP, chunked framing decoded by hand, so
/// the test sees the exact bytes of every frame.
struct Client {
    r: BufReader<TcpStream>,
    /// Body bytes received and not yet parsed into frames.
    body: Vec<u8>,
}

/// One event frame: its id and its data, exactly as sent.
struct Frame {
    id: u64,
    data: String,
}

impl Client {
    /// Connects and reads the response head; on return the server has
    /// subscribed this stream (the handler runs before the head is sent).
    fn connect(addr: &str, query: &str, last_event_id: Option<u64>) -> Client {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(READ_TIMEOUT)).expect("timeout");
        let mut req =
            format!("GET /v1/events/stream{query} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        if let Some(id) = last_event_id {
            req.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).expect("write");
        let mut r = BufReader::new(s);
        let mut head = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            r.read_line(&mut line).expect("response head");
            if line == "\r\n" {
                break;
            }
            head.push(line.trim_end().to_ascii_lowercase());
        }
        assert!(head[0].contains(" 200 "), "SSE status: {head:?}");
        assert!(
            head.contains(&"content-type: text/event-stream".to_owned()),
            "{head:?}"
        );
        assert!(head.contains(&"cache-control: no-cache".to_owned()), "{head:?}");
        assert!(
            head.contains(&"transfer-encoding: chunked".to_owned()),
            "{head:?}"
        );
        Client { r, body: Vec::new() }
    }

    /// The next body chunk appended to `body`.
    fn read_chunk(&mut self) {
        let mut size = String::new();
        assert!(
            self.r.read_line(&mut size).expect("chunk size") > 0,
            "SSE stream ended early"
        );
        let n = usize::from_str_radix(size.trim_end(), 16).unwrap_or_else(|_| panic!("chunk size {size:?}"));
        assert!(n > 0, "SSE stream ended");
        let at = self.body.len();
        self.body.resize(at + n + 2, 0);
        self.r.read_exact(&mut self.body[at..]).expect("chunk");
        assert_eq!(&self.body[at + n..], b"\r\n", "chunk framing");
        self.body.truncate(at + n);
    }

    /// The next event frame, checked to be exactly `id: N\ndata: JSON\n\n`
    /// (keep-alive comments are skipped).
    fn next(&mut self) -> Frame {
        loop {
            if let Some(end) = self.body.windows(2).position(|w| w == b"\n\n") {
                let raw: Vec<u8> = self.body.drain(..end + 2).collect();
                let text = String::from_utf8(raw).expect("UTF-8 frame");
                if text == ":\n\n" {
                    continue;
                }
                let (id_line, rest) = text.split_once('\n').expect("two lines");
                let id = id_line
                    .strip_prefix("id: ")
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or_else(|| panic!("not an event frame: {text:?}"));
                let data = rest
                    .strip_prefix("data: ")
                    .and_then(|d| d.strip_suffix("\n\n"))
                    .unwrap_or_else(|| panic!("not an event frame: {text:?}"));
                assert!(!data.contains('\n'), "one data line: {text:?}");
                return Frame {
                    id,
                    data: data.to_owned(),
                };
            }
            self.read_chunk();
        }
    }

    /// Frames through the one holding the [`END`] note.
    fn until_end(&mut self) -> Vec<Frame> {
        let mut out = Vec::new();
        loop {
            let f = self.next();
            let done = f.data.contains(&format!("\"{END} 0 "));
            out.push(f);
            if done {
                return out;
            }
        }
    }
}

/// Asserts each frame's data is its own event (seq = id) and the ids are
/// strictly increasing; returns the ids.
fn ids(frames: &[Frame]) -> Vec<u64> {
    let mut prev = 0;
    for f in frames {
        let v: Value = serde_json::from_str(&f.data).unwrap_or_else(|e| panic!("event {} JSON: {e}", f.id));
        assert_eq!(v["seq"].as_u64(), Some(f.id), "{}", f.data);
        assert!(
            f.id > prev,
            "event {} after {prev}: out of order or duplicated",
            f.id
        );
        prev = f.id;
    }
    frames.iter().map(|f| f.id).collect()
}

/// Every event of the journal (through the paged API): seq → (stream, kind).
fn journal(up: &Up) -> Vec<(u64, String, String)> {
    let mut out = Vec::new();
    let mut cursor = "1".to_owned();
    loop {
        let (status, text) = get(up, &format!("/v1/events?limit=1000&cursor={cursor}"));
        assert_eq!(status, 200, "{text}");
        let page: Value = serde_json::from_str(&text).expect("page");
        for e in page["events"].as_array().expect("events") {
            out.push((
                e["seq"].as_u64().expect("seq"),
                e["stream"].as_str().expect("stream").to_owned(),
                e["body"]["kind"].as_str().expect("kind").to_owned(),
            ));
        }
        match page["next_cursor"].as_str() {
            Some(c) => c.clone_into(&mut cursor),
            None => return out,
        }
    }
}

#[test]
fn sse_many_clients_get_every_event_once_in_order_while_appending() {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = start(dir.path(), "");
    let addr = addr(&up);
    append(&up.data, "load", "before", 50, 16);
    append(&up.data, "other", "before", 50, 16);
    // Live clients on one stream, on one kind, clients catching up from
    // seq 1 (with and without a filter), all reading while four
    // connections append.
    let queries = [
        "?stream=load",
        "?kind=annotated",
        "?from=1",
        "?from=1&stream=load",
        "",
        "?from=20&kind=annotated",
    ];
    // The live clients start after the head; nothing else appends here.
    let start_head = journal(&up).last().expect("events").0;
    let clients: Vec<_> = (0..24)
        .map(|i| {
            let q = queries[i % queries.len()];
            (q, Client::connect(&addr, q, None))
        })
        .collect();
    assert_eq!(journal(&up).last().expect("events").0, start_head);
    let readers: Vec<_> = clients
        .into_iter()
        .map(|(q, mut c)| std::thread::spawn(move || (q, c.until_end())))
        .collect();
    let appended = append_concurrently(&up.data, "load", 4, 400, 200);
    let end = append(&up.data, "load", END, 1, 0)[0];
    let all = journal(&up);
    assert!(
        appended
            .iter()
            .all(|s| all.iter().any(|e| e.0 == *s && e.1 == "load"))
    );
    for r in readers {
        let (q, frames) = r.join().expect("client");
        let got = ids(&frames);
        let want: Vec<u64> = all
            .iter()
            .filter(|(seq, stream, kind)| {
                *seq <= end
                    && match q {
                        "?stream=load" => stream == "load" && *seq > start_head,
                        "?kind=annotated" => kind == "annotated" && *seq > start_head,
                        "?from=1" => true,
                        "?from=1&stream=load" => stream == "load",
                        "" => *seq > start_head,
                        _ => kind == "annotated" && *seq >= 20,
                    }
            })
            .map(|e| e.0)
            .collect();
        assert_eq!(got.len(), want.len(), "{q:?}: wrong number of events");
        assert_eq!(got, want, "{q:?}: gap, duplicate or foreign event");
    }

    // The bytes of a frame's data are those of `GET /v1/events/{seq}`, for
    // events read while catching up and events from the shared feed.
    let mut c = Client::connect(&addr, "?from=1", None);
    let frames = c.until_end();
    assert_eq!(ids(&frames), (1..=end).collect::<Vec<_>>());
    for f in frames.iter().step_by(97).chain(frames.last()) {
        let (status, text) = get(&up, &format!("/v1/events/{}", f.id));
        assert_eq!(status, 200);
        assert_eq!(f.data, text, "event {}: SSE data differs from GET", f.id);
    }
    let mut live = Client::connect(&addr, "?stream=wire", None);
    for s in append(&up.data, "wire", "wire", 3, 10) {
        let f = live.next();
        assert_eq!(f.id, s);
        assert_eq!(f.data, get(&up, &format!("/v1/events/{s}")).1, "event {s}");
    }
}

#[test]
fn sse_resume_with_last_event_id_mid_stream_gets_the_exact_continuation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = start(dir.path(), "");
    let addr = addr(&up);
    let first = append(&up.data, "r", "early", 300, 50);
    std::thread::scope(|s| {
        let appender = s.spawn(|| {
            let mut seqs = append_concurrently(&up.data, "r", 2, 350, 50);
            seqs.extend(append(&up.data, "r", END, 1, 0));
            seqs
        });
        // Read part of the stream while the appends go on, hang up, resume
        // from the last id seen; twice, the second time in the live part.
        let mut got = Vec::new();
        let mut c = Client::connect(&addr, "?from=1&stream=r", None);
        for _ in 0..450 {
            got.push(c.next());
        }
        drop(c);
        let last = got.last().expect("frames").id;
        let mut c = Client::connect(&addr, "?from=1&stream=r", Some(last));
        for _ in 0..200 {
            got.push(c.next());
        }
        drop(c);
        let last = got.last().expect("frames").id;
        // `from` is ignored when resuming.
        let mut c = Client::connect(&addr, "?from=999999&stream=r", Some(last));
        got.extend(c.until_end());
        let mut want = first.clone();
        want.extend(appender.join().expect("appender"));
        want.sort_unstable();
        assert_eq!(ids(&got), want, "gap or duplicate across the resumes");
    });
    // Resuming at the head waits for what comes next.
    let head = journal(&up).last().expect("events").0;
    let mut c = Client::connect(&addr, "", Some(head));
    let next = append(&up.data, "r", "after", 1, 0)[0];
    let f = c.next();
    assert!(f.id > head && f.id <= next, "resumed after {head} at {}", f.id);
}

#[test]
fn sse_client_behind_the_shared_feed_catches_up_from_the_journal() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A one-message buffer: any stream not scheduled between two messages
    // of the feed falls behind it.
    let up = start(dir.path(), "sse_buffer = 1");
    let addr = addr(&up);
    let lagged = || -> f64 {
        let (status, text) = get(&up, "/metrics");
        assert_eq!(status, 200);
        text.lines()
            .find_map(|l| l.strip_prefix("stele_sse_lagged_total "))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no stele_sse_lagged_total in:\n{text}"))
    };
    assert!(lagged().abs() < f64::EPSILON, "no stream has lagged yet");
    // One client stops reading (its socket buffers fill, then the feed
    // moves on without it); others read all along.
    let mut slow = Client::connect(&addr, "?stream=lag", None);
    let fast: Vec<_> = (0..4)
        .map(|_| {
            let mut c = Client::connect(&addr, "?stream=lag", None);
            std::thread::spawn(move || ids(&c.until_end()))
        })
        .collect();
    let mut want = append_concurrently(&up.data, "lag", 3, 1000, 4096);
    want.extend(append(&up.data, "lag", END, 1, 0));
    let got = ids(&slow.until_end());
    assert_eq!(got.len(), want.len(), "the slow client lost or repeated events");
    assert_eq!(got, want, "the slow client lost or repeated events");
    for f in fast {
        assert_eq!(f.join().expect("client"), want);
    }
    assert!(lagged() >= 1.0, "the slow client never fell behind the feed");
}

#[test]
fn sse_filters_and_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = start(dir.path(), "sse_buffer = 2");
    let addr = addr(&up);
    let mut x = Client::connect(&addr, "?stream=x", None);
    let mut kind = Client::connect(&addr, "?from=1&kind=annotated", None);
    let mut none = Client::connect(&addr, "?kind=checkpoint_signed", None);
    std::thread::scope(|s| {
        s.spawn(|| append(&up.data, "x", "x", 300, 100));
        s.spawn(|| append(&up.data, "y", "y", 300, 100));
    });
    append(&up.data, "x", END, 1, 0);
    let all = journal(&up);
    let got = ids(&x.until_end());
    let want: Vec<u64> = all.iter().filter(|e| e.1 == "x").map(|e| e.0).collect();
    assert_eq!(got, want);
    let got = ids(&kind.until_end());
    let want: Vec<u64> = all
        .iter()
        .filter(|e| e.2 == "annotated" && e.0 <= *got.last().expect("frames"))
        .map(|e| e.0)
        .collect();
    assert_eq!(got, want);
    // A checkpoint is the first event this stream admits.
    let (status, text) = post(&up, "/v1/journal/checkpoint");
    assert_eq!(status, 200, "{text}");
    let cp = serde_json::from_str::<Value>(&text).expect("receipt")["seq"]
        .as_u64()
        .expect("checkpoint seq");
    loop {
        let f = none.next();
        let v: Value = serde_json::from_str(&f.data).expect("event");
        assert_eq!(v["body"]["kind"], "checkpoint_signed", "{}", f.data);
        assert!(f.id <= cp, "passed the checkpoint {cp}: {}", f.id);
        if f.id == cp {
            break;
        }
    }
    // Bad parameters are refused before anything streams.
    for bad in ["?kind=nope", "?stream=", "?from=x", "?bogus=1"] {
        let (status, text) = get(&up, &format!("/v1/events/stream{bad}"));
        assert_eq!(status, 400, "{bad}: {text}");
    }
    let r = raw(
        &addr,
        "GET /v1/events/stream HTTP/1.1\r\nHost: x\r\nLast-Event-ID: seven\r\nConnection: close\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert!(r.contains("Last-Event-ID is not a seq"), "{r}");
}

/// `POST path` with an empty JSON body: the status and the body text.
fn post(up: &Up, path: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into();
    let mut r = agent
        .post(format!("{}{path}", up.http))
        .header("content-type", "application/json")
        .send("{}")
        .expect("HTTP request");
    let status = r.status().as_u16();
    (status, r.body_mut().read_to_string().expect("body"))
}

/// One request written as is; the whole response.
fn raw(addr: &str, request: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(READ_TIMEOUT)).expect("timeout");
    s.write_all(request.as_bytes()).expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

#[test]
fn sse_buffer_is_read_and_checked() {
    use stele_engine::Config;
    assert_eq!(Config::default().http.sse_buffer, 512);
    let c =
        Config::parse(Path::new("stele.toml"), "[http]\nsse_buffer = 64\n", &[]).expect("sse_buffer = 64");
    assert_eq!(c.http.sse_buffer, 64);
    for bad in ["0", "65537"] {
        let e = Config::parse(
            Path::new("stele.toml"),
            &format!("[http]\nsse_buffer = {bad}\n"),
            &[],
        )
        .expect_err(bad)
        .to_string();
        assert!(
            e.contains(&format!("[http] sse_buffer must be 1-65536, not {bad}")),
            "{e}"
        );
    }
}
