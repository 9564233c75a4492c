//! Tamper detection on a real journal (notes, a bench, two checkpoints and a
//! key rotation). Stored bytes are changed behind stele's back — through
//! fjall, so fjall's own checksums see nothing wrong, or by damaging fjall's
//! files byte by byte — and `stele journal verify` must never pass the
//! result as the original journal: it exits 1 naming the first bad seq in
//! one line, refuses a forged shortening, leaves the damaged files as it
//! found them, and never panics, aborts or hangs. Also: a node key file
//! readable by others is refused with a message naming the file and the fix.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::{Run, TIMEOUT, run_bounded as run};

/// Size of the record envelope (version, prev, hash, key, sig) before the
/// canonical bytes; see journal/src/event.rs.
const ENVELOPE: usize = 1 + 32 + 32 + 8 + 64;

fn data_arg(data: &Path) -> &str {
    data.to_str().expect("utf-8 temp path")
}

/// Runs a `stele` command that must succeed; returns its stdout.
fn ok(data: &Path, args: &[&str]) -> String {
    let mut all = vec!["--data", data_arg(data)];
    all.extend_from_slice(args);
    let r = run(&all);
    r.no_panic(&format!("{args:?}"));
    assert_eq!(r.code, Some(0), "stele {args:?} failed: {}", r.stderr);
    r.stdout
}

/// `journal append` of a note; returns its seq.
fn append(data: &Path, text: &str) -> u64 {
    let out = ok(
        data,
        &["journal", "append", "--text", text, "--run", "run-7", "--json"],
    );
    let v: Value = serde_json::from_str(out.trim()).expect("append --json prints JSON");
    v["seq"].as_u64().expect("receipt has a seq")
}

fn verify_json(data: &Path) -> (Run, Option<Value>) {
    let r = run(&["--data", data_arg(data), "journal", "verify", "--json"]);
    let v = serde_json::from_str::<Value>(r.stdout.trim()).ok();
    (r, v)
}

/// The pristine journal every case starts from.
struct Pristine {
    _tmp: tempfile::TempDir,
    data: PathBuf,
    /// A note at the start, outside the tail that `open` re-checks.
    early_note: u64,
    /// A note near the head, inside the tail that `open` re-checks.
    late_note: u64,
    head: u64,
    head_hash: String,
}

const NOTE: &str = "operator approved payment of 100 EUR to acct 4711";

fn pristine() -> Pristine {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("journal");
    let early_note = append(&data, NOTE);
    append(&data, "second early note");
    // Enough events that the early notes lie outside the 1024-event tail
    // which every open re-checks, so `verify`'s own walk must catch them.
    ok(
        &data,
        &["bench", "journal", "--events", "1200", "--writers", "8", "--json"],
    );
    ok(&data, &["journal", "checkpoint"]);
    ok(&data, &["keys", "rotate", "--reason", "tamper test"]);
    append(&data, "a note signed by the rotated key");
    let late_note = append(&data, NOTE);
    append(&data, "last note before the final checkpoint");
    ok(&data, &["journal", "checkpoint"]);
    let (r, v) = verify_json(&data);
    assert_eq!(
        r.code,
        Some(0),
        "pristine journal must verify: {} {}",
        r.stdout,
        r.stderr
    );
    let v = v.expect("verify --json prints JSON");
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["checkpoints"].as_u64().expect("checkpoints") >= 2, "{v}");
    assert_eq!(v["keys"], 2, "{v}");
    let head = v["head_seq"].as_u64().expect("head_seq");
    assert_eq!(v["events"].as_u64(), Some(head), "{v}");
    assert!(head - late_note < 1024, "late note must be in the tail");
    assert!(head - early_note > 1024, "early note must be outside the tail");
    Pristine {
        head_hash: v["head_hash"].as_str().expect("head_hash").to_owned(),
        _tmp: tmp,
        data,
        early_note,
        late_note,
        head,
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create copy dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let ty = entry.file_type().expect("file type");
        let dest = to.join(entry.file_name());
        if ty.is_dir() {
            copy_tree(&entry.path(), &dest);
        } else if ty.is_file() {
            std::fs::copy(entry.path(), &dest).expect("copy file");
        }
    }
}

impl Pristine {
    /// A fresh copy of the pristine data directory.
    fn copy(&self, name: &str) -> PathBuf {
        let to = self.data.with_file_name(name);
        copy_tree(&self.data, &to);
        to
    }
}

/// Opens the copy's fjall database directly (no stele), hands `f` the
/// `events` and `meta` keyspaces, and persists what `f` changed.
fn with_fjall(data: &Path, f: impl FnOnce(&fjall::Keyspace, &fjall::Keyspace)) {
    let db = fjall::Database::builder(data.join("db"))
        .open()
        .expect("fjall opens the pristine copy");
    let events = db
        .keyspace("events", fjall::KeyspaceCreateOptions::default)
        .expect("events keyspace");
    let meta = db
        .keyspace("meta", fjall::KeyspaceCreateOptions::default)
        .expect("meta keyspace");
    f(&events, &meta);
    db.persist(fjall::PersistMode::SyncAll).expect("persist");
}

fn record(events: &fjall::Keyspace, seq: u64) -> Vec<u8> {
    events
        .get(seq.to_be_bytes())
        .expect("read event")
        .unwrap_or_else(|| panic!("event {seq} is stored"))
        .to_vec()
}

/// Changes "100 EUR" to "900 EUR" inside the note's text.
fn edit_note(rec: &mut [u8]) {
    let at = rec
        .windows(7)
        .position(|w| w == b"100 EUR")
        .expect("the note's text is in its record");
    rec[at] = b'9';
}

/// Recomputes the stored hash so the event is self-consistent:
/// BLAKE3("stele/event/v1" || prev || canonical).
fn rehash(rec: &mut [u8]) {
    let mut h = blake3::Hasher::new();
    h.update(b"stele/event/v1");
    h.update(&rec[1..33]);
    h.update(&rec[ENVELOPE..]);
    rec[33..65].copy_from_slice(h.finalize().as_bytes());
}

/// `verify --json` must exit 1 with `first_bad_seq == bad` and an error
/// containing `needle`; plain `verify` must print one clear line. Nothing
/// may panic.
fn expect_refused(data: &Path, bad: u64, needle: &str) {
    let (r, v) = verify_json(data);
    r.no_panic("verify --json");
    assert_eq!(
        r.code,
        Some(1),
        "verify must fail with exit 1; stdout {} stderr {}",
        r.stdout,
        r.stderr
    );
    let v = v.unwrap_or_else(|| panic!("verify --json must print one JSON object, got {:?}", r.stdout));
    assert_eq!(v["ok"], false, "{v}");
    let error = v["error"].as_str().expect("error is a string");
    eprintln!(
        "{}: first_bad_seq {}: {error}",
        data.display(),
        v["first_bad_seq"]
    );
    assert!(
        !error.is_empty() && !error.contains('\n'),
        "one-line error: {error:?}"
    );
    assert!(
        error.to_lowercase().contains(needle),
        "error should mention {needle:?}: {error}"
    );
    assert_eq!(v["first_bad_seq"].as_u64(), Some(bad), "wrong first_bad_seq: {v}");

    let r = run(&["--data", data_arg(data), "journal", "verify"]);
    r.no_panic("verify");
    assert_eq!(r.code, Some(1), "plain verify must exit 1: {}", r.stderr);
    let line = r.stderr.trim();
    assert!(
        !line.is_empty() && !line.contains('\n'),
        "plain verify must explain in one line: {:?}",
        r.stderr
    );
    assert!(line.contains("verify failed"), "{line}");
}

#[test]
fn edited_event_body_is_named_by_seq() {
    let p = pristine();
    for (name, k) in [("early", p.early_note), ("late", p.late_note)] {
        let data = p.copy(&format!("edit-{name}"));
        with_fjall(&data, |events, _| {
            let mut rec = record(events, k);
            edit_note(&mut rec);
            events.insert(k.to_be_bytes(), rec).expect("insert");
        });
        // The stored hash no longer matches the recomputed one.
        expect_refused(&data, k, "hash");
    }
}

#[test]
fn edited_and_rehashed_event_is_named_by_seq() {
    let p = pristine();
    for (name, k) in [("early", p.early_note), ("late", p.late_note)] {
        let data = p.copy(&format!("rehash-{name}"));
        with_fjall(&data, |events, _| {
            let mut rec = record(events, k);
            edit_note(&mut rec);
            rehash(&mut rec);
            events.insert(k.to_be_bytes(), rec).expect("insert");
        });
        // Event K is self-consistent now but its signature is over the old
        // hash, and K+1's prev link no longer matches. Verification settles
        // K's signature before reporting the broken link at K+1 (and the
        // tail check at open checks each event's signature before moving
        // on), so the *first* bad seq is K, not K+1.
        expect_refused(&data, k, "signature");
    }
}

#[test]
fn deleted_event_is_named_as_missing() {
    let p = pristine();
    for (name, k) in [("early", p.early_note), ("late", p.late_note)] {
        let data = p.copy(&format!("gap-{name}"));
        with_fjall(&data, |events, _| {
            events.remove(k.to_be_bytes()).expect("remove");
        });
        expect_refused(&data, k, "missing");
    }
}

#[test]
fn swapped_events_are_named() {
    let p = pristine();
    for (name, k) in [("early", p.early_note), ("late", p.late_note)] {
        let data = p.copy(&format!("swap-{name}"));
        let other = k + 2;
        with_fjall(&data, |events, _| {
            let a = record(events, k);
            let b = record(events, other);
            events.insert(k.to_be_bytes(), b).expect("insert");
            events.insert(other.to_be_bytes(), a).expect("insert");
        });
        // The record stored under K says it is K+2.
        expect_refused(&data, k, "stored under seq");
    }
}

#[test]
fn forged_shortening_is_refused() {
    let p = pristine();
    let keep = p.head - 5;

    // Drop the last five events and make meta's head agree, as someone
    // hiding the newest events would: storage is consistent, but the head
    // file knows more was acknowledged.
    let data = p.copy("shortened");
    with_fjall(&data, |events, meta| {
        let new_head = record(events, keep);
        for s in keep + 1..=p.head {
            events.remove(s.to_be_bytes()).expect("remove");
        }
        let mut v = keep.to_be_bytes().to_vec();
        v.extend_from_slice(&new_head[33..65]);
        meta.insert("head", v).expect("rewrite meta head");
    });
    expect_refused(&data, keep + 1, "shorter than acknowledged");
    let r = run(&["--data", data_arg(&data), "journal", "append", "--text", "x"]);
    r.no_panic("append on a shortened journal");
    assert_eq!(
        r.code,
        Some(2),
        "append must refuse a shortened journal: {}",
        r.stderr
    );
    assert!(r.stderr.contains("shorter than acknowledged"), "{}", r.stderr);
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);

    // The same without fixing meta: storage contradicts itself.
    let data = p.copy("truncated");
    with_fjall(&data, |events, _| {
        for s in keep + 1..=p.head {
            events.remove(s.to_be_bytes()).expect("remove");
        }
    });
    // Open refuses because meta's head and the last stored event disagree;
    // it names the meta head, and the message gives both seqs.
    let (r, v) = verify_json(&data);
    r.no_panic("verify of a truncated journal");
    assert_eq!(r.code, Some(1), "{} {}", r.stdout, r.stderr);
    let v = v.expect("verify --json prints JSON");
    let error = v["error"].as_str().expect("error");
    assert!(
        error.contains(&format!("seq {}", p.head)) && error.contains(&format!("is {keep}")),
        "names what meta says and what is stored: {error}"
    );
    let bad = v["first_bad_seq"].as_u64().expect("first_bad_seq");
    assert!(
        (keep + 1..=p.head).contains(&bad),
        "first_bad_seq {bad} is not a removed event: {v}"
    );
}

/// An acceptable result of verifying a damaged journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Exit 0, and provably the pristine journal: every event and the same
    /// head hash (the damage hit nothing that matters).
    Intact,
    /// Exit 1 with a one-line JSON error.
    Refused,
    /// Exit 2 with one `error: opening journal …` line on stderr.
    RefusedAtOpen,
}

/// Judges `verify --json` on a damaged copy of a journal whose pristine
/// head is (`head`, `head_hash`).
fn judge(r: &Run, v: Option<&Value>, head: u64, head_hash: &str) -> Result<Outcome, String> {
    if r.stderr.contains("panicked") {
        return Err(format!("panicked: {}", r.stderr.trim()));
    }
    if r.timed_out {
        return Err(format!("hung for {TIMEOUT:?}"));
    }
    if let Some(sig) = r.signal {
        return Err(format!("died of signal {sig}: {}", r.stderr.trim()));
    }
    match r.code {
        Some(0) => match v {
            Some(v)
                if v["ok"] == true
                    && v["events"].as_u64() == Some(head)
                    && v["head_seq"].as_u64() == Some(head)
                    && v["head_hash"].as_str() == Some(head_hash) =>
            {
                Ok(Outcome::Intact)
            }
            _ => Err(format!(
                "exit 0 but not the pristine journal ({head} events, head {head_hash}): passed a shortened or altered journal as whole: {}",
                r.stdout.trim()
            )),
        },
        Some(1) => match v.and_then(|v| v["error"].as_str().map(|e| (v, e))) {
            Some((v, e)) if v["ok"] == false && !e.is_empty() && !e.contains('\n') => Ok(Outcome::Refused),
            _ => Err(format!("exit 1 without a one-line JSON error: {:?}", r.stdout)),
        },
        Some(2) if r.stderr.starts_with("error: opening journal") && r.stderr.trim().lines().count() == 1 => {
            Ok(Outcome::RefusedAtOpen)
        }
        other => Err(format!(
            "exit {other:?}: stdout {:?} stderr {:?}",
            r.stdout, r.stderr
        )),
    }
}

/// What a flipped byte hit, for the summary.
fn kind_of(rel: &Path) -> &'static str {
    let s = rel.to_string_lossy();
    let name = rel
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if s == "HEAD" {
        "HEAD"
    } else if name.ends_with(".jnl") {
        "fjall journal (*.jnl)"
    } else if s.contains("/tables/") {
        "fjall table"
    } else if s == "db/version" {
        "db/version"
    } else if name == "current" {
        "keyspace current"
    } else if name.starts_with('v') {
        "keyspace version (v*)"
    } else {
        "other"
    }
}

fn files_under(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let entry = entry.expect("dir entry");
        let ty = entry.file_type().expect("file type");
        if ty.is_dir() {
            files_under(root, &entry.path(), out);
        } else if ty.is_file() && entry.metadata().expect("metadata").len() > 0 {
            out.push(entry.path().strip_prefix(root).expect("under root").to_owned());
        }
    }
}

#[test]
fn flipped_bytes_never_pass_as_the_original_journal() {
    let p = pristine();
    let seed: u64 = std::env::var("STELE_TAMPER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().r#gen());
    // STELE_TAMPER_ROUNDS raises the count for a soak run.
    let rounds: u32 = std::env::var("STELE_TAMPER_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    eprintln!("flip test: {rounds} rounds, seed {seed} (set STELE_TAMPER_SEED to replay)");
    let mut rng = StdRng::seed_from_u64(seed);

    let mut targets = Vec::new();
    files_under(&p.data, &p.data.join("db"), &mut targets);
    targets.push(PathBuf::from("HEAD"));
    let journals: Vec<PathBuf> = targets
        .iter()
        .filter(|t| kind_of(t) == "fjall journal (*.jnl)")
        .cloned()
        .collect();
    assert!(
        !journals.is_empty(),
        "the journal has a fjall journal file: {targets:?}"
    );

    // kind -> (passed intact, refused by verify, refused at open)
    let mut summary: BTreeMap<&str, (u32, u32, u32)> = BTreeMap::new();
    let mut failures = Vec::new();
    for round in 0..rounds {
        // Half the rounds hit the fjall journal, where the events are; the
        // rest pick any data file.
        let rel = if round % 2 == 0 {
            journals[rng.gen_range(0..journals.len())].clone()
        } else {
            targets[rng.gen_range(0..targets.len())].clone()
        };
        let data = p.copy(&format!("flip-{round}"));
        let path = data.join(&rel);
        let mut bytes = std::fs::read(&path).expect("read target");
        // Flip inside the written part (fjall preallocates journal files
        // with zeros; a flip there is not interesting).
        let used = bytes.iter().rposition(|b| *b != 0).map_or(bytes.len(), |i| i + 1);
        let at = rng.gen_range(0..used);
        let mask: u8 = rng.gen_range(1..=255);
        bytes[at] ^= mask;
        std::fs::write(&path, &bytes).expect("write flipped file");
        let what = format!(
            "round {round}: {} byte {at} of {} ^= {mask:#04x}",
            rel.display(),
            bytes.len()
        );

        let (r, v) = verify_json(&data);
        let verdict = judge(&r, v.as_ref(), p.head, &p.head_hash);
        let entry = summary.entry(kind_of(&rel)).or_default();
        match &verdict {
            Ok(Outcome::Intact) => entry.0 += 1,
            Ok(Outcome::Refused) => entry.1 += 1,
            Ok(Outcome::RefusedAtOpen) => entry.2 += 1,
            Err(_) => {}
        }
        match verdict {
            Ok(how) => eprintln!(
                "{what}: {how:?}: {}",
                v.map_or_else(|| r.stderr.trim().to_owned(), |v| v["error"].to_string())
            ),
            Err(why) => {
                eprintln!("{what}: FAILURE: {why}");
                failures.push(format!("{what}: {why}"));
            }
        }
        std::fs::remove_dir_all(&data).expect("remove copy");
    }
    eprintln!("flip outcomes by file kind (intact / refused by verify / refused at open):");
    for (kind, (a, b, c)) in &summary {
        eprintln!("  {kind:<24} {a:>3} / {b:>3} / {c:>3}");
    }
    assert!(
        failures.is_empty(),
        "{} of {rounds} flips were mishandled (seed {seed}):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn readable_key_file_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("journal");
    append(&data, "first");
    let keys: Vec<PathBuf> = std::fs::read_dir(data.join("keys"))
        .expect("keys dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(keys.len(), 1, "one node key: {keys:?}");
    let key = &keys[0];
    assert_eq!(
        std::fs::metadata(key).expect("key metadata").permissions().mode() & 0o777,
        0o600,
        "node keys are created 0600"
    );
    std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o644)).expect("chmod 644");

    let r = run(&["--data", data_arg(&data), "journal", "append", "--text", "second"]);
    r.no_panic("append with a 0644 key");
    assert_eq!(r.code, Some(2), "append must refuse: {} {}", r.stdout, r.stderr);
    assert!(r.stdout.is_empty(), "nothing appended: {}", r.stdout);
    let line = r.stderr.trim();
    assert_eq!(line.lines().count(), 1, "one line: {line}");
    assert!(line.starts_with("error:"), "{line}");
    assert!(
        line.contains(&key.display().to_string()),
        "names the key file: {line}"
    );
    assert!(line.contains("chmod 600"), "says how to fix it: {line}");

    // Nothing was appended, and fixing the mode is enough.
    std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
    let v: Value = serde_json::from_str(ok(&data, &["journal", "verify", "--json"]).trim()).expect("JSON");
    assert_eq!(v["head_seq"], 2, "the refused append wrote nothing: {v}");
    append(&data, "third");
}

/// A small journal (one note, a 300-event bench) for byte-level cases;
/// returns it with its head seq and hash.
fn small_journal() -> (tempfile::TempDir, PathBuf, u64, String) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("journal");
    append(&data, NOTE);
    ok(
        &data,
        &["bench", "journal", "--events", "300", "--writers", "4", "--json"],
    );
    let (r, v) = verify_json(&data);
    assert_eq!(r.code, Some(0), "{} {}", r.stdout, r.stderr);
    let v = v.expect("verify --json prints JSON");
    let head = v["head_seq"].as_u64().expect("head_seq");
    let hash = v["head_hash"].as_str().expect("head_hash").to_owned();
    (tmp, data, head, hash)
}

/// Where event `seq` sits in the fjall journal: the file and the offset of
/// its key. fjall journals an item as `tag 2 | value type | compression |
/// keyspace id u64 | key len u16 | value len u32 | on-disk len u32 | key |
/// value` (fjall 3 `journal/entry.rs`); the key is the seq big-endian and
/// the value starts with record version 1 and `prev`.
fn locate_item(data: &Path, seq: u64) -> (PathBuf, usize) {
    let out = ok(
        data,
        &["events", "--from", &seq.to_string(), "--limit", "1", "--json"],
    );
    let e: Value = serde_json::from_str(out.trim()).expect("event JSON");
    let mut needle = seq.to_be_bytes().to_vec();
    needle.push(1);
    needle.extend(hex::decode(e["prev"].as_str().expect("prev")).expect("hex prev"));
    let mut files = Vec::new();
    files_under(data, &data.join("db"), &mut files);
    for rel in files.iter().filter(|f| kind_of(f) == "fjall journal (*.jnl)") {
        let bytes = std::fs::read(data.join(rel)).expect("read jnl");
        if let Some(at) = bytes.windows(needle.len()).position(|w| w == needle) {
            assert!(at >= 21, "item header before the key");
            assert_eq!(
                bytes[at - 21],
                2,
                "fjall item tag (has fjall's journal layout changed?)"
            );
            assert_eq!(&bytes[at - 10..at - 8], &8u16.to_le_bytes(), "fjall key length");
            return (rel.clone(), at);
        }
    }
    panic!("event {seq} not found in the fjall journal files {files:?}");
}

#[test]
fn damaged_fjall_journal_entry_is_refused_without_panic() {
    let (tmp, data, head, hash) = small_journal();
    let k = head / 2;
    let (rel, key_at) = locate_item(&data, k);
    let mut failures = Vec::new();
    // Each header field of event K's journal entry, low and high byte.
    for (field, at) in [
        ("item tag", key_at - 21),
        ("value type", key_at - 20),
        ("key length (low byte)", key_at - 10),
        ("key length (high byte)", key_at - 9),
        ("value length (low byte)", key_at - 8),
        ("value length (high byte)", key_at - 5),
        ("on-disk length (low byte)", key_at - 4),
        ("on-disk length (high byte)", key_at - 1),
    ] {
        let copy = tmp.path().join(format!("entry-{at}"));
        copy_tree(&data, &copy);
        let path = copy.join(&rel);
        let mut bytes = std::fs::read(&path).expect("read jnl");
        bytes[at] ^= 0x80;
        std::fs::write(&path, &bytes).expect("write jnl");
        let (r, v) = verify_json(&copy);
        match judge(&r, v.as_ref(), head, &hash) {
            Ok(how) => eprintln!("{field} of event {k}: {how:?}"),
            Err(why) => {
                eprintln!("{field} of event {k}: FAILURE: {why}");
                failures.push(format!(
                    "{field} of event {k} (byte {at} of {}): {why}",
                    rel.display()
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "damaged fjall journal entries were mishandled:\n{}",
        failures.join("\n")
    );
}

#[test]
fn verify_does_not_destroy_intact_events_after_a_damaged_entry() {
    let (tmp, data, head, _) = small_journal();
    let k = head / 2;
    let (rel, key_at) = locate_item(&data, k);
    let copy = tmp.path().join("damaged");
    copy_tree(&data, &copy);
    let path = copy.join(&rel);
    let mut bytes = std::fs::read(&path).expect("read jnl");
    // One flipped bit in the tag of event K's entry: the events after it
    // are intact on disk, only the head file can tell they exist.
    bytes[key_at - 21] ^= 0x80;
    std::fs::write(&path, &bytes).expect("write jnl");

    // Refused, naming the loss...
    let (r, v) = verify_json(&copy);
    r.no_panic("verify");
    assert_eq!(r.code, Some(1), "{} {}", r.stdout, r.stderr);
    let v = v.expect("verify --json prints JSON");
    assert_eq!(v["ok"], false, "{v}");
    eprintln!("verify: {}", v["error"]);

    // ...and verify is read-only: it must leave the evidence (and the intact
    // events after the damage, which an operator could still salvage) as
    // it found them.
    let after = std::fs::read(&path).expect("read jnl after verify");
    assert!(
        after == bytes,
        "`stele journal verify` changed {}: {} bytes before, {} after; the acknowledged events after seq {} that were intact on disk are gone for good",
        rel.display(),
        bytes.len(),
        after.len(),
        k - 1
    );
}

#[test]
fn damaged_fjall_version_file_is_refused_without_panic() {
    let (tmp, data, head, hash) = small_journal();
    // The `events` keyspace is the first one stele creates.
    let rel = PathBuf::from("db/keyspaces/1/v0");
    let len = std::fs::metadata(data.join(&rel))
        .expect("keyspace version file")
        .len();
    let mut failures = Vec::new();
    // Its header and table of contents.
    for at in 0..48.min(len as usize) {
        let copy = tmp.path().join(format!("v0-{at}"));
        copy_tree(&data, &copy);
        let path = copy.join(&rel);
        let mut bytes = std::fs::read(&path).expect("read v0");
        bytes[at] ^= 0xfe;
        std::fs::write(&path, &bytes).expect("write v0");
        let (r, v) = verify_json(&copy);
        if let Err(why) = judge(&r, v.as_ref(), head, &hash) {
            let first = why.lines().next().unwrap_or_default().to_owned();
            eprintln!("{} byte {at} ^= 0xfe: FAILURE: {first}", rel.display());
            failures.push(format!("byte {at}: {first}"));
        }
        std::fs::remove_dir_all(&copy).expect("remove copy");
    }
    assert!(
        failures.is_empty(),
        "{} of the first 48 bytes of {} crash stele when damaged:\n{}",
        failures.len(),
        rel.display(),
        failures.join("\n")
    );
}
