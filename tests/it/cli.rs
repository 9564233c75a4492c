//! The `stele` binary and the journal library as a user meets them: output
//! formats, the live follower, bad input (one-line errors that say what and
//! where), the data-directory lock, key rotation, and offline proofs.

use std::path::Path;
use std::process::Output;

use stele_journal::{Append, Durability, EventBody, Journal, Options, Seq, StreamId};

fn run(data: &Path, args: &[&str]) -> Output {
    crate::stele()
        .arg("--data")
        .arg(data)
        .args(args)
        .output()
        .expect("run stele")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_one_line_error(o: &Output, needle: &str) {
    assert!(
        !o.status.success(),
        "expected failure, got {:?}: {}",
        o.status,
        stdout(o)
    );
    let err = stderr(o);
    assert!(!err.contains("panicked"), "no panic: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
    assert!(err.contains(needle), "error mentions {needle:?}: {err}");
}

#[test]
fn append_events_verify_round_trip_through_the_binary() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    let o = run(
        d,
        &[
            "journal", "append", "--stream", "agent:a", "--text", "hello", "--run", "r-1",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let line = stdout(&o);
    let mut parts = line.split_whitespace();
    assert_eq!(parts.next(), Some("2"), "seq 1 is JournalOpened, the note is 2");
    assert_eq!(parts.next().map(str::len), Some(64), "prints the hash in hex");

    let o = run(d, &["events", "--json"]);
    assert!(o.status.success());
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 2);
    let note = &lines[1];
    for field in [
        "seq", "at", "stream", "cause", "body", "prev", "hash", "key", "sig",
    ] {
        assert!(note.get(field).is_some(), "field {field} in {note}");
    }
    assert_eq!(note["body"]["kind"], "annotated");
    assert_eq!(note["body"]["text"], "hello");
    assert_eq!(note["prev"], lines[0]["hash"]);
    assert_eq!(note["sig"].as_str().map(str::len), Some(128));

    let o = run(d, &["events", "--run", "r-1", "--json"]);
    assert_eq!(stdout(&o).lines().count(), 1, "run index finds the note");
    let o = run(d, &["events", "--stream", "system"]);
    assert_eq!(stdout(&o).lines().count(), 1);

    let o = run(d, &["journal", "verify", "--json"]);
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("verify json");
    assert_eq!(v["ok"], true);
    assert_eq!(v["events"], 2);
    assert_eq!(v["head_seq"], 2);
    assert!(v["first_bad_seq"].is_null() && v["error"].is_null());
    assert!(v["events_per_s"].as_f64().is_some());
}

#[test]
fn bad_input_gets_a_clear_one_line_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    assert_one_line_error(
        &run(
            d,
            &["journal", "append", "--stream", "bad stream!", "--text", "x"],
        ),
        "stream",
    );
    assert_one_line_error(
        &run(d, &["journal", "append", "--text", "x", "--run", ""]),
        "run id",
    );
    assert_one_line_error(&run(&d.join("nope"), &["events"]), "nope");
    let o = run(d, &["journal", "append", "--text", "x", "--cause", "99"]);
    assert_one_line_error(&o, "cause 99");
    let o = run(d, &["journal", "prove", "inclusion", "50"]);
    assert_one_line_error(&o, "out of range");
    let garbage = d.join("garbage.json");
    std::fs::write(&garbage, "{not json").expect("write");
    assert_one_line_error(
        &run(d, &["journal", "check-proof", garbage.to_str().expect("utf8")]),
        "not a stele proof",
    );
    // Nothing was lost or corrupted by the refused commands.
    let o = run(d, &["journal", "verify", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
}

#[test]
fn proofs_check_offline_and_tampered_proofs_fail() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    for i in 0..20 {
        assert!(
            run(d, &["journal", "append", "--text", &format!("note {i}")])
                .status
                .success()
        );
    }
    assert!(run(d, &["journal", "checkpoint"]).status.success());
    let proof = d.join("p.json");
    let o = run(
        d,
        &[
            "journal",
            "prove",
            "inclusion",
            "7",
            "--out",
            proof.to_str().expect("utf8"),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let keys = run(d, &["keys", "export"]);
    let keys: serde_json::Value = serde_json::from_str(&stdout(&keys)).expect("keys json");
    let pk = keys["keys"][0]["public_key"]
        .as_str()
        .expect("public key")
        .to_owned();
    // Checked with no journal at all.
    let o = crate::stele()
        .args([
            "journal",
            "check-proof",
            proof.to_str().expect("utf8"),
            "--trusted-key",
            &pk,
        ])
        .output()
        .expect("run");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("event 7"));

    let other = "00".repeat(32);
    let o = crate::stele()
        .args([
            "journal",
            "check-proof",
            proof.to_str().expect("utf8"),
            "--trusted-key",
            &other,
        ])
        .output()
        .expect("run");
    assert_eq!(
        o.status.code(),
        Some(1),
        "a proof signed by another key is refused"
    );

    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&proof).expect("read")).expect("json");
    let h = v["proof"][0].as_str().expect("hash").to_owned();
    let flipped = format!("{}{}", if h.starts_with('0') { "1" } else { "0" }, &h[1..]);
    v["proof"][0] = serde_json::Value::String(flipped);
    let bad = d.join("bad.json");
    std::fs::write(&bad, v.to_string()).expect("write");
    let o = crate::stele()
        .args(["journal", "check-proof", bad.to_str().expect("utf8")])
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("does not verify"), "{}", stderr(&o));

    let o = run(d, &["journal", "prove", "consistency", "5", "22", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let cons = d.join("c.json");
    std::fs::write(&cons, stdout(&o)).expect("write");
    let o = crate::stele()
        .args(["journal", "check-proof", cons.to_str().expect("utf8")])
        .output()
        .expect("run");
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn key_rotation_keeps_old_events_valid_and_signs_new_ones_with_the_new_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    assert!(
        run(d, &["journal", "append", "--text", "before"])
            .status
            .success()
    );
    let o = run(d, &["keys", "rotate", "--reason", "test"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(run(d, &["journal", "append", "--text", "after"]).status.success());
    let keys: serde_json::Value =
        serde_json::from_str(&stdout(&run(d, &["keys", "show", "--json"]))).expect("json");
    let keys = keys.as_array().expect("array");
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[1]["active"], true);
    let events: Vec<serde_json::Value> = stdout(&run(d, &["events", "--json"]))
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let before = events
        .iter()
        .find(|e| e["body"]["text"] == "before")
        .expect("before");
    let after = events
        .iter()
        .find(|e| e["body"]["text"] == "after")
        .expect("after");
    assert_eq!(before["key"], keys[0]["id"]);
    assert_eq!(after["key"], keys[1]["id"]);
    let rotated = events
        .iter()
        .find(|e| e["body"]["kind"] == "key_rotated")
        .expect("rotation event");
    assert_eq!(
        rotated["key"], keys[0]["id"],
        "the rotation is signed by the old key"
    );
    assert_eq!(run(d, &["journal", "verify"]).status.code(), Some(0));
    let mode = std::fs::metadata(
        d.join("keys")
            .join(format!("{}.key", keys[1]["id"].as_str().expect("id"))),
    )
    .expect("key file");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.permissions().mode() & 0o777, 0o600);
}

#[test]
fn one_process_owns_the_data_directory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let journal = Journal::open(tmp.path(), Options::default()).expect("open");
    let o = run(tmp.path(), &["journal", "append", "--text", "x"]);
    assert_one_line_error(&o, "in use by another stele process");
    drop(journal);
    assert!(
        run(tmp.path(), &["journal", "append", "--text", "x"])
            .status
            .success()
    );
}

#[test]
fn follow_catches_up_then_streams_live_without_gaps_or_duplicates() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let journal = Journal::open(
        tmp.path(),
        Options {
            durability: Durability::Buffered,
            ..Options::default()
        },
    )
    .expect("open");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        for i in 0..100 {
            journal
                .append(Append {
                    stream: StreamId::new("pre").expect("id"),
                    cause: None,
                    body: EventBody::Annotated {
                        text: format!("{i}"),
                        run: None,
                    },
                })
                .await
                .expect("append");
        }
        let mut follow = journal.reader().follow(Seq(1));
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let j = journal.clone();
                tokio::spawn(async move {
                    for i in 0..250 {
                        j.append(Append {
                            stream: StreamId::new(format!("w{w}")).expect("id"),
                            cause: None,
                            body: EventBody::Annotated {
                                text: format!("{i}"),
                                run: None,
                            },
                        })
                        .await
                        .expect("append");
                    }
                })
            })
            .collect();
        let total = 1 + 100 + 8 * 250;
        let mut expected = 1u64;
        while expected <= total {
            let e = tokio::time::timeout(std::time::Duration::from_secs(20), follow.next())
                .await
                .expect("follower keeps up")
                .expect("not ended")
                .expect("valid event");
            assert_eq!(e.seq().0, expected, "in order, no gap, no duplicate");
            expected += 1;
        }
        for w in writers {
            w.await.expect("writer");
        }
    });
    // After the writer stops, the follower ends instead of waiting forever.
    let reader = journal.reader();
    drop(journal);
    rt.block_on(async {
        let mut follow = reader.follow(Seq(1));
        let mut n = 0;
        while let Some(e) = follow.next().await {
            e.expect("valid");
            n += 1;
        }
        assert_eq!(n, 2101);
    });
}

#[test]
fn restart_reopens_with_everything_and_continues_the_chain() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let head = {
        let j = Journal::open(tmp.path(), Options::default()).expect("open");
        j.append_blocking(Append {
            stream: StreamId::new("a").expect("id"),
            cause: None,
            body: EventBody::Annotated {
                text: "x".into(),
                run: None,
            },
        })
        .expect("append")
    };
    let j = Journal::open(tmp.path(), Options::default()).expect("reopen");
    let reader = j.reader();
    let reopened = reader
        .get(Seq(3))
        .expect("read")
        .expect("JournalOpened after restart");
    assert_eq!(reopened.prev(), head.hash, "the chain continues across restarts");
    match reopened.to_event().expect("decode").body {
        EventBody::JournalOpened { recovered_head, .. } => assert_eq!(recovered_head, 2),
        other => panic!("expected JournalOpened, got {other:?}"),
    }
}

#[test]
fn oversized_and_invalid_appends_are_refused_before_they_reach_the_journal() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let j = Journal::open(tmp.path(), Options::default()).expect("open");
    let big = "x".repeat(stele_journal::limits::MAX_BODY_BYTES + 1);
    let err = j
        .append_blocking(Append {
            stream: StreamId::new("a").expect("id"),
            cause: None,
            body: EventBody::Annotated { text: big, run: None },
        })
        .expect_err("too large");
    assert!(err.to_string().contains("over the limit"), "{err}");
    let err = j
        .append_blocking(Append {
            stream: StreamId::new("a").expect("id"),
            cause: None,
            body: EventBody::Annotated {
                text: "x".into(),
                run: Some("bad run id".into()),
            },
        })
        .expect_err("bad run");
    assert!(err.to_string().contains("run id"), "{err}");
    assert_eq!(j.reader().head().seq, Seq(1), "nothing was appended");
    assert!(StreamId::new("x".repeat(129)).is_err());
}

#[test]
fn commands_reach_the_owning_process_through_its_control_socket() {
    use std::io::{BufRead, BufReader, Write};
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    let mut tail = crate::stele()
        .arg("--data")
        .arg(d)
        .args(["tail", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn tail");
    let sock = d.join("control.sock");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !sock.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "tail never served its control socket"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let o = run(
        d,
        &["journal", "append", "--text", "from elsewhere", "--run", "r9"],
    );
    assert!(o.status.success(), "append through the socket: {}", stderr(&o));
    assert!(stdout(&o).starts_with("2 "), "{}", stdout(&o));

    let mut lines = BufReader::new(tail.stdout.take().expect("stdout")).lines();
    let first: serde_json::Value =
        serde_json::from_str(&lines.next().expect("a line").expect("read")).expect("json");
    assert_eq!(
        first["body"]["text"], "from elsewhere",
        "tail shows what another process appended"
    );

    let o = run(d, &["events", "--run", "r9", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 1);

    // Malformed and hostile requests get an error reply and change nothing.
    let mut conn = std::os::unix::net::UnixStream::connect(&sock).expect("connect");
    conn.write_all(
        b"{\"op\":\"append\",\"stream\":\"bad stream\",\"text\":\"x\"}\nnot json\n{\"op\":\"drop_tables\"}\n",
    )
    .expect("write");
    let mut replies = BufReader::new(conn.try_clone().expect("clone")).lines();
    for _ in 0..3 {
        let v: serde_json::Value =
            serde_json::from_str(&replies.next().expect("reply").expect("read")).expect("json reply");
        assert_eq!(v["ok"], false, "{v}");
        assert!(!v["error"].as_str().expect("error text").is_empty());
    }
    drop(conn);
    let o = run(d, &["events", "--json"]);
    assert_eq!(
        stdout(&o).lines().count(),
        2,
        "only JournalOpened and the one note"
    );

    interrupt(&tail);
    let status = tail.wait().expect("tail exits");
    assert!(status.success(), "tail exits cleanly on Ctrl-C: {status:?}");
    assert!(!sock.exists(), "the socket is removed on exit");
    assert_eq!(run(d, &["journal", "verify"]).status.code(), Some(0));
}

/// Sends SIGINT (what Ctrl-C sends) to a child.
fn interrupt(child: &std::process::Child) {
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
}

#[test]
fn a_reader_that_goes_away_ends_the_output_quietly_like_sigpipe() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let tmp = tempfile::tempdir().expect("tempdir");
    {
        // Far more output than a pipe buffers (64 KiB), so the writer is
        // still writing when its reader leaves.
        let j = Journal::open(
            tmp.path(),
            Options {
                durability: Durability::Buffered,
                ..Options::default()
            },
        )
        .expect("open");
        let batch = (0..3000)
            .map(|i| Append {
                stream: StreamId::new("ops").expect("id"),
                cause: None,
                body: EventBody::Annotated {
                    text: format!("note {i} {}", "x".repeat(100)),
                    run: None,
                },
            })
            .collect();
        tokio::runtime::Runtime::new()
            .expect("rt")
            .block_on(j.append_many(batch))
            .expect("append");
    }
    for args in [
        &["events"][..],
        &["events", "--json"],
        &["at", "head", "--view", "journal"],
    ] {
        let mut child = crate::stele()
            .arg("--data")
            .arg(tmp.path())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut first = String::new();
        out.read_line(&mut first).expect("first line");
        assert!(!first.is_empty(), "{args:?} printed something");
        drop(out);
        let o = child.wait_with_output().expect("wait");
        let err = String::from_utf8_lossy(&o.stderr);
        if args[0] == "events" {
            assert_eq!(
                o.status.code(),
                Some(141),
                "{args:?}: status of a SIGPIPE-killed writer; stderr: {err}"
            );
        }
        assert!(!err.contains("panicked"), "{args:?}: no panic: {err}");
        assert!(
            !err.contains("Broken pipe"),
            "{args:?}: no error for a reader that left: {err}"
        );
    }
}
