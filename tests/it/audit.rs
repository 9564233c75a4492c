//! Audit exports end to end: bundles of a range, a run, an agent and with
//! redaction verify (through the binary, in-process, and with the
//! independent Python verifier written from docs/VERIFYING.md); every
//! single-byte change to any file of a bundle is detected; OCSF records
//! carry their class's required attributes; reports count what the journal
//! holds; exports work while another process owns the data directory; bad
//! input gets a one-line error.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use stele_journal::export::{self, Manifest, VerifyOptions};

use crate::stele;

/// How long a test waits for something the runtime should do promptly.
const WAIT: Duration = Duration::from_secs(30);

fn run(data: &Path, args: &[&str]) -> Output {
    stele()
        .arg("--data")
        .arg(data)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run stele")
}

fn ok(data: &Path, args: &[&str]) -> String {
    let o = run(data, args);
    assert!(
        o.status.success(),
        "stele {args:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn one_line_error(o: &Output, code: i32, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(code), "exit code; stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line, got: {err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

fn append(data: &Path, stream: &str, text: &str, run_id: Option<&str>) {
    let mut args = vec!["journal", "append", "--stream", stream, "--text", text];
    if let Some(r) = run_id {
        args.extend(["--run", r]);
    }
    ok(data, &args);
}

/// A journal of ~30 events: notes on `ops` and on `agent:alpha` (run
/// `job-1`), secrets on `agent:beta` (run `job-2`), a key rotation and a
/// checkpoint in the middle, more events after it.
fn journal(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    for i in 0..4 {
        append(&data, "ops", &format!("deploy {i}"), None);
        append(&data, "agent:alpha", &format!("alpha step {i}"), Some("job-1"));
    }
    ok(&data, &["keys", "rotate", "--reason", "test rotation"]);
    for i in 0..3 {
        append(&data, "agent:beta", &format!("secret {i}"), Some("job-2"));
    }
    ok(&data, &["journal", "checkpoint"]);
    append(&data, "ops", "after the checkpoint", Some("job-1"));
    data
}

fn head(data: &Path) -> u64 {
    let out = ok(data, &["journal", "verify", "--json"]);
    let v: Value = serde_json::from_str(&out).expect("verify json");
    v["head_seq"].as_u64().expect("head")
}

fn verify_cli(bundle: &Path) -> (bool, String) {
    let o = stele()
        .args(["audit", "verify"])
        .arg(bundle)
        .output()
        .expect("run stele");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!text.contains("panicked"), "{text}");
    match o.status.code() {
        Some(0) => (true, text),
        Some(1) => (false, text),
        c => panic!("audit verify exited {c:?}: {text}"),
    }
}

fn verify_lib(bundle: &Path) -> export::BundleReport {
    export::verify_bundle(bundle, &VerifyOptions::default())
}

#[test]
fn range_run_agent_and_redacted_exports_verify() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = journal(tmp.path());
    let h = head(&data);
    let out = |n: &str| tmp.path().join(n);
    let to = (h - 2).to_string();

    // A range inside the checkpoint, a run and an agent subset, a redacted
    // range that needs a new checkpoint (made by the export).
    let r = ok(
        &data,
        &[
            "audit",
            "export",
            "--from",
            "2",
            "--to",
            "12",
            "--out",
            out("range").to_str().expect("utf8"),
            "--json",
        ],
    );
    let v: Value = serde_json::from_str(&r).expect("export json");
    assert_eq!(v["events"]["count"], 11);
    assert!(
        v["checkpoint_made"].is_null(),
        "the journal's checkpoint covers 2..=12: {v}"
    );
    // job-1's last event is after the checkpoint: the export makes one.
    let r = ok(
        &data,
        &[
            "audit",
            "export",
            "--run",
            "job-1",
            "--json",
            "--out",
            out("run").to_str().expect("utf8"),
        ],
    );
    let v: Value = serde_json::from_str(&r).expect("export json");
    assert!(
        v["checkpoint_made"].as_u64().is_some(),
        "the run's last event was not covered: {v}"
    );
    ok(
        &data,
        &[
            "audit",
            "export",
            "--agent",
            "beta",
            "--out",
            out("agent").to_str().expect("utf8"),
        ],
    );
    let r = ok(
        &data,
        &[
            "audit",
            "export",
            "--from",
            "1",
            "--to",
            &to,
            "--redact",
            "stream=agent:beta",
            "--format",
            "ocsf",
            "--out",
            out("redacted").to_str().expect("utf8"),
            "--json",
        ],
    );
    let v: Value = serde_json::from_str(&r).expect("export json");
    assert_eq!(v["events"]["redacted"], 3);

    for name in ["range", "run", "agent", "redacted"] {
        let (good, text) = verify_cli(&out(name));
        assert!(good, "{name}: {text}");
        let rep = verify_lib(&out(name));
        assert!(rep.ok, "{name}: {:?}", rep.error);
    }
    // The run bundle holds exactly job-1's events, the agent bundle beta's.
    let lines = |n: &str| -> Vec<Value> {
        std::fs::read_to_string(out(n).join("events.jsonl"))
            .expect("events")
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect()
    };
    let run_ev = lines("run");
    assert_eq!(run_ev.len(), 5);
    assert!(run_ev.iter().all(|e| e["body"]["run"] == "job-1"));
    let agent_ev = lines("agent");
    assert_eq!(agent_ev.len(), 3);
    assert!(agent_ev.iter().all(|e| e["stream"] == "agent:beta"));
    // Redacted events keep header, hash and signature, not the body.
    let red = lines("redacted");
    let hidden: Vec<&Value> = red.iter().filter(|e| e["stream"] == "agent:beta").collect();
    assert_eq!(hidden.len(), 3);
    for e in hidden {
        assert!(e["body"].is_null() && e["canonical"].is_null(), "{e}");
        assert!(
            e["redacted"]["body_blake3"]
                .as_str()
                .is_some_and(|s| s.len() == 64)
        );
    }
    assert!(
        !std::fs::read_to_string(out("redacted").join("events.jsonl"))
            .expect("read")
            .contains("secret")
    );
    assert!(
        !std::fs::read_to_string(out("redacted").join("ocsf.jsonl"))
            .expect("read")
            .contains("secret")
    );

    // A stele verify of the bundle names its first key; --trusted-key holds
    // it to a key obtained elsewhere.
    let keys: Value = serde_json::from_str(&ok(&data, &["keys", "show", "--json"])).expect("keys");
    let first = keys[0]["public_key"].as_str().expect("pk").to_owned();
    let other = keys[1]["public_key"].as_str().expect("pk").to_owned();
    let o = stele()
        .args(["audit", "verify", "--trusted-key", &first])
        .arg(out("range"))
        .output()
        .expect("run");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = stele()
        .args(["audit", "verify", "--trusted-key", &other])
        .arg(out("range"))
        .output()
        .expect("run");
    assert!(
        o.status.success(),
        "the latest checkpoint is signed by the rotated key"
    );
    let o = stele()
        .args(["audit", "verify", "--trusted-key", &"ab".repeat(32)])
        .arg(out("range"))
        .output()
        .expect("run");
    one_line_error(&o, 1, "trusted key");
}

/// Flips each byte of each file in turn; every flip must fail verification.
fn flip_every_byte(bundle: &Path, rehash_manifest: bool) -> usize {
    let mut files: Vec<PathBuf> = std::fs::read_dir(bundle)
        .expect("bundle")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    let manifest_path = bundle.join("manifest.json");
    let manifest_bytes = std::fs::read(&manifest_path).expect("manifest");
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes).expect("manifest");
    let mut flips = 0;
    for path in files {
        let name = path.file_name().expect("name").to_string_lossy().into_owned();
        if rehash_manifest && name == "manifest.json" {
            continue;
        }
        let original = std::fs::read(&path).expect("read");
        for i in 0..original.len() {
            let mut changed = original.clone();
            changed[i] ^= 0x01;
            std::fs::write(&path, &changed).expect("write");
            if rehash_manifest {
                let mut m = manifest.clone();
                let entry = m.files.get_mut(&name).expect("listed");
                entry.blake3 = blake3::hash(&changed).to_hex().to_string();
                std::fs::write(&manifest_path, export::format::render_manifest(&m)).expect("write manifest");
            }
            // In-process; the few bytes only the binary can judge (the
            // OCSF attachment's description) go to `stele audit verify`.
            let detected = !verify_lib(bundle).ok || !verify_cli(bundle).0;
            assert!(
                detected,
                "{name} byte {i} ({:?} -> {:?}) changed without detection",
                original[i] as char, changed[i] as char
            );
            flips += 1;
        }
        std::fs::write(&path, &original).expect("restore");
        std::fs::write(&manifest_path, &manifest_bytes).expect("restore manifest");
    }
    assert!(verify_lib(bundle).ok, "restored bundle verifies again");
    flips
}

#[test]
fn every_single_byte_change_to_any_file_is_detected() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = journal(tmp.path());
    // ~20 events with redaction, a key rotation inside, and OCSF.
    let range = tmp.path().join("range");
    ok(
        &data,
        &[
            "audit",
            "export",
            "--from",
            "1",
            "--to",
            "20",
            "--redact",
            "stream=agent:beta",
            "--format",
            "ocsf",
            "--out",
            range.to_str().expect("utf8"),
        ],
    );
    let run_bundle = tmp.path().join("run");
    ok(
        &data,
        &[
            "audit",
            "export",
            "--run",
            "job-1",
            "--out",
            run_bundle.to_str().expect("utf8"),
        ],
    );
    let n = flip_every_byte(&range, false) + flip_every_byte(&run_bundle, false);
    assert!(n > 20_000, "only {n} bytes flipped");

    // Stronger: even with the manifest's BLAKE3 updated to the changed
    // file, the content checks alone catch every flip (an unredacted range,
    // where every byte is derived from signed bytes).
    let small = tmp.path().join("small");
    ok(
        &data,
        &[
            "audit",
            "export",
            "--from",
            "9",
            "--to",
            "14",
            "--out",
            small.to_str().expect("utf8"),
        ],
    );
    flip_every_byte(&small, true);
}

/// The Python verifier, or a loud failure saying how to install it. BLAKE3
/// comes from the `blake3` package when installed, else from
/// scripts/blake3_pure.py: only `cryptography` is required.
fn python() -> Command {
    let probe = Command::new("python3")
        .args(["-c", "import cryptography"])
        .output();
    match probe {
        Ok(o) if o.status.success() => {}
        _ => panic!(
            "the independent verifier needs python3 with the cryptography package: \
             apt-get install -y python3 python3-cryptography"
        ),
    }
    let mut c = Command::new("python3");
    c.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/verify_export.py"));
    c
}

fn verify_py(bundle: &Path) -> (bool, String) {
    let o = python().arg(bundle).output().expect("run python3");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    match o.status.code() {
        Some(0) => (true, text),
        Some(1) => (false, text),
        c => panic!("verify_export.py exited {c:?}: {text}"),
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
    }
}

/// Rewrites one file of a copy of `bundle` with `edit` and re-hashes it in
/// the manifest, so only the content checks can catch the change.
fn tampered(bundle: &Path, to: &Path, file: &str, edit: impl FnOnce(String) -> String) -> PathBuf {
    copy_dir(bundle, to);
    let path = to.join(file);
    let text = edit(std::fs::read_to_string(&path).expect("read"));
    std::fs::write(&path, &text).expect("write");
    let mp = to.join("manifest.json");
    let mut m: Manifest = serde_json::from_slice(&std::fs::read(&mp).expect("manifest")).expect("manifest");
    let e = m.files.get_mut(file).expect("listed");
    e.blake3 = blake3::hash(text.as_bytes()).to_hex().to_string();
    e.bytes = text.len() as u64;
    std::fs::write(&mp, export::format::render_manifest(&m)).expect("write manifest");
    to.to_owned()
}

fn edit_line(text: &str, line: usize, f: impl FnOnce(&mut Value)) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let mut v: Value = serde_json::from_str(&lines[line]).expect("json");
    f(&mut v);
    lines[line] = serde_json::to_string(&v).expect("json");
    lines.join("\n") + "\n"
}

#[test]
fn the_independent_python_verifier_agrees() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = journal(tmp.path());
    let h = head(&data).to_string();
    let b = |n: &str| tmp.path().join(n);
    ok(
        &data,
        &[
            "audit",
            "export",
            "--from",
            "1",
            "--to",
            &h,
            "--out",
            b("all").to_str().expect("utf8"),
        ],
    );
    ok(
        &data,
        &[
            "audit",
            "export",
            "--from",
            "3",
            "--to",
            "9",
            "--out",
            b("range").to_str().expect("utf8"),
        ],
    );
    ok(
        &data,
        &[
            "audit",
            "export",
            "--run",
            "job-2",
            "--out",
            b("run").to_str().expect("utf8"),
        ],
    );
    ok(
        &data,
        &[
            "audit",
            "export",
            "--agent",
            "alpha",
            "--format",
            "ocsf",
            "--out",
            b("agent").to_str().expect("utf8"),
        ],
    );
    ok(
        &data,
        &[
            "audit",
            "export",
            "--from",
            "2",
            "--to",
            &h,
            "--redact",
            "stream=agent:",
            "--out",
            b("redacted").to_str().expect("utf8"),
        ],
    );
    for n in ["all", "range", "run", "agent", "redacted"] {
        let (good, text) = verify_py(&b(n));
        assert!(good, "python on {n}: {text}");
        assert!(verify_cli(&b(n)).0, "stele on {n}");
    }

    let base = b("range");
    let cases: Vec<(&str, PathBuf)> = vec![
        ("flipped byte, manifest untouched", {
            let t = b("t-flip");
            copy_dir(&base, &t);
            let p = t.join("events.jsonl");
            let mut bytes = std::fs::read(&p).expect("read");
            bytes[40] ^= 1;
            std::fs::write(&p, bytes).expect("write");
            t
        }),
        (
            "changed text in the canonical bytes",
            tampered(&base, &b("t-canon"), "events.jsonl", |t| {
                edit_line(&t, 2, |v| {
                    use base64::Engine as _;
                    let c = v["canonical"].as_str().expect("canonical");
                    let mut raw = base64::engine::general_purpose::STANDARD.decode(c).expect("b64");
                    let n = raw.len();
                    raw[n - 80] ^= 1;
                    v["canonical"] = Value::from(base64::engine::general_purpose::STANDARD.encode(raw));
                })
            }),
        ),
        (
            "dropped event",
            tampered(&base, &b("t-drop"), "events.jsonl", |t| {
                let mut l: Vec<&str> = t.lines().collect();
                l.remove(3);
                l.join("\n") + "\n"
            }),
        ),
        (
            "forged signature",
            tampered(&base, &b("t-sig"), "events.jsonl", |t| {
                edit_line(&t, 1, |v| {
                    let s = v["sig"].as_str().expect("sig").to_owned();
                    v["sig"] = Value::from(format!(
                        "{}{}",
                        if s.starts_with('0') { "1" } else { "0" },
                        &s[1..]
                    ));
                })
            }),
        ),
        (
            "changed proof hash",
            tampered(&base, &b("t-proof"), "proofs.json", |t| {
                let mut v: Value = serde_json::from_str(&t).expect("json");
                let h = v["events"]["hashes"][0].as_str().expect("hash").to_owned();
                v["events"]["hashes"][0] = Value::from(format!(
                    "{}{}",
                    if h.starts_with('0') { "1" } else { "0" },
                    &h[1..]
                ));
                serde_json::to_string_pretty(&v).expect("json") + "\n"
            }),
        ),
        (
            "substituted public key",
            tampered(&base, &b("t-key"), "keys.json", |t| {
                let mut v: Value = serde_json::from_str(&t).expect("json");
                v["keys"][0]["public_key"] = Value::from("ab".repeat(32));
                serde_json::to_string_pretty(&v).expect("json") + "\n"
            }),
        ),
    ];
    for (what, dir) in cases {
        let (py_ok, py_text) = verify_py(&dir);
        let (rs_ok, rs_text) = verify_cli(&dir);
        assert!(!py_ok, "python accepted a bundle with a {what}: {py_text}");
        assert!(!rs_ok, "stele accepted a bundle with a {what}: {rs_text}");
    }
}

/// Required attributes of the OCSF 1.3.0 classes the mapping uses (from
/// the OCSF schema: base event, the System Activity category's actor and
/// device, and each class's own).
fn required(class_uid: u64) -> &'static [&'static str] {
    match class_uid {
        1007 => &["actor", "device", "process"],
        1006 => &["actor", "device", "job.name", "job.file"],
        6003 => &["actor", "api.operation", "src_endpoint"],
        6002 => &["app.name"],
        0 => &[],
        other => panic!("class {other} is not one the mapping should use"),
    }
}

fn get<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(v, |v, k| v.get(k))
        .filter(|v| !v.is_null())
}

fn check_ocsf(bundle: &Path) -> Vec<(u64, u64)> {
    let events: Vec<Value> = std::fs::read_to_string(bundle.join("events.jsonl"))
        .expect("events")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let records: Vec<Value> = std::fs::read_to_string(bundle.join("ocsf.jsonl"))
        .expect("ocsf.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(events.len(), records.len(), "one OCSF record per event");
    let mut seen = Vec::new();
    for (e, r) in events.iter().zip(&records) {
        for a in [
            "class_uid",
            "category_uid",
            "activity_id",
            "type_uid",
            "time",
            "severity_id",
            "metadata.version",
            "metadata.product.name",
            "metadata.product.vendor_name",
            "metadata.uid",
        ] {
            assert!(get(r, a).is_some(), "{a} missing in {r}");
        }
        let class = r["class_uid"].as_u64().expect("class_uid");
        let activity = r["activity_id"].as_u64().expect("activity_id");
        assert_eq!(r["type_uid"].as_u64(), Some(class * 100 + activity), "{r}");
        assert_eq!(r["category_uid"].as_u64(), Some(class / 1000), "{r}");
        assert_eq!(r["metadata"]["version"], "1.3.0");
        assert_eq!(r["metadata"]["uid"], e["hash"], "metadata.uid is the event hash");
        assert_eq!(
            r["metadata"]["sequence"], e["seq"],
            "metadata.sequence points back to the seq"
        );
        assert_eq!(
            r["time"].as_i64(),
            Some(e["at"].as_i64().expect("at") / 1_000_000)
        );
        for a in required(class) {
            assert!(get(r, a).is_some(), "class {class} needs {a}: {r}");
        }
        if let Some(actor) = get(r, "actor") {
            assert!(
                ["process", "user", "app_name", "app_uid", "session"]
                    .iter()
                    .any(|k| actor.get(*k).is_some())
            );
        }
        seen.push((class, activity));
    }
    seen
}

/// A minimal `stele up` for this module: one slot, the given agents.
struct Up {
    child: Child,
    data: PathBuf,
    config: PathBuf,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Up {
    fn start(dir: &Path, agents: &Path) -> Up {
        let data = dir.join("data");
        let config = dir.join("stele.toml");
        std::fs::write(
            &config,
            "[runtime]\nhttp_port = 0\nstop_grace = \"2s\"\n\n[scheduler]\nslots = 1\nslot_memory = \"256MB\"\nslot_cpu_cores = 2.0\n",
        )
        .expect("config");
        let child = stele()
            .arg("--data")
            .arg(&data)
            .arg("--config")
            .arg(&config)
            .arg("up")
            .arg("--agents")
            .arg(agents)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn stele up");
        Up { child, data, config }
    }

    fn cli(&self, args: &[&str]) -> Output {
        stele()
            .arg("--data")
            .arg(&self.data)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("run stele")
    }

    fn wait_for_kind(&self, kind: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let o = self.cli(&["events", "--json"]);
            if o.status.success()
                && String::from_utf8_lossy(&o.stdout).contains(&format!("\"kind\":\"{kind}\""))
            {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {kind}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn ocsf_records_have_their_class_attributes_and_exports_work_while_up_runs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let agents = tmp.path().join("agents");
    std::fs::create_dir_all(&agents).expect("agents");
    std::fs::write(
        agents.join("hello.toml"),
        "name = \"hello\"\npriority = \"normal\"\n\n[mode]\nkind = \"ephemeral\"\n\n[limits]\nmemory_mb = 32\ncpu_cores = 0.25\nexecution_timeout = \"10s\"\n\n[runs]\nkind = \"process\"\ncommand = \"/bin/echo\"\nargs = [\"hello from stele\"]\n",
    )
    .expect("agent");
    let up = Up::start(tmp.path(), &agents);
    up.wait_for_kind("task_finished");

    // The runtime owns the data directory: the export reads a private
    // snapshot and asks the runtime for the checkpoint it needs.
    let agent_bundle = tmp.path().join("agent");
    let o = up.cli(&[
        "audit",
        "export",
        "--agent",
        "hello",
        "--format",
        "ocsf",
        "--json",
        "--out",
        agent_bundle.to_str().expect("utf8"),
    ]);
    assert!(
        o.status.success(),
        "export while up runs: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert!(v["checkpoint_made"].as_u64().is_some(), "{v}");
    assert!(verify_cli(&agent_bundle).0);
    let seen = check_ocsf(&agent_bundle);
    assert!(seen.contains(&(1007, 1)), "process launch: {seen:?}");
    assert!(seen.contains(&(1007, 2)), "process terminate: {seen:?}");
    assert!(seen.contains(&(6003, 1)), "agent registration: {seen:?}");
    assert!(seen.contains(&(1006, 1)), "task queued: {seen:?}");

    let down = up.cli(&["down"]);
    assert!(
        down.status.success(),
        "down: {}",
        String::from_utf8_lossy(&down.stderr)
    );
    let data = up.data.clone();
    drop(up);
    let h = head(&data).to_string();
    let all = tmp.path().join("all");
    ok(
        &data,
        &[
            "audit",
            "export",
            "--from",
            "1",
            "--to",
            &h,
            "--format",
            "ocsf",
            "--out",
            all.to_str().expect("utf8"),
        ],
    );
    let seen = check_ocsf(&all);
    for want in [(6002, 3), (6002, 4), (6003, 1), (1007, 1), (1007, 2), (1006, 6)] {
        assert!(seen.contains(&want), "{want:?} in {seen:?}");
    }
    let (good, text) = verify_cli(&all);
    assert!(good, "{text}");

    // A consistent change to an OCSF record (manifest re-hashed) is caught
    // by stele's verifier, which re-renders ocsf.jsonl from the events.
    let t = tampered(&all, &tmp.path().join("t-ocsf"), "ocsf.jsonl", |t| {
        edit_line(&t, 3, |v| v["severity_id"] = Value::from(5))
    });
    let (good, text) = verify_cli(&t);
    assert!(!good && text.contains("ocsf.jsonl line 4"), "{text}");
}

#[test]
fn export_works_while_tail_owns_the_data_directory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = journal(tmp.path());
    let mut tail = stele()
        .arg("--data")
        .arg(&data)
        .arg("tail")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tail");
    let deadline = Instant::now() + WAIT;
    while !data.join("control.sock").exists() {
        assert!(Instant::now() < deadline, "tail did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    append(&data, "ops", "while tail runs", None);
    let bundle = tmp.path().join("b");
    let out = ok(
        &data,
        &[
            "audit",
            "export",
            "--from",
            "1",
            "--to",
            "30",
            "--json",
            "--out",
            bundle.to_str().expect("utf8"),
        ],
    );
    let v: Value = serde_json::from_str(&out).expect("json");
    assert!(v["checkpoint_made"].as_u64().is_some(), "{v}");
    let report = ok(&data, &["audit", "report", "--framework", "sox", "--json"]);
    assert!(report.contains("\"framework\": \"sox\""), "{report}");
    let _ = tail.kill();
    let _ = tail.wait();
    assert!(verify_cli(&bundle).0);
    assert!(
        !std::fs::read_dir(&data).expect("data").any(|e| e
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .contains("audit")),
        "the snapshot copy is removed"
    );
}

#[test]
fn reports_count_what_the_journal_holds() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = journal(tmp.path());
    ok(&data, &["keys", "rotate"]);
    ok(&data, &["journal", "checkpoint"]);
    let def = tmp.path().join("alpha.toml");
    std::fs::write(
        &def,
        "name = \"alpha\"\npriority = \"normal\"\n\n[mode]\nkind = \"ephemeral\"\n\n[limits]\nmemory_mb = 32\ncpu_cores = 0.25\nexecution_timeout = \"10s\"\n\n[runs]\nkind = \"process\"\ncommand = \"/bin/true\"\nargs = []\n",
    )
    .expect("definition");
    ok(&data, &["agent", "register", def.to_str().expect("utf8")]);
    let events: Vec<Value> = ok(&data, &["events", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let seqs_of = |kind: &str| -> Vec<u64> {
        events
            .iter()
            .filter(|e| e["body"]["kind"] == kind)
            .map(|e| e["seq"].as_u64().expect("seq"))
            .collect()
    };

    let v: Value = serde_json::from_str(&ok(&data, &["audit", "report", "--framework", "hipaa", "--json"]))
        .expect("json");
    assert_eq!(v["range"]["events"].as_u64(), Some(events.len() as u64));
    let items: Vec<&Value> = v["sections"]
        .as_array()
        .expect("sections")
        .iter()
        .flat_map(|s| s["items"].as_array().expect("items"))
        .collect();
    let item = |title: &str| {
        *items
            .iter()
            .find(|i| i["title"].as_str().is_some_and(|t| t.starts_with(title)))
            .unwrap_or_else(|| panic!("{title} in {v}"))
    };
    assert_eq!(
        item("signing key rotations")["seqs"],
        serde_json::json!(seqs_of("key_rotated"))
    );
    assert_eq!(
        item("signed Merkle checkpoints")["count"].as_u64(),
        Some(seqs_of("checkpoint_signed").len() as u64)
    );
    assert_eq!(
        item("agent registrations")["seqs"],
        serde_json::json!(seqs_of("agent_registered"))
    );
    assert_eq!(
        item("journal openings")["count"].as_u64(),
        Some(seqs_of("journal_opened").len() as u64)
    );
    let access = item("access decisions");
    assert_eq!(access["count"], 0);
    assert_eq!(access["status"], "none recorded (not yet produced by this build)");
    assert_eq!(item("process runs")["status"], "none recorded");

    let md = ok(
        &data,
        &[
            "audit",
            "report",
            "--framework",
            "gdpr",
            "--from",
            "1",
            "--to",
            "10",
        ],
    );
    assert!(md.starts_with("# Audit report: GDPR"), "{md}");
    assert!(md.contains("## Art. 32 security of processing"), "{md}");
    assert!(
        md.contains("| human approvals | none recorded (not yet produced by this build) |"),
        "{md}"
    );

    let out = tmp.path().join("custom.json");
    ok(
        &data,
        &[
            "audit",
            "report",
            "--framework",
            "custom",
            "--kinds",
            "annotated,key_rotated",
            "--json",
            "--out",
            out.to_str().expect("utf8"),
        ],
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out).expect("report")).expect("json");
    let items = v["sections"][0]["items"].as_array().expect("items");
    assert_eq!(items[0]["title"], "annotated");
    assert_eq!(
        items[0]["count"].as_u64(),
        Some(seqs_of("annotated").len() as u64)
    );
    assert_eq!(items[1]["seqs"], serde_json::json!(seqs_of("key_rotated")));
}

#[test]
fn bad_input_gets_a_one_line_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = journal(tmp.path());
    let h = head(&data);
    let out = tmp.path().join("out");
    let o = out.to_str().expect("utf8");
    one_line_error(
        &run(
            &data,
            &["audit", "export", "--from", "9", "--to", "3", "--out", o],
        ),
        2,
        "--from 9 is after --to 3",
    );
    one_line_error(
        &run(&data, &["audit", "export", "--run", "nope", "--out", o]),
        2,
        "run nope has no events",
    );
    one_line_error(
        &run(&data, &["audit", "export", "--agent", "ghost", "--out", o]),
        2,
        "agent ghost has no events",
    );
    one_line_error(
        &run(
            &data,
            &[
                "audit",
                "export",
                "--from",
                "1",
                "--to",
                &(h + 50).to_string(),
                "--out",
                o,
            ],
        ),
        2,
        "beyond the head",
    );
    one_line_error(
        &run(
            &data,
            &[
                "audit", "export", "--from", "1", "--to", "3", "--redact", "agent:x", "--out", o,
            ],
        ),
        2,
        "stream=PREFIX",
    );
    one_line_error(
        &run(
            &tmp.path().join("nothing"),
            &["audit", "export", "--from", "1", "--to", "3", "--out", o],
        ),
        2,
        "no journal here",
    );
    one_line_error(
        &run(&data, &["audit", "report", "--framework", "custom"]),
        2,
        "--kinds",
    );
    one_line_error(
        &run(
            &data,
            &["audit", "report", "--framework", "custom", "--kinds", "nonsense"],
        ),
        2,
        "unknown event kind",
    );
    one_line_error(
        &run(
            &data,
            &[
                "audit",
                "report",
                "--framework",
                "sox",
                "--from",
                "5",
                "--to",
                "2",
            ],
        ),
        2,
        "is after",
    );
    let missing = stele()
        .args(["audit", "verify"])
        .arg(tmp.path().join("missing"))
        .output()
        .expect("run");
    one_line_error(&missing, 1, "no such bundle directory");
    std::fs::create_dir_all(&out).expect("mkdir");
    std::fs::write(out.join("x"), "taken").expect("write");
    one_line_error(
        &run(
            &data,
            &["audit", "export", "--from", "1", "--to", "3", "--out", o],
        ),
        2,
        "not empty",
    );
    // Nothing of a refused export is left behind.
    assert!(
        std::fs::read_dir(tmp.path()).expect("dir").all(|e| !e
            .expect("e")
            .file_name()
            .to_string_lossy()
            .contains("partial"))
    );
}
