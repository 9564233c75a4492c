//! Hot reload of the daemon's Cedar policy set, through the real binary:
//! `stele up` journals the set it starts with; `stele policy reload`
//! (and `POST /v1/policy/reload`, and SIGHUP) journals `PolicySetLoaded`
//! with the old and new set hashes and puts the set in force for every
//! later decision — a run parked before the reload decides its next step
//! under the new set; an invalid set is refused naming file, position and
//! policy id, with nothing journaled and the old set still deciding; the
//! set already in force is not journaled again. A run that spans the
//! reload replays identically given both sets (CLI and the daemon's HTTP
//! replay), and `stele policy backtest` evaluates decisions made under
//! either set. Also: a directory's texts give the set hash its load does.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::up::{Up, dump, kind, verify};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A copy of the fixture policies in `dir/name`, plus `extra` files.
fn policy_dir(dir: &Path, name: &str, extra: &[(&str, &str)]) -> PathBuf {
    let out = dir.join(name);
    std::fs::create_dir_all(&out).expect("policies dir");
    for entry in std::fs::read_dir(root().join("fixtures/policies")).expect("fixtures") {
        let path = entry.expect("entry").path();
        if path
            .extension()
            .is_some_and(|e| e == "cedar" || e == "cedarschema")
        {
            std::fs::copy(&path, out.join(path.file_name().expect("name"))).expect("copy policy");
        }
    }
    for (file, text) in extra {
        std::fs::write(out.join(file), text).expect("extra policy");
    }
    out
}

/// The set hash and policy count `stele policy check` reports for `dir`.
fn check(dir: &Path) -> (String, u64) {
    let out = crate::stele()
        .args(["policy", "check", "--json"])
        .arg(dir)
        .output()
        .expect("policy check");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let v: Value = serde_json::from_slice(&out.stdout).expect("check JSON");
    let n = v["permits"].as_u64().expect("permits") + v["forbids"].as_u64().expect("forbids");
    (v["hash"].as_str().expect("hash").to_owned(), n)
}

const NO_READS: &str = r#"// Added by the reload: reads are off.
@id("no-reads-after-reload")
@reason("reads are off after the reload")
forbid (principal, action == Action::"invoke_tool", resource == Tool::"read_file");
"#;

/// An agent whose script reads, writes (parks on the approval), reads again
/// and answers; workspace and script in `dir`.
fn agent(dir: &Path) -> PathBuf {
    agent_with(
        dir,
        &json!([
            {"content": "reading", "tool_calls": [read()]},
            {"content": "writing", "tool_calls": [{"name": "write_file",
                "arguments": {"path": "summary.md", "content": "# Summary\n"}}]},
            {"content": "reading again", "tool_calls": [read()]},
            {"content": "done"}
        ]),
    )
}

fn read() -> Value {
    json!({"name": "read_file", "arguments": {"path": "notes.txt"}})
}

/// Agent `reader` answering from the scripted `answers`.
fn agent_with(dir: &Path, answers: &Value) -> PathBuf {
    let workspace = dir.join("ws");
    std::fs::create_dir_all(&workspace).expect("ws");
    std::fs::write(workspace.join("notes.txt"), "Summarise me.\n").expect("notes");
    let script = dir.join("script.json");
    std::fs::write(
        &script,
        json!({"model": "scripted", "answers": answers}).to_string(),
    )
    .expect("script");
    let file = dir.join("reader.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"reader\"\npriority = \"low\"\n\n[mode]\nkind = \"ephemeral\"\n\n[limits]\nmemory_mb = 64\ncpu_cores = 0.5\nexecution_timeout = \"60s\"\n\n[runs]\nkind = \"reasoning\"\nsystem = \"Be brief.\"\ntools = [\"read_file\", \"write_file\"]\nworkspace = {:?}\nscript = {:?}\nmax_steps = 8\n",
            workspace.display().to_string(),
            script.display().to_string()
        ),
    )
    .expect("agent");
    file
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The run's `policy_decided` bodies, in order.
fn decisions(ev: &[Value], run: &str) -> Vec<Value> {
    ev.iter()
        .filter(|e| e["stream"] == format!("run:{run}") && e["body"]["kind"] == "policy_decided")
        .map(|e| e["body"].clone())
        .collect()
}

fn loaded(ev: &[Value]) -> Vec<Value> {
    kind(ev, "policy_set_loaded").into_iter().cloned().collect()
}

fn post(up: &Up, path: &str, body: Option<&Value>) -> (u16, Value) {
    let req = up.http().post(format!("{}{path}", up.http));
    let r = match body {
        Some(b) => req.header("content-type", "application/json").send(b.to_string()),
        None => req.send_empty(),
    };
    let mut r = r.expect("POST");
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[test]
fn a_directorys_texts_give_the_set_its_load_gives() {
    use stele_engine::policy::PolicyGate;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = policy_dir(dir.path(), "p", &[("zz.cedar", NO_READS)]);
    let loaded = PolicyGate::load(&p).expect("load");
    let texts = PolicyGate::texts(&p).expect("texts");
    assert!(texts.schema.is_some(), "the fixture directory has a schema");
    let built = PolicyGate::from_sources(texts.schema.as_deref(), &texts.files).expect("from texts");
    assert_eq!(built.hash(), loaded.hash());
    assert_eq!(built.len(), loaded.len());
    // A live gate hands out the set last put in force.
    let live = stele_engine::policy::LiveGate::from(PolicyGate::deny_all());
    let empty = live.current().hash();
    let old = live.replace(std::sync::Arc::new(built));
    assert_eq!(old.hash(), empty);
    assert_eq!(live.clone().current().hash(), loaded.hash());
}

#[test]
fn a_reload_is_journaled_and_decides_the_next_step_of_a_parked_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p_a = policy_dir(dir.path(), "policies-a", &[]);
    let p_b = policy_dir(dir.path(), "policies-b", &[("zz-no-reads.cedar", NO_READS)]);
    let (hash_a, n_a) = check(&p_a);
    let (hash_b, n_b) = check(&p_b);
    assert_ne!(hash_a, hash_b);
    let agent = agent(dir.path());
    let mut up = Up::start_with(dir.path(), None, &["--policies", p_a.to_str().expect("utf8")]);

    // The set the daemon starts with is journaled (old: none).
    let ev = up.wait_for("the start's policy_set_loaded", |ev| !loaded(ev).is_empty());
    let sets = loaded(&ev);
    assert_eq!(sets.len(), 1, "{}", dump(&ev));
    assert_eq!(sets[0]["stream"], "policy");
    assert_eq!(sets[0]["body"]["old"], "");
    assert_eq!(sets[0]["body"]["new"], hash_a.as_str());
    assert_eq!(sets[0]["body"]["policies"], n_a);
    assert_eq!(sets[0]["body"]["source"], p_a.display().to_string());

    // A run parks on its write; its read was allowed under set A.
    let out = up.cli(&["run", agent.to_str().expect("utf8"), "--input", "go", "--json"]);
    assert_eq!(out.status.code(), Some(3), "parks: {}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("run JSON");
    let run = v["run"].as_str().expect("run").to_owned();
    let call = v["awaiting"][0]["call"].as_str().expect("call").to_owned();
    let before = decisions(&up.events(), &run);
    assert_eq!(before.len(), 2, "{before:?}");
    assert_eq!(before[0]["verdict"], "allow_with_conditions");
    assert!(
        before.iter().all(|d| d["policy_set"] == hash_a.as_str()),
        "{before:?}"
    );

    // A malformed set: a syntax error, named by file and position.
    let p_bad = policy_dir(
        dir.path(),
        "policies-bad",
        &[("broken.cedar", "@id(\"broken\")\npermit (principal, action,\n")],
    );
    let out = up.cli(&["policy", "reload", "--policies", p_bad.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = text(&out);
    assert!(
        err.contains(&format!("{}:", p_bad.join("broken.cedar").display()))
            && err.contains("nothing was reloaded"),
        "{err}"
    );
    // One that does not validate: named by file, line:column and policy id.
    let p_bad2 = policy_dir(
        dir.path(),
        "policies-bad2",
        &[(
            "typo.cedar",
            "@id(\"typo\")\npermit (principal, action == Action::\"invoke_tool\", resource)\nwhen { context.no_such_attribute == 1 };\n",
        )],
    );
    let out = up.cli(&["policy", "reload", "--policies", p_bad2.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = text(&out);
    assert!(
        err.contains(&format!("{}:3:", p_bad2.join("typo.cedar").display())) && err.contains("policy `typo`"),
        "{err}"
    );
    // The same over HTTP (texts in the body): 422, validated by the daemon.
    let (status, body) = post(
        &up,
        "/v1/policy/reload",
        Some(
            &json!({"policies": {"typo.cedar": "@id(\"typo\")\npermit (principal, action == Action::\"invoke_tool\", resource)\nwhen { context.no_such_attribute == 1 };\n"}, "source": "test"}),
        ),
    );
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_policies");
    let msg = body["error"]["message"].as_str().expect("message");
    assert!(
        msg.contains("typo.cedar:3:") && msg.contains("policy `typo`"),
        "{msg}"
    );
    let (status, body) = post(&up, "/v1/policy/reload", Some(&json!({"policies": {}})));
    assert_eq!(status, 400, "{body}");
    // Nothing was journaled; set A still decides (the HTTP replay of the
    // parked run is identical under the daemon's set).
    assert_eq!(loaded(&up.events()).len(), 1);
    let (status, report) = post(&up, &format!("/v1/runs/{run}/replay"), None);
    assert_eq!(status, 200, "{report}");
    assert!(report["divergence"].is_null(), "{report}");

    // Reload to B: journaled with both hashes, then in force.
    let out = up.cli(&[
        "policy",
        "reload",
        "--policies",
        p_b.to_str().expect("utf8"),
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let r: Value = serde_json::from_slice(&out.stdout).expect("reload JSON");
    assert_eq!(r["changed"], true, "{r}");
    assert_eq!(r["old"], hash_a.as_str());
    assert_eq!(r["new"], hash_b.as_str());
    assert_eq!(r["policies"], n_b);
    let ev = up.events();
    let sets = loaded(&ev);
    assert_eq!(sets.len(), 2, "{}", dump(&ev));
    let change = &sets[1]["body"];
    assert_eq!(change["old"], hash_a.as_str());
    assert_eq!(change["new"], hash_b.as_str());
    assert_eq!(change["policies"], n_b);
    let source = p_b.canonicalize().expect("canonical");
    assert_eq!(change["source"], source.display().to_string());
    assert_eq!(sets[1]["seq"], r["seq"]);

    // The same set again: said so, not journaled.
    let out = up.cli(&["policy", "reload", "--policies", p_b.to_str().expect("utf8")]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("already in force"), "{}", text(&out));
    assert_eq!(loaded(&up.events()).len(), 2);

    // The parked run goes on: its next step's read is denied under B.
    let out = up.cli(&["approve", &run, &call, "--as", "alice"]);
    assert!(out.status.success(), "approve: {}", text(&out));
    let after = decisions(&up.events(), &run);
    assert_eq!(after.len(), 3, "{after:?}");
    assert_eq!(after[2]["verdict"], "deny", "{after:?}");
    assert_eq!(after[2]["policy_set"], hash_b.as_str());
    assert_eq!(after[2]["policies"], json!(["no-reads-after-reload"]));
    // A new run: its first decision is B's.
    let out = up.cli(&["run", agent.to_str().expect("utf8"), "--input", "again", "--json"]);
    assert_eq!(out.status.code(), Some(3), "parks: {}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("run JSON");
    let run2 = v["run"].as_str().expect("run").to_owned();
    let first = &decisions(&up.events(), &run2)[0];
    assert_eq!(first["verdict"], "deny");
    assert_eq!(first["policy_set"], hash_b.as_str());

    // Replay of the run that spans the reload: identical given both sets
    // (the daemon keeps the set it replaced), divergent given B alone.
    let (status, report) = post(&up, &format!("/v1/runs/{run}/replay"), None);
    assert_eq!(status, 200, "{report}");
    assert!(report["divergence"].is_null(), "{report}");
    assert_eq!(report["identical"], report["recorded"]);

    // SIGHUP: the daemon loads its own directory (A) again.
    // (another file name than B's: a set of its own)
    std::fs::write(p_a.join("zz-hup.cedar"), NO_READS).expect("edit A");
    up.signal(1);
    let ev = up.wait_for("the SIGHUP reload", |ev| loaded(ev).len() == 3);
    let hup = &loaded(&ev)[2]["body"];
    assert_eq!(hup["old"], hash_b.as_str());
    assert_eq!(hup["new"], check(&p_a).0.as_str());
    assert_eq!(hup["source"], p_a.display().to_string());

    up.signal(15);
    let status = up.wait_exit();
    assert!(status.success(), "stele up exited with {status}");

    // Offline (the CLI opens the journal itself): the same replay given
    // both sets, a divergence given B alone; backtests over both sets.
    std::fs::remove_file(p_a.join("zz-hup.cedar")).expect("A as it was");
    assert_eq!(check(&p_a).0, hash_a);
    let ev = up.events();
    let (b, a) = (p_b.to_str().expect("utf8"), p_a.to_str().expect("utf8"));
    let out = up.cli(&["replay", &run, "--policies", b, "--policies", a]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("identical"), "{}", text(&out));
    let out = up.cli(&["replay", &run, "--policies", b, "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("report");
    assert_eq!(
        report["divergence"]["recorded"]["policy_set"],
        hash_a.as_str(),
        "{report}"
    );
    assert_eq!(
        report["divergence"]["replayed"]["policy_set"],
        hash_b.as_str(),
        "{report}"
    );

    // Backtests over decisions made under both sets: against B only A's
    // allowed reads flip, against A only B's denied ones.
    let reads = |ev: &[Value], verdict: &str, set: &str| -> Vec<u64> {
        ev.iter()
            .filter(|e| {
                e["body"]["kind"] == "policy_decided"
                    && e["body"]["verdict"] == verdict
                    && e["body"]["policy_set"] == set
                    && e["body"]["request"]
                        .as_str()
                        .is_some_and(|r| r.contains("read_file"))
            })
            .map(|e| e["seq"].as_u64().expect("seq"))
            .collect()
    };
    let backtest = |dir: &str| -> Vec<u64> {
        let out = up.cli(&["policy", "backtest", "--policies", dir, "--json"]);
        assert_eq!(out.status.code(), Some(1), "flips: {}", text(&out));
        let bt: Value = serde_json::from_slice(&out.stdout).expect("backtest JSON");
        bt["flips"]
            .as_array()
            .expect("flips")
            .iter()
            .map(|f| f["seq"].as_u64().expect("seq"))
            .collect()
    };
    let allowed_under_a = reads(&ev, "allow_with_conditions", &hash_a);
    let denied_under_b = reads(&ev, "deny", &hash_b);
    assert_eq!(allowed_under_a.len(), 1, "{}", dump(&ev));
    assert_eq!(denied_under_b.len(), 2, "{}", dump(&ev));
    assert_eq!(backtest(b), allowed_under_a);
    assert_eq!(backtest(a), denied_under_b);

    verify(&up.data);
}

#[test]
fn a_drive_in_flight_decides_its_next_step_under_the_reloaded_set() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p_a = policy_dir(dir.path(), "policies-a", &[]);
    let p_b = policy_dir(dir.path(), "policies-b", &[("zz-no-reads.cedar", NO_READS)]);
    let (hash_a, _) = check(&p_a);
    let (hash_b, _) = check(&p_b);
    // Step 2's first attempt is rate limited for 8 s: the drive is in
    // flight, between two steps, while the set is reloaded.
    let agent = agent_with(
        dir.path(),
        &json!([
            {"content": "reading", "tool_calls": [read()]},
            {"error": "rate_limited:8s", "times": 1, "content": "reading again", "tool_calls": [read()]},
            {"content": "done"}
        ]),
    );
    let up = Up::start_with(dir.path(), None, &["--policies", p_a.to_str().expect("utf8")]);
    let definition = std::fs::read_to_string(&agent).expect("agent");
    let (status, v) = post(
        &up,
        "/v1/runs",
        Some(&json!({"definition": definition, "input": "go"})),
    );
    assert_eq!(status, 202, "{v}");
    let run = v["run"].as_str().expect("run").to_owned();
    let ev = up.wait_for("step 2's first attempt to fail", |ev| {
        !kind(ev, "completion_failed").is_empty()
    });
    assert!(kind(&ev, "run_finished").is_empty(), "{}", dump(&ev));
    let out = up.cli(&["policy", "reload", "--policies", p_b.to_str().expect("utf8")]);
    assert!(out.status.success(), "{}", text(&out));
    let ev = up.wait_for("the run to finish", |ev| !kind(ev, "run_finished").is_empty());
    let d = decisions(&ev, &run);
    assert_eq!(d.len(), 2, "{}", dump(&ev));
    assert_eq!(d[0]["verdict"], "allow_with_conditions");
    assert_eq!(d[0]["policy_set"], hash_a.as_str());
    assert_eq!(d[1]["verdict"], "deny", "{}", dump(&ev));
    assert_eq!(d[1]["policy_set"], hash_b.as_str());
    let change = loaded(&ev)
        .into_iter()
        .find(|e| e["body"]["new"] == hash_b.as_str())
        .expect("the reload's event");
    let failed = kind(&ev, "completion_failed")[0]["seq"].as_u64().expect("seq");
    let changed = change["seq"].as_u64().expect("seq");
    assert!(failed < changed, "the reload came while the run was in flight");
    let (status, report) = post(&up, &format!("/v1/runs/{run}/replay"), None);
    assert_eq!(status, 200, "{report}");
    assert!(report["divergence"].is_null(), "{report}");
    drop(up);
    verify(&dir.path().join("data"));
}

/// Bus sends to bob are forbidden (the set a daemon starts with below).
const NO_MAIL_FOR_BOB: &str = r#"@id("no-mail-for-bob")
@reason("bob takes no mail")
forbid (principal, action == Action::"send_message", resource == Agent::"bob");
"#;

/// Nothing may be shared.
const NO_SHARING: &str = r#"@id("no-sharing")
@reason("sharing is off")
forbid (principal, action == Action::"write_data", resource)
when { context has operation && context.operation == "share" };
"#;

/// `message_send` and `data_access` decisions after `from` (seq), in order:
/// (point, verdict, determining policy ids, set hash).
fn gate_decisions(ev: &[Value], from: u64) -> Vec<(String, String, Vec<String>, String)> {
    ev.iter()
        .filter(|e| e["seq"].as_u64().expect("seq") > from && e["body"]["kind"] == "policy_decided")
        .filter(|e| e["body"]["point"] == "message_send" || e["body"]["point"] == "data_access")
        .map(|e| {
            let b = &e["body"];
            (
                b["point"].as_str().expect("point").to_owned(),
                b["verdict"].as_str().expect("verdict").to_owned(),
                b["policies"]
                    .as_array()
                    .expect("policies")
                    .iter()
                    .map(|p| p.as_str().expect("id").to_owned())
                    .collect(),
                b["policy_set"].as_str().expect("set").to_owned(),
            )
        })
        .collect()
}

/// One reload reaches every decision point of the daemon: the bus (`[bus]
/// policies` turns it on; it decides with the daemon's set) and the
/// context store, not only the runs. A send to bob and a share, refused
/// under the set the daemon starts with, are allowed from the next
/// decision after a reload to a permitting set, and refused again after a
/// reload back; each decision names the set in force and its policy ids.
#[test]
fn a_reload_reaches_the_bus_and_the_context_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let strict = policy_dir(
        dir.path(),
        "strict",
        &[("zz-bob.cedar", NO_MAIL_FOR_BOB), ("zz-share.cedar", NO_SHARING)],
    );
    let open = policy_dir(dir.path(), "open", &[]);
    let (hash_strict, _) = check(&strict);
    let (hash_open, _) = check(&open);
    let config = dir.path().join("stele.toml");
    std::fs::write(
        &config,
        format!(
            "{}\n[bus]\npolicies = {:?}\n",
            crate::up::CONFIG,
            strict.display().to_string()
        ),
    )
    .expect("config");
    for name in ["alice", "bob"] {
        let file = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &file,
            format!(
                "name = \"{name}\"\npriority = \"normal\"\n[mode]\nkind = \"ephemeral\"\n[limits]\nmemory_mb = 32\ncpu_cores = 0.25\nexecution_timeout = \"10s\"\n[runs]\nkind = \"process\"\ntier = \"native\"\ncommand = \"/bin/true\"\n"
            ),
        )
        .expect("agent file");
        let out = crate::stele()
            .arg("--data")
            .arg(dir.path().join("data"))
            .arg("--config")
            .arg(&config)
            .args(["agent", "register"])
            .arg(&file)
            .output()
            .expect("register");
        assert!(out.status.success(), "register {name}: {}", text(&out));
    }
    // No --policies: the daemon's set is [bus] policies, for everything.
    let mut up = Up::start_with(dir.path(), None, &[]);
    let ev = up.wait_for("the start's policy_set_loaded", |ev| !loaded(ev).is_empty());
    assert_eq!(loaded(&ev)[0]["body"]["new"], hash_strict.as_str());
    let start = ev.last().map_or(0, |e| e["seq"].as_u64().expect("seq"));

    let send = |text: &str| {
        post(
            &up,
            "/v1/bus/send",
            Some(&json!({"from": "alice", "to": "bob", "message": text})),
        )
    };
    let store = |content: &str| {
        let (status, body) = post(
            &up,
            "/v1/context/alice/items",
            Some(&json!({"content": content, "level": "restricted"})),
        );
        assert_eq!(status, 201, "store: {body}");
        body["id"].as_str().expect("item id").to_owned()
    };
    let share = |item: &str| {
        post(
            &up,
            &format!("/v1/context/alice/items/{item}/share"),
            Some(&json!({"with": "bob", "level": "restricted"})),
        )
    };
    let reload = |to: &Path| {
        let out = up.cli(&[
            "policy",
            "reload",
            "--policies",
            to.to_str().expect("utf8"),
            "--json",
        ]);
        assert!(out.status.success(), "{}", text(&out));
        let r: Value = serde_json::from_slice(&out.stdout).expect("reload JSON");
        assert_eq!(r["changed"], true, "{r}");
        r
    };
    let (first, second) = (store("backups are kept thirty days"), store("the SLO is 99.9%"));

    // Under the strict set: both refused, naming its policies.
    let (status, body) = send("hello");
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("policy_denied")),
        "{body}"
    );
    let (status, body) = share(&first);
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("sharing is off"),
        "{body}"
    );

    // One reload to the open set: the next decision of each is allowed.
    let r = reload(&open);
    assert_eq!(
        (r["old"].as_str(), r["new"].as_str()),
        (Some(hash_strict.as_str()), Some(hash_open.as_str()))
    );
    let (status, body) = send("hello again");
    assert_eq!(status, 200, "{body}");
    let (status, body) = share(&first);
    assert_eq!(status, 200, "{body}");

    // And back: refused again.
    reload(&strict);
    let (status, body) = send("once more");
    assert_eq!(status, 403, "{body}");
    let (status, body) = share(&second);
    assert_eq!(status, 403, "{body}");

    // The decisions, in order, each naming the set in force and its ids.
    let got = gate_decisions(&up.events(), start);
    let sends: Vec<_> = got.iter().filter(|d| d.0 == "message_send").collect();
    assert_eq!(sends.len(), 3, "{got:?}");
    assert_eq!(sends[0].1, "deny");
    assert_eq!(sends[0].2, vec!["no-mail-for-bob".to_owned()]);
    assert_eq!(sends[0].3, hash_strict);
    assert_eq!(sends[1].1, "allow");
    assert_eq!(sends[1].2, vec!["agents-message-agents".to_owned()]);
    assert_eq!(sends[1].3, hash_open);
    assert_eq!(
        (sends[2].1.as_str(), sends[2].3.as_str()),
        ("deny", hash_strict.as_str())
    );
    assert_eq!(sends[2].2, vec!["no-mail-for-bob".to_owned()]);
    let shares: Vec<_> = got
        .iter()
        .filter(|d| d.0 == "data_access" && (d.2.contains(&"no-sharing".to_owned()) || d.3 == hash_open))
        .collect();
    assert!(
        shares
            .iter()
            .any(|d| d.1 == "deny" && d.3 == hash_strict && d.2 == vec!["no-sharing".to_owned()]),
        "{got:?}"
    );
    assert!(
        shares.iter().any(|d| d.1 == "allow"
            && d.3 == hash_open
            && d.2.contains(&"owner-reads-and-writes".to_owned())),
        "{got:?}"
    );
    // Every decision after the start names the set in force when it was taken.
    assert!(
        got.iter().all(|d| d.3 == hash_strict || d.3 == hash_open),
        "{got:?}"
    );
    up.signal(15);
    assert!(up.wait_exit().success());
    verify(&up.data);
}
