//! `stele up` end to end: real processes under the daemon, timeouts,
//! preemption, event triggers, the HTTP control API (and its bad input),
//! the six-step graceful shutdown, and recovery after `kill -9`.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::stele;

/// How long a test waits for something the runtime should do promptly.
pub(crate) const WAIT: Duration = Duration::from_secs(30);

pub(crate) struct Up {
    child: Option<Child>,
    pub(crate) data: PathBuf,
    config: PathBuf,
    pub(crate) http: String,
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub(crate) const CONFIG: &str = r#"
[runtime]
http_port = 0
stop_grace = "2s"
sample_interval = "200ms"
output_limit = "4KB"

[scheduler]
slots = 1
slot_memory = "256MB"
slot_cpu_cores = 2.0

[journal]
snapshot_every = 50
"#;

fn agent(dir: &Path, name: &str, body: &str) {
    std::fs::create_dir_all(dir).expect("agents dir");
    std::fs::write(
        dir.join(format!("{name}.toml")),
        format!("name = \"{name}\"\n{body}"),
    )
    .expect("write agent");
}

fn process_agent(
    priority: &str,
    mode: &str,
    memory_mb: u64,
    timeout: &str,
    command: &str,
    args: &str,
) -> String {
    format!(
        "priority = \"{priority}\"\n\n[mode]\n{mode}\n\n[limits]\nmemory_mb = {memory_mb}\ncpu_cores = 0.1\nexecution_timeout = \"{timeout}\"\n\n[runs]\nkind = \"process\"\ncommand = \"{command}\"\nargs = {args}\n"
    )
}

impl Up {
    fn start(dir: &Path, agents: Option<&Path>) -> Up {
        Up::start_with(dir, agents, &[])
    }

    /// [`Up::start`] with more arguments to `stele up` (e.g. `--policies`).
    pub(crate) fn start_with(dir: &Path, agents: Option<&Path>, extra: &[&str]) -> Up {
        let data = dir.join("data");
        let config = dir.join("stele.toml");
        if !config.exists() {
            std::fs::write(&config, CONFIG).expect("config");
        }
        let mut cmd = stele();
        cmd.arg("--data")
            .arg(&data)
            .arg("--config")
            .arg(&config)
            .arg("up");
        if let Some(a) = agents {
            cmd.arg("--agents").arg(a);
        }
        cmd.args(extra);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn stele up");
        let mut up = Up {
            child: Some(child),
            data,
            config,
            http: String::new(),
        };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(text) = std::fs::read_to_string(up.data.join("up.json"))
                && let Ok(v) = serde_json::from_str::<Value>(&text)
                && v["pid"].as_u64() == up.child.as_ref().map(|c| u64::from(c.id()))
            {
                up.http = format!("http://{}", v["http"].as_str().expect("http in up.json"));
                return up;
            }
            if let Some(status) = up.child.as_mut().and_then(|c| c.try_wait().expect("wait")) {
                panic!("stele up exited early: {status}");
            }
            assert!(Instant::now() < deadline, "stele up did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.child.as_ref().expect("running").id()).expect("pid")
    }

    /// Runs a `stele` command against this daemon's data dir and config.
    pub(crate) fn cli(&self, args: &[&str]) -> std::process::Output {
        stele()
            .arg("--data")
            .arg(&self.data)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("run stele")
    }

    pub(crate) fn events(&self) -> Vec<Value> {
        let out = self.cli(&["events", "--json"]);
        assert!(
            out.status.success(),
            "events: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("event JSON"))
            .collect()
    }

    pub(crate) fn wait_for(&self, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let ev = self.events();
            if pred(&ev) {
                return ev;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; events:\n{}",
                dump(&ev)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub(crate) fn signal(&self, sig: i32) {
        // SAFETY-free: the kill(1) utility.
        let ok = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig}");
    }

    pub(crate) fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(s) = child.try_wait().expect("wait") {
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("stele up did not exit");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn http(&self) -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(20)))
            .build()
            .into()
    }
}

pub(crate) fn dump(ev: &[Value]) -> String {
    ev.iter()
        .map(|e| format!("{} {} {}", e["seq"], e["stream"], e["body"]))
        .collect::<Vec<_>>()
        .join("\n")
}

pub(crate) fn kind<'a>(ev: &'a [Value], k: &str) -> Vec<&'a Value> {
    ev.iter().filter(|e| e["body"]["kind"] == k).collect()
}

fn of_agent<'a>(ev: &'a [Value], k: &str, agent: &str) -> Vec<&'a Value> {
    // Scheduler facts name the task; map tasks to agents via TaskQueued.
    let tasks: Vec<&str> = kind(ev, "task_queued")
        .into_iter()
        .filter(|e| e["body"]["agent"] == agent)
        .filter_map(|e| e["body"]["task"].as_str())
        .collect();
    kind(ev, k)
        .into_iter()
        .filter(|e| {
            e["body"]["agent"] == agent || e["body"]["task"].as_str().is_some_and(|t| tasks.contains(&t))
        })
        .collect()
}

fn state_changes(ev: &[Value], agent: &str) -> Vec<String> {
    kind(ev, "agent_state_changed")
        .into_iter()
        .filter(|e| e["body"]["agent"] == agent)
        .map(|e| {
            format!(
                "{}->{}",
                e["body"]["from"].as_str().unwrap_or("?"),
                e["body"]["to"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

pub(crate) fn verify(data: &Path) {
    let out = stele()
        .arg("--data")
        .arg(data)
        .args(["journal", "verify"])
        .output()
        .expect("verify");
    assert!(
        out.status.success(),
        "journal verify failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn up_runs_agents_times_out_and_shuts_down_in_six_steps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agents = dir.path().join("agents");
    agent(
        &agents,
        "hello",
        &process_agent(
            "normal",
            "kind = \"ephemeral\"",
            16,
            "10s",
            "/bin/echo",
            "[\"hello from stele\"]",
        ),
    );
    agent(
        &agents,
        "slow",
        &process_agent(
            "normal",
            "kind = \"ephemeral\"",
            16,
            "1s",
            "/bin/sleep",
            "[\"30\"]",
        ),
    );
    agent(
        &agents,
        "ticker",
        &process_agent(
            "low",
            "kind = \"scheduled\"\ninterval = \"300ms\"",
            16,
            "5s",
            "/bin/true",
            "[]",
        ),
    );
    agent(
        &agents,
        "daemon",
        &process_agent(
            "high",
            "kind = \"persistent\"",
            16,
            "1h",
            "/bin/sleep",
            "[\"3600\"]",
        ),
    );
    let mut up = Up::start(dir.path(), Some(&agents));

    let ev = up.wait_for(
        "hello to run, slow to time out, ticker to tick twice, daemon to run",
        |ev| {
            let hello_done = of_agent(ev, "process_exited", "hello")
                .iter()
                .any(|e| e["body"]["stdout"] == "hello from stele\n" && e["body"]["code"] == 0);
            let slow_out = of_agent(ev, "task_finished", "slow")
                .iter()
                .any(|e| e["body"]["outcome"] == "timed_out");
            let ticks = of_agent(ev, "process_exited", "ticker").len() >= 2;
            let daemon = !of_agent(ev, "process_started", "daemon").is_empty();
            hello_done && slow_out && ticks && daemon
        },
    );
    // Lifecycle as the seed's diagram: ready → running → ready → terminated.
    assert_eq!(
        state_changes(&ev, "hello"),
        [
            "initializing->ready",
            "ready->running",
            "running->ready",
            "ready->terminated"
        ]
    );
    let slow_exit = of_agent(&ev, "process_exited", "slow");
    assert_eq!(slow_exit[0]["body"]["timed_out"], true, "{}", dump(&ev));
    assert!(slow_exit[0]["body"]["wall_ms"].as_u64().expect("wall") < 15_000);
    // Timer ticks are journaled facts, numbered.
    let ticks: Vec<u64> = of_agent(&ev, "timer_fired", "ticker")
        .iter()
        .filter_map(|e| e["body"]["tick"].as_u64())
        .collect();
    assert!(
        ticks.len() >= 2 && ticks[0] == 1 && ticks[1] == 2,
        "ticks {ticks:?}"
    );
    // The host and confinement are recorded before anything is decided.
    let started = kind(&ev, "runtime_started");
    assert_eq!(started.len(), 1);
    assert_eq!(started[0]["body"]["slot_memory_mb"][0], 256);
    assert!(
        started[0]["body"]["confinement"]
            .as_str()
            .expect("confinement")
            .contains("rlimit")
    );

    // Status and list go through the HTTP API.
    let status = up.cli(&["status", "--json"]);
    assert!(status.status.success());
    let s: Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    assert_eq!(s["running"], true);
    let list = up.cli(&["agent", "list", "--json"]);
    let l: Value = serde_json::from_slice(&list.stdout).expect("list JSON");
    let daemon = l
        .as_array()
        .expect("array")
        .iter()
        .find(|a| a["name"] == "daemon")
        .expect("daemon listed");
    assert_eq!(daemon["state"], "running");

    // Samples arrive for the long-running one.
    up.wait_for("resource samples", |ev| {
        !of_agent(ev, "resources_sampled", "daemon").is_empty()
    });

    // SIGTERM: six steps, in order, and a clean exit.
    up.signal(15);
    let status = up.wait_exit();
    assert!(status.success(), "stele up exited with {status}");
    let out = stele()
        .arg("--data")
        .arg(&up.data)
        .args(["events", "--json"])
        .output()
        .expect("events");
    let ev: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let steps: Vec<(u64, String)> = kind(&ev, "shutdown_step")
        .iter()
        .map(|e| {
            (
                e["body"]["step"].as_u64().expect("step"),
                e["body"]["name"].as_str().expect("name").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            (1, "stop-admission".to_owned()),
            (2, "signal-agents".to_owned()),
            (3, "force-kill".to_owned()),
            (4, "flush-metrics".to_owned()),
            (5, "release-resources".to_owned()),
            (6, "clear-queue".to_owned()),
        ]
    );
    // The persistent agent was asked to stop (SIGTERM) and its task cancelled.
    let last_daemon_exit = of_agent(&ev, "process_exited", "daemon");
    assert_eq!(last_daemon_exit.last().expect("exit")["body"]["stopped"], true);
    // Every task ever queued ended exactly once.
    let queued = kind(&ev, "task_queued").len();
    let finished = kind(&ev, "task_finished").len();
    assert_eq!(queued, finished, "{}", dump(&ev));
    assert!(!up.data.join("up.json").exists());
    verify(&up.data);
}

#[test]
fn a_critical_agent_preempts_and_the_preempted_one_resumes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agents = dir.path().join("agents");
    agent(
        &agents,
        "hog",
        &process_agent(
            "low",
            "kind = \"persistent\"",
            200,
            "1h",
            "/bin/sleep",
            "[\"3600\"]",
        ),
    );
    let up = Up::start(dir.path(), Some(&agents));
    up.wait_for("hog to run", |ev| {
        !of_agent(ev, "process_started", "hog").is_empty()
    });

    let urgent = dir.path().join("urgent.toml");
    std::fs::write(
        &urgent,
        format!(
            "name = \"urgent\"\n{}",
            process_agent(
                "critical",
                "kind = \"ephemeral\"",
                100,
                "10s",
                "/bin/echo",
                "[\"urgent done\"]"
            )
        ),
    )
    .expect("write");
    let out = up.cli(&["agent", "register", urgent.to_str().expect("utf8")]);
    assert!(
        out.status.success(),
        "register: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let ev = up.wait_for("urgent to run and hog to resume", |ev| {
        of_agent(ev, "process_exited", "urgent")
            .iter()
            .any(|e| e["body"]["code"] == 0)
            && of_agent(ev, "process_started", "hog").len() >= 2
    });
    let pre = kind(&ev, "task_preempted");
    assert_eq!(pre.len(), 1, "{}", dump(&ev));
    assert_eq!(
        state_changes(&ev, "hog"),
        [
            "initializing->ready",
            "ready->running",
            "running->suspended",
            "suspended->running"
        ]
    );
    // The preempted process was stopped (not left running beside the new one).
    let hog_exit = of_agent(&ev, "process_exited", "hog");
    assert_eq!(hog_exit.len(), 1);
    assert_eq!(hog_exit[0]["body"]["stopped"], true);
    // The second start of hog comes after urgent was placed.
    let placed_urgent = of_agent(&ev, "task_placed", "urgent")[0]["seq"]
        .as_u64()
        .expect("seq");
    let second_hog = of_agent(&ev, "process_started", "hog")[1]["seq"]
        .as_u64()
        .expect("seq");
    assert!(second_hog > placed_urgent);
}

#[test]
fn event_driven_agents_run_on_matching_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agents = dir.path().join("agents");
    agent(
        &agents,
        "watcher",
        "priority = \"high\"\n[mode]\nkind = \"event-driven\"\nfilter = { kinds = [\"annotated\"], streams = [\"ops\"] }\n[limits]\nmemory_mb = 16\ncpu_cores = 0.1\nexecution_timeout = \"5s\"\n[runs]\nkind = \"process\"\ncommand = \"/bin/echo\"\nargs = [\"noted\"]\n",
    );
    let up = Up::start(dir.path(), Some(&agents));
    // Not matching: another stream.
    let out = up.cli(&["journal", "append", "--stream", "dev", "--text", "ignored"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = up.cli(&[
        "journal",
        "append",
        "--stream",
        "ops",
        "--text",
        "deploy started",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let note: Value = serde_json::from_slice(&out.stdout).expect("receipt");
    let note_seq = note["seq"].as_u64().expect("seq");
    let ev = up.wait_for("watcher to run", |ev| {
        of_agent(ev, "process_exited", "watcher")
            .iter()
            .any(|e| e["body"]["stdout"] == "noted\n")
    });
    let queued = of_agent(&ev, "task_queued", "watcher");
    assert_eq!(queued.len(), 1, "only the ops note triggers: {}", dump(&ev));
    assert_eq!(queued[0]["body"]["trigger"], format!("event {note_seq}"));
    assert_eq!(queued[0]["cause"], note_seq);
}

#[test]
fn http_control_api_rejects_bad_input_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = Up::start(dir.path(), None);
    let http = up.http();
    let post = |path: &str, body: &str| {
        let mut r = http
            .post(format!("{}{path}", up.http))
            .header("content-type", "application/toml")
            .send(body)
            .expect("request");
        let status = r.status().as_u16();
        let v: Value =
            serde_json::from_str(&r.body_mut().read_to_string().expect("body")).expect("JSON error body");
        (status, v)
    };
    // Bad TOML: 400 naming the line and the field.
    let (status, v) = post("/v1/agents", "name = \"x\"\npriority = \"urgent\"\n");
    assert_eq!(status, 400);
    assert_eq!(v["error"]["code"], "invalid_definition");
    let msg = v["error"]["message"].as_str().expect("message");
    assert!(msg.contains(":2:") && msg.contains("urgent"), "{msg}");
    // Not UTF-8.
    let mut r = http
        .post(format!("{}/v1/agents", up.http))
        .header("content-type", "application/toml")
        .send(&[0xff_u8, 0xfe, 0x00][..])
        .expect("request");
    assert_eq!(r.status().as_u16(), 400);
    let _ = r.body_mut().read_to_string();
    // Too large.
    let (status, _) = post("/v1/agents", &"#".repeat(64 * 1024 + 1));
    assert_eq!(status, 413);
    // A command that does not exist: registered, then Failed with the reason.
    let missing = format!(
        "name = \"ghost\"\n{}",
        process_agent("low", "kind = \"ephemeral\"", 8, "1s", "/nonexistent/bin", "[]")
    );
    let (status, v) = post("/v1/agents", &missing);
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["state"], "failed");
    // Duplicate: 409.
    let ok = format!(
        "name = \"dup\"\n{}",
        process_agent(
            "low",
            "kind = \"event-driven\"\nfilter = { kinds = [\"never\"] }",
            8,
            "1s",
            "/bin/true",
            "[]"
        )
    );
    assert_eq!(post("/v1/agents", &ok).0, 201);
    let (status, v) = post("/v1/agents", &ok);
    assert_eq!(status, 409);
    assert_eq!(v["error"]["code"], "already_registered");
    // Too large for any slot: registered as failed, never queued.
    let huge = format!(
        "name = \"huge\"\n{}",
        process_agent("low", "kind = \"ephemeral\"", 100_000, "1s", "/bin/true", "[]")
    );
    let (status, v) = post("/v1/agents", &huge);
    assert_eq!(status, 201);
    assert_eq!(v["state"], "failed");
    // Stopping: unknown → 404, a body of the wrong type → 415, of the
    // wrong shape → 422, then OK, then 409.
    assert_eq!(post("/v1/agents/nobody/stop", "").0, 404);
    let post_json = |path: &str, body: &str| {
        let mut r = http
            .post(format!("{}{path}", up.http))
            .header("content-type", "application/json")
            .send(body)
            .expect("request");
        let status = r.status().as_u16();
        let v: Value =
            serde_json::from_str(&r.body_mut().read_to_string().expect("body")).expect("JSON error body");
        (status, v)
    };
    let (status, v) = post("/v1/agents/dup/stop", "{\"reason\": \"done\"}");
    assert_eq!(status, 415, "{v}");
    let (status, v) = post_json("/v1/agents/dup/stop", "{\"why\": 1}");
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["error"]["code"], "unprocessable");
    assert_eq!(post_json("/v1/agents/dup/stop", "{\"reason\": \"done\"}").0, 200);
    let (status, v) = post("/v1/agents/dup/stop", "");
    assert_eq!(status, 409);
    assert_eq!(v["error"]["code"], "terminated");
    // Unknown endpoint.
    let mut r = http.get(format!("{}/v1/nope", up.http)).call().expect("request");
    assert_eq!(r.status().as_u16(), 404);
    let v: Value = serde_json::from_str(&r.body_mut().read_to_string().expect("body")).expect("json");
    assert_eq!(v["error"]["code"], "not_found");
    // Nothing of the refused requests reached the journal.
    let ev = up.events();
    let registered: Vec<&str> = kind(&ev, "agent_registered")
        .iter()
        .filter_map(|e| e["body"]["agent"].as_str())
        .collect();
    assert_eq!(registered, ["ghost", "dup", "huge"]);
}

#[test]
fn kill_9_then_restart_interrupts_reaps_the_orphan_and_reruns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agents = dir.path().join("agents");
    agent(
        &agents,
        "keeper",
        &process_agent(
            "normal",
            "kind = \"persistent\"",
            16,
            "1h",
            "/bin/sleep",
            "[\"3600\"]",
        ),
    );
    let mut up = Up::start(dir.path(), Some(&agents));
    let ev = up.wait_for("keeper to run", |ev| {
        !of_agent(ev, "process_started", "keeper").is_empty()
    });
    let orphan = of_agent(&ev, "process_started", "keeper")[0]["body"]["pid"]
        .as_u64()
        .expect("pid");
    up.signal(9);
    let status = up.wait_exit();
    assert!(!status.success());
    assert!(
        Path::new(&format!("/proc/{orphan}")).exists(),
        "the orphan outlives a kill -9 of its runtime"
    );

    let up = Up::start(dir.path(), None);
    let ev = up.wait_for("keeper to run again", |ev| {
        of_agent(ev, "process_started", "keeper").len() >= 2
    });
    let interrupted = kind(&ev, "run_interrupted");
    assert_eq!(interrupted.len(), 1, "{}", dump(&ev));
    assert!(
        interrupted[0]["body"]["detail"]
            .as_str()
            .expect("detail")
            .contains("killed"),
        "{}",
        interrupted[0]["body"]
    );
    // The orphan is gone (a zombie at most until init reaps it).
    let deadline = Instant::now() + WAIT;
    while let Ok(stat) = std::fs::read_to_string(format!("/proc/{orphan}/stat")) {
        if stat.contains(") Z ") {
            break;
        }
        assert!(Instant::now() < deadline, "orphan {orphan} still running");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The interrupted task ended once (failed), a new one was queued for recovery.
    let finished = of_agent(&ev, "task_finished", "keeper");
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0]["body"]["outcome"], "failed");
    assert!(of_agent(&ev, "task_queued", "keeper").iter().any(|e| {
        e["body"]["trigger"]
            .as_str()
            .is_some_and(|t| t.starts_with("recovery of"))
    }));
    // A second runtime on the same data dir is refused while this one runs.
    let second = stele()
        .arg("--data")
        .arg(&up.data)
        .arg("--config")
        .arg(&up.config)
        .arg("up")
        .output()
        .expect("second up");
    assert!(!second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("already runs"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    drop(up);
    verify(&dir.path().join("data"));
}

#[test]
fn a_failing_health_probe_stops_the_process_and_the_run_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agents = dir.path().join("agents");
    let ready = dir.path().join("ready");
    agent(
        &agents,
        "probed",
        &format!(
            "{}\n[health]\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"test -e {} || {{ echo not ready; exit 1; }}\"]\ninterval = \"200ms\"\ntimeout = \"2s\"\nretries = 2\n",
            process_agent(
                "normal",
                "kind = \"persistent\"",
                16,
                "1h",
                "/bin/sleep",
                "[\"3600\"]"
            ),
            ready.display()
        ),
    );
    let up = Up::start(dir.path(), Some(&agents));
    let ev = up.wait_for("the unhealthy run to fail", |ev| {
        of_agent(ev, "task_finished", "probed")
            .iter()
            .any(|e| e["body"]["outcome"] == "failed")
    });
    let checks = of_agent(&ev, "health_checked", "probed");
    assert_eq!(checks.len(), 2, "{}", dump(&ev));
    assert_eq!(checks[0]["body"]["failures"], 1);
    assert_eq!(checks[1]["body"]["failures"], 2);
    assert!(
        checks[0]["body"]["detail"]
            .as_str()
            .expect("detail")
            .contains("not ready")
    );
    let finished = of_agent(&ev, "task_finished", "probed");
    assert!(
        finished[0]["body"]["detail"]
            .as_str()
            .expect("detail")
            .contains("unhealthy")
    );
    // Healthy from now on: the restarted run is probed without new events.
    std::fs::write(&ready, "").expect("ready");
    let ev = up.wait_for("the restart", |ev| {
        of_agent(ev, "process_started", "probed").len() >= 2
    });
    std::thread::sleep(Duration::from_millis(800));
    let later = up.events();
    let checks_after = of_agent(&later, "health_checked", "probed").len();
    assert_eq!(
        checks_after,
        of_agent(&ev, "health_checked", "probed").len(),
        "{}",
        dump(&later)
    );
}
