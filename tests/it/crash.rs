//! Crash safety: `stele` killed with SIGKILL in the middle of writing. Many
//! rounds of a 16-writer `bench journal` on one data directory, each killed
//! after a random 50–400 ms (some rounds in `--durability buffered`): after
//! every kill the journal opens and verifies, and every event the bench saw
//! acknowledged (its `--ack-log`) is still there, under the seq it was
//! given. Also: killing the very first open of a fresh directory at any
//! moment never leaves a journal that cannot be opened or verified.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::{Run, run_bounded, stele};

/// Runs `stele --data DATA ARGS…` to completion, asserting it neither
/// panicked, died of a signal, nor hung.
fn run(data: &Path, args: &[&str]) -> Run {
    let mut all = vec!["--data", data.to_str().expect("utf-8 temp path")];
    all.extend_from_slice(args);
    let r = run_bounded(&all);
    r.no_panic(&format!("stele {args:?}"));
    r
}

/// `journal verify --json` must pass; returns (head_seq, head_hash).
fn verify_ok(data: &Path, when: &str) -> (u64, String) {
    let r = run(data, &["journal", "verify", "--json"]);
    assert_eq!(
        r.code,
        Some(0),
        "{when}: verify failed: {} {}",
        r.stdout,
        r.stderr
    );
    let v: Value = serde_json::from_str(r.stdout.trim()).expect("verify --json prints JSON");
    assert_eq!(v["ok"], true, "{when}: {v}");
    let head = v["head_seq"].as_u64().expect("head_seq");
    assert_eq!(v["events"].as_u64(), Some(head), "{when}: {v}");
    (head, v["head_hash"].as_str().expect("head_hash").to_owned())
}

/// Kills `child` with SIGKILL (what `Child::kill` sends on unix) and checks
/// it died of it rather than exiting on its own.
fn kill_9(child: &mut Child, what: &str, stderr_of: impl Fn() -> String) {
    if let Some(status) = child.try_wait().expect("poll child") {
        panic!(
            "{what} ended by itself ({status}) before it was killed: {}",
            stderr_of()
        );
    }
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("reap killed child");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{what}: {status}");
}

fn seed(var: &str) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().r#gen())
}

/// Seqs in an ack log: one per line, written after each acknowledgement. A
/// last line without its newline was still written after its ack (the
/// digits go out in one write), so it counts too.
fn read_ack_log(path: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.trim()
                .parse()
                .unwrap_or_else(|_| panic!("ack log {} has a bad line {l:?}", path.display()))
        })
        .collect()
}

#[test]
fn kill_9_mid_write_loses_no_acknowledged_event() {
    let seed = seed("STELE_CRASH_SEED");
    eprintln!("crash test seed {seed} (set STELE_CRASH_SEED to replay)");
    let mut rng = StdRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("journal");
    let rounds = 16;

    // seq -> round that saw it acknowledged
    let mut acked: BTreeMap<u64, usize> = BTreeMap::new();
    let mut heads = vec![0u64];
    let mut rounds_with_acks = 0;
    for round in 0..rounds {
        let buffered = round % 3 == 2;
        let ack_log = tmp.path().join(format!("acks-{round}.log"));
        let err_log = tmp.path().join(format!("stderr-{round}.log"));
        let mut args = vec![
            "bench",
            "journal",
            "--events",
            "1000000",
            "--writers",
            "16",
            "--ack-log",
            ack_log.to_str().expect("utf-8 temp path"),
        ];
        if buffered {
            args.extend(["--durability", "buffered"]);
        }
        let mut child = stele()
            .arg("--data")
            .arg(&data)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err_log).expect("stderr log"))
            .spawn()
            .expect("spawn bench");
        // Odd rounds: a blind delay, which may also hit start-up. Even
        // rounds: wait for the first acknowledgement, then a little more, so
        // at least half the kills land mid-write whatever the machine's load.
        let delay = rng.gen_range(50..=400);
        if round % 2 == 0 {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while std::fs::metadata(&ack_log).map_or(0, |m| m.len()) == 0
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(Duration::from_millis(delay / 2));
        } else {
            std::thread::sleep(Duration::from_millis(delay));
        }
        let stderr_of = || std::fs::read_to_string(&err_log).unwrap_or_default();
        let what = format!("round {round} (buffered: {buffered}, killed after {delay} ms)");
        kill_9(&mut child, &what, stderr_of);
        assert!(!stderr_of().contains("panicked"), "{what}: {}", stderr_of());

        let seqs = read_ack_log(&ack_log);
        let (head, _) = verify_ok(&data, &what);
        if let Some(&max) = seqs.iter().max() {
            rounds_with_acks += 1;
            assert!(
                max <= head,
                "{what}: seq {max} was acknowledged but the head after the crash is {head}"
            );
            // The newest acknowledged event is the one most at risk.
            let r = run(
                &data,
                &["events", "--from", &max.to_string(), "--limit", "1", "--json"],
            );
            assert_eq!(r.code, Some(0), "{what}: {}", r.stderr);
            let e: Value = serde_json::from_str(r.stdout.trim()).expect("one event as JSON");
            assert_eq!(e["seq"].as_u64(), Some(max), "{what}: {e}");
        }
        for s in seqs {
            if let Some(earlier) = acked.insert(s, round) {
                panic!(
                    "{what}: seq {s} was acknowledged again; round {earlier} already had it acknowledged, so that event was lost and its seq reused"
                );
            }
        }
        let prev = *heads.last().expect("heads");
        assert!(head >= prev, "{what}: the head went back from {prev} to {head}");
        heads.push(head);
        eprintln!(
            "{what}: {} acked, head {head}",
            acked.values().filter(|r| **r == round).count()
        );
    }

    // Every acknowledged seq, from every round, is in the final journal as
    // a well-formed event of the bench; the journal is gapless.
    let head = *heads.last().expect("heads");
    let r = run(&data, &["events", "--json"]);
    assert_eq!(r.code, Some(0), "events: {}", r.stderr);
    let mut stored = BTreeSet::new();
    for (i, line) in r.stdout.lines().enumerate() {
        let e: Value =
            serde_json::from_str(line).unwrap_or_else(|err| panic!("line {}: {err}: {line}", i + 1));
        let seq = e["seq"].as_u64().expect("seq");
        assert_eq!(seq, i as u64 + 1, "events are gapless and in order");
        assert_eq!(e["hash"].as_str().map(str::len), Some(64), "{line}");
        if acked.contains_key(&seq) {
            assert_eq!(
                e["body"]["kind"], "annotated",
                "acknowledged seq {seq} holds a bench event: {line}"
            );
            assert!(
                e["body"]["text"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("bench writer")),
                "{line}"
            );
        }
        stored.insert(seq);
    }
    assert_eq!(stored.len() as u64, head, "events lists the whole journal");
    let missing: Vec<u64> = acked.keys().filter(|s| !stored.contains(s)).copied().collect();
    assert!(missing.is_empty(), "acknowledged but missing: {missing:?}");

    // The kills really hit a journal under load.
    // (Opening takes longer as the journal grows, so a short delay may kill
    // a round before its first acknowledgement; most rounds still get some.)
    assert!(
        rounds_with_acks >= rounds / 2,
        "only {rounds_with_acks} of {rounds} rounds saw an acknowledgement before the kill"
    );
    assert!(
        acked.len() > 1000,
        "only {} events acknowledged in all",
        acked.len()
    );
    assert!(head > heads[1], "the head grew across rounds: {heads:?}");
}

#[test]
fn kill_during_first_open_never_bricks_the_journal() {
    let seed = seed("STELE_CRASH_SEED");
    eprintln!("first-open crash test seed {seed} (set STELE_CRASH_SEED to replay)");
    let mut rng = StdRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().expect("tempdir");
    let rounds = 20;
    // What the kill left behind -> (rounds, rounds that then failed)
    let mut states: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    let mut failures = Vec::new();
    for round in 0..rounds {
        let data = tmp.path().join(format!("journal-{round}"));
        let out_log = tmp.path().join(format!("stdout-{round}.log"));
        let err_log = tmp.path().join(format!("stderr-{round}.log"));
        let mut child = stele()
            .arg("--data")
            .arg(&data)
            .args(["journal", "append", "--text", "first note"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_log).expect("stdout log"))
            .stderr(std::fs::File::create(&err_log).expect("stderr log"))
            .spawn()
            .expect("spawn append");
        // Creating a journal takes a few tens of ms here (fjall creates and
        // syncs its files); kill anywhere from before it starts to after.
        let delay = rng.gen_range(0..=60);
        std::thread::sleep(Duration::from_millis(delay));
        // The append may legitimately have finished already.
        let finished = child.try_wait().expect("poll append").is_some();
        if !finished {
            child.kill().expect("SIGKILL");
        }
        let status = child.wait().expect("reap");
        let stderr = std::fs::read_to_string(&err_log).unwrap_or_default();
        assert!(!stderr.contains("panicked"), "round {round}: {stderr}");
        // It may also finish between the poll and the kill (a zombie
        // ignores SIGKILL): success is fine either way.
        assert!(
            status.success() || status.signal() == Some(libc::SIGKILL),
            "round {round}: {status} {stderr}"
        );
        // Whether the note was acknowledged ("SEQ HASH" on stdout).
        let receipt = std::fs::read_to_string(&out_log).unwrap_or_default();
        let acked: Option<(u64, String)> = match receipt.split_whitespace().collect::<Vec<_>>()[..] {
            [seq, hash] if hash.len() == 64 => seq.parse().ok().map(|seq| (seq, hash.to_owned())),
            _ => None,
        };
        let state = format!(
            "db/ {}, HEAD {}, keys/ {}",
            if data.join("db").exists() { "yes" } else { "no" },
            if data.join("HEAD").exists() { "yes" } else { "no" },
            if data.join("keys").exists() { "yes" } else { "no" },
        );
        let what = format!("round {round} (killed after {delay} ms, left {state})");

        // The user's next command must work: the journal opens (recovered,
        // or as a fresh journal when nothing was acknowledged).
        let r = run(
            &data,
            &["journal", "append", "--text", "after the crash", "--json"],
        );
        let problem = if r.code != Some(0) {
            Some(format!("the next append failed: {}", r.stderr.trim()))
        } else {
            let v = run(&data, &["journal", "verify", "--json"]);
            let report: Option<Value> = serde_json::from_str(v.stdout.trim()).ok();
            if v.code != Some(0) || report.as_ref().is_none_or(|r| r["ok"] != true) {
                Some(format!("verify failed: {} {}", v.stdout.trim(), v.stderr.trim()))
            } else if let Some((seq, hash)) = &acked {
                let e = run(
                    &data,
                    &["events", "--from", &seq.to_string(), "--limit", "1", "--json"],
                );
                let e: Option<Value> = serde_json::from_str(e.stdout.trim()).ok();
                (e.as_ref().and_then(|e| e["hash"].as_str()) != Some(hash.as_str()))
                    .then(|| format!("acknowledged event {seq} {hash} is not in the journal: {e:?}"))
            } else {
                None
            }
        };
        let entry = states.entry(state).or_default();
        entry.0 += 1;
        if let Some(p) = problem {
            entry.1 += 1;
            eprintln!("{what}: FAILURE: {p}");
            failures.push(format!("{what}: {p}"));
        } else {
            eprintln!("{what}: ok");
        }
    }
    eprintln!("states left by the kill (rounds / of which unusable afterwards):");
    for (state, (n, bad)) in &states {
        eprintln!("  {state:<32} {n:>3} / {bad:>3}");
    }
    assert!(
        failures.is_empty(),
        "{} of {rounds} crashes during the first open left an unusable journal (seed {seed}):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
