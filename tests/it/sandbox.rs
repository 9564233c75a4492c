//! Sandboxes against the real dockerd, in both container runtimes (runc for
//! the `docker` tier, runsc for `gvisor`): no network, a read-only root,
//! the memory limit (OOM flagged in the exit event), timeouts, gVisor's own
//! kernel; `stele up` running a docker-tier agent end to end; orphaned
//! containers reaped after `kill -9` of `stele up` (the real binary); a
//! reasoning agent's `run_command` in its container tier, its result
//! journaled and served on replay; a named network joined only when the
//! Cedar policy permits `join_network` (the verdict journaled first); a
//! container-tier agent's health probe run inside its container.
//!
//! These tests need dockerd with the `runsc` runtime registered
//! (`scripts/test.sh` sets it up); they fail, loudly, without it.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::stele;

/// How long a test waits for something the runtime should do promptly.
const WAIT: Duration = Duration::from_secs(60);

const TIERS: [&str; 2] = ["docker", "gvisor"];

/// The sandbox image, built once per test run: its tag and content hash.
fn image() -> &'static (String, String) {
    static IMAGE: OnceLock<(String, String)> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let socket = std::env::var("DOCKER_HOST")
            .ok()
            .and_then(|h| h.strip_prefix("unix://").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("/var/run/docker.sock"));
        assert!(
            socket.exists(),
            "dockerd is not running ({} is missing): the sandbox tests need it; \
             scripts/test.sh installs docker.io, runsc and busybox-static and starts dockerd",
            socket.display()
        );
        let o = stele()
            .args(["sandbox", "image", "build", "--json"])
            .output()
            .expect("run stele sandbox image build");
        assert!(
            o.status.success(),
            "stele sandbox image build failed (is dockerd up, busybox-static installed?):\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let v: Value = serde_json::from_slice(&o.stdout).expect("image JSON");
        let tag = v["tag"].as_str().expect("tag").to_owned();
        let hash = v["hash"].as_str().expect("hash").to_owned();
        assert!(tag.starts_with("stele-sandbox:") && hash.starts_with(&tag["stele-sandbox:".len()..]));
        (tag, hash)
    })
}

/// `stele sandbox run --json` in `data`; the report and the exit status.
fn sandbox_run(data: &Path, tier: &str, extra: &[&str], script: &str) -> (Value, Option<i32>) {
    image();
    let o = stele()
        .arg("--data")
        .arg(data)
        .args(["sandbox", "run", "--tier", tier, "--json"])
        .args(extra)
        .args(["--", "/bin/sh", "-c", script])
        .output()
        .expect("run stele sandbox run");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{tier}: no JSON report ({e}); stderr:\n{}",
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (v, o.status.code())
}

fn events(data: &Path) -> Vec<Value> {
    events_with(data, &[])
}

/// `stele events --json` with `extra` arguments (e.g. `--run RUN`).
fn events_with(data: &Path, extra: &[&str]) -> Vec<Value> {
    let o = stele()
        .arg("--data")
        .arg(data)
        .args(["events", "--json"])
        .args(extra)
        .output()
        .expect("run stele events");
    assert!(
        o.status.success(),
        "events: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("event JSON"))
        .collect()
}

fn kind<'a>(ev: &'a [Value], k: &str) -> Vec<&'a Value> {
    ev.iter().filter(|e| e["body"]["kind"] == k).collect()
}

fn dump(ev: &[Value]) -> String {
    ev.iter()
        .map(|e| format!("{} {} {}", e["seq"], e["stream"], e["body"]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The kinds of the `tool_*` and `sandbox_*` events among `ev`, in order.
fn tool_and_sandbox_kinds(ev: &[Value]) -> Vec<&str> {
    ev.iter()
        .map(|e| e["body"]["kind"].as_str().expect("kind"))
        .filter(|k| k.starts_with("tool_") || k.starts_with("sandbox_"))
        .collect()
}

/// Asserts that a `stele` call succeeded (`what` names it), showing its
/// output if not.
fn assert_success(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `stele --data DATA ARGS --policies POLICIES`, stdin closed.
fn with_policies(data: &Path, policies: &Path, args: &[&str]) -> std::process::Command {
    let mut cmd = stele();
    cmd.arg("--data")
        .arg(data)
        .args(args)
        .arg("--policies")
        .arg(policies)
        .stdin(Stdio::null());
    cmd
}

/// The run id of a `stele run --json` that completed its run.
fn completed_run(o: &Output, what: &str) -> String {
    assert_success(o, what);
    let out: Value = serde_json::from_slice(&o.stdout).expect("run JSON");
    assert_eq!(out["outcome"], "completed", "{what}: {out}");
    out["run"].as_str().expect("run id").to_owned()
}

/// The report of a `stele replay --json` that succeeded without a
/// divergence.
fn replayed_identically(o: &Output) -> Value {
    assert_success(o, "replay");
    let report: Value = serde_json::from_slice(&o.stdout).expect("replay JSON");
    assert!(report["divergence"].is_null(), "{report}");
    report
}

#[test]
fn a_sandboxed_command_has_no_network() {
    // A listener on the host's loopback: reachable from the host, not from
    // a container (whose loopback is its own and whose only interface is lo).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    for tier in TIERS {
        let tmp = tempfile::tempdir().expect("tempdir");
        let script = format!(
            "ls /sys/class/net; if nc -w 2 127.0.0.1 {port} </dev/null; then echo CONNECTED; else echo UNREACHABLE; fi"
        );
        let (v, code) = sandbox_run(tmp.path(), tier, &[], &script);
        assert_eq!(code, Some(0), "{tier}: {v}");
        let out = v["stdout"].as_str().expect("stdout");
        let interfaces: Vec<&str> = out
            .lines()
            .take_while(|l| !l.contains("CONNECTED") && !l.contains("UNREACHABLE"))
            .collect();
        assert_eq!(interfaces, ["lo"], "{tier}: only a loopback interface: {out}");
        assert!(
            out.contains("UNREACHABLE") && !out.contains("CONNECTED"),
            "{tier}: {out}"
        );
        assert_eq!(
            v["sandbox"]["runtime"],
            if tier == "gvisor" { "runsc" } else { "runc" }
        );
        let ev = events(tmp.path());
        let started = kind(&ev, "sandbox_started");
        assert_eq!(started.len(), 1, "{}", dump(&ev));
        assert_eq!(started[0]["body"]["network"], "none");
        assert_eq!(started[0]["body"]["tier"], tier);
        assert_eq!(started[0]["body"]["image_hash"], image().1.as_str());
    }
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "nothing from a sandbox reached the host's listener"
    );
}

#[test]
fn a_sandboxed_command_cannot_write_the_root_fs() {
    for tier in TIERS {
        let tmp = tempfile::tempdir().expect("tempdir");
        // /var/tmp is world-writable in the image; only the root's
        // read-only mount stops the write. /work is the tmpfs workdir.
        let script = "echo x > /var/tmp/f; echo \"var=$?\"; echo y > /work/f && cat /work/f; pwd; id -u";
        let (v, code) = sandbox_run(tmp.path(), tier, &[], script);
        assert_eq!(code, Some(0), "{tier}: {v}");
        let out = v["stdout"].as_str().expect("stdout");
        assert!(
            out.contains("var=1") || out.contains("var=2"),
            "{tier}: the write failed: {out}"
        );
        assert!(
            v["stderr"]
                .as_str()
                .expect("stderr")
                .contains("Read-only file system"),
            "{tier}: {v}"
        );
        assert!(
            out.contains("y\n/work\n65534"),
            "{tier}: tmpfs workdir writable, uid nobody: {out}"
        );
    }
}

#[test]
fn a_sandboxed_command_cannot_exceed_its_memory() {
    for tier in TIERS {
        let tmp = tempfile::tempdir().expect("tempdir");
        // `tail` holds the whole 200 MiB line it reads: far over 32 MiB.
        let script = "head -c 200m /dev/zero | tail > /dev/null; echo tail=$?";
        let (v, _) = sandbox_run(tmp.path(), tier, &["--memory-mb", "32"], script);
        assert_eq!(v["oom_killed"], true, "{tier}: {v}");
        assert!(
            !v["stdout"].as_str().unwrap_or("").contains("tail=0"),
            "{tier}: {v}"
        );
        let ev = events(tmp.path());
        let exited = kind(&ev, "sandbox_exited");
        assert_eq!(exited.len(), 1, "{}", dump(&ev));
        assert_eq!(exited[0]["body"]["oom_killed"], true, "{}", dump(&ev));
        assert_eq!(exited[0]["body"]["removal"], "removed");
        assert_eq!(kind(&ev, "sandbox_started")[0]["body"]["memory_mb"], 32);
    }
}

#[test]
fn a_sandboxed_command_times_out_cleanly() {
    for tier in TIERS {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (v, code) = sandbox_run(tmp.path(), tier, &["--timeout", "1s"], "echo started; sleep 60");
        assert_eq!(code, Some(124), "{tier}: timeout(1)'s status: {v}");
        assert_eq!(v["timed_out"], true, "{tier}: {v}");
        assert_eq!(
            v["stdout"], "started\n",
            "{tier}: output before the timeout is kept"
        );
        let wall = v["wall_ms"].as_u64().expect("wall_ms");
        assert!(
            (1000..30_000).contains(&wall),
            "{tier}: ended by the timeout, not the sleep: {wall} ms"
        );
        let ev = events(tmp.path());
        let exited = kind(&ev, "sandbox_exited");
        assert_eq!(exited[0]["body"]["timed_out"], true);
        assert_eq!(exited[0]["body"]["removal"], "removed", "{}", dump(&ev));
    }
}

#[test]
fn gvisor_runs_its_own_kernel() {
    let host_release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("host release");
    let tmp = tempfile::tempdir().expect("tempdir");
    let (v, code) = sandbox_run(tmp.path(), "gvisor", &[], "uname -r; dmesg");
    assert_eq!(code, Some(0), "{v}");
    let out = v["stdout"].as_str().expect("stdout");
    assert!(out.contains("Starting gVisor"), "gVisor's kernel log: {out}");
    assert_ne!(
        out.lines().next(),
        Some(host_release.trim()),
        "gVisor reports its own release"
    );
    // runc shares the host's kernel (and, unprivileged, cannot read its log).
    let (v, code) = sandbox_run(tmp.path(), "docker", &[], "uname -r; dmesg");
    let out = v["stdout"].as_str().expect("stdout");
    assert_eq!(
        out.lines().next(),
        Some(host_release.trim()),
        "{v} (status {code:?})"
    );
    assert!(!out.contains("gVisor"), "{out}");
}

#[test]
fn an_unknown_tier_is_refused_with_its_position() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("bad.toml");
    std::fs::write(
        &file,
        "name = \"bad\"\npriority = \"normal\"\n[mode]\nkind = \"ephemeral\"\n[limits]\nmemory_mb = 32\ncpu_cores = 0.1\nexecution_timeout = \"5s\"\n[runs]\nkind = \"process\"\ncommand = \"/bin/true\"\ntier = \"kvm\"\n",
    )
    .expect("write");
    let o = stele()
        .args(["agent", "validate"])
        .arg(&file)
        .output()
        .expect("run");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        // The position is the `[runs]` table's (line 9): serde reads an
        // internally tagged table as a whole, so toml has no finer span.
        err.contains(&format!("{}:9:1:", file.display()))
            && err.contains("tier \"kvm\" is not a sandbox tier"),
        "{err}"
    );
    let o = stele()
        .args(["sandbox", "run", "--tier", "kvm", "--", "true"])
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a sandbox tier"));
}

// ---- `stele up` with container-tier agents ----

const CONFIG: &str = r#"
[runtime]
http_port = 0
stop_grace = "2s"
sample_interval = "300ms"
output_limit = "4KB"

[scheduler]
slots = 1
slot_memory = "512MB"
slot_cpu_cores = 2.0
"#;

struct Up {
    child: Option<Child>,
    data: PathBuf,
    config: PathBuf,
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Up {
    fn start(dir: &Path, agents: &Path) -> Up {
        Up::start_with(dir, agents, &[])
    }

    /// [`Up::start`] with more arguments to `stele up`.
    fn start_with(dir: &Path, agents: &Path, extra: &[&str]) -> Up {
        image();
        let data = dir.join("data");
        let config = dir.join("stele.toml");
        std::fs::write(&config, CONFIG).expect("config");
        let child = stele()
            .arg("--data")
            .arg(&data)
            .arg("--config")
            .arg(&config)
            .arg("up")
            .arg("--agents")
            .arg(agents)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn stele up");
        let mut up = Up {
            child: Some(child),
            data,
            config,
        };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(text) = std::fs::read_to_string(up.data.join("up.json"))
                && let Ok(v) = serde_json::from_str::<Value>(&text)
                && v["pid"].as_u64() == up.child.as_ref().map(|c| u64::from(c.id()))
            {
                return up;
            }
            if let Some(status) = up.child.as_mut().and_then(|c| c.try_wait().expect("wait")) {
                let mut err = String::new();
                if let Some(mut e) = up.child.as_mut().and_then(|c| c.stderr.take()) {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("stele up exited early: {status}: {err}");
            }
            assert!(Instant::now() < deadline, "stele up did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
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

    fn wait_for(&self, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let ev = events(&self.data);
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

    fn kill_9(&mut self) {
        let mut c = self.child.take().expect("running");
        c.kill().expect("kill -9 stele up");
        c.wait().expect("reap stele up");
    }

    fn down(&mut self) {
        let o = self.cli(&["down"]);
        assert!(
            o.status.success(),
            "stele down: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let mut c = self.child.take().expect("running");
        let deadline = Instant::now() + WAIT;
        while c.try_wait().expect("wait").is_none() {
            assert!(Instant::now() < deadline, "stele up did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn container_agent(dir: &Path, name: &str, mode: &str, tier: &str, script: &str) {
    container_agent_with(dir, name, mode, tier, script, "60s", "");
}

/// [`container_agent`] with an `execution_timeout` of `timeout` and the
/// TOML `more` after its `[runs]` table.
fn container_agent_with(
    dir: &Path,
    name: &str,
    mode: &str,
    tier: &str,
    script: &str,
    timeout: &str,
    more: &str,
) {
    std::fs::create_dir_all(dir).expect("agents dir");
    std::fs::write(
        dir.join(format!("{name}.toml")),
        format!(
            "name = \"{name}\"\npriority = \"normal\"\n\n[mode]\nkind = \"{mode}\"\n\n[limits]\nmemory_mb = 64\ncpu_cores = 0.5\nexecution_timeout = \"{timeout}\"\n\n[runs]\nkind = \"process\"\ntier = \"{tier}\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", {script:?}]\n{more}"
        ),
    )
    .expect("write agent");
}

/// A persistent agent `name` in `dir` running `script` in a `tier`
/// container, probed every 500 ms (100 retries) by `probe` with `args`
/// under a deadline of `deadline`.
fn probed_agent(
    dir: &Path,
    name: &str,
    tier: &str,
    script: &str,
    probe: &str,
    args: &[&str],
    deadline: &str,
) {
    let health = format!(
        "\n[health]\ncommand = {probe:?}\nargs = {args:?}\ninterval = \"500ms\"\ntimeout = {deadline:?}\nretries = 100\n"
    );
    container_agent_with(dir, name, "persistent", tier, script, "120s", &health);
}

#[test]
fn up_runs_a_docker_tier_agent_in_a_container() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let agents = tmp.path().join("agents");
    container_agent(
        &agents,
        "boxed",
        "ephemeral",
        "docker",
        "echo from-the-box; id -u; sleep 1",
    );
    let mut up = Up::start(tmp.path(), &agents);
    let ev = up.wait_for("the task to finish", |ev| !kind(ev, "task_finished").is_empty());
    let started = kind(&ev, "sandbox_started");
    assert_eq!(started.len(), 1, "{}", dump(&ev));
    let s = &started[0]["body"];
    assert_eq!(s["agent"], "boxed");
    assert_eq!(s["tier"], "docker");
    assert_eq!(s["runtime"], "runc");
    assert_eq!(s["image_hash"], image().1.as_str());
    assert_eq!(s["memory_mb"], 64);
    assert_eq!(s["cpu_millis"], 500);
    let task = s["task"].as_str().expect("task");
    // The sandbox's fact comes first, then the runtime's.
    let seq_of = |k: &str| {
        kind(&ev, k)
            .iter()
            .find(|e| e["body"]["task"] == task)
            .and_then(|e| e["seq"].as_u64())
            .unwrap_or_else(|| panic!("no {k} for {task}:\n{}", dump(&ev)))
    };
    assert!(seq_of("sandbox_started") < seq_of("process_started"));
    assert!(seq_of("process_started") < seq_of("sandbox_exited"));
    assert!(seq_of("sandbox_exited") < seq_of("process_exited"));
    let confinement = kind(&ev, "process_started")[0]["body"]["confinement"]
        .as_str()
        .expect("confinement")
        .to_owned();
    assert!(
        confinement.contains("docker (runc) container") && confinement.contains("network none"),
        "{confinement}"
    );
    let exited = &kind(&ev, "sandbox_exited")[0]["body"];
    assert_eq!(exited["code"], 0);
    assert_eq!(exited["stdout"], "from-the-box\n65534\n");
    assert_eq!(exited["removal"], "removed");
    let finished = &kind(&ev, "task_finished")[0]["body"];
    assert_eq!(finished["outcome"], "completed", "{}", dump(&ev));
    assert!(
        !kind(&ev, "resources_sampled").is_empty(),
        "samples from dockerd's stats:\n{}",
        dump(&ev)
    );
    up.down();
}

#[test]
fn orphaned_containers_are_reaped_after_kill_9_of_up() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let agents = tmp.path().join("agents");
    container_agent(&agents, "long", "persistent", "gvisor", "echo up; sleep 3600");
    let mut up = Up::start(tmp.path(), &agents);
    let ev = up.wait_for("the container to start", |ev| {
        !kind(ev, "process_started").is_empty()
    });
    let first = kind(&ev, "sandbox_started")[0]["body"].clone();
    let task = first["task"].as_str().expect("task").to_owned();
    let container = first["container"].as_str().expect("container").to_owned();
    up.kill_9();

    // The container outlives its runtime.
    let ev = events(&up.data);
    assert!(kind(&ev, "sandbox_exited").is_empty(), "{}", dump(&ev));

    let mut up = Up::start(tmp.path(), &agents);
    let ev = up.wait_for("the orphan reaped and the agent rerun", |ev| {
        !kind(ev, "sandbox_reaped").is_empty() && kind(ev, "sandbox_started").len() >= 2
    });
    let reaped = kind(&ev, "sandbox_reaped");
    assert_eq!(reaped.len(), 1, "{}", dump(&ev));
    assert_eq!(reaped[0]["body"]["task"], task.as_str());
    assert_eq!(reaped[0]["body"]["container"], container.as_str());
    let detail = reaped[0]["body"]["detail"].as_str().expect("detail");
    assert!(detail.contains("was still running and was removed"), "{detail}");
    let interrupted = kind(&ev, "run_interrupted");
    assert_eq!(interrupted.len(), 1, "{}", dump(&ev));
    assert_eq!(
        interrupted[0]["body"]["detail"], detail,
        "the interrupted run says what was done"
    );
    let second = kind(&ev, "sandbox_started")[1]["body"]["container"].clone();
    assert_ne!(second, Value::from(container.as_str()));
    up.down();
    let ev = events(&up.data);
    let exited = kind(&ev, "sandbox_exited");
    assert_eq!(exited.len(), 1, "{}", dump(&ev));
    assert_eq!(exited[0]["body"]["container"], second);
    assert_eq!(exited[0]["body"]["stopped"], true);
    assert_eq!(exited[0]["body"]["removal"], "removed");

    // Nothing of this journal is left: a third start finds nothing to reap.
    let none = tmp.path().join("no-agents");
    std::fs::create_dir_all(&none).expect("empty agents dir");
    let mut up = Up::start(tmp.path(), &none);
    up.down();
    let ev = events(&up.data);
    assert_eq!(kind(&ev, "sandbox_reaped").len(), 1, "{}", dump(&ev));
}

#[test]
fn a_container_that_cannot_start_fails_its_task_with_the_reason() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let agents = tmp.path().join("agents");
    container_agent(&agents, "imageless", "ephemeral", "docker", "true");
    let file = agents.join("imageless.toml");
    let text = std::fs::read_to_string(&file).expect("read");
    std::fs::write(&file, text + "image = \"stele-no-such-image:1\"\n").expect("write");
    let mut up = Up::start(tmp.path(), &agents);
    let ev = up.wait_for("the task to fail", |ev| !kind(ev, "task_finished").is_empty());
    let finished = &kind(&ev, "task_finished")[0]["body"];
    assert_eq!(finished["outcome"], "failed", "{}", dump(&ev));
    let detail = finished["detail"].as_str().expect("detail");
    assert!(
        detail.contains("stele-no-such-image:1") && detail.contains("never pulled"),
        "{detail}"
    );
    assert!(kind(&ev, "sandbox_started").is_empty() && kind(&ev, "process_started").is_empty());
    up.down();
}

#[test]
fn a_sandboxed_command_cannot_exceed_its_pids_limit() {
    // 400 processes against the default limit of 256.
    let script = "i=0; while [ $i -lt 400 ]; do sleep 5 & i=$((i+1)); done; echo spawned $i";
    for tier in TIERS {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (v, _) = sandbox_run(tmp.path(), tier, &["--timeout", "20s"], script);
        assert!(
            !v["stdout"].as_str().unwrap_or("").contains("spawned 400"),
            "{tier}: {v}"
        );
        if tier == "docker" {
            // runc: fork fails with EAGAIN inside the container.
            assert!(v["stderr"].as_str().unwrap_or("").contains("can't fork"), "{v}");
        } else {
            // runsc: the limit counts the Sentry's host threads; reaching it
            // ends the whole sandbox.
            assert_ne!(v["code"], 0, "{v}");
        }
        assert_eq!(
            v["timed_out"], false,
            "{tier}: ended by the limit, not the timeout: {v}"
        );
    }
}

/// A tool of an unprivileged owner (uid and gid 1000): what a
/// non-root-owned workspace is given to.
const WORKSPACE_OWNER: u32 = 1000;

#[test]
fn run_command_of_a_reasoning_agent_runs_in_its_sandbox_tier_and_replays_from_the_journal() {
    use std::os::unix::fs::MetadataExt as _;
    image();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    // The tests run as root: a workspace they make is root's (worked on in
    // a scratch copy as uid 65534); one given to uid 1000 is mounted and
    // the command runs as 1000.
    assert_eq!(
        std::fs::metadata("/proc/self").expect("/proc/self").uid(),
        0,
        "the sandbox tests run as root (dockerd needs it)"
    );
    for (tier, owner) in TIERS.into_iter().flat_map(|t| [(t, 0), (t, WORKSPACE_OWNER)]) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ws = tmp.path().join("ws");
        std::fs::create_dir_all(&ws).expect("ws");
        std::fs::write(ws.join("in.txt"), "from the host\n").expect("in.txt");
        std::fs::write(ws.join("gone.txt"), "deleted by the command\n").expect("gone.txt");
        if owner != 0 {
            for p in [ws.clone(), ws.join("in.txt"), ws.join("gone.txt")] {
                std::os::unix::fs::chown(&p, Some(owner), Some(owner)).expect("chown");
            }
        }
        // Where the runtime's scratch copies go: empty again afterwards.
        let scratch_parent = tmp.path().join("tmpdir");
        std::fs::create_dir_all(&scratch_parent).expect("tmpdir");
        let command = format!(
            "cat in.txt; echo made in the sandbox > out.txt; echo PWD=$(pwd); \
             echo UID=$(id -u); rm gone.txt; mkdir sub && echo nested > sub/f; \
             echo GVISOR_LINES=$(dmesg 2>/dev/null | grep -c gVisor); \
             if nc -w 2 127.0.0.1 {port} </dev/null; then echo CONNECTED; else echo UNREACHABLE; fi; \
             if touch /etc/stele 2>/dev/null; then echo ROOT-WRITABLE; else echo ROOT-READ-ONLY; fi"
        );
        let script = tmp.path().join("script.json");
        std::fs::write(
            &script,
            serde_json::json!({"model": "scripted", "answers": [
                {"content": "", "tool_calls": [{"name": "run_command", "arguments": {"command": "sh", "args": ["-c", command]}}]},
                {"content": "done"}
            ]})
            .to_string(),
        )
        .expect("script");
        let policies = tmp.path().join("policies");
        std::fs::create_dir_all(&policies).expect("policies");
        std::fs::write(
            policies.join("tools.cedar"),
            "@id(\"all-tools\")\npermit (principal, action == Action::\"invoke_tool\", resource);\n",
        )
        .expect("cedar");
        let agent = tmp.path().join("shell.toml");
        std::fs::write(
            &agent,
            format!(
                "name = \"shell\"\npriority = \"normal\"\n[mode]\nkind = \"ephemeral\"\n[limits]\nmemory_mb = 64\ncpu_cores = 0.5\nexecution_timeout = \"60s\"\n[runs]\nkind = \"reasoning\"\ntools = [\"run_command\"]\ntier = {tier:?}\nworkspace = {:?}\nscript = {:?}\n",
                ws.display().to_string(),
                script.display().to_string()
            ),
        )
        .expect("agent");
        let data = tmp.path().join("data");
        let run = |args: &[&str]| {
            with_policies(&data, &policies, args)
                .env("TMPDIR", &scratch_parent)
                .output()
                .expect("run stele")
        };
        let run_id = completed_run(
            &run(&["run", agent.to_str().expect("utf8"), "--input", "go", "--json"]),
            tier,
        );
        let ev = events(&data);
        let returned = kind(&ev, "tool_returned");
        assert_eq!(returned.len(), 1, "{tier}: {}", dump(&ev));
        let result = &returned[0]["body"];
        assert_eq!(result["ok"], true, "{tier}: {result}");
        let text = result["output"].as_str().expect("output");
        assert!(
            text.contains("from the host"),
            "{tier}: the workspace is mounted: {text}"
        );
        assert!(text.contains("PWD=/work"), "{tier}: {text}");
        assert!(text.contains("UNREACHABLE"), "{tier}: no network: {text}");
        assert!(text.contains("ROOT-READ-ONLY"), "{tier}: read-only root: {text}");
        let gvisor_lines = text
            .lines()
            .find_map(|l| l.strip_prefix("GVISOR_LINES="))
            .expect("GVISOR_LINES");
        if tier == "gvisor" {
            assert_ne!(gvisor_lines, "0", "gVisor's kernel answered dmesg: {text}");
        } else {
            assert_eq!(gvisor_lines, "0", "runc shares the host's kernel: {text}");
        }
        assert_eq!(
            std::fs::read_to_string(ws.join("out.txt")).expect("out.txt written to the workspace"),
            "made in the sandbox\n"
        );
        let uid = text.lines().find_map(|l| l.strip_prefix("UID=")).expect("UID");
        let expected_uid = if owner == 0 { 65534 } else { owner };
        assert_eq!(
            uid,
            expected_uid.to_string(),
            "{tier}, workspace of uid {owner}: the command never runs as root: {text}"
        );
        assert!(
            !ws.join("gone.txt").exists(),
            "{tier}/{owner}: the deletion reached the workspace"
        );
        assert_eq!(
            std::fs::read_to_string(ws.join("sub/f")).expect("sub/f"),
            "nested\n"
        );
        for f in ["in.txt", "out.txt", "sub/f"] {
            assert_eq!(
                std::fs::metadata(ws.join(f)).expect(f).uid(),
                owner,
                "{tier}: {f} belongs to the workspace's owner {owner}, not to the container's user"
            );
        }
        assert_eq!(
            std::fs::read_dir(&scratch_parent).expect("tmpdir").count(),
            0,
            "{tier}/{owner}: the scratch copy is removed"
        );
        // The container's own facts, the image's hash among them, are
        // journaled between the call and its result, as facts of the run
        // caused by the call.
        let started = kind(&ev, "sandbox_started");
        let exited = kind(&ev, "sandbox_exited");
        assert_eq!((started.len(), exited.len()), (1, 1), "{tier}: {}", dump(&ev));
        let s = &started[0]["body"];
        assert_eq!(s["image_hash"], image().1.as_str(), "{tier}: {s}");
        assert_eq!(s["tier"], tier);
        assert_eq!(s["runtime"], if tier == "gvisor" { "runsc" } else { "runc" });
        assert_eq!(s["agent"], "shell");
        assert_eq!(s["network"], "none");
        assert_eq!(s["task"], run_id.as_str(), "{tier}: the run's container: {s}");
        let x = &exited[0]["body"];
        assert_eq!(
            (x["task"].as_str(), x["code"].as_i64()),
            (Some(run_id.as_str()), Some(0)),
            "{x}"
        );
        assert_eq!(x["container"], s["container"]);
        let seq = |e: &Value| e["seq"].as_u64().expect("seq");
        let called = seq(kind(&ev, "tool_called")[0]);
        assert!(
            called < seq(started[0]) && seq(started[0]) < seq(exited[0]) && seq(exited[0]) < seq(returned[0]),
            "{tier}: {}",
            dump(&ev)
        );
        let stream = format!("run:{run_id}");
        for fact in [started[0], exited[0]] {
            assert_eq!(
                (fact["cause"].as_u64(), fact["stream"].as_str()),
                (Some(called), Some(stream.as_str())),
                "{tier}: caused by the call, on the run's stream: {fact}"
            );
        }
        // A user following the run sees the chain call → container → result.
        let of_run = events_with(&data, &["--run", &run_id]);
        assert_eq!(
            tool_and_sandbox_kinds(&of_run),
            [
                "tool_called",
                "sandbox_started",
                "sandbox_exited",
                "tool_returned"
            ],
            "{tier}: {}",
            dump(&of_run)
        );

        // The replay serves the journaled result: no container runs again.
        std::fs::remove_file(ws.join("out.txt")).expect("rm out.txt");
        assert_success(&run(&["replay", &run_id]), &format!("{tier}: replay"));
        assert!(
            !ws.join("out.txt").exists(),
            "{tier}: the replay ran the command again"
        );
        assert_eq!(
            kind(&events(&data), "sandbox_started").len(),
            1,
            "{tier}: the replay started no container"
        );
    }
    drop(listener);
}

/// A reasoning agent `name` of `tier` and `mode` (the `[mode]` table's
/// lines) in `dir` whose one step calls `run_command` once per script of
/// `commands` (all in one completion, so they run at once), then answers
/// `done`; its workspace belongs to [`WORKSPACE_OWNER`]. Returns the agent
/// file and the policy directory (every tool allowed).
fn run_command_agent(
    dir: &Path,
    name: &str,
    tier: &str,
    mode: &str,
    commands: &[&str],
) -> (PathBuf, PathBuf) {
    let answers = serde_json::json!([
        {"content": "", "tool_calls": run_command_calls(commands)},
        {"content": "done"}
    ]);
    reasoning_agent(dir, name, tier, mode, &answers, ALL_TOOLS)
}

/// Every tool allowed.
const ALL_TOOLS: &str =
    "@id(\"all-tools\")\npermit (principal, action == Action::\"invoke_tool\", resource);\n";

/// Scripted `run_command` calls of `sh -c` each of `commands`.
fn run_command_calls(commands: &[&str]) -> Vec<Value> {
    commands
        .iter()
        .map(
            |c| serde_json::json!({"name": "run_command", "arguments": {"command": "sh", "args": ["-c", c]}}),
        )
        .collect()
}

/// A reasoning agent `name` of `tier` and `mode` in `dir` offered
/// `run_command` and `write_file`, answering the scripted `answers`, under
/// the Cedar policy `cedar`; its workspace belongs to [`WORKSPACE_OWNER`].
/// Returns the agent file and the policy directory.
fn reasoning_agent(
    dir: &Path,
    name: &str,
    tier: &str,
    mode: &str,
    answers: &Value,
    cedar: &str,
) -> (PathBuf, PathBuf) {
    let ws = dir.join("ws");
    std::fs::create_dir_all(&ws).expect("ws");
    std::os::unix::fs::chown(&ws, Some(WORKSPACE_OWNER), Some(WORKSPACE_OWNER)).expect("chown");
    let script = dir.join("script.json");
    std::fs::write(
        &script,
        serde_json::json!({"model": "scripted", "answers": answers}).to_string(),
    )
    .expect("script");
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).expect("policies");
    std::fs::write(policies.join("tools.cedar"), cedar).expect("cedar");
    let agent = dir.join(format!("{name}.toml"));
    std::fs::write(
        &agent,
        format!(
            "name = {name:?}\npriority = \"normal\"\n[mode]\n{mode}\n[limits]\nmemory_mb = 64\ncpu_cores = 0.5\nexecution_timeout = \"60s\"\n[runs]\nkind = \"reasoning\"\ntools = [\"run_command\", \"write_file\"]\ntier = {tier:?}\nworkspace = {:?}\nscript = {:?}\n",
            ws.display().to_string(),
            script.display().to_string()
        ),
    )
    .expect("agent");
    (agent, policies)
}

#[test]
fn a_run_parked_after_a_container_call_resumes_over_its_facts() {
    image();
    let tmp = tempfile::tempdir().expect("tempdir");
    // Step 1 runs a command in a container; step 2's write waits for an
    // approval, given by another process, which rebuilds the run from its
    // journaled facts (the container's among them) and goes on.
    let answers = serde_json::json!([
        {"content": "", "tool_calls": run_command_calls(&["echo STEP-ONE"])},
        {"content": "", "tool_calls": [{"name": "write_file", "arguments": {"path": "note.txt", "content": "approved"}}]},
        {"content": "done"}
    ]);
    let cedar = format!(
        "{ALL_TOOLS}@id(\"write-needs-approval\")\n@approval(\"writes need an operator\")\npermit (principal, action == Action::\"invoke_tool\", resource == Tool::\"write_file\");\n"
    );
    let (agent, policies) = reasoning_agent(
        tmp.path(),
        "parker",
        "docker",
        "kind = \"ephemeral\"",
        &answers,
        &cedar,
    );
    let data = tmp.path().join("data");
    let cli = |args: &[&str]| with_policies(&data, &policies, args).output().expect("run stele");
    let o = cli(&["run", agent.to_str().expect("utf8"), "--input", "go", "--json"]);
    let out: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("no run JSON ({e}): {}", String::from_utf8_lossy(&o.stderr)));
    assert_eq!(
        (o.status.code(), &out["outcome"]),
        (Some(3), &Value::from("awaiting_approval")),
        "{out}"
    );
    let run = out["run"].as_str().expect("run").to_owned();
    let ev = events_with(&data, &["--run", &run]);
    assert_eq!(kind(&ev, "sandbox_exited").len(), 1, "{}", dump(&ev));
    // Parked before its dispatch: the call is the approval's.
    let write = kind(&ev, "approval_requested")[0]["body"]["call_id"]
        .as_str()
        .expect("call_id")
        .to_owned();

    assert_success(&cli(&["approve", &run, &write, "--json"]), "approve");
    let ws = tmp.path().join("ws");
    assert_eq!(
        std::fs::read_to_string(ws.join("note.txt")).expect("note.txt"),
        "approved"
    );
    let ev = events_with(&data, &["--run", &run]);
    let finished = kind(&ev, "run_finished");
    assert_eq!(finished.len(), 1, "{}", dump(&ev));
    assert_eq!(finished[0]["body"]["outcome"], "completed", "{}", dump(&ev));
    assert_eq!(
        kind(&ev, "sandbox_started").len(),
        1,
        "the command ran once: {}",
        dump(&ev)
    );

    replayed_identically(&cli(&["replay", &run, "--json"]));
}

/// The `tool_called` event among `ev` whose arguments contain `text`.
fn called<'a>(ev: &'a [Value], text: &str) -> &'a Value {
    kind(ev, "tool_called")
        .into_iter()
        .find(|e| e["body"]["arguments"].as_str().is_some_and(|a| a.contains(text)))
        .unwrap_or_else(|| panic!("no tool_called with {text}:\n{}", dump(ev)))
}

#[test]
fn parallel_run_command_calls_each_tie_their_container_to_their_call() {
    image();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (agent, policies) = run_command_agent(
        tmp.path(),
        "pair",
        "docker",
        "kind = \"ephemeral\"",
        &["sleep 1; echo FIRST-CALL", "echo SECOND-CALL"],
    );
    let data = tmp.path().join("data");
    let cli = |args: &[&str]| with_policies(&data, &policies, args).output().expect("run stele");
    let run = completed_run(
        &cli(&["run", agent.to_str().expect("utf8"), "--input", "go", "--json"]),
        "run",
    );

    // Everything below is what a user following the run sees.
    let ev = events_with(&data, &["--run", &run]);
    let started = kind(&ev, "sandbox_started");
    let exited = kind(&ev, "sandbox_exited");
    assert_eq!((started.len(), exited.len()), (2, 2), "{}", dump(&ev));
    let seq = |e: &Value| e["seq"].as_u64().expect("seq");
    for word in ["FIRST-CALL", "SECOND-CALL"] {
        let call = called(&ev, word);
        let call_id = call["body"]["call_id"].as_str().expect("call_id");
        let call = seq(call);
        // The container that printed this call's word is caused by it.
        let exit = exited
            .iter()
            .find(|e| e["body"]["stdout"].as_str().is_some_and(|o| o.contains(word)))
            .unwrap_or_else(|| panic!("no container printed {word}:\n{}", dump(&ev)));
        let container = &exit["body"]["container"];
        let start = started
            .iter()
            .find(|e| &e["body"]["container"] == container)
            .unwrap_or_else(|| panic!("no start of container {container}:\n{}", dump(&ev)));
        for fact in [start, exit] {
            assert_eq!(
                (fact["cause"].as_u64(), fact["body"]["task"].as_str()),
                (Some(call), Some(run.as_str())),
                "{call_id}: a fact of the run caused by its call: {fact}"
            );
        }
        assert!(call < seq(start) && seq(start) < seq(exit), "{}", dump(&ev));
        let returned = kind(&ev, "tool_returned")
            .into_iter()
            .find(|e| e["body"]["call_id"] == call_id)
            .unwrap_or_else(|| panic!("no result of {call_id}:\n{}", dump(&ev)));
        assert!(seq(exit) < seq(returned), "{}", dump(&ev));
        let output = returned["body"]["output"].as_str().expect("output");
        assert!(output.contains(word), "{call_id}: {output}");
    }
    assert_ne!(
        started[0]["body"]["container"], started[1]["body"]["container"],
        "each call has its own container"
    );

    // The replay serves both results and passes over the containers'
    // facts: identical, nothing run again.
    let report = replayed_identically(&cli(&["replay", &run, "--json"]));
    assert_eq!(
        report["recorded"].as_u64(),
        Some(ev.len() as u64 - 4),
        "every fact but the containers' is compared: {report}"
    );
    assert_eq!(report["identical"], report["recorded"], "{report}");
    assert_eq!(
        kind(&events(&data), "sandbox_started").len(),
        2,
        "the replay started no container"
    );
}

#[test]
fn a_run_command_container_orphaned_by_kill_9_is_reaped_into_its_run() {
    image();
    let tmp = tempfile::tempdir().expect("tempdir");
    let name = format!("orphaner-{}", std::process::id());
    // Scheduled a day apart: `stele up` does not start it on its own.
    let (agent, policies) = run_command_agent(
        tmp.path(),
        &name,
        "docker",
        "kind = \"scheduled\"\ninterval = \"24h\"",
        &["sleep 3600"],
    );
    let policies = policies.to_str().expect("utf8").to_owned();
    let none = tmp.path().join("no-agents");
    std::fs::create_dir_all(&none).expect("empty agents dir");
    // The run is driven by `stele up` (its facts appended through the
    // daemon's sink), which is killed while the command runs.
    let mut up = Up::start_with(tmp.path(), &none, &["--policies", &policies]);
    let mut client = stele()
        .arg("--data")
        .arg(&up.data)
        .arg("--config")
        .arg(&up.config)
        .args(["run", agent.to_str().expect("utf8"), "--input", "go"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn stele run");
    let ev = up.wait_for("the container to start", |ev| {
        !kind(ev, "sandbox_started").is_empty()
    });
    // The client first: with the daemon gone it would drive the run itself.
    client.kill().expect("kill the stele run client");
    client.wait().expect("reap stele run");
    up.kill_9();
    let started = kind(&ev, "sandbox_started")[0];
    let run = started["body"]["task"].as_str().expect("task").to_owned();
    let container = started["body"]["container"]
        .as_str()
        .expect("container")
        .to_owned();
    let call = called(&ev, "sleep 3600");
    assert_eq!(
        (call["body"]["run"].as_str(), started["cause"].as_u64()),
        (Some(run.as_str()), call["seq"].as_u64()),
        "a fact of the run caused by its call: {started}"
    );
    let call_id = call["body"]["call_id"].as_str().expect("call_id").to_owned();

    // The next runtime of this journal removes the orphan; its removal is a
    // fact of the run that started it.
    let mut up = Up::start_with(tmp.path(), &none, &["--policies", &policies]);
    let ev = up.wait_for("the orphan reaped", |ev| !kind(ev, "sandbox_reaped").is_empty());
    up.down();
    let reaped = kind(&ev, "sandbox_reaped");
    assert_eq!(reaped.len(), 1, "{}", dump(&ev));
    assert_eq!(reaped[0]["body"]["task"], run.as_str(), "{}", dump(&ev));
    assert_eq!(reaped[0]["body"]["container"], container.as_str());
    let detail = reaped[0]["body"]["detail"].as_str().expect("detail");
    assert!(
        detail.contains(&format!("of call {call_id}"))
            && detail.contains("was still running and was removed"),
        "{detail}"
    );
    let of_run = events_with(&up.data, &["--run", &run]);
    assert_eq!(
        tool_and_sandbox_kinds(&of_run),
        ["tool_called", "sandbox_started", "sandbox_reaped"],
        "{}",
        dump(&of_run)
    );
    let left = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label=stele.agent={name}")])
        .output()
        .expect("run docker ps");
    assert!(
        String::from_utf8_lossy(&left.stdout).trim().is_empty(),
        "no container of the run is left"
    );
}

/// A Docker network (internal: no route out) made for one test with the
/// docker CLI (the runtime itself never runs it), removed on drop.
struct TestNetwork(String);

impl TestNetwork {
    fn new() -> TestNetwork {
        let name = format!("stele-it-{}", std::process::id());
        let o = std::process::Command::new("docker")
            .args(["network", "create", "--internal", &name])
            .output()
            .expect("run docker network create");
        assert!(
            o.status.success(),
            "docker network create --internal {name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        TestNetwork(name)
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["network", "rm", &self.0])
            .output();
    }
}

#[test]
fn a_named_network_is_joined_only_when_policy_permits_it() {
    let network = TestNetwork::new();
    for (permit, verdict) in [(true, "allow"), (false, "deny")] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let agents = tmp.path().join("agents");
        std::fs::create_dir_all(&agents).expect("agents dir");
        std::fs::write(
            agents.join("netted.toml"),
            format!(
                "name = \"netted\"\npriority = \"normal\"\n\n[mode]\nkind = \"ephemeral\"\n\n[limits]\nmemory_mb = 64\ncpu_cores = 0.5\nnetwork_io_mbps = 1\nexecution_timeout = \"60s\"\n\n[runs]\nkind = \"process\"\ntier = \"docker\"\nnetwork = {:?}\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"ls /sys/class/net\"]\n",
                network.0
            ),
        )
        .expect("agent");
        let policies = tmp.path().join("policies");
        std::fs::create_dir_all(&policies).expect("policies");
        let cedar = if permit {
            format!(
                "@id(\"netted-joins-its-network\")\npermit (principal == Agent::\"netted\", action == Action::\"join_network\", resource == Network::{:?})\nwhen {{ context.tier == \"docker\" }};\n",
                network.0
            )
        } else {
            // Policies, but none about networks: default deny.
            "@id(\"all-tools\")\npermit (principal, action == Action::\"invoke_tool\", resource);\n"
                .to_owned()
        };
        std::fs::write(policies.join("net.cedar"), cedar).expect("cedar");
        let mut up = Up::start_with(
            tmp.path(),
            &agents,
            &["--policies", policies.to_str().expect("utf8")],
        );
        let ev = up.wait_for("the task to finish", |ev| !kind(ev, "task_finished").is_empty());
        let decided: Vec<&Value> = kind(&ev, "policy_decided")
            .into_iter()
            .filter(|e| {
                e["body"]["request"]
                    .as_str()
                    .is_some_and(|r| r.contains("\"join_network\""))
            })
            .collect();
        assert_eq!(decided.len(), 1, "{permit}: {}", dump(&ev));
        let d = &decided[0]["body"];
        assert_eq!(d["verdict"], verdict, "{d}");
        assert_eq!(d["point"], "resource_allocation");
        assert!(
            d["request"]
                .as_str()
                .expect("request")
                .contains(&format!("\"id\":{:?}", network.0)),
            "{d}"
        );
        let started = kind(&ev, "sandbox_started");
        assert_eq!(started.len(), 1, "{}", dump(&ev));
        assert!(
            decided[0]["seq"].as_u64() < started[0]["seq"].as_u64(),
            "the verdict is journaled before the container starts"
        );
        let interfaces = kind(&ev, "sandbox_exited")[0]["body"]["stdout"]
            .as_str()
            .expect("stdout")
            .to_owned();
        if permit {
            assert_eq!(d["policies"][0], "netted-joins-its-network");
            assert_eq!(started[0]["body"]["network"], network.0.as_str());
            assert!(interfaces.contains("eth0"), "joined {}: {interfaces}", network.0);
        } else {
            assert_eq!(started[0]["body"]["network"], "none");
            assert_eq!(interfaces.trim(), "lo", "no network without a permit");
        }
        assert_eq!(
            kind(&ev, "task_finished")[0]["body"]["outcome"],
            "completed",
            "{}",
            dump(&ev)
        );
        up.down();
    }
}

#[test]
fn a_container_agents_health_probe_runs_inside_its_container() {
    for tier in TIERS {
        let tmp = tempfile::tempdir().expect("tempdir");
        let agents = tmp.path().join("agents");
        // The file the probe looks for exists only in the container's /work
        // (a tmpfs), and only after two seconds.
        probed_agent(
            &agents,
            "probed",
            tier,
            "sleep 2; echo ok > /work/stele-ready; sleep 600",
            "/bin/sh",
            &["-c", "cat /work/stele-ready"],
            "10s",
        );
        let mut up = Up::start(tmp.path(), &agents);
        let ev = up.wait_for("a failed probe and the recovery", |ev| {
            kind(ev, "health_checked").iter().any(|e| e["body"]["ok"] == true)
        });
        let checks = kind(&ev, "health_checked");
        let failed = &checks[0]["body"];
        assert_eq!(failed["ok"], false, "{tier}: {}", dump(&ev));
        let detail = failed["detail"].as_str().expect("detail");
        assert!(
            detail.contains("in the container") && detail.contains("stele-ready"),
            "{tier}: the probe ran in the container: {detail}"
        );
        let recovered = &checks.last().expect("a check")["body"];
        assert_eq!(recovered["ok"], true, "{tier}: {}", dump(&ev));
        assert_eq!(recovered["failures"], 0);
        assert!(
            !Path::new("/work/stele-ready").exists(),
            "the probe's file is the container's, not the host's"
        );
        up.down();
    }
}

/// The processes of container `id` whose command line contains `needle`,
/// as the container's own `ps` lists them (`docker top` cannot: under
/// runsc it maps gVisor's pids onto the host's).
fn processes_in(id: &str, needle: &str) -> Vec<String> {
    let o = std::process::Command::new("docker")
        .args(["exec", id, "ps", "-o", "pid,ppid,args"])
        .output()
        .expect("run docker exec ps");
    assert!(
        o.status.success(),
        "docker exec {id} ps: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_probe_that_hangs_past_its_deadline_is_killed_in_the_container() {
    for tier in TIERS {
        let tmp = tempfile::tempdir().expect("tempdir");
        let agents = tmp.path().join("agents");
        // Docker cannot kill an exec: without the deadline enforced inside
        // the container, every timed-out probe's `sleep 4242` would stay.
        probed_agent(&agents, "hung", tier, "sleep 600", "/bin/sleep", &["4242"], "1s");
        let mut up = Up::start(tmp.path(), &agents);
        let ev = up.wait_for("two timed-out probes", |ev| {
            kind(ev, "health_checked")
                .iter()
                .any(|e| e["body"]["failures"].as_u64() >= Some(2))
        });
        let container = kind(&ev, "sandbox_started")[0]["body"]["container"]
            .as_str()
            .expect("container")
            .to_owned();
        // At most the probe in flight now (its `sleep` and the watcher
        // busybox's `timeout` forks); none of the timed-out ones.
        let running = processes_in(&container, "4242");
        let (watchers, probes): (Vec<&String>, Vec<&String>) =
            running.iter().partition(|l| l.contains("timeout -s KILL"));
        assert!(
            probes.len() <= 1 && watchers.len() <= 1,
            "{tier}: timed-out probes left running in the container: {running:?}"
        );
        for check in kind(&ev, "health_checked") {
            let b = &check["body"];
            assert_eq!(b["ok"], false, "{tier}: {b}");
            let detail = b["detail"].as_str().expect("detail");
            assert!(
                detail.contains("timed out after 1s in the container (killed there at the deadline)"),
                "{tier}: {detail}"
            );
        }
        // The container itself lives on: only its probe was ended.
        assert!(
            !processes_in(&container, "sleep 600").is_empty(),
            "{tier}: the task runs on"
        );
        up.down();
    }
}
